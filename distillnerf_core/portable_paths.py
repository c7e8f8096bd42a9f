"""Paths as they may be recorded in files that travel (model sidecars, training configs, results JSON).

A recorded path must not name the machine that wrote it (a scratch folder, a home directory, a checkout):
inside the current directory it is written relative to it, elsewhere only its last component is kept.
"""

from __future__ import annotations

import os
from pathlib import Path


def portable_path(path: str | os.PathLike[str], base: str | os.PathLike[str] | None = None) -> str:
    """`path` relative to `base` (default: the current directory) when inside it, else its final name."""
    if not str(path):
        return ""
    resolved = Path(path).expanduser().resolve()
    root = Path(base if base is not None else Path.cwd()).resolve()
    try:
        return resolved.relative_to(root).as_posix()
    except ValueError:
        return resolved.name
