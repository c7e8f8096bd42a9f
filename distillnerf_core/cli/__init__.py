"""The `distillnerf-*` commands, one module per command (`distillnerf-eval` -> `cli/eval.py`).

The library logs through `logging` (one `logger = logging.getLogger(__name__)` per module) and never prints;
each command's `main` calls `configure_logging()` first, so that progress (INFO) and warnings reach stderr.
"""

from __future__ import annotations

import logging


class _CommandFormatter(logging.Formatter):
    """INFO as the bare message (progress lines); WARNING and above prefixed with their level."""

    def format(self, record: logging.LogRecord) -> str:
        message = super().format(record)
        return message if record.levelno <= logging.INFO else f"{record.levelname}: {message}"


def configure_logging(level: int = logging.INFO) -> None:
    """Send the library's log records at `level` and above to stderr, unless the root logger has handlers
    already (a program that embeds a command, or pytest, keeps its own set-up)."""
    root = logging.getLogger()
    if root.handlers:
        return
    handler = logging.StreamHandler()
    handler.setFormatter(_CommandFormatter("%(message)s"))
    root.addHandler(handler)
    root.setLevel(level)
