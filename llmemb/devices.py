"""The one rule that turns a device setting into a torch.device, for every stage.

Accepted settings: "cpu", "cuda", "cuda:N" and "auto" (the first GPU when CUDA is
available, else the CPU). Asking for CUDA where there is none, or for a GPU index
past the last one, is an error that names the setting and what the machine has;
nothing falls back to the CPU silently.

Mixed precision is the other half of the rule: `precision: fp32 | bf16`; bf16
runs the forward pass and the loss under torch.autocast (matmuls in bf16,
reductions and the optimizer state in fp32), on the CPU as on a GPU.
"""
from __future__ import annotations

import contextlib
import re

import torch

DEVICE_FORMS = ("auto", "cpu", "cuda", "cuda:N")
PRECISIONS = ("fp32", "bf16")


def resolve_device(setting: str | torch.device | None, what: str = "device") -> torch.device:
    """`setting` -> torch.device; `what` names the setting in errors (e.g. "train.device")."""
    if isinstance(setting, torch.device):
        setting = str(setting)
    value = "auto" if setting is None else str(setting).strip().lower()
    if value == "auto":
        return torch.device("cuda:0") if torch.cuda.is_available() else torch.device("cpu")
    if value == "cpu":
        return torch.device("cpu")
    match = re.fullmatch(r"cuda(?::(\d+))?", value)
    if match is None:
        raise ValueError(f"{what}: unknown device {setting!r}; expected one of {', '.join(DEVICE_FORMS)}")
    if not torch.cuda.is_available():
        raise ValueError(f"{what}: {setting!r} asks for CUDA, but torch {torch.__version__} sees no CUDA device "
                         f"on this machine (a CPU-only build or no GPU); use cpu or auto")
    index = int(match.group(1) or 0)
    count = torch.cuda.device_count()
    if index >= count:
        raise ValueError(f"{what}: {setting!r} asks for GPU {index}, but this machine has {count} "
                         f"(cuda:0..cuda:{count - 1})")
    return torch.device("cuda", index)


def check_precision(precision: str, what: str = "precision") -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"{what}: unknown precision {precision!r}; known: {', '.join(PRECISIONS)}")
    return precision


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16 autocast on `device` for precision "bf16", a no-op context for "fp32"."""
    if check_precision(precision) == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
