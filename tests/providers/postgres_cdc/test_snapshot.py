"""The shared snapshot machinery (dstream.sdk.cdc) through the PostgreSQL provider, against
the real PostgreSQL: kill -9 of the provider process inside a multi-chunk snapshot, resume,
every row there, the stream going on exactly after; snapshot row positions that never
collide (message ids); tables added later snapshotted alone; when_needed; Key metadata;
lag gauges; durations as text."""

# ruff: noqa: S608 - SQL here names the test's own generated tables; nothing comes from outside

from __future__ import annotations

import json
import signal
import time
from collections import defaultdict
from typing import TYPE_CHECKING, Any, ClassVar

import psutil
import pytest
from dstream_postgres_cdc import PostgresCdcInputProvider
from dstream_postgres_cdc.lsn import parse_lsn

from tests.conftest import run_cli
from tests.faults import finish, gone, kill, line_count, provider_pid, slow_file_output, start_run, wait_until

from .helpers import LiveInput, OutputReader, cdc_task

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from .helpers import Change, Db

pytestmark = pytest.mark.postgres

SLOW_OUTPUT = slow_file_output(250, 0.25)  # 1000 rows/s: the run is still inside the snapshot when it is killed


def state(hcl: Path, task: str) -> Any:
    """The task's persisted checkpoint (`dstream state show`). While a run writes the state
    store a read may find it busy: such a read is retried, a measurement, not a race fix."""
    for _ in range(20):
        result = run_cli("state", "show", task, "-f", str(hcl))
        if result.returncode == 0:
            return json.loads(result.stdout)["checkpoint"]
        time.sleep(0.1)
    raise AssertionError(f"dstream state show failed: {result.stderr}")


def snapshot_rows(checkpoint: Any, table: str) -> int:
    """Rows of ``table``'s snapshot the persisted checkpoint covers (-1: not inside it)."""
    if not checkpoint:
        return -1
    position = checkpoint["tables"].get(table, {})
    return int(position["snapshot"]["rows"]) if "snapshot" in position else -1


def snapshotting(checkpoint: Any) -> set[str] | None:
    if not checkpoint:
        return None
    return {name for name, position in checkpoint["tables"].items() if "snapshot" in position}


def message_id(change: Change) -> str:
    """What a downstream message id is derived from: table, position metadata, operation, key."""
    meta = change.meta
    return json.dumps([meta["TableName"], meta.get("LSN"), meta.get("Seq"), meta["OperationType"], meta.get("Key")])


def test_kill_9_inside_a_multi_chunk_snapshot_resumes_after_the_acknowledged_chunk(
    db: Db, task_file: Callable[..., Path], tmp_path: Path, script: Callable[[str, str], Path]
) -> None:
    # Rows of 2 KB: the 60 MB of the first table cannot all sit in the pipes and the relay's
    # buffers when the input is killed, so chunks after the acknowledged ones are really unsent.
    keyed = db.create_table("k", "id int PRIMARY KEY, v int, pad text")
    keyless = db.create_table("nk", "id int, v text")
    db.execute(f"ALTER TABLE {keyless} REPLICA IDENTITY FULL")
    db.execute(f"INSERT INTO {keyed} SELECT g, 0, repeat('p', 2000) FROM generate_series(1, 30000) g")
    db.execute(f"INSERT INTO {keyless} SELECT mod(g, 1000), 'same' FROM generate_series(1, 3000) g")  # duplicate rows
    slot, out = db.name("slot"), tmp_path / "out.jsonl"
    config = (
        'snapshot = "initial"\n      batch_size = 1000\n      poll_interval = "50ms"\n      max_poll_interval = "500ms"'
    )
    tables = [keyed, keyless]
    hcl = task_file(cdc_task("cdc", db.dsn, tables, slot, str(out), config=config, plugin=db.plugin))
    slow = script("slow-output-provider", SLOW_OUTPUT)
    slow_hcl = task_file(
        cdc_task(
            "cdc",
            db.dsn,
            tables,
            slot,
            str(out),
            config=config,
            output_source=f'provider_path = "{slow}"',
            plugin=db.plugin,
        ),
        name="slow.hcl",
    )
    assert run_cli("init", "cdc", "-f", str(hcl)).returncode == 0
    name_k, name_nk = f"public.{keyed}", f"public.{keyless}"

    # 1. Killed (kill -9 of the provider process) with several chunks of the first table acknowledged.
    proc = start_run("cdc", slow_hcl)
    # Killed once the output has written 6 chunks (a check of the file, no CLI round trip: the
    # kill lands well inside the 30-second snapshot of the first table).
    wait_until(lambda: line_count(out) >= 6000, "6 chunks in the output", proc)
    children = psutil.Process(proc.pid).children(recursive=True)
    kill(provider_pid(proc, "postgres-cdc-input-provider"))
    assert finish(proc)[0] == 1
    wait_until(lambda: all(gone(c) for c in children), "the killed run's providers to exit")  # the output is done
    inside = state(hcl, "cdc")
    acked = snapshot_rows(inside, name_k)
    assert 1000 <= acked < 30_000, inside  # chunks were acknowledged, the table is not done
    point = parse_lsn(inside["tables"][name_k]["lsn"])
    emitted_before = OutputReader(out)
    emitted_before.poll()

    # 2. Resumed: the rest of the snapshot, then the stream exactly from the snapshot's point.
    proc = start_run("cdc", hcl)
    wait_until(lambda: snapshotting(state(hcl, "cdc")) == set(), "the end of the snapshot", proc)
    db.execute(f"INSERT INTO {keyed} VALUES (-1, 1, 'p')")
    db.execute(f"UPDATE {keyed} SET v = 2 WHERE id = 7")
    db.execute(f"DELETE FROM {keyed} WHERE id = 8")
    db.execute(f"INSERT INTO {keyless} VALUES (5000, 'new')")
    reader = OutputReader(out)
    wait_until(lambda: reader.poll() > 0 and (name_nk, "Insert", 5000, "new") in reader.seen, "the changes after it")
    proc.send_signal(signal.SIGTERM)
    code, err = finish(proc)
    assert code == 0, err
    assert f"resuming the snapshot of {name_k}" in err

    reads = [c for c in reader.changes if c.op == "Read"]
    changes = [c for c in reader.changes if c.op != "Read"]
    # No row missing: every row of the keyed table came as a Read; the resumed run did not start
    # over (it re-sent at most what followed the last acknowledged chunk).
    keyed_reads = [c.data["id"] for c in reads if c.table == name_k]
    assert set(keyed_reads) == set(range(1, 30_001))
    written_before = len([c for c in emitted_before.changes if c.table == name_k])
    assert len(keyed_reads) == written_before + 30_000 - acked  # resumed right after the acknowledged rows
    assert len([c for c in reads if c.table == name_nk]) >= 3000  # keyless: restarted from its first row
    # Every Read carries the snapshot's point, and the stream starts exactly there: the four
    # changes, once each, all committed at or after the point, none before.
    # (the keyless table, read again from its first row, carries the resumed pass's point).
    assert {c.meta["LSN"] for c in reads if c.table == name_k} == {inside["tables"][name_k]["lsn"]}
    resumed_points = {parse_lsn(c.meta["LSN"]) for c in reads[-3000:] if c.table == name_nk}
    assert len(resumed_points) == 1
    assert resumed_points.pop() >= point
    assert [(c.table, c.op, c.data.get("id")) for c in changes] == [
        (name_k, "Insert", -1),
        (name_k, "Update", 7),
        (name_k, "Delete", 8),
        (name_nk, "Insert", 5000),
    ]
    assert all(parse_lsn(c.meta["LSN"]) >= point for c in changes)
    # Message ids (table, position, operation, key) never name two different rows; a row sent
    # twice (before and after the kill) has the same id, so the broker drops the repeat.
    rows_by_id: dict[str, set[str]] = defaultdict(set)
    for change in reads:
        rows_by_id[message_id(change)].add(json.dumps(change.data, sort_keys=True))
    assert all(len(rows) == 1 for rows in rows_by_id.values())
    assert len([i for i in rows_by_id if name_k in i]) == 30_000
    keyless_ids = [message_id(c) for c in reads if c.table == name_nk]
    resumed_keyless = keyless_ids[-3000:]
    assert len(set(resumed_keyless)) == 3000  # 3000 rows, 1000 distinct contents, 3000 ids
    assert all(c.meta["Key"] == {"id": c.data["id"]} for c in reads if c.table == name_k)
    assert all("Key" not in c.meta and ":" in c.meta["Seq"] for c in reads if c.table == name_nk)


def config(db: Db, tables: list[str], **extra: Any) -> dict[str, Any]:
    return {
        "dsn": db.dsn,
        "tables": tables,
        "slot_name": db.name("slot"),
        "poll_interval": "50ms",  # durations as text (dstream.sdk.Duration)
        "max_poll_interval": "200ms",
        "reconnect_timeout": "1m",
        **extra,
    }


def run_until(cfg: dict[str, Any], condition: Callable[[LiveInput], bool], checkpoint: Any = None) -> LiveInput:
    live = LiveInput(PostgresCdcInputProvider, cfg, checkpoint=checkpoint)
    live.wait(condition, "the expected envelopes")
    assert live.stop() == 0
    return live


def summary(live: LiveInput) -> list[tuple[str, str, Any]]:
    return [(m["metadata"]["TableName"], m["metadata"]["OperationType"], m["data"].get("id")) for m in live.data]


def test_a_table_added_later_is_snapshotted_alone_and_its_changes_start_after_its_snapshot(db: Db) -> None:
    a, b = db.create_table("a", "id int PRIMARY KEY, v int"), db.create_table("b", "id int PRIMARY KEY, v int")
    db.execute(f"INSERT INTO {a} VALUES (1, 0), (2, 0)")
    db.execute(f"INSERT INTO {b} VALUES (10, 0)")
    db.create_slot(db.name("slot"))
    first = run_until(config(db, [a], snapshot="initial"), lambda lv: len(lv.data) == 2 and lv.checkpoints != [])
    assert summary(first) == [(f"public.{a}", "Read", 1), (f"public.{a}", "Read", 2)]
    checkpoint = first.checkpoints[-1]
    assert set(checkpoint["tables"]) == {f"public.{a}"}
    # While the task is stopped: a change to a (streamed), and one to b (in b's snapshot).
    db.execute(f"INSERT INTO {a} VALUES (3, 0)")
    db.execute(f"INSERT INTO {b} VALUES (11, 0)")
    second = run_until(
        config(db, [a, b], snapshot="initial"),
        lambda lv: len(lv.data) >= 3 and lv.checkpoints != [],
        checkpoint,
    )
    assert summary(second) == [(f"public.{b}", "Read", 10), (f"public.{b}", "Read", 11), (f"public.{a}", "Insert", 3)]
    handed = second.checkpoints[-1]["tables"]
    assert parse_lsn(handed[f"public.{b}"]["lsn"]) > parse_lsn(handed[f"public.{a}"]["lsn"])  # b starts later
    # Both tables stream on from there.
    db.execute(f"INSERT INTO {b} VALUES (12, 0)")
    db.execute(f"INSERT INTO {a} VALUES (4, 0)")
    third = run_until(config(db, [a, b], snapshot="initial"), lambda lv: len(lv.data) >= 2, second.checkpoints[-1])
    assert summary(third) == [(f"public.{b}", "Insert", 12), (f"public.{a}", "Insert", 4)]


def test_when_needed_snapshots_again_when_the_slot_passed_the_checkpoint(db: Db) -> None:
    table = db.create_table("t", "id int PRIMARY KEY, v int")
    db.execute(f"INSERT INTO {table} VALUES (1, 0)")
    slot = db.name("slot")
    db.create_slot(slot)
    first = run_until(config(db, [table], snapshot="initial"), lambda lv: len(lv.data) == 1 and lv.checkpoints != [])
    db.execute(f"INSERT INTO {table} VALUES (2, 0)")
    db.execute("SELECT pg_replication_slot_advance(%s, pg_current_wal_lsn())", (slot,))  # the changes are gone
    failed = LiveInput(PostgresCdcInputProvider, config(db, [table], snapshot="initial"), first.checkpoints[-1])
    assert failed.wait_exit() == 1
    again = run_until(config(db, [table], snapshot="when_needed"), lambda lv: len(lv.data) == 2, first.checkpoints[-1])
    assert summary(again) == [(f"public.{table}", "Read", 1), (f"public.{table}", "Read", 2)]


def test_every_change_carries_its_key_from_the_replica_identity(db: Db) -> None:
    pk = db.create_table("pk", "id int PRIMARY KEY, v int")
    ri = db.create_table("ri", "id int PRIMARY KEY, code text NOT NULL, v int")
    db.execute(f"CREATE UNIQUE INDEX {ri}_code ON {ri} (code)")
    db.execute(f"ALTER TABLE {ri} REPLICA IDENTITY USING INDEX {ri}_code")
    nk = db.create_table("nk", "id int, v int")
    db.execute(f"ALTER TABLE {nk} REPLICA IDENTITY FULL")
    db.create_slot(db.name("slot"))
    db.execute(f"INSERT INTO {pk} VALUES (1, 0)")
    db.execute(f"UPDATE {pk} SET id = 2 WHERE id = 1")  # the key changes
    db.execute(f"DELETE FROM {pk} WHERE id = 2")
    db.execute(f"INSERT INTO {ri} VALUES (1, 'x', 0)")
    db.execute(f"UPDATE {ri} SET v = 1")
    db.execute(f"DELETE FROM {ri}")
    db.execute(f"INSERT INTO {nk} VALUES (1, 0)")
    live = run_until(config(db, [pk, ri, nk]), lambda lv: len(lv.data) == 7)
    keys = [(m["metadata"]["OperationType"], m["metadata"].get("Key")) for m in live.data]
    assert keys == [
        ("Insert", {"id": 1}),
        ("Update", {"id": 2}),  # the new key; the old row is in Before
        ("Delete", {"id": 2}),
        ("Insert", {"code": "x"}),  # REPLICA IDENTITY USING INDEX: that index, not the primary key
        ("Update", {"code": "x"}),
        ("Delete", {"code": "x"}),
        ("Insert", None),  # no primary key, REPLICA IDENTITY FULL: no Key
    ]
    assert live.data[1]["metadata"]["Before"]["id"] == 1


def test_lag_is_reported_as_gauges_per_table_and_status_shows_it(db: Db) -> None:
    a, b = db.create_table("a"), db.create_table("b")
    db.create_slot(db.name("slot"))
    db.execute(f"INSERT INTO {a} VALUES (1, 'x')")
    live = run_until(config(db, [a, b]), lambda lv: len(lv.data) == 1 and len(lv.gauges) >= 4)
    seen = {(g["name"], g["labels"]["table"]) for g in live.gauges}
    assert seen >= {("lag_seconds", f"public.{a}"), ("lag_lsn_bytes", f"public.{a}"), ("lag_seconds", f"public.{b}")}
    assert all(g["value"] >= 0 for g in live.gauges)
    status = LiveInput(PostgresCdcInputProvider, config(db, [a, b]), live.checkpoints[-1], command="status")
    assert status.wait_exit() == 0
    rows = {r["name"]: r for r in status.resources}
    assert rows[f"public.{a}"]["details"]["key"] == ["id"]
    assert rows[f"public.{a}"]["details"]["lag_bytes"] >= 0


class EveryRecord(PostgresCdcInputProvider):
    checkpoint_every: ClassVar[int] = 1  # type: ignore[misc]


def test_a_table_removed_while_stopped_inside_a_transaction_reads_that_transaction_again(db: Db) -> None:
    """The checkpoint's index counted the removed table's changes too: skipping that many of
    the rest would lose one; the transaction comes again from its start instead."""
    a, b = db.create_table("a"), db.create_table("b")
    db.create_slot(db.name("slot"))
    with db.conn.transaction():
        db.execute(f"INSERT INTO {a} VALUES (1, 'a1')")
        db.execute(f"INSERT INTO {b} VALUES (1, 'b1')")
        db.execute(f"INSERT INTO {a} VALUES (2, 'a2')")
    live = LiveInput(EveryRecord, config(db, [a, b]), auto_commit=False)
    live.wait(lambda lv: len(lv.data) == 3, "the transaction")
    assert live.stop() == 0
    inside = next(c for c in live.checkpoints if c.get("index") == 2)  # after a1 and b1
    resumed = run_until(config(db, [a]), lambda lv: len(lv.data) >= 2, inside)
    assert [m["data"]["v"] for m in resumed.data] == ["a1", "a2"]  # a2 is not skipped


def test_a_keyless_table_read_again_at_a_new_snapshot_point_streams_from_that_point(db: Db) -> None:
    """Issue 22, defect 7: a run stopped (kill -9) inside a multi-table snapshot resumes with a
    new snapshot at P2; a table without a key is read again from its first row as of P2, so its
    changes must start at P2, not at the first pass's point P: each change committed between P
    and P2 is in those rows and must not arrive a second time as a change."""
    keyed = db.create_table("k", "id int PRIMARY KEY, v int")
    keyless = db.create_table("nk", "id int, v text")
    db.execute(f"ALTER TABLE {keyless} REPLICA IDENTITY FULL")
    db.execute(f"INSERT INTO {keyed} SELECT g, 0 FROM generate_series(1, 5000) g")
    db.execute(f"INSERT INTO {keyless} SELECT g, 'old' FROM generate_series(1, 300) g")
    db.create_slot(db.name("slot"))
    cfg = config(db, [keyed, keyless], snapshot="initial", batch_size=500)
    name_k, name_nk = f"public.{keyed}", f"public.{keyless}"
    first = LiveInput(EveryRecord, cfg)
    first.wait(lambda lv: any(snapshot_rows(c, name_k) >= 1000 for c in lv.checkpoints), "a checkpoint inside")
    assert first.stop() == 0
    # What a kill -9 right after it was persisted leaves: inside the keyed table, the keyless one not begun.
    inside = next(c for c in first.checkpoints if snapshot_rows(c, name_k) >= 1000)
    assert inside["tables"][name_nk]["snapshot"]["after"] is None
    # Changes while the task is down: after the first pass's point P, before the resumed pass's P2.
    db.execute(f"INSERT INTO {keyless} SELECT g, 'new' FROM generate_series(10001, 10200) g")
    db.execute(f"UPDATE {keyless} SET v = 'changed' WHERE id <= 50")
    second = LiveInput(EveryRecord, cfg, checkpoint=inside)
    db.execute(f"INSERT INTO {keyed} VALUES (-1, -1)")  # a marker, committed after P2
    second.wait(lambda lv: any(m["data"].get("id") == -1 for m in lv.data), "the marker")
    assert second.stop() == 0
    of_keyless = [(m["metadata"]["OperationType"], m["data"]["id"], m["data"]["v"]) for m in second.data]
    of_keyless = [row for row, m in zip(of_keyless, second.data, strict=True) if m["metadata"]["TableName"] == name_nk]
    # Each row once, as a Read of the new pass with its current value; no Insert/Update repeats it.
    assert sorted(of_keyless) == sorted(
        [("Read", i, "changed") for i in range(1, 51)]
        + [("Read", i, "old") for i in range(51, 301)]
        + [("Read", i, "new") for i in range(10001, 10201)]
    )
    handed = second.checkpoints[-1]["tables"]
    assert parse_lsn(handed[name_nk]["lsn"]) > parse_lsn(handed[name_k]["lsn"])  # the keyless table starts at P2
