"""Everything that talks to PostgreSQL (psycopg's other users: errors.py, and config.py,
which parses the DSN).

Sessions are autocommit and render values the same way, so that the stream's text (wal2json
and pgoutput print each value with its output function, in the walsender's session, which
replication.py gives the same settings) and a snapshot's ``::text`` agree: TimeZone from
the config, DateStyle ISO, IntervalStyle postgres, extra_float_digits 1, bytea_output hex.

Slots: the task's slot (``slot_name``, created by ``dstream init``) is advanced only to
positions the orchestrator reported as committed (:meth:`Session.advance_slot`). A run
streams a *temporary copy* of it (``<slot>_reader``) over the replication protocol
(replication.py, which explains why a copy); the copy lives as long as that connection
(PostgreSQL drops it when the session ends, also after kill -9), and a reconnect copies the
slot again and skips what was emitted.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from dstream_postgres_cdc.errors import CdcError, ConnectionLost, first_line, translate
from dstream_postgres_cdc.lsn import parse_lsn

if TYPE_CHECKING:
    from dstream_postgres_cdc.config import Target

IDENTITY = {"d": "default", "n": "nothing", "f": "full", "i": "index"}
_DEFAULTS = {"connect_timeout": "10", "keepalives": "1", "keepalives_idle": "10", "keepalives_interval": "5"}


@dataclass(frozen=True)
class Column:
    name: str
    type_oid: int
    type_name: str  # format_type(): safe to splice into SQL as a type


@dataclass(frozen=True)
class Table:
    oid: int
    schema: str
    name: str
    kind: str
    identity: str  # default | nothing | full | index
    columns: tuple[Column, ...]
    key: tuple[
        str, ...
    ]  # the replica identity index's columns (REPLICA IDENTITY USING INDEX), else the primary key's; ()

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}"

    @property
    def ident(self) -> sql.Identifier:
        return sql.Identifier(self.schema, self.name)


@dataclass(frozen=True)
class Slot:
    name: str
    plugin: str
    database: str
    temporary: bool
    active_pid: int | None
    confirmed: int | None
    restart: int | None
    wal_status: str | None


@dataclass(frozen=True)
class Publication:
    name: str
    all_tables: bool  # FOR ALL TABLES
    all_actions: bool  # publishes inserts, updates, deletes and truncates
    tables: frozenset[str]  # schema.table

    def lacks(self, tables: list[Table]) -> list[str]:
        """The qualified names of ``tables`` it does not publish."""
        return [] if self.all_tables else [t.qualified for t in tables if t.qualified not in self.tables]


def session_settings(timezone: str) -> dict[str, str]:
    """What every session sets, so that wal2json's text and a snapshot's agree (the
    replication connection passes them as libpq options: replication.py)."""
    return {
        "TimeZone": timezone,
        "DateStyle": "ISO",
        "IntervalStyle": "postgres",
        "extra_float_digits": "1",
        "bytea_output": "hex",
    }


class Session:
    """One autocommit connection, with every psycopg error translated (errors.py)."""

    def __init__(self, dsn: str, target: Target, application_name: str, timezone: str) -> None:
        self.dsn = dsn
        self.target = target
        self.application_name = application_name
        self.timezone = timezone
        self._conn: psycopg.Connection[Any] | None = None

    # -- connection ---------------------------------------------------------------------

    def connect(self, **extra: Any) -> None:
        self.close()
        given = conninfo_to_dict(self.dsn)
        params: dict[str, Any] = {k: v for k, v in _DEFAULTS.items() if k not in given}
        try:
            conn = psycopg.connect(self.dsn, autocommit=True, application_name=self.application_name, **params, **extra)
        except psycopg.Error as exc:
            raise ConnectionLost(f"cannot connect to PostgreSQL at {self.target.server}: {first_line(exc)}") from exc
        self._conn = conn
        if extra.get("replication"):
            return
        settings = session_settings(self.timezone)
        self.query(
            sql.SQL("SELECT {}").format(sql.SQL(", ").join(sql.SQL("set_config(%s, %s, false)") for _ in settings)),
            [part for item in settings.items() for part in item],
        )

    @property
    def connected(self) -> bool:
        return self._conn is not None and not self._conn.closed

    @property
    def conn(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            raise ConnectionLost(f"not connected to PostgreSQL at {self.target.server}")
        return self._conn

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    def query(self, query: Any, params: Any = ()) -> list[tuple[Any, ...]]:
        conn = self.conn
        try:
            cur = conn.execute(query, params)
            return cur.fetchall() if cur.description else []
        except psycopg.Error as exc:
            raise translate(exc, self.target, conn) from exc

    def value(self, query: Any, params: Any = ()) -> Any:
        rows = self.query(query, params)
        return rows[0][0] if rows else None

    # -- server and slots -----------------------------------------------------------------

    def wal_level(self) -> str:
        return str(self.value("SELECT current_setting('wal_level')"))

    def database(self) -> str:
        return str(self.value("SELECT current_database()"))

    def slot(self, name: str) -> Slot | None:
        rows = self.query(
            "SELECT slot_name, coalesce(plugin, ''), coalesce(database, ''), temporary, active_pid,"
            " confirmed_flush_lsn::text, restart_lsn::text, wal_status"
            " FROM pg_replication_slots WHERE slot_name = %s",
            (name,),
        )
        if not rows:
            return None
        r = rows[0]
        return Slot(
            name=r[0],
            plugin=r[1],
            database=r[2],
            temporary=bool(r[3]),
            active_pid=r[4],
            confirmed=parse_lsn(r[5]) if r[5] else None,
            restart=parse_lsn(r[6]) if r[6] else None,
            wal_status=r[7],
        )

    def create_slot(self, name: str, plugin: str) -> int:
        return parse_lsn(self.value("SELECT lsn::text FROM pg_create_logical_replication_slot(%s, %s)", (name, plugin)))

    def drop_slot(self, name: str) -> None:
        self.query("SELECT pg_drop_replication_slot(%s)", (name,))

    def advance_slot(self, name: str, lsn: str) -> int:
        return parse_lsn(
            self.value("SELECT end_lsn::text FROM pg_replication_slot_advance(%s, %s::pg_lsn)", (name, lsn))
        )

    def flush_lsn(self) -> int:
        return parse_lsn(self.value("SELECT pg_current_wal_flush_lsn()::text"))

    def wal_lsn(self) -> int:
        return parse_lsn(self.value("SELECT pg_current_wal_lsn()::text"))

    def server_version(self) -> int:
        """``server_version_num``: 150004 for 15.4."""
        return int(self.value("SELECT current_setting('server_version_num')::int"))

    def timezone_offset(self) -> float:
        """The session TimeZone's UTC offset now, in seconds."""
        return float(self.value("SELECT extract(timezone FROM now())"))

    # -- publications (pgoutput) ----------------------------------------------------------------

    def publication(self, name: str) -> Publication | None:
        rows = self.query(
            "SELECT puballtables, pubinsert AND pubupdate AND pubdelete AND pubtruncate FROM pg_publication"
            " WHERE pubname = %s",
            (name,),
        )
        if not rows:
            return None
        tables = self.query(
            "SELECT schemaname, tablename FROM pg_publication_tables WHERE pubname = %s ORDER BY 1, 2", (name,)
        )
        return Publication(name, bool(rows[0][0]), bool(rows[0][1]), frozenset(f"{s}.{t}" for s, t in tables))

    def create_publication(self, name: str, tables: list[Table]) -> None:
        self.query(
            sql.SQL("CREATE PUBLICATION {} FOR TABLE {}").format(
                sql.Identifier(name), sql.SQL(", ").join(t.ident for t in tables)
            )
        )

    def alter_publication(self, name: str, tables: list[Table]) -> None:
        """The publication holds exactly ``tables`` and publishes every kind of change."""
        ident = sql.Identifier(name)
        with self.conn.transaction():
            self.query(
                sql.SQL("ALTER PUBLICATION {} SET TABLE {}").format(ident, sql.SQL(", ").join(t.ident for t in tables))
            )
            self.query(sql.SQL("ALTER PUBLICATION {} SET (publish = 'insert, update, delete, truncate')").format(ident))

    def drop_publication(self, name: str) -> None:
        self.query(sql.SQL("DROP PUBLICATION IF EXISTS {}").format(sql.Identifier(name)))

    # -- tables ---------------------------------------------------------------------------

    def table(self, name: str) -> Table | None:
        try:
            rows = self.query(
                "SELECT c.oid, n.nspname, c.relname, c.relkind, c.relreplident FROM pg_class c"
                " JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = to_regclass(%s)",
                (name,),
            )
        except CdcError as exc:
            if "invalid name syntax" in str(exc) or "improper relation name" in str(exc):
                raise CdcError(f"{name!r} is not a valid table name: {exc}") from None
            raise
        if not rows:
            return None
        oid, schema, relname, kind, ident = rows[0]
        columns = self.query(
            "SELECT attname, atttypid::int, format_type(atttypid, atttypmod) FROM pg_attribute"
            " WHERE attrelid = %s AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
            (oid,),
        )
        key = self.query(
            "SELECT a.attname FROM pg_index i CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)"
            " JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum"
            " WHERE i.indexrelid = (SELECT indexrelid FROM pg_index WHERE indrelid = %s"
            " AND (indisprimary OR indisreplident) ORDER BY indisreplident DESC, indisprimary DESC LIMIT 1)"
            " ORDER BY k.ord",
            (oid,),
        )
        return Table(
            oid=int(oid),
            schema=schema,
            name=relname,
            kind=str(kind),
            identity=IDENTITY.get(str(ident), str(ident)),
            columns=tuple(Column(n, int(t), str(f)) for n, t, f in columns),
            key=tuple(k for (k,) in key),
        )

    def set_replica_identity_full(self, table: Table) -> None:
        self.query(sql.SQL("ALTER TABLE {} REPLICA IDENTITY FULL").format(table.ident))


class SnapshotSession:
    """A transaction that sees exactly what was committed before a new slot's starting point.

    ``CREATE_REPLICATION_SLOT ... TEMPORARY LOGICAL wal2json EXPORT_SNAPSHOT`` on a
    replication connection returns the slot's consistent point and exports a snapshot; a
    second session imports it (``SET TRANSACTION SNAPSHOT``) and keeps it after the
    replication connection (and its temporary slot) is gone. Every transaction committed
    below the consistent point is in the snapshot; every later one is in the stream.
    """

    def __init__(self, dsn: str, target: Target, application_name: str, timezone: str) -> None:
        self.session = Session(dsn, target, application_name, timezone)
        self._replication = Session(dsn, target, application_name, timezone)
        self.target = target

    def open(self, slot_name: str, plugin: str) -> int:
        """Export a snapshot; return its consistent point (an LSN)."""
        repl = self._replication
        repl.connect(replication="database", cursor_factory=psycopg.ClientCursor)
        try:
            row = repl.query(
                sql.SQL("CREATE_REPLICATION_SLOT {} TEMPORARY LOGICAL {} EXPORT_SNAPSHOT").format(
                    sql.Identifier(slot_name), sql.Identifier(plugin)
                )
            )[0]
            consistent_point, snapshot = parse_lsn(row[1]), str(row[2])
            self.session.connect()
            self.session.query("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            self.session.query(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(snapshot)))
        finally:
            repl.close()  # the imported snapshot outlives the exporting connection
        return consistent_point

    def rows(self, table: Table, after: tuple[str, ...] | None, limit: int) -> list[tuple[Any, ...]]:
        """Up to ``limit`` rows after the key ``after``, in key order (see :func:`chunk_query`)."""
        query, params = chunk_query(table, after, limit)
        return self.session.query(query, params)

    def close(self) -> None:
        self._replication.close()
        self.session.close()


def chunk_query(
    table: Table, after: tuple[str, ...] | None, limit: int, where: str | None = None
) -> tuple[sql.Composable, list[Any]]:
    """Up to ``limit`` rows after the key ``after``, in key order, every column as its output text.

    The first ``len(table.key)`` values of each row are the key (as text); without a key
    the first value is the row's ctid, which only orders rows inside one snapshot.
    ``where`` (an incremental snapshot's filter, SQL from the task's operator) is ANDed in.
    """
    # Each value is its type's output text (what wal2json prints): format('%s', x), not
    # x::text, which differs for bool ('true') and char(n) (padding stripped). Columns are
    # qualified: ORDER BY "id" would otherwise sort by the output column "id" (its text).
    columns = [_output_text(sql.Identifier("src", c.name)) for c in table.columns]
    params: list[Any] = list(after or ())
    order: sql.Composable
    conditions: list[sql.Composable] = []
    if table.key:
        key = [sql.Identifier("src", k) for k in table.key]
        types = {c.name: c.type_name for c in table.columns}
        order = sql.SQL(", ").join(key)
        head = [_output_text(k) for k in key]
        if after is not None:
            bound = sql.SQL(", ").join(sql.SQL("%s::{}").format(sql.SQL(types[k])) for k in table.key)
            conditions.append(sql.SQL("({}) > ({})").format(order, bound))
    else:
        order = sql.SQL("src.ctid")
        head = [sql.SQL("src.ctid::text")]
        if after is not None:
            conditions.append(sql.SQL("src.ctid > %s::tid"))
    if where:
        conditions.append(sql.SQL("({})").format(sql.SQL(where.replace("%", "%%"))))
    filtered = sql.SQL("WHERE {}").format(sql.SQL(" AND ").join(conditions)) if conditions else sql.SQL("")
    query = sql.SQL("SELECT {} FROM ONLY {} AS src {} ORDER BY {} LIMIT {}").format(
        sql.SQL(", ").join(head + columns), table.ident, filtered, order, sql.Literal(limit)
    )
    return query, params


class ChunkSession:
    """Incremental snapshots: each chunk read in a short REPEATABLE READ transaction of its own.

    The transaction's first statement takes its snapshot and returns it
    (``pg_current_snapshot()``), so the caller can check which transactions it sees.
    """

    def __init__(self, dsn: str, target: Target, application_name: str, timezone: str) -> None:
        self.session = Session(dsn, target, application_name, timezone)

    def read(
        self, table: Table, after: tuple[str, ...] | None, limit: int, where: str | None
    ) -> tuple[str, list[tuple[Any, ...]]]:
        """(the read's snapshot as ``xmin:xmax:xip,...``, the rows)."""
        if not self.session.connected:
            self.session.connect()
        session = self.session
        query, params = chunk_query(table, after, limit, where)
        session.query("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        try:
            snapshot = str(session.value("SELECT pg_current_snapshot()::text"))
            rows = session.query(query, params)
        finally:
            if session.connected:
                with contextlib.suppress(CdcError):
                    session.query("ROLLBACK")  # read only: nothing to commit; ends it at once
        return snapshot, rows

    def estimate(self, table: Table) -> int | None:
        """The planner's row count (``reltuples``; None when never analysed): the progress' 100%."""
        if not self.session.connected:
            self.session.connect()
        value = self.session.value("SELECT reltuples::bigint FROM pg_class WHERE oid = %s", (table.oid,))
        return int(value) if value is not None and int(value) >= 0 else None

    def close(self) -> None:
        self.session.close()


def _output_text(column: sql.Composable) -> sql.Composable:
    return sql.SQL("CASE WHEN {0} IS NULL THEN NULL ELSE format('%%s', {0}) END").format(column)
