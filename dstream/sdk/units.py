"""Durations and sizes as users write them for docker, Go tools and Terraform.

- Durations follow Go's ``time.ParseDuration`` (what docker, Terraform and Prometheus
  users type): a sequence of numbers with units, ``"1h30m"``, ``"1m30s"``, ``"500ms"``,
  ``"1.5h"``; units ``ns``, ``us``/``µs``, ``ms``, ``s``, ``m``, ``h``, plus ``d`` (days).
  A plain number is seconds.
- Sizes follow ``docker run --memory`` (go-units ``RAMInBytes``): ``"512m"`` is 512 MiB;
  the suffixes ``b``, ``k``, ``m``, ``g``, ``t``, ``p`` are powers of 1024, case-insensitive,
  with an optional ``i``/``b`` (``"512MiB"``, ``"512mb"`` and ``"512m"`` are the same). A plain
  number is bytes.

Both are pydantic field types (``Duration`` → float seconds, ``ByteSize`` → int bytes) that
provider configs and the task file share, so ``poll_interval = "200ms"`` means the same
everywhere. Their JSON schema accepts a number or the string form.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BeforeValidator, Field

__all__ = [
    "DURATION_PATTERN",
    "SIZE_PATTERN",
    "ByteSize",
    "Duration",
    "DurationMs",
    "parse_duration",
    "parse_duration_ms",
    "parse_size",
]

_DURATION_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
    "d": 86400.0,
}
_TERM = r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h|d)"
_TERM_RE = re.compile(_TERM)
DURATION_PATTERN = rf"^\s*(\d+(\.\d+)?|({_TERM})+)\s*$"
_DURATION_RE = re.compile(rf"^(?:{_TERM})+$")

SIZE_PATTERN = r"^\s*\d+(\.\d+)?\s*([kKmMgGtTpP]?[iI]?[bB]?)\s*$"
_SIZE_RE = re.compile(r"^(\d+(?:\.\d+)?)\s*([kmgtp]?)(i?)(b?)$", re.IGNORECASE)


def parse_duration(value: Any) -> float:
    """Seconds from ``"1m30s"``, ``"500ms"``, ``"2h"``, ``"7d"`` or a number of seconds."""
    if isinstance(value, bool):
        raise ValueError('expected a duration like "30s" or "1m30s"')
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return float(value)
    if isinstance(value, str):
        text = value.strip()
        try:
            return _non_negative(float(text))
        except ValueError:
            pass
        if _DURATION_RE.match(text):
            return sum(float(number) * _DURATION_UNITS[unit] for number, unit in _TERM_RE.findall(text))
    raise ValueError(f'expected a duration like "500ms", "30s" or "1m30s", got {value!r}')


def parse_duration_ms(value: Any) -> float:
    """Seconds, for a field whose bare numbers have always meant milliseconds (``interval = 250``);
    text reads as for :func:`parse_duration` (``"250ms"``, ``"2s"``)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return parse_duration(value) / 1000
    if isinstance(value, str):
        try:
            return parse_duration(float(value.strip())) / 1000
        except ValueError:
            pass
    return parse_duration(value)


def _non_negative(seconds: float) -> float:
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    return seconds


def parse_size(value: Any) -> int:
    """Bytes from ``"512m"`` (512 MiB, as ``docker run -m``), ``"8MiB"``, ``"1g"`` or a number."""
    if isinstance(value, bool):
        raise ValueError('expected a size like "512m" or "8MiB"')
    if isinstance(value, int):
        if value <= 0:
            raise ValueError("a size must be positive")
        return value
    if isinstance(value, float) and value.is_integer() and value > 0:
        return int(value)
    if isinstance(value, str):
        match = _SIZE_RE.match(value.strip())
        if match and not (match.group(3) and not match.group(2)):  # "5ib" is not a size
            number = float(match.group(1))
            power = " kmgtp".index(match.group(2).lower() or " ")
            size = int(number * 1024**power)
            if size > 0:
                return size
    raise ValueError(f'expected a size like "512m" (MiB, as docker -m), "8MiB" or a number of bytes, got {value!r}')


def _schema(pattern: str, minimum: int) -> Any:
    def edit(schema: dict[str, Any]) -> None:
        schema.pop("type", None)
        schema["anyOf"] = [{"type": "number", "minimum": minimum}, {"type": "string", "pattern": pattern}]

    return edit


#: Seconds: a number, or Go-style text (``"200ms"``, ``"1m30s"``).
Duration = Annotated[float, BeforeValidator(parse_duration), Field(json_schema_extra=_schema(DURATION_PATTERN, 0))]
#: Seconds, where a bare number means milliseconds (fields documented that way); text as Duration.
DurationMs = Annotated[float, BeforeValidator(parse_duration_ms), Field(json_schema_extra=_schema(DURATION_PATTERN, 0))]
#: Bytes: a number, or docker-style text (``"512m"`` = 512 MiB, ``"8MiB"``).
ByteSize = Annotated[int, BeforeValidator(parse_size), Field(json_schema_extra=_schema(SIZE_PATTERN, 1))]
