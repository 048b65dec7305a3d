"""SQL Server log sequence numbers (LSNs): ``binary(10)`` ↔ integers ↔ text.

An LSN is ten bytes, compared byte by byte: the virtual log file's sequence number (4
bytes), the log block's offset (4) and the record's slot in the block (2). Read as one
big-endian 80-bit integer, byte order and integer order agree, so positions are compared
and stepped as integers.

- Text (metadata ``LSN``/``Seq``/``SeqVal``, checkpoints): 20 upper-case hex digits without
  ``0x``, as upstream's SQL Server ingester printed them (``0000002A000001F00003``).
  :func:`parse_lsn` also takes ``0x``-prefixed and lower-case forms, and the log's
  ``VLF:block:slot`` form (``0000002a:000001f0:0003``, what ``sys.dm_db_log_stats`` shows).
- :func:`increment_lsn` is ``sys.fn_cdc_increment_lsn``: the smallest LSN above the given
  one (the 80-bit value plus one, the carry running from the slot into the block and VLF
  parts), so "every commit below it was read" and "the next window starts here" are the
  same number.
"""

from __future__ import annotations

LSN_BYTES = 10
LSN_MAX = (1 << (8 * LSN_BYTES)) - 1
_HEX_DIGITS = 2 * LSN_BYTES
_PART_WIDTHS = (8, 8, 4)  # hex digits of the VLF, block and slot parts


def from_bytes(value: bytes | bytearray | memoryview) -> int:
    """A ``binary(10)`` as pyodbc returns it → an integer."""
    raw = bytes(value)
    if len(raw) > LSN_BYTES:
        raise ValueError(f"an LSN has {LSN_BYTES} bytes, got {len(raw)}: 0x{raw.hex().upper()}")
    return int.from_bytes(raw, "big")


def to_bytes(value: int) -> bytes:
    """An integer → the ``binary(10)`` parameter SQL Server compares LSNs as."""
    _check_range(value)
    return value.to_bytes(LSN_BYTES, "big")


def format_lsn(value: int) -> str:
    _check_range(value)
    return f"{value:0{_HEX_DIGITS}X}"


def parse_lsn(text: str) -> int:
    """``0000002A000001F00003`` / ``0x...`` / ``0000002a:000001f0:0003`` → an integer."""
    cleaned = text.strip()
    if ":" in cleaned:
        value = _parse_parts(cleaned)
        if value is None:
            raise ValueError(
                f"{text!r} is not a SQL Server LSN (expected VLF:block:slot in hex, like 0000002A:000001F0:0003)"
            )
        return value
    digits = cleaned[2:] if cleaned[:2].lower() == "0x" else cleaned
    if not digits or len(digits) > _HEX_DIGITS or any(c not in "0123456789abcdefABCDEF" for c in digits):
        raise ValueError(
            f"{text!r} is not a SQL Server LSN (expected {_HEX_DIGITS} hex digits, like 0000002A000001F00003)"
        )
    return int(digits, 16)


def parse_log_lsn(text: str | None) -> int | None:
    """The ``VLF:block:slot`` text of a DMV column, or None when absent or unreadable."""
    if not text:
        return None
    return _parse_parts(text.strip())


def increment_lsn(value: int) -> int:
    """``sys.fn_cdc_increment_lsn``: the next LSN."""
    _check_range(value)
    if value == LSN_MAX:
        raise ValueError("the LSN 0xFFFFFFFFFFFFFFFFFFFF has no successor")
    return value + 1


def decrement_lsn(value: int) -> int:
    """``sys.fn_cdc_decrement_lsn``: the previous LSN."""
    _check_range(value)
    if value == 0:
        raise ValueError("the LSN 0x00000000000000000000 has no predecessor")
    return value - 1


def _parse_parts(text: str) -> int | None:
    parts = text.split(":")
    if len(parts) != len(_PART_WIDTHS):
        return None
    value = 0
    for part, width in zip(parts, _PART_WIDTHS, strict=True):
        if not part or len(part) > width or any(c not in "0123456789abcdefABCDEF" for c in part):
            return None
        value = (value << (4 * width)) | int(part, 16)
    return value


def _check_range(value: int) -> None:
    if not 0 <= value <= LSN_MAX:
        raise ValueError(f"{value} is out of range for a SQL Server LSN (0 to 2**80 - 1)")
