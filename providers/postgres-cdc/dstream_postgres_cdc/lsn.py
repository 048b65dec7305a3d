"""PostgreSQL LSNs: ``"16/B374D848"`` (two hex halves) ↔ an integer, so comparisons are numeric."""

from __future__ import annotations


def parse_lsn(text: str) -> int:
    high, sep, low = text.partition("/")
    try:
        if not sep:
            raise ValueError
        value = (int(high, 16) << 32) | int(low, 16)
    except ValueError:
        raise ValueError(f"{text!r} is not a PostgreSQL LSN (expected two hex numbers like 0/16B3748)") from None
    if value < 0 or value >= 1 << 64:
        raise ValueError(f"{text!r} is out of range for a PostgreSQL LSN")
    return value


def format_lsn(value: int) -> str:
    return f"{value >> 32:X}/{value & 0xFFFFFFFF:X}"
