"""`python -m trainer`: the trainer's command (trainer/cli.py)."""
import os

# Idle OpenMP threads sleep instead of spinning (set before torch loads): on a
# shared machine a spinning multi-threaded run next to another busy process
# slows down ~10x.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from trainer.cli import app  # noqa: E402

app(prog_name="python -m trainer")
