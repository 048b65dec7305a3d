"""The streaming replication protocol: a run's changes pushed by the server as it decodes them.

psycopg 3 has no replication protocol; psycopg2's ``LogicalReplicationConnection`` and
``ReplicationCursor`` (``start_replication``, ``read_message``, ``send_feedback``,
``wal_end``) do. Everything here that touches psycopg2 stays here; its errors leave as the
provider's :class:`CdcError` / :class:`ConnectionLost` (one line each).

Which slot is streamed: a *temporary copy* of the task's slot (``<slot>_reader``), as the
SQL reader did, not the task's slot itself (Debezium's way). The reason is psycopg2: its
keepalive handling moves the flush position it reports on its own. psycopg2 2.9
``psycopg/pqpath.c`` ``pq_read_replication_message`` (lines 1589-1595 at 3a6d9d6): on a
server keepalive, "if (repl->explicitly_flushed_lsn >= repl->last_msg_data_start && wal_end >
repl->explicitly_flushed_lsn && wal_end > repl->flush_lsn) repl->flush_lsn = wal_end" — with
nothing confirmed yet both are 0, so the first keepalive qualifies — and that flush position
goes to the server by itself every ``status_interval`` (lines 1476-1480: "Is it a time to send
the next feedback message?") and whenever a keepalive asks for a reply (lines 1597-1600);
``send_feedback`` only ever raises it (``psycopg/replication_cursor_type.c`` lines 218-222).
Streamed from the task's slot, its confirmed position could so move past what the
orchestrator committed: a kill -9 before the heartbeat is committed would leave the slot past
the checkpoint, which the run's start reports as lost changes. On a temporary copy that
forwarding is harmless (the copy dies with the connection); the task's slot moves only in the
provider (``pg_replication_slot_advance`` to committed positions, rate-limited: it re-reads
the WAL, but on its own session, while this connection keeps streaming). The copy keeps
"destroy refuses while a run reads" and "is this task running twice?" exactly as they were
(the copy's ``active_pid``: infra.py).

The copy is made on the replication connection itself (a temporary slot belongs to the
backend that creates it: another backend could not acquire it), then ``START_REPLICATION``
from the resume position: the server skips every transaction whose commit record starts below
it (``start_decoding_at``), as ``pg_replication_slot_advance`` did.

Heartbeats (:attr:`ReplicationReader.wal_end`): psycopg2 keeps the ``walEnd`` of the last
message read, a keepalive's or an XLogData's (pqpath.c lines 1574, 1587). PostgreSQL's
``src/backend/replication/walsender.c`` (read at postgres/postgres 2090edc and older copies;
the functions are the same in 15): a keepalive carries ``sentPtr`` (``WalSndKeepalive``:
``XLogRecPtrIsInvalid(writePtr) ? sentPtr : writePtr``; ``writePtr`` is only given for an
empty transaction skipped under synchronous replication: its end), and for logical decoding
``XLogSendLogical`` sets ``sentPtr = logical_decoding_ctx->reader->EndRecPtr`` right after
``LogicalDecodingProcessRecord`` (which, for a commit record, writes the whole transaction's
output first), on the same connection, so the output reaches us before the keepalive. An
XLogData's ``walEnd`` is the LSN its output was written for (``WalSndPrepareWrite`` writes
``lsn`` as both ``dataStart`` and ``walEnd``, or 0 when it is not the last write): a change's
or a begin's LSN, below its own transaction's commit, while transactions are sent whole in
commit order, or a commit's end. So once every message read was decoded, every transaction
committed below ``wal_end`` was read: a heartbeat, as the flush LSN after a poll was. (Not so
for pgoutput's ``streaming`` of in-progress transactions, which this reader never asks for.)

Feedback: the reader reports ``write`` = what it read and ``flush`` = what the orchestrator
committed (:meth:`ReplicationReader.confirm`); a report also re-arms the walsender's keepalive
(``waiting_for_ping_response``), so heartbeats keep coming while the tables are quiet.

Session settings: wal2json renders values with the walsender's output functions, so the
connection gets the same settings as every other session (TimeZone, DateStyle ISO,
IntervalStyle postgres, extra_float_digits 1, bytea_output hex) as libpq ``options``.

Payloads: ``str`` (``decode=True``, wal2json's JSON) or ``bytes`` (pgoutput's binary
messages), as the plugins' decoders (wal2json.py, pgoutput.py) take them.
"""

from __future__ import annotations

import contextlib
import select
from typing import TYPE_CHECKING, Any

# No stubs ship with psycopg2 (types-psycopg2 is a separate package): its few calls here are typed by hand.
import psycopg2  # type: ignore[import-untyped]
import psycopg2.extras  # type: ignore[import-untyped]
from psycopg.conninfo import conninfo_to_dict

from dstream_postgres_cdc.errors import CdcError, ConnectionLost, first_line, slot_missing_error

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from dstream_postgres_cdc.config import Target

# psycopg2 sends feedback by itself at most this often (its minimum is 1 s); the reader sends
# its own whenever it catches up with new WAL (confirm), which keeps wal_sender_timeout happy.
STATUS_INTERVAL = 10.0
_DEFAULTS = {"connect_timeout": "10", "keepalives": "1", "keepalives_idle": "10", "keepalives_interval": "5"}
_TRANSIENT = ("57P01", "57P02", "57P03", "53300")


def libpq_options(settings: Mapping[str, str], given: str | None = None) -> str:
    """``-c name=value`` for libpq's ``options`` (spaces and backslashes escaped), after ``given``."""

    def escape(text: str) -> str:
        return text.replace("\\", "\\\\").replace(" ", "\\ ")

    parts = [given] if given else []
    parts += [f"-c {escape(name)}={escape(value)}" for name, value in settings.items()]
    return " ".join(parts)


class ReplicationReader:
    """One replication connection streaming one slot's changes through an output plugin."""

    def __init__(
        self,
        dsn: str,
        target: Target,
        application_name: str,
        settings: Mapping[str, str],
        plugin_options: Sequence[tuple[str, str]],
        binary: bool = False,
    ) -> None:
        self.dsn = dsn
        self.target = target
        self.application_name = application_name
        self.settings = dict(settings)
        self.plugin_options = dict(plugin_options)
        self.binary = binary
        self._conn: Any = None
        self._cursor: Any = None
        self._confirmed = (0, 0)  # (write, flush) last reported

    # -- connection -----------------------------------------------------------------------

    def start(self, slot: str, start_lsn: int, copy_of: str | None = None) -> None:
        """Connect, copy ``copy_of`` into the temporary ``slot`` if given, and stream ``slot``
        from ``start_lsn`` (0: the slot's confirmed position)."""
        self.close()
        given = conninfo_to_dict(self.dsn)
        params: dict[str, Any] = {k: v for k, v in _DEFAULTS.items() if k not in given}
        options = libpq_options(self.settings, str(given["options"]) if given.get("options") else None)
        try:
            self._conn = psycopg2.connect(
                self.dsn,
                connection_factory=psycopg2.extras.LogicalReplicationConnection,
                application_name=self.application_name,
                options=options,
                client_encoding="UTF8",
                **params,
            )
        except psycopg2.Error as exc:
            raise ConnectionLost(f"cannot connect to PostgreSQL at {self.target.server}: {first_line(exc)}") from None
        try:
            cursor = self._conn.cursor()
            if copy_of is not None:
                cursor.execute("SELECT pg_copy_logical_replication_slot(%s, %s, true)", (copy_of, slot))
            cursor.start_replication(
                slot_name=slot,
                start_lsn=start_lsn,
                options=self.plugin_options,
                decode=not self.binary,
                status_interval=STATUS_INTERVAL,
            )
        except psycopg2.Error as exc:
            raise self._translate(exc) from None
        self._cursor = cursor
        self._confirmed = (0, 0)

    @property
    def streaming(self) -> bool:
        return self._cursor is not None

    def close(self) -> None:
        conn, self._conn, self._cursor = self._conn, None, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()  # the server drops the temporary slot with the session

    # -- reading --------------------------------------------------------------------------

    def read(self, limit: int) -> list[Any]:
        """Up to ``limit`` payloads that arrived already (never waits for more): ``[]`` when
        caught up with what the server sent."""
        cursor = self._live()
        out: list[Any] = []
        append = out.append
        read_message = cursor.read_message
        try:
            while len(out) < limit:
                message = read_message()
                if message is None:
                    break
                append(message.payload)
        except psycopg2.Error as exc:
            raise self._translate(exc) from None
        return out

    def wait(self, timeout: float) -> bool:
        """Block until the server sent something or ``timeout`` seconds passed; True if readable."""
        cursor = self._live()
        try:
            readable, _, _ = select.select([cursor], [], [], timeout)
        except (OSError, ValueError) as exc:
            raise ConnectionLost(f"lost the connection to PostgreSQL at {self.target.server}: {exc}") from None
        return bool(readable)

    @property
    def wal_end(self) -> int:
        """Every transaction committed below this LSN was read (see the module docstring)."""
        return int(self._cursor.wal_end) if self._cursor is not None else 0

    def confirm(self, flush: int) -> None:
        """Report ``write`` = what was read and ``flush`` = ``flush`` (committed) to the server,
        if either moved since the last report."""
        cursor = self._live()
        write = max(self.wal_end, flush)
        if (write, flush) == self._confirmed:
            return
        try:
            cursor.send_feedback(write_lsn=write, flush_lsn=flush, force=True)
        except psycopg2.Error as exc:
            raise self._translate(exc) from None
        self._confirmed = (write, flush)

    # -- errors ---------------------------------------------------------------------------

    def _live(self) -> Any:
        if self._cursor is None:
            raise ConnectionLost(f"not streaming from PostgreSQL at {self.target.server}")
        return self._cursor

    def _translate(self, exc: psycopg2.Error) -> CdcError:
        return translate(exc, self.target, bool(self._conn is None or self._conn.closed))


def translate(exc: psycopg2.Error, target: Target, closed: bool = False) -> CdcError:
    """A psycopg2 error as a :class:`CdcError` (or :class:`ConnectionLost`) with one line."""
    message = first_line(exc)
    where = target.server
    state = exc.pgcode or ""
    dropped = not state and isinstance(exc, psycopg2.OperationalError)  # no SQLSTATE: the socket went
    if closed or dropped or state.startswith("08") or state in _TRANSIENT:
        return ConnectionLost(f"lost the connection to PostgreSQL at {where}: {message}")
    lowered = message.lower()
    if state == "42704" and "replication slot" in lowered:
        return slot_missing_error(target)
    if state == "58P01" and target.plugin in message:
        return CdcError(f"the {target.plugin} output plugin is not installed on PostgreSQL at {where}: {message}")
    if state == "42501":
        return CdcError(
            f"permission denied on {where}: the role {target.user!r} needs the REPLICATION attribute to stream "
            f"changes (ALTER ROLE {target.user} REPLICATION): {message}"
        )
    if state == "55006":
        return CdcError(f"{message} on {where}: is the task (or another consumer of the slot) running elsewhere?")
    if state == "53400":
        return CdcError(
            f"{message} on {where}: raise max_replication_slots / max_wal_senders (each running task streams "
            f"through one replication connection and a temporary reader slot)"
        )
    return CdcError(f"PostgreSQL error at {where} while streaming ({state or type(exc).__name__}): {message}")
