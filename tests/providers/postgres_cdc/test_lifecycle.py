"""`dstream init|plan|status|destroy` for the postgres-cdc provider, through the real CLI."""

# ruff: noqa: S608 - SQL here names the test's own generated tables; nothing comes from outside

from __future__ import annotations

import json
import signal
from typing import TYPE_CHECKING, Any

import pytest
from dstream_postgres_cdc.lsn import format_lsn, parse_lsn

from tests.conftest import run_cli
from tests.faults import finish, start_run
from tests.waiting import wait_until

from .helpers import cdc_task

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from .helpers import Db

pytestmark = pytest.mark.postgres


def verb(name: str, hcl: Path) -> list[dict[str, Any]]:
    result = run_cli(name, "cdc", "-f", str(hcl), "--json", *(["--yes"] if name == "destroy" else []))
    assert result.returncode == 0, result.stderr
    return [row for row in json.loads(result.stdout)["resources"] if row["role"] == "input"]


def rows(resources: list[dict[str, Any]]) -> list[tuple[str, str, str, str]]:
    return [(r["type"], r["name"], r["action"], r.get("state", "")) for r in resources]


def identity(db: Db, table: str) -> str:
    return str(db.value("SELECT relreplident FROM pg_class WHERE oid = to_regclass(%s)", (table,)))


def test_plan_init_status_destroy(db: Db, task_file: Callable[..., Path], tmp_path: Path) -> None:
    a, b = db.create_table("a"), db.create_table("b")
    db.execute(f"ALTER TABLE {b} REPLICA IDENTITY FULL")
    slot = db.name("slot")
    pa, pb = f"public.{a}", f"public.{b}"
    hcl = task_file(
        cdc_task(
            "cdc",
            db.dsn,
            [a, b],
            slot,
            str(tmp_path / "out.jsonl"),
            config="replica_identity_full = true",
            plugin=db.plugin,
        )
    )

    # pgoutput: the publication (named like the slot) of the tables, created before the slot.
    publication = [("publication", slot, "create", "absent")] if db.plugin == "pgoutput" else []
    planned = verb("plan", hcl)
    assert rows(planned) == [
        ("replication_slot", slot, "create", "absent"),
        *publication,
        ("replica_identity", pa, "update", "default"),
        ("replica_identity", pb, "none", "full"),
    ]
    assert db.slot(slot) is None
    assert identity(db, a) == "d"

    created = verb("init", hcl)
    assert rows(created) == [
        ("replication_slot", slot, "create", "present"),
        *[(kind, name, action, "present") for kind, name, action, _ in publication],
        ("replica_identity", pa, "update", "full"),
        ("replica_identity", pb, "none", "full"),
    ]
    made = db.slot(slot)
    assert made is not None
    assert not made["temporary"]
    assert created[0]["details"]["lsn"] == format_lsn(made["confirmed"])
    assert identity(db, a) == "f"
    assert [r[2] for r in rows(verb("init", hcl))] == ["none"] * (3 + len(publication))  # idempotent
    if publication:
        assert created[1]["details"]["tables"] == [pa, pb]
        assert set(
            db.value("SELECT array_agg(tablename::text) FROM pg_publication_tables WHERE pubname = %s", (slot,))
        ) == {a, b}

    status = verb("status", hcl)
    assert rows(status)[0] == ("replication_slot", slot, "none", "present")
    details = status[0]["details"]
    assert details["active"] is False
    assert details["confirmed_flush_lsn"] == format_lsn(made["confirmed"])
    assert isinstance(details["lag_bytes"], int)
    assert details["lag_bytes"] >= 0
    # The table view (what a user sees without --json).
    table_view = run_cli("status", "cdc", "-f", str(hcl), env={"COLUMNS": "250"})
    assert table_view.returncode == 0, table_view.stderr
    assert "replication_slot" in table_view.stdout
    assert slot in table_view.stdout
    assert "lag_bytes=" in table_view.stdout

    # While a run reads the slot: active, with the reader's backend; destroy refuses.
    proc = start_run("cdc", hcl)
    wait_until(lambda: db.slot_ready(f"{slot}_reader"), "the run to read the slot")
    running = verb("status", hcl)[0]["details"]
    assert running["active"] is True
    assert running["reader_pid"] == db.slot(f"{slot}_reader")["active_pid"]
    refused = run_cli("destroy", "cdc", "-f", str(hcl), "--yes")
    assert refused.returncode == 1
    assert "is being read by a running task" in refused.stderr
    assert db.slot(slot) is not None
    proc.send_signal(signal.SIGTERM)
    assert finish(proc)[0] == 0

    if publication:
        assert rows(verb("status", hcl))[1] == ("publication", slot, "none", "present")
    dropped = [("publication", slot, "delete", "absent")] if publication else []
    assert rows(verb("destroy", hcl)) == [("replication_slot", slot, "delete", "absent"), *dropped]
    assert db.slot(slot) is None
    assert db.value("SELECT count(*) FROM pg_publication WHERE pubname = %s", (slot,)) == 0
    assert rows(verb("status", hcl))[0] == ("replication_slot", slot, "none", "absent")
    gone = [("publication", slot, "none", "absent")] if publication else []
    assert rows(verb("destroy", hcl)) == [("replication_slot", slot, "none", "absent"), *gone]  # idempotent


def test_status_lag_falls_as_heartbeats_release_wal(db: Db, task_file: Callable[..., Path], tmp_path: Path) -> None:
    captured, busy = db.create_table("quiet"), db.create_table("busy")
    slot = db.name("slot")
    hcl = task_file(
        cdc_task(
            "cdc",
            db.dsn,
            [captured],
            slot,
            str(tmp_path / "out.jsonl"),
            config="max_poll_interval = 0.5",
            plugin=db.plugin,
        )
    )
    verb("init", hcl)
    db.execute(f"INSERT INTO {busy} SELECT g, repeat('x', 200) FROM generate_series(1, 20000) g")
    flushed = db.flush_lsn()
    before = verb("status", hcl)[0]["details"]["lag_bytes"]
    assert before > 2_000_000  # the other table's WAL is held back by the slot
    proc = start_run("cdc", hcl)
    wait_until(lambda: db.slot_at_least(slot, flushed), "heartbeats to advance the slot")
    after = verb("status", hcl)[0]["details"]
    assert parse_lsn(after["confirmed_flush_lsn"]) >= flushed
    assert after["lag_bytes"] < before
    proc.send_signal(signal.SIGTERM)
    assert finish(proc)[0] == 0
    assert not (tmp_path / "out.jsonl").exists() or (tmp_path / "out.jsonl").read_text() == ""
    # status gets the task's persisted checkpoint: the table's lag is measured from it.
    table = next(r for r in verb("status", hcl) if r["type"] == "replica_identity")
    assert table["name"] == f"public.{captured}"
    assert 0 <= table["details"]["lag_bytes"] < before
    assert table["details"]["key"] == ["id"]
