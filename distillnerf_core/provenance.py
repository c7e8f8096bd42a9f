"""What produced a result: the `provenance` object every benchmark writes into its results JSON.

`provenance(command=..., model=..., data=...)` returns {"command", "commit", "uncommitted_changes", "model",
"data", "machine", "date"}: the command line as run, the code commit (`git rev-parse`, or "unknown" outside a
checkout), the machine (OS, architecture, CPU count, GPU name when torch is already imported and sees one,
torch version) and the UTC date. `benchmarks/report.py` prints it under every results table.

Nothing in it names the machine's file system: paths inside the repository are written relative to it, any
other path by its last component (`portable`), and the host name is never recorded.
"""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from distillnerf_core.portable_paths import portable_path

REPO = Path(__file__).resolve().parents[1]


def portable(path: str | os.PathLike[str], root: Path = REPO) -> str:
    """`path` relative to the repository root when inside it, else its last component (never absolute)."""
    return portable_path(path, root)


def command_line(program: str, argv: Sequence[str] | None = None, root: Path = REPO) -> str:
    """`program ARGS` as run (program e.g. "python benchmarks/soak.py" or "distillnerf-bench"; ARGS default
    sys.argv[1:]), with every absolute path argument made portable."""
    args = list(sys.argv[1:] if argv is None else argv)
    parts = []
    for arg in args:
        key, sep, value = arg.partition("=")
        if sep and os.path.isabs(value):
            parts.append(f"{key}={portable(value, root)}")
        elif os.path.isabs(arg):
            parts.append(portable(arg, root))
        else:
            parts.append(arg)
    return " ".join([program, *parts])


def git_commit(root: Path = REPO) -> tuple[str, bool | None]:
    """(short commit of HEAD, whether the tree has uncommitted changes); ("unknown", None) outside git."""
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip()
        status = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown", None
    return head or "unknown", bool(status.strip())


def model_identity(path: str | os.PathLike[str], root: Path = REPO) -> str:
    """A model file as recorded: its portable path and, inside the checkout, the commit that last changed it
    (so "models/default/model.safetensors" says which bundled model it was on the run's date)."""
    name = portable(path, root)
    try:
        rel = Path(path).expanduser().resolve().relative_to(root.resolve())
        last = subprocess.run(["git", "-C", str(root), "log", "-1", "--format=%h", "--", str(rel)],
                              capture_output=True, text=True, timeout=10, check=True).stdout.strip()
        changed = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--", str(rel)],
                                 capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (ValueError, OSError, subprocess.SubprocessError):
        return name
    if not last:
        return f"{name} (not committed)"
    return f"{name} (last changed in {last}{', modified since' if changed else ''})"


def machine() -> str:
    """OS, architecture, CPU count, GPU (only when torch is already imported: this never imports it)."""
    text = f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPU cores"
    torch = sys.modules.get("torch")
    if torch is not None:
        try:
            if torch.cuda.is_available():
                text += f", {torch.cuda.get_device_name(0)}"
        except RuntimeError:
            pass
        text += f", torch {torch.__version__}"
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    if load is not None:
        text += f"; load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} (1 / 5 / 15 min) when recorded"
    return text


def provenance(command: str, model: str = "not recorded", data: str = "not recorded",
               root: Path = REPO, **extra: Any) -> dict[str, Any]:
    """The provenance object of one run (see the module docstring); `extra` keys are added as given."""
    commit, dirty = git_commit(root)
    return {"command": command, "commit": commit, "uncommitted_changes": dirty, "model": model, "data": data,
            "machine": machine(), "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            **extra}
