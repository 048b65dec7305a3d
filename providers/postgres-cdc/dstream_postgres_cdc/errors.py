"""How psycopg errors become the SDK's CDC errors (:class:`~dstream.sdk.cdc.CdcError`,
:class:`~dstream.sdk.cdc.ConnectionLost`), whose messages name the cause and the fix (a
failed connect is a ConnectionLost raised in source.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import psycopg

from dstream.sdk.cdc import CdcError, ConnectionLost

__all__ = [
    "CdcError",
    "ConnectionLost",
    "first_line",
    "is_connection_error",
    "slot_missing_error",
    "translate",
    "wal_level_error",
]

if TYPE_CHECKING:
    from dstream_postgres_cdc.config import Target

# SQLSTATEs after which a new connection may succeed: class 08 (connection exception),
# admin/crash shutdown, "cannot connect now" (starting up), too many connections.
_TRANSIENT = ("57P01", "57P02", "57P03", "53300")


def is_connection_error(exc: psycopg.Error, conn: psycopg.Connection[object] | None = None) -> bool:
    if conn is not None and conn.closed:
        return True
    state = exc.sqlstate
    if state is None:
        return isinstance(exc, psycopg.OperationalError)
    return state.startswith("08") or state in _TRANSIENT


def translate(exc: psycopg.Error, target: Target, conn: psycopg.Connection[object] | None = None) -> CdcError:
    """A psycopg error as a :class:`CdcError` whose message names the cause and the fix."""
    message = first_line(exc)
    where = target.server
    if is_connection_error(exc, conn):
        return ConnectionLost(f"lost the connection to PostgreSQL at {where}: {message}")
    state = exc.sqlstate or ""
    lowered = message.lower()
    if state == "58P01" and target.plugin in message:
        return CdcError(
            f"the {target.plugin} output plugin is not installed on PostgreSQL at {where} "
            f"(install the server package postgresql-<version>-wal2json, e.g. postgresql-15-wal2json): {message}"
        )
    if state == "55000" and "wal_level" in lowered:
        return CdcError(_wal_level_message(where, None))
    if state == "42704" and "replication slot" in lowered:
        return slot_missing_error(target)
    if state == "42501":
        if "replication" in lowered:
            return CdcError(
                f"permission denied on {where}: the role {target.user!r} may not use replication slots "
                f"(it needs the REPLICATION attribute: ALTER ROLE {target.user} REPLICATION): {message}"
            )
        return CdcError(f"permission denied on {where} for role {target.user!r}: {message}")
    if state == "55006":
        return CdcError(f"{message} on {where}: is the task (or another consumer of the slot) running elsewhere?")
    if state == "53400" and "replication slots" in lowered:
        return CdcError(
            f"{message} on {where}: raise max_replication_slots (each running task uses its slot plus a "
            f"temporary reader slot, and one more briefly for an initial snapshot)"
        )
    return CdcError(f"PostgreSQL error at {where} ({state or type(exc).__name__}): {message}")


def _wal_level_message(where: str, level: str | None) -> str:
    now = f" is {level}" if level else ""
    return (
        f"logical decoding is off on PostgreSQL at {where}: wal_level{now}, it must be logical "
        f"(ALTER SYSTEM SET wal_level = logical, then restart the server)"
    )


def wal_level_error(where: str, level: str) -> CdcError:
    return CdcError(_wal_level_message(where, level))


def slot_missing_error(target: Target) -> CdcError:
    return CdcError(
        f'replication slot "{target.slot}" does not exist on {target.server}: run `dstream init {target.task_hint}` '
        f"first (it creates the slot)"
    )


def first_line(exc: BaseException) -> str:
    """An error's first line (psycopg's text goes on with DETAIL and HINT lines), or its type."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
