"""Helpers for the postgres-cdc tests: a database handle that cleans up after itself, task
files, an incremental reader of the file output, an in-process provider runner that speaks
the commit protocol like the orchestrator, and a TCP proxy that can cut the server off."""

from __future__ import annotations

import contextlib
import io
import json
import os
import select
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import psycopg
from dstream_postgres_cdc.lsn import parse_lsn
from psycopg import sql

from dstream import protocol
from dstream.sdk.host import Host
from tests.waiting import wait_until

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from dstream.sdk.base import Provider

WAIT = 90.0


class Db:
    """The test database, with names unique to one test and everything dropped afterwards."""

    def __init__(self, dsn: str, prefix: str, plugin: str = "wal2json") -> None:
        self.dsn = dsn
        self.prefix = prefix
        self.plugin = plugin  # what create_slot uses (the provider then follows the slot's plugin)
        self.conn = psycopg.connect(dsn, autocommit=True)

    def name(self, suffix: str) -> str:
        return f"{self.prefix}_{suffix}"

    def user_dsn(self, suffix: str = "user", attributes: str = "SUPERUSER REPLICATION") -> str:
        """A DSN for a new role of this test. Its password appears nowhere else, so the
        orchestrator's masking of secrets leaves the rest of the messages readable."""
        from psycopg.conninfo import conninfo_to_dict

        role, password = self.name(suffix), f"pw-{self.prefix}-{suffix}"
        self.execute(
            sql.SQL(f"CREATE ROLE {{}} LOGIN {attributes} PASSWORD {{}}").format(sql.Identifier(role), password)
        )  # type: ignore[arg-type]
        params = conninfo_to_dict(self.dsn)
        host, port, dbname = params.get("host", "127.0.0.1"), params.get("port", "5432"), params.get("dbname")
        return f"postgresql://{role}:{password}@{host}:{port}/{dbname}"

    def execute(self, query: Any, params: Any = ()) -> list[tuple[Any, ...]]:
        cur = self.conn.execute(query, params)
        return cur.fetchall() if cur.description else []

    def value(self, query: Any, params: Any = ()) -> Any:
        rows = self.execute(query, params)
        return rows[0][0] if rows else None

    def create_table(self, suffix: str, columns: str = "id int PRIMARY KEY, v text") -> str:
        name = self.name(suffix)
        self.execute(sql.SQL("CREATE TABLE {} ({})").format(sql.Identifier(name), sql.SQL(columns)))  # type: ignore[arg-type]
        return name

    def slot(self, name: str) -> dict[str, Any] | None:
        rows = self.execute(
            "SELECT slot_name, active_pid, confirmed_flush_lsn::text, temporary FROM pg_replication_slots"
            " WHERE slot_name = %s",
            (name,),
        )
        if not rows:
            return None
        slot, pid, confirmed, temporary = rows[0]
        # A slot still being created (or copied) is listed with a NULL confirmed_flush_lsn.
        position = parse_lsn(confirmed) if confirmed is not None else None
        return {"name": slot, "active_pid": pid, "confirmed": position, "temporary": temporary}

    def slot_ready(self, name: str) -> bool:
        """The slot exists, is fully created and held by a session."""
        found = self.slot(name)
        return found is not None and found["confirmed"] is not None and found["active_pid"] is not None

    def slot_at_least(self, name: str, lsn: int) -> bool:
        found = self.slot(name)
        return found is not None and found["confirmed"] is not None and found["confirmed"] >= lsn

    def create_slot(self, name: str) -> int:
        """A slot of this test's plugin; for pgoutput first its publication (named like the
        slot, as `dstream init` makes it) of every table of this test that exists now."""
        if self.plugin == "pgoutput":
            self.publish(name)
        return parse_lsn(
            self.value("SELECT lsn::text FROM pg_create_logical_replication_slot(%s, %s)", (name, self.plugin))
        )

    def publish(self, publication: str) -> None:
        """(pgoutput) The publication holds every table of this test (what `dstream init` does
        when ``tables`` changes)."""
        tables = [
            t
            for (t,) in self.execute(
                "SELECT relname FROM pg_class WHERE relname LIKE %s AND relkind = 'r' ORDER BY 1", (self.prefix + "%",)
            )
        ]
        listed = sql.SQL(", ").join(sql.Identifier(t) for t in tables)
        if self.value("SELECT 1 FROM pg_publication WHERE pubname = %s", (publication,)) is None:
            query = sql.SQL("CREATE PUBLICATION {} FOR TABLE {}") if tables else sql.SQL("CREATE PUBLICATION {}")
        else:
            query = sql.SQL("ALTER PUBLICATION {} SET TABLE {}")
        self.execute(query.format(sql.Identifier(publication), listed))

    def flush_lsn(self) -> int:
        return parse_lsn(self.value("SELECT pg_current_wal_flush_lsn()::text"))

    def table_rows(self, table: str, key: str = "id") -> dict[Any, dict[str, Any]]:
        with self.conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
            cur.execute(sql.SQL("SELECT * FROM {} ORDER BY {}").format(sql.Identifier(table), sql.Identifier(key)))
            return {row[key]: dict(row) for row in cur.fetchall()}

    def terminate(self, application_name: str) -> int:
        return len(
            self.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
                (application_name,),
            )
        )

    def cleanup(self) -> None:
        like = self.prefix + "%"
        for _ in range(50):
            slots = self.execute(
                "SELECT slot_name, active_pid FROM pg_replication_slots WHERE slot_name LIKE %s", (like,)
            )
            if not slots:
                break
            for slot, pid in slots:
                if pid:
                    self.execute("SELECT pg_terminate_backend(%s)", (pid,))
                else:
                    with contextlib.suppress(psycopg.Error):
                        self.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
            time.sleep(0.1)  # terminated backends drop their temporary slots as they exit
        for (publication,) in self.execute("SELECT pubname FROM pg_publication WHERE pubname LIKE %s", (like,)):
            self.execute(sql.SQL("DROP PUBLICATION IF EXISTS {}").format(sql.Identifier(publication)))
        for (table,) in self.execute("SELECT relname FROM pg_class WHERE relname LIKE %s AND relkind = 'r'", (like,)):
            self.execute(sql.SQL("DROP TABLE IF EXISTS {} CASCADE").format(sql.Identifier(table)))
        for (role,) in self.execute("SELECT rolname FROM pg_roles WHERE rolname LIKE %s", (like,)):
            self.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", (role,))
            with contextlib.suppress(psycopg.Error):
                self.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
                self.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))
        self.conn.close()


def cdc_task(
    name: str,
    dsn: str,
    tables: list[str],
    slot: str,
    out: str,
    *,
    input_source: str = 'provider_path = "postgres-cdc-input-provider"',
    output_source: str = 'provider_path = "file-output-provider"',
    config: str = "",
    input_extra: str = "",
    output_extra: str = "",
    task_extra: str = "",
    plugin: str | None = None,
) -> str:
    if plugin is not None:
        config = f'plugin = "{plugin}"\n{config}'
    return f"""
task "{name}" {{
  {task_extra}
  input {{
    {input_source}
    config {{
      dsn = "{dsn}"
      tables = {json.dumps(tables)}
      slot_name = "{slot}"
      {config}
    }}
    {input_extra}
  }}
  output {{
    {output_source}
    config {{
      path = "{out}"
      fsync = false
    }}
    {output_extra}
  }}
}}
"""


@dataclass
class Change:
    """One envelope of the output, reduced to what tests compare."""

    table: str
    op: str
    data: dict[str, Any]
    meta: dict[str, Any]

    @property
    def key(self) -> tuple[Any, ...]:
        """Identifies a change in the generated workloads: table, operation, id, version."""
        return (self.table, self.op, self.data.get("id"), self.data.get("v"))

    @property
    def order(self) -> tuple[int, int]:
        return (parse_lsn(self.meta["LSN"]), int(self.meta.get("Seq") or 0))


@dataclass
class OutputReader:
    """Reads a growing JSONL output file incrementally."""

    path: Path
    changes: list[Change] = field(default_factory=list)
    seen: set[tuple[Any, ...]] = field(default_factory=set)
    _offset: int = 0

    def poll(self) -> int:
        try:
            with self.path.open("rb") as f:
                f.seek(self._offset)
                chunk = f.read()
        except FileNotFoundError:
            return 0
        # Read up to the last newline only: a torn tail left by a killed output is cut by the
        # next file-output-provider, which then writes from that very offset.
        complete = chunk.rfind(b"\n") + 1
        self._offset += complete
        for line in chunk[:complete].split(b"\n"):
            if line.strip():
                value = json.loads(line)
                meta = value["metadata"]
                change = Change(meta["TableName"], meta["OperationType"], value["data"], meta)
                self.changes.append(change)
                self.seen.add(change.key)
        return len(self.changes)

    def keys(self) -> list[tuple[Any, ...]]:
        return [c.key for c in self.changes]

    def duplicates(self) -> int:
        return sum(n - 1 for n in Counter(self.keys()).values() if n > 1)

    def first_occurrences(self) -> list[Change]:
        seen: set[tuple[Any, ...]] = set()
        out = []
        for change in self.changes:
            if change.key not in seen:
                seen.add(change.key)
                out.append(change)
        return out


class LiveInput:
    """Runs a provider in this process on pipes, as the orchestrator would: it can send
    ``committed`` for each checkpoint it sees (auto_commit), and be stopped like SIGTERM."""

    def __init__(
        self,
        cls: type[Provider[Any]],
        config: dict[str, Any],
        checkpoint: Any = None,
        task: str = "cdc-test",
        auto_commit: bool = True,
        command: str = "run",
    ) -> None:
        in_r, self._in_w = os.pipe()
        out_r, out_w = os.pipe()
        # The features this orchestrator announces (gauges), as `dstream run` sends them.
        envelope = protocol.command_envelope(command, config, checkpoint, task, protocol.ORCHESTRATOR_FEATURES)
        os.write(self._in_w, envelope)
        self._stdout = io.BufferedWriter(io.FileIO(out_w, "wb"), 1 << 16)
        self.host = Host(cls, io.BufferedReader(io.FileIO(in_r, "rb"), 1 << 16), self._stdout)
        self._out = io.FileIO(out_r, "rb")
        self.auto_commit = auto_commit
        self.messages: list[dict[str, Any]] = []
        self.committed: list[Any] = []
        self.exit_code: int | None = None
        self._lock = threading.Lock()
        self._runner = threading.Thread(target=self._run, daemon=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self._runner.start()

    def _run(self) -> None:
        try:
            self.exit_code = self.host.run()
        finally:
            with contextlib.suppress(OSError, ValueError):
                self._stdout.close()

    def _read(self) -> None:
        buffer = b""
        while True:
            chunk = self._out.read(1 << 16)
            if not chunk:
                return
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                value = protocol.decode_object(line)
                with self._lock:
                    self.messages.append(value)
                is_cp, position = protocol.control_value(value, "checkpoint")
                if is_cp and self.auto_commit:
                    self.commit(position)

    def commit(self, position: Any) -> None:
        with contextlib.suppress(OSError):
            os.write(self._in_w, protocol.committed(position))
            self.committed.append(position)

    @property
    def data(self) -> list[dict[str, Any]]:
        with self._lock:
            return [m for m in self.messages if "data" in m]

    @property
    def gauges(self) -> list[dict[str, Any]]:
        with self._lock:
            return [m["gauge"] for m in self.messages if "gauge" in m]

    @property
    def resources(self) -> list[dict[str, Any]]:
        with self._lock:
            return [m["resource"] for m in self.messages if "resource" in m]

    @property
    def checkpoints(self) -> list[Any]:
        with self._lock:
            return [m["checkpoint"] for m in self.messages if "checkpoint" in m and "data" not in m]

    @property
    def handshake(self) -> dict[str, Any] | None:
        with self._lock:
            return self.messages[0] if self.messages and "status" in self.messages[0] else None

    def wait(self, condition: Callable[[LiveInput], bool], what: str, timeout: float = WAIT) -> None:
        def check() -> bool:
            if self.exit_code is not None and not condition(self):
                raise AssertionError(f"the provider exited ({self.exit_code}) before {what}")
            return condition(self)

        wait_until(check, what, timeout=timeout)

    def wait_exit(self, timeout: float = WAIT) -> int:
        self._runner.join(timeout)
        assert not self._runner.is_alive(), "the provider did not exit"
        self._reader.join(10)
        assert self.exit_code is not None
        return self.exit_code

    def stop(self) -> int:
        """Like SIGTERM: the provider finishes its record, emits a last checkpoint, exits."""
        self.host.ctx.stopping.set()
        code = self.wait_exit()
        with contextlib.suppress(OSError):
            os.close(self._in_w)
        return code


class TcpProxy:
    """127.0.0.1:<port> → the server; ``cut()`` drops every connection, ``refuse()`` stops
    accepting new ones (connection refused), ``accept()`` starts again."""

    def __init__(self, host: str = "127.0.0.1", port: int = 5432) -> None:
        self.target = (host, port)
        self.port = 0
        self._listener: socket.socket | None = None
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._lock = threading.Lock()
        self._closed = False
        self.accept()

    def accept(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(16)
        self.port = listener.getsockname()[1]
        self._listener = listener
        threading.Thread(target=self._accept_loop, args=(listener,), daemon=True).start()

    def _accept_loop(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._pairs.append((client, upstream))
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()

    def _pump(self, a: socket.socket, b: socket.socket) -> None:
        try:
            while True:
                ready, _, _ = select.select([a, b], [], [], 0.5)
                for sock in ready:
                    data = sock.recv(1 << 16)
                    if not data:
                        return
                    (b if sock is a else a).sendall(data)
        except (OSError, ValueError):  # ValueError: select() on a socket cut() just closed
            return
        finally:
            for sock in (a, b):
                with contextlib.suppress(OSError):
                    sock.close()

    def cut(self) -> None:
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for pair in pairs:
            for sock in pair:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                    sock.close()

    def refuse(self) -> None:
        if self._listener is not None:
            # shutdown() stops listening at once and wakes the thread blocked in accept();
            # close() alone would leave the socket listening until that accept() returned.
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)
            self._listener.close()
            self._listener = None

    def close(self) -> None:
        self.refuse()
        self.cut()


class Workload:
    """Inserts, updates and deletes over some tables, in transactions of 1 to ~10,000
    changes; remembers the key (table, operation, id, version) of every change it made.

    Tables have ``id int PRIMARY KEY, v int`` and the default replica identity, so a delete
    carries only the id. Each update sets ``v`` to a new round number: every key is unique.
    """

    SIZES = (1, 1, 2, 5, 20, 100, 500, 2000, 10_000)

    def __init__(self, dsn: str, tables: list[str], qualified: list[str], seed: int = 7) -> None:
        import random

        self.dsn = dsn
        self.tables = tables
        self.qualified = dict(zip(tables, qualified, strict=True))
        self.rng = random.Random(seed)
        self.expected: set[tuple[Any, ...]] = set()
        self.count = 0
        self.live: dict[str, list[int]] = {t: [] for t in tables}
        self.next_id = dict.fromkeys(tables, 1)
        self.round = 0
        self.error: BaseException | None = None
        self._thread: threading.Thread | None = None

    def _transaction(self, conn: psycopg.Connection[Any]) -> None:
        size = self.rng.choice(self.SIZES)
        made: list[tuple[Any, ...]] = []
        with conn.transaction():
            while len(made) < size:
                table = self.rng.choice(self.tables)
                name = self.qualified[table]
                ident = sql.Identifier(table)
                kind = self.rng.random()
                live = self.live[table]
                if kind < 0.7 or len(live) < 10:
                    n = min(size - len(made), self.rng.randint(1, 2000))
                    first = self.next_id[table]
                    conn.execute(
                        sql.SQL("INSERT INTO {} SELECT g, 0 FROM generate_series(%s::int, %s::int) g").format(ident),
                        (first, first + n - 1),
                    )
                    self.next_id[table] = first + n
                    live.extend(range(first, first + n))
                    made += [(name, "Insert", i, 0) for i in range(first, first + n)]
                elif kind < 0.9:
                    self.round += 1
                    start = self.rng.randrange(len(live))
                    ids = live[start : start + min(size - len(made), 300)]
                    conn.execute(sql.SQL("UPDATE {} SET v = %s WHERE id = ANY(%s)").format(ident), (self.round, ids))
                    made += [(name, "Update", i, self.round) for i in ids]
                else:
                    start = self.rng.randrange(len(live))
                    ids = live[start : start + min(size - len(made), 50)]
                    del live[start : start + len(ids)]
                    conn.execute(sql.SQL("DELETE FROM {} WHERE id = ANY(%s)").format(ident), (ids,))
                    made += [(name, "Delete", i, None) for i in ids]
        self.expected.update(made)
        self.count += len(made)

    def run(self, total: int) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            while self.count < total:
                self._transaction(conn)

    def start(self, total: int) -> None:
        def target() -> None:
            try:
                self.run(total)
            except BaseException as exc:
                self.error = exc

        self._thread = threading.Thread(target=target, daemon=True)
        self._thread.start()

    def join(self, timeout: float = WAIT) -> None:
        assert self._thread is not None
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the workload did not finish"
        if self.error is not None:
            raise self.error
