"""The one config loader: typed dataclasses from YAML / JSON dicts, and the shipped YAMLs beside it.

`model/*.yaml` are model sizes (`tiny`, `small`, `paper`), `train/*.yaml` training runs. Every config is a
dataclass next to the class it configures; `from_dict` builds one recursively and rejects unknown keys and
wrongly typed values with the dotted path of the offending key, so a typo never falls back to a default.
"""

from __future__ import annotations

import copy
import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

CONFIG_DIR = Path(__file__).resolve().parent
MODEL_CONFIG_DIR = CONFIG_DIR / "model"
TRAIN_CONFIG_DIR = CONFIG_DIR / "train"
MODEL_CONFIG_NAMES = ("tiny", "small", "paper")

T = TypeVar("T")
_SCALARS = {int: int, float: float, bool: bool, str: str}


def from_dict(cls: type[T], data: Any, where: str = "") -> T:
    """Build dataclass `cls` from a nested dict, naming the first unknown or mistyped key."""
    if not isinstance(data, dict):
        raise ValueError(f"config section '{where or 'root'}' must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in names:
            raise ValueError(f"unknown config key '{path}' (allowed here: {', '.join(sorted(names))})")
        kwargs[key] = _field_value(hints[key], value, path)
    return cls(**kwargs)


def _field_value(hint: Any, value: Any, path: str) -> Any:
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, path)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    expected = _SCALARS.get(hint)
    if expected is not None and (not isinstance(value, expected) or isinstance(value, bool) != (hint is bool)):
        raise ValueError(f"config key '{path}' must be {hint.__name__}, got {value!r}")
    if isinstance(hint, types.GenericAlias) and hint.__origin__ is list:
        if not isinstance(value, list | tuple):
            raise ValueError(f"config key '{path}' must be a list, got {value!r}")
        value = list(value)
    return value


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """`base` with `over` merged in, nested dicts key by key (neither input is modified)."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        nested = isinstance(value, dict) and isinstance(out.get(key), dict)
        out[key] = deep_merge(out[key], value) if nested else value
    return out


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML mapping from a file (an empty file is an empty mapping)."""
    with open(path, encoding="utf-8") as handle:
        data = yaml.safe_load(handle) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a config file must hold a mapping, got {type(data).__name__}")
    return data


def resolve(name_or_path: str | Path, shipped_dir: Path) -> Path:
    """An existing YAML path, or the shipped `shipped_dir/<name>.yaml`; FileNotFoundError names both."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    shipped = shipped_dir / f"{name_or_path}.yaml"
    if shipped.is_file():
        return shipped
    names = sorted(p.stem for p in shipped_dir.glob("*.yaml"))
    raise FileNotFoundError(f"config '{name_or_path}' is neither an existing file nor a shipped config {names}")
