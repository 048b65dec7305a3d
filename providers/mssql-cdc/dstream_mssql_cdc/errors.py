"""Errors the user can act on, and how ODBC errors become them (pure: db.py passes in the
SQLSTATE and the driver's message of a ``pyodbc.Error``).

``CdcError`` and ``ConnectionLost`` are the SDK's (:mod:`dstream.sdk.cdc`), shared with every CDC
provider; the others are SQL Server's::

    CdcError            a problem with the source; the message says what to do
     ├── ConnectionLost the server went away, a timeout, a deadlock: retried with backoff
     ├── Purged         changes the stream needs are gone (CDC retention, a dropped capture instance)
     ├── InstanceGone   a capture instance was dropped between planning and querying (error 208):
     │                  the instances are read again and the run goes on
     └── Denied         the login lacks a permission (error 229 and kin)
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from dstream.sdk.cdc import CdcError, ConnectionLost

__all__ = ["CdcError", "ConnectionLost", "Denied", "InstanceGone", "Purged", "clean_message", "translate"]

if TYPE_CHECKING:
    from collections.abc import Iterable

    from dstream_mssql_cdc.config import Target

# Native error numbers after which a new connection (or a retry) may succeed: network
# errors, Azure SQL's transient errors, deadlock victim, FreeTDS's lost-connection errors.
_TRANSIENT_NATIVE = frozenset(
    {-2, -1, 2, 53, 233, 258, 1205, 10053, 10054, 10060, 10061, 10928, 10929, 40197, 40501, 40613, 49918}
    | {49919, 49920, 20002, 20003, 20004, 20006, 20009, 20047}
)
_TRANSIENT_STATES = ("HYT00", "HYT01", "40001")
# The version store dropped the row versions a SNAPSHOT transaction needs: 3966 "Transaction is
# rolled back when accessing version store ... Retry the transaction", 3967 "Insufficient space in
# tempdb to hold row versions" (texts as quoted on DBA.SE "What happens when there's no tempdb space
# for version store operations"). A new transaction may succeed: retried like a lost connection.
_VERSION_STORE = frozenset({3966, 3967})
_PREFIX = re.compile(r"^(?:\s*\[[^\]]*\])+\s*")
_SUFFIX = re.compile(r"\s*\((-?\d+)\)\s*(?:\(SQL\w+\))?\s*$")


class Purged(CdcError):
    """Changes between the stream's position and what CDC still holds are gone."""


class InstanceGone(CdcError):
    """A capture instance's query function or change table no longer exists (error 208)."""

    def __init__(self, message: str, instance: str) -> None:
        super().__init__(message)
        self.instance = instance


class Denied(CdcError):
    """The login may not do what the provider asked (the message names the right)."""


_MISSING_OBJECT = re.compile(
    r"invalid object name '(?:[^']*\.)?\[?cdc\]?\.\[?(fn_cdc_get_all_changes_([^'\]]+)|([^'\]]+)_CT)\]?'", re.I
)


def clean_message(text: str) -> tuple[int | None, str]:
    """pyodbc's ``[state] [Driver][SQL Server]message (native) (SQLCall)`` records → (native, text).

    pyodbc joins several diagnostic records with ``; [state] ``; each keeps its text.
    """
    native: int | None = None
    records: list[str] = []
    for record in re.split(r";\s*(?=\[[0-9A-Z]{5}\])", text):
        body = _PREFIX.sub("", record.strip())
        match = _SUFFIX.search(body)
        if match:
            number = int(match.group(1))
            if native is None and number != 0:
                native = number
            body = body[: match.start()]
        body = body.strip()
        if body and body not in records:
            records.append(body)
    return native, "; ".join(records) or text.strip()


def translate(state: str, text: str, target: Target, drivers: Iterable[str] = (), connecting: bool = False) -> CdcError:
    """An ODBC error (SQLSTATE and the driver's text) as an error whose message says what to do."""
    native, message = clean_message(text)
    where = str(target)
    lowered = message.lower()
    if state == "IM002" or "can't open lib" in lowered or ("file not found" in lowered and "lib" in lowered):
        installed = ", ".join(drivers) or "none"
        return CdcError(
            f"the ODBC driver named in the connection string is not installed (installed drivers: {installed}); "
            f"the provider image ships FreeTDS: DRIVER={{FreeTDS}} ({message})"
        )
    if native == 18456:
        return CdcError(f"login failed on {where} for the user in the connection string: {message}")
    if native == 4060:
        return CdcError(f"cannot open the database on {where} (does it exist, may the login use it?): {message}")
    if native in _VERSION_STORE:
        return ConnectionLost(
            f"SQL Server at {where} rolled back a snapshot-isolation read because tempdb's version store ran "
            f"short (a long transaction holds old row versions; retried, the snapshot resumes after the last "
            f"acknowledged row): {message}"
        )
    if state.startswith("08") or state in _TRANSIENT_STATES or (native is not None and native in _TRANSIENT_NATIVE):
        if state in ("HYT00", "HYT01"):
            return ConnectionLost(
                f"a query to SQL Server at {where} timed out (query_timeout; a smaller batch_size shortens "
                f"queries): {message}"
            )
        if connecting:
            hint = ""
            if native in (20009, 53, 10061, 2):
                hint = " (is the server up, and are SERVER and PORT right? FreeTDS takes the port as PORT=1433)"
            return ConnectionLost(f"cannot connect to SQL Server at {where}: {message}{hint}")
        return ConnectionLost(f"lost the connection to SQL Server at {where}: {message}")
    if native == 313 and "fn_cdc_get_all_changes" in lowered:
        return Purged(
            f"SQL Server rejected the LSN range of a CDC query on {where}: it is outside the capture instance's "
            f"validity interval (changes purged by CDC retention, or the capture instance was disabled): {message}"
        )
    if native == 208 and "cdc." in lowered:
        found = _MISSING_OBJECT.search(message)
        if found:
            instance = found.group(2) or found.group(3)
            return InstanceGone(f"capture instance {instance} no longer exists on {where} ({message})", instance)
        return CdcError(
            f"CDC is not enabled on {where} ({message}): set enable_cdc = true and run "
            f"`dstream init {target.task_hint}`, or EXEC sys.sp_cdc_enable_db"
        )
    if native == 3952:
        return CdcError(
            f"the snapshot needs snapshot isolation, which database {target.database} does not allow ({message}): "
            f"ALTER DATABASE [{target.database}] SET ALLOW_SNAPSHOT_ISOLATION ON (dstream init does it with "
            f'enable_cdc = true), or snapshot_isolation = "read_committed" (rows changed meanwhile come again)'
        )
    if native in (229, 230, 262, 297, 300, 916, 15247, 22902, 22904, 22981):
        return Denied(
            f"permission denied on {where}: {message} (reading changes needs SELECT on the captured columns and "
            f"membership of the capture instance's gating role, if any; init and destroy need db_owner, and "
            f"enabling CDC on the database needs sysadmin)"
        )
    code = f"{state}/{native}" if native is not None else state
    return CdcError(f"SQL Server error at {where} ({code}): {message}")
