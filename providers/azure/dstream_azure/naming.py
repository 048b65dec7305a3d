"""Table names in, valid Azure entity names out.

A table comes as ``Orders``, ``dbo.Orders`` or ``[dbo].[Orders]``. Queue names are
rendered from a pattern with ``{host}``, ``{database}``, ``{schema}`` and ``{table}``, then
made valid for the service:

- Service Bus queues/topics: letters, digits, ``.``, ``-``, ``_``; start and end with a
  letter or digit; at most 260 characters; case-insensitive.
- Storage queues and blob containers: 3-63 characters, lowercase letters, digits and
  single hyphens; start and end with a letter or digit.

Names that are too long are cut and given a short hash of the full name, so two long
names never collide by truncation.
"""

from __future__ import annotations

import hashlib
import re
import string
from dataclasses import dataclass
from typing import Literal

PLACEHOLDERS = ("host", "database", "schema", "table")
SERVICEBUS_MAX = 260
STORAGE_MIN, STORAGE_MAX = 3, 63
Case = Literal["preserve", "lower", "kebab"]

_SB_INVALID = re.compile(r"[^A-Za-z0-9._-]+")
_SB_EDGES = re.compile(r"^[^A-Za-z0-9]+|[^A-Za-z0-9]+$")
_STORAGE_INVALID = re.compile(r"[^a-z0-9]+")
_KEBAB = re.compile(r"[^a-z0-9]+")


class NamingError(ValueError):
    """A pattern or a name that cannot become a valid entity name."""


@dataclass(frozen=True)
class TableRef:
    """A table as ``schema`` and ``table`` (``schema`` may be empty)."""

    schema: str
    table: str

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.table}" if self.schema else self.table


def parse_table(name: str, default_schema: str = "") -> TableRef:
    """``dbo.Orders`` / ``[dbo].[Orders]`` / ``"public"."orders"`` / ``Orders`` → :class:`TableRef`."""
    text = name.strip()
    if not text:
        raise NamingError("empty table name")
    parts = [p.strip().strip('[]"`') for p in text.rsplit(".", 1)] if "." in text else [text.strip('[]"`')]
    if len(parts) == 2 and parts[0] and parts[1]:
        return TableRef(parts[0], parts[1])
    return TableRef(default_schema, parts[-1])


def check_pattern(pattern: str) -> str:
    """Validate a queue name pattern; unknown placeholders are errors naming them."""
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(pattern) if f is not None]
    except ValueError as exc:
        raise NamingError(f"invalid pattern {pattern!r}: {exc}") from None
    unknown = sorted({f for f in fields if f not in PLACEHOLDERS})
    if unknown:
        allowed = ", ".join("{" + p + "}" for p in PLACEHOLDERS)
        raise NamingError(f"pattern {pattern!r} uses unknown placeholder(s) {unknown}; allowed: {allowed}")
    return pattern


def render(pattern: str, table: TableRef, host: str = "", database: str = "", case: Case = "preserve") -> str:
    """Fill a pattern; ``kebab`` lowercases and turns every other character run into ``-``."""
    values = {"host": host, "database": database, "schema": table.schema, "table": table.table}
    if case == "kebab":
        values = {k: _KEBAB.sub("-", v.lower()).strip("-") for k, v in values.items()}
    name = pattern.format(**values)
    if case in ("lower", "kebab"):
        name = name.lower()
    if case == "kebab":
        name = _KEBAB.sub("-", name).strip("-")
    return name


def _short_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def servicebus_name(name: str) -> str:
    """A valid Service Bus queue/topic name for ``name`` (invalid runs become ``-``)."""
    cleaned = _SB_EDGES.sub("", _SB_INVALID.sub("-", name))
    if not cleaned:
        raise NamingError(f"{name!r} has no letters or digits to make a Service Bus name from")
    if len(cleaned) > SERVICEBUS_MAX:
        cleaned = _SB_EDGES.sub("", cleaned[: SERVICEBUS_MAX - 9]) + "-" + _short_hash(name)
    return cleaned


def storage_name(name: str, what: str = "queue") -> str:
    """A valid Storage queue or container name for ``name``: lowercase, single hyphens, 3-63."""
    cleaned = _STORAGE_INVALID.sub("-", name.lower()).strip("-")
    if len(cleaned) > STORAGE_MAX:
        cleaned = cleaned[: STORAGE_MAX - 9].rstrip("-") + "-" + _short_hash(name)
    if len(cleaned) < STORAGE_MIN:
        raise NamingError(
            f"{what} name {cleaned!r} (from {name!r}) is shorter than {STORAGE_MIN} characters; "
            f"Azure Storage {what} names need 3-63 lowercase letters, digits or hyphens"
        )
    return cleaned
