"""Structural checks of a rosbag2 storage file before it is played, so a malformed bag is a clear error.

A reader that seeks straight to the summary (as rosbags does) never looks at the header or at records it
does not need: a bag with flipped header bytes "played successfully", one with only the magic or flipped
bytes mid-file ended in a traceback. MCAP: magic at both ends, a footer, every record's opcode and length
inside its section, the `ros2` profile, chunk layout and (where the writer stored them, non-zero) the data
section, summary and chunk CRCs, message channel ids that exist. SQLite: `PRAGMA quick_check`.
"""

from __future__ import annotations

import sqlite3
import struct
import zlib
from pathlib import Path

MAGIC = b"\x89MCAP0\r\n"
HEADER, FOOTER, SCHEMA, CHANNEL, MESSAGE, CHUNK, DATA_END = 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x0F
DATA_OPCODES = {0x01, 0x03, 0x04, 0x05, 0x06, 0x07, 0x09, 0x0C, 0x0F}
SUMMARY_OPCODES = {0x03, 0x04, 0x08, 0x0A, 0x0B, 0x0D, 0x0E}
FOOTER_SIZE = 1 + 8 + 20


class MalformedBagError(ValueError):
    """The file is not a well-formed bag; the message names the file, the offset and what is wrong."""


def check_storage_file(path: Path) -> None:
    """Raise MalformedBagError when an .mcap or .db3 file is structurally broken."""
    path = Path(path)
    if path.suffix == ".mcap":
        check_mcap(path.read_bytes(), path.name)
    elif path.suffix == ".db3":
        check_sqlite(path)


def check_sqlite(path: Path) -> None:
    try:
        connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            result = connection.execute("PRAGMA quick_check").fetchall()
            tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        finally:
            connection.close()
    except sqlite3.Error as error:
        raise MalformedBagError(f"{path.name}: not a readable SQLite bag: {error}") from error
    if result != [("ok",)]:
        raise MalformedBagError(f"{path.name}: SQLite integrity check failed: {result[:3]}")
    if not {"topics", "messages"} <= tables:
        raise MalformedBagError(f"{path.name}: SQLite file without the rosbag2 tables (has {sorted(tables)})")


def _records(data: bytes, start: int, end: int, allowed: set[int], name: str, where: str):
    """(offset, opcode, body) of each record in data[start:end], checked against `allowed` and the bounds."""
    offset = start
    while offset < end:
        if offset + 9 > end:
            raise MalformedBagError(f"{name}: truncated record header at byte {offset} ({where})")
        opcode, length = struct.unpack_from("<BQ", data, offset)
        if opcode not in allowed and opcode < 0x80:
            raise MalformedBagError(f"{name}: unexpected record opcode 0x{opcode:02x} at byte {offset} ({where})")
        body_end = offset + 9 + length
        if body_end > end:
            raise MalformedBagError(f"{name}: record at byte {offset} ({where}) claims {length} bytes, past the end"
                                    f" of its section at byte {end}")
        yield offset, opcode, data[offset + 9:body_end]
        offset = body_end


def _string(body: bytes, at: int, name: str, offset: int) -> tuple[str, int]:
    if at + 4 > len(body):
        raise MalformedBagError(f"{name}: record at byte {offset} is too short for its fields")
    (length,) = struct.unpack_from("<I", body, at)
    if at + 4 + length > len(body):
        raise MalformedBagError(f"{name}: string length {length} overruns the record at byte {offset}")
    try:
        return body[at + 4:at + 4 + length].decode("utf-8"), at + 4 + length
    except UnicodeDecodeError as error:
        raise MalformedBagError(f"{name}: invalid UTF-8 in the record at byte {offset}") from error


def check_mcap(data: bytes, name: str) -> None:
    """Raise MalformedBagError unless `data` is a structurally sound rosbag2 MCAP file."""
    if len(data) < 2 * len(MAGIC) + FOOTER_SIZE or data[:8] != MAGIC or data[-8:] != MAGIC:
        raise MalformedBagError(f"{name}: not a complete MCAP file ({len(data)} bytes; magic at both ends and a"
                                " footer are required)")
    footer_at = len(data) - 8 - FOOTER_SIZE
    opcode, length, summary_start, summary_offset_start, summary_crc = struct.unpack_from("<BQQQI", data, footer_at)
    if opcode != FOOTER or length != 20:
        raise MalformedBagError(f"{name}: no MCAP footer at byte {footer_at}")
    if summary_start and not 8 < summary_start <= footer_at:
        raise MalformedBagError(f"{name}: footer points at a summary outside the file ({summary_start})")
    data_end_at = (summary_start or footer_at) - 13
    if data_end_at < 8 or data[data_end_at] != DATA_END:
        raise MalformedBagError(f"{name}: no DataEnd record at byte {data_end_at}")
    (data_crc,) = struct.unpack_from("<I", data, data_end_at + 9)
    if data_crc and zlib.crc32(data[:data_end_at]) != data_crc:
        raise MalformedBagError(f"{name}: data section CRC mismatch (the file is corrupted)")
    if summary_start:
        if summary_crc and zlib.crc32(data[summary_start:footer_at + 1 + 8 + 16]) != summary_crc:
            raise MalformedBagError(f"{name}: summary CRC mismatch (the file is corrupted)")
        for _ in _records(data, summary_start, footer_at, SUMMARY_OPCODES, name, "summary"):
            pass
    channels: set[int] = set()
    first = True
    for offset, opcode, body in _records(data, 8, data_end_at, DATA_OPCODES, name, "data section"):
        if first:
            if opcode != HEADER:
                raise MalformedBagError(f"{name}: the first record is not an MCAP header (opcode 0x{opcode:02x})")
            profile, at = _string(body, 0, name, offset)
            _string(body, at, name, offset)  # the library string must be intact too
            if profile != "ros2":
                raise MalformedBagError(f"{name}: MCAP profile '{profile}', a rosbag2 file has 'ros2'")
            first = False
        elif opcode == HEADER:
            raise MalformedBagError(f"{name}: a second MCAP header at byte {offset}")
        _check_record(opcode, body, offset, channels, name)


def _check_record(opcode: int, body: bytes, offset: int, channels: set[int], name: str) -> None:
    if opcode == CHANNEL:
        if len(body) < 4:
            raise MalformedBagError(f"{name}: channel record at byte {offset} is too short")
        channels.add(struct.unpack_from("<H", body, 0)[0])
    elif opcode == MESSAGE:
        if len(body) < 22:
            raise MalformedBagError(f"{name}: message record at byte {offset} is too short")
        channel = struct.unpack_from("<H", body, 0)[0]
        if channel not in channels:
            raise MalformedBagError(f"{name}: message at byte {offset} on channel {channel}, which is not defined")
    elif opcode == CHUNK:
        _check_chunk(body, offset, channels, name)


def _check_chunk(body: bytes, offset: int, channels: set[int], name: str) -> None:
    if len(body) < 32:
        raise MalformedBagError(f"{name}: chunk at byte {offset} is too short")
    _start, _end, uncompressed_size, uncompressed_crc = struct.unpack_from("<QQQI", body, 0)
    compression, at = _string(body, 28, name, offset)
    if at + 8 > len(body):
        raise MalformedBagError(f"{name}: chunk at byte {offset} is truncated")
    (records_length,) = struct.unpack_from("<Q", body, at)
    records = body[at + 8:]
    if records_length != len(records):
        raise MalformedBagError(f"{name}: chunk at byte {offset} holds {len(records)} bytes, says {records_length}")
    if compression not in ("", "zstd", "lz4"):
        raise MalformedBagError(f"{name}: chunk at byte {offset} has unknown compression '{compression}'")
    if compression:
        return  # the reader's decompressor checks the frame; nothing more to walk without it
    if uncompressed_size != len(records):
        raise MalformedBagError(f"{name}: chunk at byte {offset} is {len(records)} bytes, says {uncompressed_size}")
    if uncompressed_crc and zlib.crc32(records) != uncompressed_crc:
        raise MalformedBagError(f"{name}: chunk at byte {offset} fails its CRC (the file is corrupted)")
    for inner_offset, opcode, inner in _records(records, 0, len(records), {SCHEMA, CHANNEL, MESSAGE}, name,
                                                 f"chunk at byte {offset}"):
        _check_record(opcode, inner, offset + inner_offset, channels, name)
