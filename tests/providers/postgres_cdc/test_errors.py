"""Each set-up or run-time problem reaches the user, through the real CLI, with a message
that names it: wal_level, a missing wal2json, a missing slot, a missing table, lost
permissions, a server that cannot be reached or goes away."""

# ruff: noqa: S608 - SQL here names the test's own generated tables; nothing comes from outside

from __future__ import annotations

import signal
from typing import TYPE_CHECKING

import pytest

from tests.conftest import run_cli
from tests.faults import finish, line_count, start_run, wait_until

from .conftest import _free_port
from .helpers import OutputReader, TcpProxy, cdc_task

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from .helpers import Db

pytestmark = pytest.mark.postgres


def test_wal_level_not_logical(replica_level_dsn: str, task_file: Callable[..., Path], tmp_path: Path) -> None:
    hcl = task_file(cdc_task("cdc", replica_level_dsn, ["pg_class"], "s1", str(tmp_path / "o.jsonl")))
    for command in ("init", "run"):
        result = run_cli(command, "cdc", "-f", str(hcl))
        assert result.returncode == 1, result.stderr
        assert "wal_level is replica, it must be logical" in result.stderr
        assert "ALTER SYSTEM SET wal_level = logical" in result.stderr


NO_WAL2JSON = """
from dstream_postgres_cdc import PostgresCdcInputProvider

class WithoutPlugin(PostgresCdcInputProvider):
    default_plugin = "wal2json_not_installed"  # what a server without wal2json looks like

WithoutPlugin.main()
"""


@pytest.mark.parametrize("plugin", ["wal2json"])  # a plugin that is not installed
def test_wal2json_missing(
    db: Db, task_file: Callable[..., Path], tmp_path: Path, script: Callable[[str, str], Path]
) -> None:
    table = db.create_table("t")
    provider = script("cdc-without-wal2json", NO_WAL2JSON)
    source = f'provider_path = "{provider}"'
    hcl = task_file(
        cdc_task(
            "cdc",
            db.user_dsn(),
            [table],
            db.name("slot"),
            str(tmp_path / "o.jsonl"),
            input_source=source,
        )
    )
    result = run_cli("init", "cdc", "-f", str(hcl))
    assert result.returncode == 1
    assert "the wal2json_not_installed output plugin is not installed on PostgreSQL at 127.0.0.1:5432" in result.stderr
    assert "postgresql-15-wal2json" in result.stderr
    assert db.slot(db.name("slot")) is None


@pytest.mark.parametrize("plugin", ["pgoutput"])  # checked before any plugin is used
def test_slot_missing_says_run_dstream_init(db: Db, task_file: Callable[..., Path], tmp_path: Path) -> None:
    table = db.create_table("t")
    hcl = task_file(
        cdc_task("orders", db.user_dsn(), [table], db.name("slot"), str(tmp_path / "o.jsonl"), plugin=db.plugin)
    )
    result = run_cli("run", "orders", "-f", str(hcl))
    assert result.returncode == 1
    assert f'replication slot "{db.name("slot")}" does not exist' in result.stderr
    assert "run `dstream init orders` first" in result.stderr


@pytest.mark.parametrize("plugin", ["pgoutput"])  # checked before any plugin is used
def test_missing_table(db: Db, task_file: Callable[..., Path], tmp_path: Path) -> None:
    table = db.create_table("t")
    slot = db.name("slot")
    hcl = task_file(
        cdc_task(
            "cdc", db.user_dsn(), [table, "public.no_such_table"], slot, str(tmp_path / "o.jsonl"), plugin=db.plugin
        )
    )
    result = run_cli("init", "cdc", "-f", str(hcl))
    assert result.returncode == 1
    assert "table 'public.no_such_table' does not exist in 127.0.0.1:5432/dstream_test" in result.stderr
    assert db.slot(slot) is None  # nothing created when the config is wrong
    db.create_slot(slot)
    result = run_cli("run", "cdc", "-f", str(hcl))
    assert result.returncode == 1
    assert "table 'public.no_such_table' does not exist" in result.stderr
    twice = task_file(
        cdc_task("cdc", db.user_dsn("u2"), [table, f"public.{table}"], slot, "o.jsonl", plugin=db.plugin),
        name="twice.hcl",
    )
    result = run_cli("run", "cdc", "-f", str(twice))
    assert result.returncode == 1
    assert f"'public.{table}' is public.{table}, which is already listed in tables" in result.stderr


def test_lost_replication_privilege(db: Db, task_file: Callable[..., Path], tmp_path: Path) -> None:
    table = db.create_table("t")
    dsn = db.user_dsn("role", "REPLICATION")  # not a superuser
    role = db.name("role")
    slot = db.name("slot")
    db.create_slot(slot)
    out = tmp_path / "o.jsonl"
    hcl = task_file(
        cdc_task(
            "cdc",
            dsn,
            [table],
            slot,
            str(out),
            config="poll_interval = 0.05\nmax_poll_interval = 0.2",
            plugin=db.plugin,
        )
    )
    proc = start_run("cdc", hcl)
    db.execute(f"INSERT INTO {table} VALUES (1, 'a')")
    wait_until(lambda: line_count(out) == 1, "the first change", proc)
    db.execute(f"ALTER ROLE {role} NOREPLICATION")
    db.execute(f"INSERT INTO {table} VALUES (2, 'b')")
    code, err = finish(proc)
    assert code == 1
    assert f"permission denied on 127.0.0.1:5432/dstream_test: the role '{role}' may not use replication slots" in err
    assert f"ALTER ROLE {role} REPLICATION" in err
    # The replication connection opened before the change keeps streaming (the server checks
    # the privilege when a connection or a slot function starts): the second change may have
    # gone out before moving the slot failed.
    written = line_count(out)
    assert written in (1, 2)
    # Without the privilege from the start: the same message, before any data.
    result = run_cli("run", "cdc", "-f", str(hcl))
    assert result.returncode == 1
    assert "may not use replication slots" in result.stderr
    assert line_count(out) == written


def test_unreachable_server_is_an_error_handshake(task_file: Callable[..., Path], tmp_path: Path) -> None:
    port = _free_port()
    dsn = f"postgresql://dstream:secret-pw@127.0.0.1:{port}/db?connect_timeout=3"
    hcl = task_file(cdc_task("cdc", dsn, ["t"], "s1", str(tmp_path / "o.jsonl")))
    result = run_cli("run", "cdc", "-f", str(hcl))
    assert result.returncode == 1
    assert f"cannot connect to PostgreSQL at 127.0.0.1:{port}/db" in result.stderr
    assert "secret-pw" not in result.stderr


def test_server_going_away_is_retried_then_fails(db: Db, task_file: Callable[..., Path], tmp_path: Path) -> None:
    table = db.create_table("t", "id int PRIMARY KEY, v int")
    slot = db.name("slot")
    db.create_slot(slot)
    out = tmp_path / "o.jsonl"
    proxy = TcpProxy()
    try:
        dsn = db.user_dsn().replace(":5432/", f":{proxy.port}/")
        config = "poll_interval = 0.05\nmax_poll_interval = 0.2\nreconnect_timeout = 3"
        hcl = task_file(cdc_task("cdc", dsn, [table], slot, str(out), config=config, plugin=db.plugin))
        proc = start_run("cdc", hcl)
        db.execute(f"INSERT INTO {table} SELECT g, 0 FROM generate_series(1, 1000) g")
        wait_until(lambda: line_count(out) == 1000, "the first changes", proc)
        # The connection drops but the server comes back at once: the run goes on, losing nothing.
        proxy.cut()
        db.execute(f"INSERT INTO {table} SELECT g, 0 FROM generate_series(1001, 2000) g")
        wait_until(lambda: line_count(out) == 2000, "the changes after the reconnect", proc)
        # The server stays away: retried with backoff for reconnect_timeout, then a clear failure.
        proxy.refuse()
        proxy.cut()
        code, err = finish(proc, timeout=60)
        assert code == 1
        server = f"127.0.0.1:{proxy.port}/dstream_test"
        assert f"lost the connection to PostgreSQL at {server}" in err
        assert "reconnecting in" in err
        assert f"lost the connection to PostgreSQL at {server} and could not get it back: gave up after" in err
        assert "(reconnect_timeout = 3); last error: cannot connect" in err
        reader = OutputReader(out)
        reader.poll()
        assert [c.data["id"] for c in reader.changes] == list(range(1, 2001))
        # Back again: the next run resumes where the last one stopped.
        proxy.accept()
        proc = start_run("cdc", hcl)
        db.execute(f"INSERT INTO {table} VALUES (2001, 0)")
        wait_until(lambda: reader.poll() >= 2001, "the change after the outage")
        proc.send_signal(signal.SIGTERM)
        assert finish(proc)[0] == 0
        assert [c.data["id"] for c in reader.changes] == list(range(1, 2002))
    finally:
        proxy.close()


def test_table_without_a_key_needs_replica_identity_full(
    db: Db, task_file: Callable[..., Path], tmp_path: Path
) -> None:
    table = db.create_table("nokey", "id int, v text")  # no primary key: wal2json skips updates and deletes
    dsn, slot, out = db.user_dsn(), db.name("slot"), tmp_path / "o.jsonl"
    hcl = task_file(cdc_task("cdc", dsn, [table], slot, str(out), config="max_poll_interval = 0.2", plugin=db.plugin))
    for command in ("plan", "init"):
        result = run_cli(command, "cdc", "-f", str(hcl))
        assert result.returncode == 1
        effect = {
            "wal2json": "wal2json would skip its updates and deletes",
            "pgoutput": "PostgreSQL would refuse its updates and deletes once it is in the publication",
        }[db.plugin]
        assert f"public.{table} has no primary key and REPLICA IDENTITY DEFAULT: {effect}" in result.stderr
    assert db.slot(slot) is None
    hcl = task_file(
        cdc_task(
            "cdc",
            dsn,
            [table],
            slot,
            str(out),
            config="replica_identity_full = true\nmax_poll_interval = 0.2",
            plugin=db.plugin,
        )
    )
    assert run_cli("init", "cdc", "-f", str(hcl)).returncode == 0
    db.execute(f"INSERT INTO {table} VALUES (1, 'a')")
    db.execute(f"UPDATE {table} SET v = 'b'")
    db.execute(f"DELETE FROM {table}")
    proc = start_run("cdc", hcl)
    wait_until(lambda: line_count(out) == 3, "3 changes", proc)
    proc.send_signal(signal.SIGTERM)
    assert finish(proc)[0] == 0
    reader = OutputReader(out)
    reader.poll()
    assert [(c.op, c.data, c.meta.get("Before")) for c in reader.changes] == [
        ("Insert", {"id": 1, "v": "a"}, None),
        ("Update", {"id": 1, "v": "b"}, {"id": 1, "v": "a"}),
        ("Delete", {"id": 1, "v": "b"}, {"id": 1, "v": "b"}),
    ]
