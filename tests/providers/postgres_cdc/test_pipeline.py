"""postgres-cdc-input-provider → file-output-provider through the real `dstream run`, with
the providers as local processes, against the real PostgreSQL (wal2json)."""

# ruff: noqa: S608 - SQL here names the test's own generated tables; nothing comes from outside

from __future__ import annotations

import json
import random
import signal
import threading
import time
from datetime import datetime
from typing import TYPE_CHECKING, Any

import psutil
import psycopg
import pytest
from dstream_postgres_cdc.lsn import parse_lsn

from tests.conftest import run_cli
from tests.faults import finish, gone, kill, line_count, provider_pid, slow_file_output, start_run, wait_until

from .helpers import OutputReader, Workload, cdc_task

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from .helpers import Db

pytestmark = pytest.mark.postgres

FAST = "poll_interval = 0.05\n      max_poll_interval = 0.5"


def state(hcl: Path, task: str) -> Any:
    result = run_cli("state", "show", task, "-f", str(hcl))
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["checkpoint"]


def snapshotting(checkpoint: Any) -> set[str] | None:
    """The tables a checkpoint has inside their snapshot (None: no checkpoint yet)."""
    if not checkpoint:
        return None
    return {name for name, position in checkpoint["tables"].items() if "snapshot" in position}


def test_three_tables_multi_statement_transactions_and_a_50k_row_transaction_in_commit_order(
    db: Db, task_file: Callable[..., Path], tmp_path: Path
) -> None:
    a = db.create_table("a", "id int PRIMARY KEY, v text")
    b = db.create_table("b", "id int PRIMARY KEY, n numeric, t timestamptz")
    c = db.create_table("c", "id int PRIMARY KEY, flag bool")
    other = db.create_table("other")
    slot = db.name("slot")
    out = tmp_path / "out.jsonl"
    hcl = task_file(
        cdc_task(
            "cdc",
            db.dsn,
            [a, f"public.{b}", c],
            slot,
            str(out),
            config=f"replica_identity_full = true\n{FAST}",
            plugin=db.plugin,
        )
    )
    init = run_cli("init", "cdc", "-f", str(hcl), "--json")
    assert init.returncode == 0, init.stderr

    x = db.conn.execute
    x(f"INSERT INTO {a} VALUES (1, 'one')")
    with db.conn.transaction():
        x(f"INSERT INTO {b} VALUES (1, 10.5, '2024-01-01 00:00:00+00')")
        x(f"UPDATE {a} SET v = 'uno' WHERE id = 1")
        x(f"INSERT INTO {c} VALUES (1, true)")
    with db.conn.transaction():
        x(f"INSERT INTO {a} VALUES (2, 'two'), (3, 'three'), (4, 'four')")
        x(f"DELETE FROM {b} WHERE id = 1")
        x(f"UPDATE {c} SET flag = false WHERE id = 1")
    x(f"INSERT INTO {other} VALUES (1, 'not captured')")
    with db.conn.transaction(force_rollback=True):
        x(f"INSERT INTO {a} VALUES (99, 'rolled back')")
    x(f"INSERT INTO {b} SELECT g, g * 0.5, NULL FROM generate_series(2, 50001) g")
    x(f"DELETE FROM {a} WHERE id = 2")
    with db.conn.transaction():
        x(f"INSERT INTO {a} VALUES (10, 'ten')")
        x("SAVEPOINT s")
        x(f"INSERT INTO {a} VALUES (11, 'rolled back to the savepoint')")
        x("ROLLBACK TO SAVEPOINT s")
        x(f"INSERT INTO {a} VALUES (12, 'twelve')")
    last_lsn = db.flush_lsn()

    t2024 = "2024-01-01 00:00:00+00"
    pa, pb, pc = (f"public.{t}" for t in (a, b, c))
    expected: list[tuple[str, str, dict[str, Any], dict[str, Any] | None]] = [
        (pa, "Insert", {"id": 1, "v": "one"}, None),
        (pb, "Insert", {"id": 1, "n": 10.5, "t": t2024}, None),
        (pa, "Update", {"id": 1, "v": "uno"}, {"id": 1, "v": "one"}),
        (pc, "Insert", {"id": 1, "flag": True}, None),
        (pa, "Insert", {"id": 2, "v": "two"}, None),
        (pa, "Insert", {"id": 3, "v": "three"}, None),
        (pa, "Insert", {"id": 4, "v": "four"}, None),
        (pb, "Delete", {"id": 1, "n": 10.5, "t": t2024}, {"id": 1, "n": 10.5, "t": t2024}),
        (pc, "Update", {"id": 1, "flag": False}, {"id": 1, "flag": True}),
        *[(pb, "Insert", {"id": g, "n": g * 0.5, "t": None}, None) for g in range(2, 50002)],
        (pa, "Delete", {"id": 2, "v": "two"}, {"id": 2, "v": "two"}),
        (pa, "Insert", {"id": 10, "v": "ten"}, None),
        (pa, "Insert", {"id": 12, "v": "twelve"}, None),
    ]
    transactions = [1, 3, 5, 50_000, 1, 2]

    proc = start_run("cdc", hcl)
    wait_until(lambda: line_count(out) >= len(expected), f"{len(expected)} envelopes")
    # The slot moves once the orchestrator reports the data as committed.
    wait_until(lambda: db.slot_at_least(slot, last_lsn), "the slot to be advanced")
    proc.send_signal(signal.SIGTERM)
    code, err = finish(proc)
    assert code == 0, err

    reader = OutputReader(out)
    reader.poll()
    got = [(ch.table, ch.op, ch.data, ch.meta.get("Before")) for ch in reader.changes]
    assert got == expected

    # Metadata: one LSN, TxId and CommitTime per transaction, Seq 1..n, LSNs increasing.
    metas = [ch.meta for ch in reader.changes]
    groups: list[list[dict[str, Any]]] = []
    for meta in metas:
        if groups and groups[-1][0]["LSN"] == meta["LSN"]:
            groups[-1].append(meta)
        else:
            groups.append([meta])
    assert [len(g) for g in groups] == transactions
    lsns = [parse_lsn(g[0]["LSN"]) for g in groups]
    assert lsns == sorted(lsns)
    assert len(set(lsns)) == len(lsns)
    for group in groups:
        assert [m["Seq"] for m in group] == list(range(1, len(group) + 1))
        assert len({m["TxId"] for m in group}) == 1
        assert len({m["CommitTime"] for m in group}) == 1
        assert datetime.fromisoformat(group[0]["CommitTime"]).tzinfo is not None
    assert len({g[0]["TxId"] for g in groups}) == len(groups)
    # The stored checkpoint is past the last transaction (its end, or a later heartbeat).
    assert parse_lsn(state(hcl, "cdc")["lsn"]) > lsns[-1]


def _workload(db: Db, rows: int = 0) -> tuple[list[str], Workload]:
    tables = [db.create_table("w1", "id int PRIMARY KEY, v int"), db.create_table("w2", "id int PRIMARY KEY, v int")]
    return tables, Workload(db.dsn, tables, [f"public.{t}" for t in tables], seed=random.randrange(1 << 30))


def _complete(reader: OutputReader, workload: Workload) -> bool:
    reader.poll()
    return workload.expected <= reader.seen


def _in_commit_order(reader: OutputReader) -> bool:
    orders = [c.order for c in reader.first_occurrences()]
    return orders == sorted(orders)


TOTAL = 110_000


def test_sigterm_mid_stream_then_resume_has_no_duplicates(
    db: Db, task_file: Callable[..., Path], tmp_path: Path
) -> None:
    tables, workload = _workload(db)
    slot = db.name("slot")
    db.create_slot(slot)
    out = tmp_path / "out.jsonl"
    hcl = task_file(cdc_task("cdc", db.dsn, tables, slot, str(out), config=FAST, plugin=db.plugin))
    workload.start(TOTAL)
    rng = random.Random()
    for _ in range(3):
        point = line_count(out) + rng.randint(5_000, 30_000)
        proc = start_run("cdc", hcl)
        wait_until(lambda p=point: line_count(out) >= p, f"{point} lines", proc)
        proc.send_signal(signal.SIGTERM)
        code, err = finish(proc)
        assert code == 0, err
    workload.join()
    proc = start_run("cdc", hcl)
    reader = OutputReader(out)
    wait_until(lambda: _complete(reader, workload), "every change in the output")
    proc.send_signal(signal.SIGTERM)
    code, err = finish(proc)
    assert code == 0, err
    reader.poll()
    assert workload.count >= TOTAL
    assert reader.duplicates() == 0
    assert len(reader.changes) == workload.count
    assert _in_commit_order(reader)


@pytest.mark.parametrize("target", ["orchestrator", "input", "output"])
def test_kill_9_at_random_points_then_resume_loses_nothing(
    db: Db, task_file: Callable[..., Path], tmp_path: Path, target: str
) -> None:
    tables, workload = _workload(db)
    slot = db.name("slot")
    db.create_slot(slot)
    out = tmp_path / "out.jsonl"
    hcl = task_file(cdc_task("cdc", db.dsn, tables, slot, str(out), config=FAST, plugin=db.plugin))
    workload.start(TOTAL)
    rng = random.Random()
    for _ in range(2):
        point = line_count(out) + rng.randint(5_000, 40_000)
        proc = start_run("cdc", hcl)
        wait_until(lambda p=point: line_count(out) >= p, f"{point} lines", proc)
        if target == "orchestrator":
            children = psutil.Process(proc.pid).children(recursive=True)
            kill(proc.pid)
            code, _ = finish(proc)
            assert code == -signal.SIGKILL
            wait_until(lambda c=children: all(gone(x) for x in c), "the providers to exit")
        else:
            name = "postgres-cdc-input-provider" if target == "input" else "file-output-provider"
            kill(provider_pid(proc, name))
            code, err = finish(proc)
            assert code == 1
            assert "killed by signal 9" in err
    workload.join()
    proc = start_run("cdc", hcl)
    reader = OutputReader(out)
    wait_until(lambda: _complete(reader, workload), "every change in the output")
    proc.send_signal(signal.SIGTERM)
    code, err = finish(proc)
    assert code == 0, err
    assert workload.expected <= reader.seen
    assert _in_commit_order(reader)


def test_restart_inside_a_large_transaction_neither_skips_nor_repeats(
    db: Db, task_file: Callable[..., Path], tmp_path: Path
) -> None:
    table = db.create_table("big", "id int PRIMARY KEY, v int")
    slot = db.name("slot")
    db.create_slot(slot)
    out = tmp_path / "out.jsonl"
    hcl = task_file(cdc_task("cdc", db.dsn, [table], slot, str(out), config=FAST, plugin=db.plugin))
    db.execute(f"INSERT INTO {table} SELECT g, 0 FROM generate_series(1, 150000) g")  # one transaction
    commit_lsn = None
    for point in (20_000, 70_000):
        proc = start_run("cdc", hcl)
        wait_until(lambda p=point: line_count(out) >= p, f"{point} lines")
        proc.send_signal(signal.SIGTERM)
        code, err = finish(proc)
        assert code == 0, err
        checkpoint = state(hcl, "cdc")
        assert set(checkpoint) == {"lsn", "index", "tables"}, checkpoint  # inside the transaction
        assert commit_lsn in (None, checkpoint["lsn"])
        commit_lsn = checkpoint["lsn"]
        assert checkpoint["index"] == line_count(out)  # exactly what the output holds
    # kill -9 of the input inside the transaction: at-least-once, then the rest.
    proc = start_run("cdc", hcl)
    wait_until(lambda: line_count(out) >= 100_000, "100000 lines")
    kill(provider_pid(proc, "postgres-cdc-input-provider"))
    assert finish(proc)[0] == 1
    proc = start_run("cdc", hcl)
    reader = OutputReader(out)
    wait_until(lambda: reader.poll() >= 150_000 and len(reader.seen) == 150_000, "the whole transaction")
    proc.send_signal(signal.SIGTERM)
    assert finish(proc)[0] == 0
    ids = [c.data["id"] for c in reader.first_occurrences()]
    assert ids == list(range(1, 150_001))
    assert all(c.meta["LSN"] == commit_lsn for c in reader.changes)
    assert parse_lsn(state(hcl, "cdc")["lsn"]) > parse_lsn(commit_lsn)  # past the transaction now


SLOW_OUTPUT = slow_file_output(500, 0.05)  # a slow sink, so that the first run is still inside the snapshot when killed


def test_initial_snapshot_while_writes_continue_replays_to_the_table_state(
    db: Db, task_file: Callable[..., Path], tmp_path: Path, script: Callable[[str, str], Path]
) -> None:
    single = db.create_table("s1", "id int PRIMARY KEY, v int")
    composite = db.create_table("s2", "k1 int, k2 text, v int, PRIMARY KEY (k1, k2)")
    db.execute(f"INSERT INTO {single} SELECT g, 0 FROM generate_series(1, 150000) g")
    db.execute(f"INSERT INTO {composite} SELECT mod(g, 100), 'k' || g, 0 FROM generate_series(1, 20000) g")
    slot = db.name("slot")
    out = tmp_path / "out.jsonl"
    config = f'snapshot = "initial"\n{FAST}'
    hcl = task_file(cdc_task("cdc", db.dsn, [single, composite], slot, str(out), config=config, plugin=db.plugin))
    slow = script("slow-output-provider", SLOW_OUTPUT)
    slow_hcl = task_file(
        cdc_task(
            "cdc",
            db.dsn,
            [single, composite],
            slot,
            str(out),
            config=config,
            output_source=f'provider_path = "{slow}"',
            plugin=db.plugin,
        ),
        name="slow.hcl",
    )
    assert run_cli("init", "cdc", "-f", str(hcl)).returncode == 0

    stop = {"now": False}

    def writer() -> None:
        rng = random.Random(5)
        with psycopg.connect(db.dsn, autocommit=True) as conn:
            n = 0
            while not stop["now"]:
                n += 1
                i = rng.randint(1, 160_000)
                conn.execute(
                    f"INSERT INTO {single} VALUES (%s, %s) ON CONFLICT (id) DO UPDATE SET v = excluded.v", (i, n)
                )
                conn.execute(f"DELETE FROM {single} WHERE id = %s", (rng.randint(1, 160_000),))
                g = rng.randint(1, 20_000)
                conn.execute(f"UPDATE {composite} SET v = %s WHERE k1 = %s AND k2 = %s", (n, g % 100, f"k{g}"))
                conn.execute(f"DELETE FROM {composite} WHERE k1 = %s AND k2 = %s", (n % 100, f"k{n}"))
                time.sleep(0.005)  # pacing: a steady trickle of writes, not a race fix

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    try:
        proc = start_run("cdc", slow_hcl)
        wait_until(lambda: bool(snapshotting(state(hcl, "cdc"))), "a checkpoint inside the snapshot", proc)
        kill(provider_pid(proc, "postgres-cdc-input-provider"))  # inside the snapshot of the first table
        assert finish(proc)[0] == 1
        checkpoint = state(hcl, "cdc")
        assert snapshotting(checkpoint) == {f"public.{single}", f"public.{composite}"}, checkpoint
        assert checkpoint["tables"][f"public.{single}"]["snapshot"]["after"] is not None  # inside the first table
        proc = start_run("cdc", hcl)
        wait_until(lambda: snapshotting(state(hcl, "cdc")) == set(), "the end of the snapshot", proc)
    finally:
        stop["now"] = True
        thread.join(30)
    db.execute(f"INSERT INTO {single} VALUES (-1, -1)")  # a marker after the last write
    reader = OutputReader(out)
    wait_until(lambda: reader.poll() > 0 and ("public." + single, "Insert", -1, -1) in reader.seen, "the marker")
    proc.send_signal(signal.SIGTERM)
    code, err = finish(proc)
    assert code == 0, err
    assert "resuming the snapshot of" in err

    replayed: dict[str, dict[Any, dict[str, Any]]] = {f"public.{single}": {}, f"public.{composite}": {}}
    for change in reader.changes:
        key = change.data["id"] if "id" in change.data else (change.data["k1"], change.data["k2"])
        rows = replayed[change.table]
        if change.op == "Delete":
            rows.pop(key, None)
        else:
            rows[key] = change.data
    # Every row the writer never touched (v = 0) came from the snapshot, as a Read.
    reads = {
        (c.table, c.data.get("id", (c.data.get("k1"), c.data.get("k2")))) for c in reader.changes if c.op == "Read"
    }
    untouched = [(f"public.{single}", i) for i, r in db.table_rows(single).items() if r["v"] == 0]
    untouched += [
        (f"public.{composite}", (r["k1"], r["k2"])) for r in db.table_rows(composite, "k2").values() if r["v"] == 0
    ]
    assert len(untouched) > 150_000
    missing = set(untouched) - reads
    assert not missing, [c for c in reader.changes if (c.table, c.data.get("id")) in list(missing)[:2]]
    assert replayed[f"public.{single}"] == db.table_rows(single)
    composite_rows = {(r["k1"], r["k2"]): r for r in db.table_rows(composite, "k2").values()}
    assert replayed[f"public.{composite}"] == composite_rows
