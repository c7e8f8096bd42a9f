"""The files the tools write and read back (caches, manifests, ground truth): written atomically, read checked.

- Writes go to a temp file in the target's folder, fsynced, then renamed over the target: a kill leaves the old
  file or the new one, never half of one. JSON is written with allow_nan=False (standard JSON only).
- `file_record` / `matches_record`: size + sha256 of an entry, stored in a manifest, so a resume trusts an entry
  only when it is the one that was written (a truncated or altered entry is redone, not skipped).
- Names from data (scene names, tokens, channels) become file names only through `file_name` (sanitised, never a
  path) or `path_component` (refused unless already a plain file name): nothing is written outside its folder.
- Reads never unpickle (`np.load(allow_pickle=False)`), are bounded in size, and check every key read: its
  type, dtype, number of dimensions, finiteness. Each refusal is a DataFileError naming the file and the key.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

MAX_JSON_BYTES = 256 * 2**20
MAX_ARRAY_BYTES = 2**30  # one array of an .npz, uncompressed


PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,199}\Z")  # one path component, never "." / ".." / hidden


class DataFileError(ValueError):
    """A file that cannot be used as it is; the message names the file and the key."""


def file_name(name: str) -> str:
    """A file name for `name` (a scene name from a table...): itself when it is a plain name (PLAIN_NAME),
    else its safe characters plus a hash of the whole, so distinct names stay distinct and no name is a path."""
    if PLAIN_NAME.match(name):
        return name
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._-")[:80] or "name"
    return f"{stem}-{hashlib.sha256(name.encode('utf-8', 'surrogatepass')).hexdigest()[:12]}"


def path_component(value: object, what: str) -> str:
    """`value` when it is a plain file name (PLAIN_NAME); otherwise a DataFileError: a token or channel from a
    table that would be a path (`..`, `/`, absolute) never becomes one."""
    if not isinstance(value, str) or not PLAIN_NAME.match(value):
        raise DataFileError(f"{what} {str(value)[:80]!r} is not a plain file name (letters, digits, _ . -); refusing"
                            " to use it in a path")
    return value


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> None:
    """Call write(temp path) for a temp file beside `path`, fsync it, then rename it over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: str | Path, data: Any) -> None:
    """Atomic, standard JSON (a NaN or inf is a ValueError, never written)."""
    text = json.dumps(data, indent=1, allow_nan=False) + "\n"
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def _refuse_constant(constant: str) -> None:
    raise ValueError(f"non-standard JSON constant {constant}")


def read_json(path: str | Path, what: str, kind: type = dict) -> Any:
    """The JSON value of `path` (a `kind`, dict by default); missing: FileNotFoundError; anything unreadable,
    over MAX_JSON_BYTES, not standard JSON or of another type: DataFileError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    size = path.stat().st_size
    if size > MAX_JSON_BYTES:
        raise DataFileError(f"{path}: {size} bytes, over the {MAX_JSON_BYTES}-byte limit of a {what}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"), parse_constant=_refuse_constant)
    except (ValueError, UnicodeDecodeError, RecursionError) as error:  # JSONDecodeError is a ValueError
        raise DataFileError(f"{path}: not a readable {what} (truncated or corrupt JSON: {error})") from error
    if not isinstance(data, kind):
        raise DataFileError(f"{path}: a {what} is a JSON {kind.__name__}, this is a {type(data).__name__}")
    return data


def require(record: Any, key: str, kind: type | tuple[type, ...], path: str | Path, where: str = "") -> Any:
    """record[key] of the type `kind` (bool is no number); missing or other: DataFileError naming the key."""
    name = f"{where}.{key}" if where else key
    if not isinstance(record, dict):
        raise DataFileError(f"{path}: {where or 'the top level'} is a {type(record).__name__}, expected an object")
    if key not in record:
        raise DataFileError(f"{path}: key {name!r} missing")
    value = record[key]
    numeric = kind in (int, float, (int, float))
    if not isinstance(value, kind) or (numeric and isinstance(value, bool)):
        names = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
        raise DataFileError(f"{path}: key {name!r} is {type(value).__name__} {str(value)[:40]!r}, expected {names}")
    return value


def sha256_file(path: str | Path) -> str:
    """sha256 hex digest of a file (read in 1 MiB blocks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_record(path: str | Path) -> dict[str, Any]:
    """{"bytes", "sha256"} of a written entry, for its manifest."""
    return {"bytes": Path(path).stat().st_size, "sha256": sha256_file(path)}


def matches_record(path: str | Path, record: Any) -> bool:
    """True when `path` is the file `record` (file_record) describes: same size, same sha256."""
    path = Path(path)
    if not (isinstance(record, dict) and path.is_file()):
        return False
    if record.get("bytes") != path.stat().st_size:
        return False
    return record.get("sha256") == sha256_file(path)


ArraySpec = tuple[str, int | None]  # (dtype kinds such as "f" or "iu", number of dimensions or None)


def load_npz(path: str | Path, spec: dict[str, ArraySpec], what: str = "array file") -> dict[str, np.ndarray]:
    """The arrays `spec` names from an .npz: no pickle, each array's size bounded before it is read, each of
    the dtype kind and number of dimensions given, float arrays finite. Missing file: FileNotFoundError; any
    other problem: DataFileError naming the file and the key."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} missing: {path}")
    try:
        with zipfile.ZipFile(path) as archive:
            members = {info.filename.removesuffix(".npy"): info.file_size for info in archive.infolist()}
        for key in spec:
            if key not in members:
                raise DataFileError(f"{path}: key {key!r} missing (has {sorted(members)})")
            if members[key] > MAX_ARRAY_BYTES:
                raise DataFileError(f"{path}: key {key!r} is {members[key]} bytes uncompressed, over the"
                                    f" {MAX_ARRAY_BYTES}-byte limit")
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in spec}
    except zipfile.BadZipFile as error:
        raise DataFileError(f"{path}: not a readable .npz {what} (truncated or not a zip: {error})") from error
    except (ValueError, OSError, EOFError, zlib.error) as error:
        raise DataFileError(f"{path}: cannot read the {what} (truncated, corrupt or an object array: {error})") \
            from error
    for key, (kinds, ndim) in spec.items():
        array = arrays[key]
        if array.dtype.kind not in kinds or (ndim is not None and array.ndim != ndim):
            raise DataFileError(f"{path}: key {key!r} is {array.dtype} with shape {array.shape}, expected"
                                f" {ndim}-d {'/'.join(_KIND_NAMES[k] for k in kinds)}")
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            raise DataFileError(f"{path}: key {key!r} holds non-finite values")
    return arrays


_KIND_NAMES = {"f": "float", "i": "int", "u": "unsigned int", "b": "bool"}
