"""The service's logs: one JSON object per line (time, level, logger, message, and the request's
fields on access lines), or plain text (LLMEMB_LOG_FORMAT=text)."""
from __future__ import annotations

import json
import logging
import os
import sys
from datetime import UTC, datetime

FIELDS = ("request_id", "method", "route", "status", "latency_ms")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {"time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
                 "level": record.levelname.lower(), "logger": record.name, "message": record.getMessage()}
        for name in FIELDS:
            if hasattr(record, name):
                entry[name] = getattr(record, name)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure(level: str, fmt: str) -> None:
    """Root logging for `python -m service` and its model process; uvicorn's own loggers and Python's
    warnings go through the same handler, and the Hugging Face progress bars are off (their
    carriage-return lines would cut through the log lines of the other process)."""
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"   # read when huggingface_hub is first imported
    for module, switch in (("huggingface_hub.utils", "disable_progress_bars"),
                           ("transformers.utils.logging", "disable_progress_bar")):
        if module in sys.modules:   # already imported: switch it off there too
            getattr(sys.modules[module], switch)()
    logging.captureWarnings(True)
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else
                         logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
