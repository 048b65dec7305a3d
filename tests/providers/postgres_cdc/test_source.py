"""The provider in-process (no orchestrator) against the real PostgreSQL: snapshot/stream
consistency, value rendering, resume positions, heartbeats, slot release, reconnects."""

# ruff: noqa: S608 - SQL here names the test's own generated tables; nothing comes from outside

from __future__ import annotations

import random
import threading
import time
from typing import TYPE_CHECKING, Any, ClassVar

import dstream_postgres_cdc.provider as provider_module
import psycopg
import pytest
from dstream_postgres_cdc import PostgresCdcInputProvider
from dstream_postgres_cdc.lsn import parse_lsn

from tests.waiting import wait_until

from .helpers import LiveInput

if TYPE_CHECKING:
    from .helpers import Db

pytestmark = pytest.mark.postgres


def config(db: Db, tables: list[str], **extra: Any) -> dict[str, Any]:
    return {
        "dsn": db.dsn,
        "tables": tables,
        "slot_name": db.name("slot"),
        "poll_interval": 0.05,
        "max_poll_interval": 0.2,
        **extra,
    }


class EveryRecord(PostgresCdcInputProvider):
    """Checkpoints after every record, so every position can be resumed from."""

    checkpoint_every: ClassVar[int] = 1  # type: ignore[misc]


def test_initial_snapshot_is_exactly_consistent_with_the_stream(db: Db) -> None:
    """With writes going on, the snapshot plus the stream replay strictly: no insert of a row
    the snapshot already had, no update or delete of a row it lacked, and each update's and
    delete's old row (REPLICA IDENTITY FULL) equals the replayed row."""
    table = db.create_table("t", "id int PRIMARY KEY, v int")
    db.execute(f"ALTER TABLE {table} REPLICA IDENTITY FULL")
    db.execute(f"INSERT INTO {table} SELECT g, 0 FROM generate_series(1, 30000) g")
    db.create_slot(db.name("slot"))
    stop = threading.Event()

    def writer() -> None:
        rng = random.Random(3)
        next_id = 30001
        with psycopg.connect(db.dsn, autocommit=True) as conn:
            n = 0
            while not stop.is_set():
                n += 1
                conn.execute(f"INSERT INTO {table} VALUES (%s, %s)", (next_id, n))
                next_id += 1
                conn.execute(f"UPDATE {table} SET v = %s WHERE id = %s", (n, rng.randint(1, next_id)))
                conn.execute(f"DELETE FROM {table} WHERE id = %s", (rng.randint(1, next_id),))

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    live = LiveInput(PostgresCdcInputProvider, config(db, [table], snapshot="initial", batch_size=3000))
    try:
        live.wait(lambda lv: len(lv.data) > 40_000, "the snapshot and some changes")
    finally:
        stop.set()
        thread.join(30)
    db.execute(f"INSERT INTO {table} VALUES (-1, -1)")
    live.wait(lambda lv: any(m["data"].get("id") == -1 for m in lv.data[-50:]), "the marker")
    assert live.stop() == 0

    rows: dict[int, dict[str, Any]] = {}
    ops = [m["metadata"]["OperationType"] for m in live.data]
    first_change = next(i for i, op in enumerate(ops) if op != "Read")
    assert set(ops[:first_change]) == {"Read"}
    assert "Read" not in ops[first_change:]
    assert first_change >= 30_000 - 2_000  # the snapshot: the initial rows, less the few deleted meanwhile
    for message in live.data:
        data, meta = message["data"], message["metadata"]
        key, op = data["id"], meta["OperationType"]
        if op in ("Read", "Insert"):
            assert key not in rows, f"{op} of a row already present: {data}"
            rows[key] = data
        else:
            assert rows.get(key) == meta["Before"], f"{op} whose old row differs from the replayed one: {message}"
            if op == "Update":
                rows[key] = data
            else:
                del rows[key]
    assert rows == db.table_rows(table)


TYPES = """id int PRIMARY KEY, b bool, n numeric, nan float8, f4 real, big bigint, s smallint, t text, j jsonb,
arr int[], by bytea, ts timestamptz, tsz timestamp, d date, u uuid, iv interval, ch char(3), dom pos_int,
g int GENERATED ALWAYS AS (id * 2) STORED, nul text"""
VALUES = """%s, true, 123456789.123450, 'NaN', 1.5, 9223372036854775807, -7, E'he"llo\\n\\u00e9', '{"a": [1, 2]}',
'{1,2}', '\\xdeadbeef', '2024-01-02 03:04:05.678+02', '2024-01-02 03:04:05', '2024-01-02',
'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '1 day 02:00:00', 'ab', 5, DEFAULT, NULL"""


@pytest.mark.parametrize("numeric_as_string", [False, True])
def test_values_are_the_same_from_the_snapshot_and_from_the_stream(db: Db, numeric_as_string: bool) -> None:
    domain = db.name("pos")
    db.execute(f"CREATE DOMAIN {domain} AS int CHECK (VALUE > 0)")
    try:
        table = db.create_table("types", TYPES.replace("pos_int", domain))
        db.execute(f"INSERT INTO {table} VALUES ({VALUES})", (1,))
        db.create_slot(db.name("slot"))
        cfg = config(db, [table], snapshot="initial", numeric_as_string=numeric_as_string)
        live = LiveInput(PostgresCdcInputProvider, cfg)
        live.wait(lambda lv: len(lv.data) == 1, "the snapshot row")
        db.execute(f"INSERT INTO {table} VALUES ({VALUES})", (2,))
        live.wait(lambda lv: len(lv.data) == 2, "the streamed row")
        assert live.stop() == 0
    finally:
        db.execute(f"DROP TABLE IF EXISTS {db.name('types')}")
        db.execute(f"DROP DOMAIN {domain}")
    read, insert = (m["data"] for m in live.data)
    assert [m["metadata"]["OperationType"] for m in live.data] == ["Read", "Insert"]
    assert {read.pop("id"), insert.pop("id")} == ({1, 2} if not numeric_as_string else {"1", "2"})
    assert read.pop("g") == (2 if not numeric_as_string else "2")
    insert.pop("g", None)
    assert read == insert
    if numeric_as_string:
        assert (read["n"], read["big"], read["s"], read["dom"]) == (
            "123456789.123450",
            "9223372036854775807",
            "-7",
            "5",
        )
        assert read["nan"] is None  # NaN and infinities are null either way (wal2json's rule)
    else:
        assert (read["n"], read["big"], read["nan"], read["s"]) == (123456789.12345, 9223372036854775807, None, -7)
        assert read["dom"] == "5"  # a domain is not a number type to wal2json: text
    assert read["b"] is True
    assert read["by"] == "deadbeef"
    assert read["t"] == 'he"llo\né'
    assert read["ts"] == "2024-01-02 01:04:05.678+00"  # timezone = "UTC" (the default)
    assert (read["j"], read["arr"], read["ch"], read["nul"]) == ('{"a": [1, 2]}', "{1,2}", "ab ", None)


def test_the_replication_connection_renders_values_like_the_snapshot_whatever_the_roles_defaults(db: Db) -> None:
    """wal2json renders with the walsender's settings: a role whose defaults differ from the
    provider's (ALTER ROLE ... SET) still streams exactly what its snapshot reads."""
    dsn = db.user_dsn("renders")
    role = db.name("renders")
    for setting in (
        "DateStyle = 'SQL, DMY'",
        "IntervalStyle = 'sql_standard'",
        "extra_float_digits = 0",
        "bytea_output = 'escape'",
        "TimeZone = 'America/St_Johns'",
    ):
        db.execute(f'ALTER ROLE "{role}" SET {setting}')
    table = db.create_table(
        "render", "id int PRIMARY KEY, ts timestamptz, tsz timestamp, d date, iv interval, f8 float8, f4 real, by bytea"
    )
    row = "%s, '2024-01-02 03:04:05.678+02', '2024-01-02 03:04:05', '2024-01-02', '1 day 02:03:04', 0.1::float8 + 0.2::float8, 1.1, '\\xdeadbeef'"
    db.execute(f"INSERT INTO {table} VALUES ({row})", (1,))
    db.create_slot(db.name("slot"))
    cfg = {**config(db, [table], snapshot="initial", timezone="Asia/Kolkata"), "dsn": dsn}
    live = LiveInput(PostgresCdcInputProvider, cfg)
    live.wait(lambda lv: len(lv.data) == 1, "the snapshot row")
    db.execute(f"INSERT INTO {table} VALUES ({row})", (2,))
    live.wait(lambda lv: len(lv.data) == 2, "the streamed row")
    assert live.stop() == 0
    read, insert = (m["data"] for m in live.data)
    assert [m["metadata"]["OperationType"] for m in live.data] == ["Read", "Insert"]
    assert (read.pop("id"), insert.pop("id")) == (1, 2)
    assert insert == read
    assert insert == {
        "ts": "2024-01-02 06:34:05.678+05:30",  # timezone = "Asia/Kolkata", DateStyle ISO
        "tsz": "2024-01-02 03:04:05",
        "d": "2024-01-02",
        "iv": "1 day 02:03:04",  # IntervalStyle postgres
        "f8": 0.30000000000000004,  # extra_float_digits 1: the shortest exact text
        "f4": 1.1,
        "by": "deadbeef",  # bytea_output hex
    }
    assert "+05:30" in str(live.data[1]["metadata"]["CommitTime"])  # the commit time in the same zone


def test_resuming_from_every_checkpoint_neither_skips_nor_repeats(db: Db) -> None:
    table = db.create_table("t", "id int PRIMARY KEY, v int")
    other = db.create_table("o", "id int PRIMARY KEY, v int")
    db.create_slot(db.name("slot"))
    with db.conn.transaction():
        db.execute(f"INSERT INTO {table} SELECT g, 0 FROM generate_series(1, 7) g")
    db.execute(f"INSERT INTO {other} VALUES (1, 1)")  # no captured change: a heartbeat
    with db.conn.transaction():
        db.execute(f"UPDATE {table} SET v = 1 WHERE id <= 3")
        db.execute(f"INSERT INTO {other} VALUES (2, 2)")
        db.execute(f"DELETE FROM {table} WHERE id = 7")
    db.execute(f"INSERT INTO {table} VALUES (8, 0)")
    live = LiveInput(EveryRecord, config(db, [table]), auto_commit=False)
    live.wait(lambda lv: len(lv.data) == 12, "12 changes")
    assert live.stop() == 0
    full = [(m["data"], m["metadata"]["OperationType"]) for m in live.data]
    checkpoints = live.checkpoints
    inside = [c for c in checkpoints if "index" in c]
    assert len(inside) == 6 + 3  # after each change of the two transactions but their last
    # Replay from each checkpoint: what follows it is exactly the rest.
    seen = 0
    for checkpoint in checkpoints:
        while seen < len(live.messages) and live.messages[seen].get("checkpoint") != checkpoint:
            seen += 1
        emitted = sum(1 for m in live.messages[:seen] if "data" in m)
        resumed = LiveInput(EveryRecord, config(db, [table]), checkpoint=checkpoint, auto_commit=False)
        rest = len(full) - emitted
        resumed.wait(lambda lv, n=rest: len(lv.data) >= n and lv.checkpoints != [], "the rest")
        assert resumed.stop() == 0
        assert [(m["data"], m["metadata"]["OperationType"]) for m in resumed.data] == full[emitted:], checkpoint


def test_the_slot_moves_only_to_committed_positions(db: Db) -> None:
    table = db.create_table("t")
    slot = db.name("slot")
    start = db.create_slot(slot)
    db.execute(f"INSERT INTO {table} SELECT g, 'x' FROM generate_series(1, 5000) g")
    db.execute(f"INSERT INTO {table} VALUES (0, 'last')")
    live = LiveInput(PostgresCdcInputProvider, config(db, [table]), auto_commit=False)
    live.wait(lambda lv: len(lv.data) == 5001 and len(lv.checkpoints) >= 2, "the changes and checkpoints")
    assert db.slot(slot)["confirmed"] == start  # checkpoints alone release nothing
    first = live.checkpoints[0]
    live.commit(first)
    wait_until(lambda: db.slot(slot)["confirmed"] == parse_lsn(first["lsn"]), "the slot at the committed position")
    last = live.checkpoints[-1]  # later (idle) checkpoints may follow: commit this one
    live.commit(last)
    wait_until(lambda: db.slot(slot)["confirmed"] == parse_lsn(last["lsn"]), "the slot to follow")
    reader = db.slot(db.name("slot_reader"))
    assert reader is not None
    assert reader["temporary"]
    assert reader["active_pid"]
    assert live.stop() == 0
    wait_until(lambda: db.slot(db.name("slot_reader")) is None, "the temporary reader slot to go with its session")


def test_heartbeats_advance_the_checkpoint_and_the_slot_while_the_captured_table_is_idle(db: Db) -> None:
    captured = db.create_table("quiet")
    busy = db.create_table("busy")
    slot = db.name("slot")
    start = db.create_slot(slot)
    live = LiveInput(PostgresCdcInputProvider, config(db, [captured]))
    for i in range(200):
        db.execute(f"INSERT INTO {busy} VALUES (%s, 'other table')", (i,))
    after = db.flush_lsn()
    live.wait(lambda lv: any(parse_lsn(c["lsn"]) >= after for c in lv.checkpoints), "a heartbeat past the writes")
    wait_until(lambda: db.slot_at_least(slot, after), "the slot to follow the heartbeats")
    assert db.slot(slot)["confirmed"] > start
    assert live.data == []
    assert live.stop() == 0


def test_changes_are_pushed_at_once_whatever_the_poll_interval(db: Db) -> None:
    """The server pushes each commit: after a quiet spell a change arrives in well under a
    second even with poll_interval = 5 s (the polling reader waited up to max_poll_interval)."""
    table = db.create_table("t")
    slot = db.name("slot")
    db.create_slot(slot)
    live = LiveInput(PostgresCdcInputProvider, config(db, [table], poll_interval=5, max_poll_interval=10))
    wait_until(lambda: db.slot_ready(db.name("slot_reader")), "the run to stream")
    quiet = db.flush_lsn()
    live.wait(lambda lv: any(parse_lsn(c["lsn"]) >= quiet for c in lv.checkpoints), "the reader to go idle")
    delays = []
    for i in range(5):
        db.execute(f"INSERT INTO {table} VALUES (%s, 'x')", (i,))
        committed = time.monotonic()
        live.wait(lambda lv, n=i + 1: len(lv.data) == n, f"change {i + 1}")
        delays.append(time.monotonic() - committed)
    assert live.stop() == 0
    assert max(delays) < 1.0, delays


def test_heartbeats_alone_never_move_the_slot_before_the_orchestrator_commits_them(db: Db) -> None:
    """Keepalives carry the server's position while the captured table is quiet: they make
    checkpoints, but the task's slot stays where it was until one is committed (and then
    goes exactly there), however many keepalives the replication connection handles."""
    captured = db.create_table("quiet")
    busy = db.create_table("busy")
    slot = db.name("slot")
    start = db.create_slot(slot)
    live = LiveInput(PostgresCdcInputProvider, config(db, [captured]), auto_commit=False)
    wait_until(lambda: db.slot_ready(db.name("slot_reader")), "the run to stream")
    for round_ in range(3):
        for i in range(50):
            db.execute(f"INSERT INTO {busy} VALUES (%s, 'other table')", (round_ * 100 + i,))
        after = db.flush_lsn()
        live.wait(lambda lv, a=after: any(parse_lsn(c["lsn"]) >= a for c in lv.checkpoints), "a heartbeat")
        assert db.slot(slot)["confirmed"] == start
    heartbeat = live.checkpoints[-1]
    live.commit(heartbeat)
    wait_until(lambda: db.slot(slot)["confirmed"] == parse_lsn(heartbeat["lsn"]), "the slot at the committed heartbeat")
    assert live.data == []
    assert live.stop() == 0
    assert db.slot(slot)["confirmed"] == parse_lsn(heartbeat["lsn"])


def test_a_second_run_of_the_task_is_refused_while_the_first_streams(
    db: Db, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The reader copy belongs to the first run's replication connection (its active_pid):
    a second run waits for it to go, then fails with one line; the first keeps streaming."""
    monkeypatch.setattr(provider_module, "READER_WAIT", 1.0)
    table = db.create_table("t")
    db.create_slot(db.name("slot"))
    first = LiveInput(PostgresCdcInputProvider, config(db, [table]))
    wait_until(lambda: db.slot_ready(db.name("slot_reader")), "the first run to stream")
    second = LiveInput(PostgresCdcInputProvider, config(db, [table]))
    assert second.wait_exit() == 1
    assert second.data == []
    pid = db.slot(db.name("slot_reader"))["active_pid"]
    failures = [r.getMessage() for r in caplog.records if "running twice" in r.getMessage()]
    assert failures == [
        f'dstream-failure: replication slot "{db.name("slot")}" is already being read (temporary slot '
        f'"{db.name("slot_reader")}", backend pid {pid}): is this task running twice?'
    ]
    db.execute(f"INSERT INTO {table} VALUES (1, 'after')")
    first.wait(lambda lv: len(lv.data) == 1, "the first run's change")
    assert first.stop() == 0


def test_a_restarted_server_session_is_reconnected_without_loss_or_duplicates(db: Db) -> None:
    table = db.create_table("t", "id int PRIMARY KEY, v int")
    db.create_slot(db.name("slot"))
    task = db.name("task")
    live = LiveInput(PostgresCdcInputProvider, config(db, [table]), task=task)
    total = 0
    for round_ in range(3):
        db.execute(
            f"INSERT INTO {table} SELECT g, %s FROM generate_series(%s::int, %s::int) g",
            (round_, total + 1, total + 20000),
        )
        total += 20000
        live.wait(lambda lv, n=total - 15000: len(lv.data) >= n, f"{total - 15000} changes")
        # The server ends the provider's session (as on a restart or failover) mid-stream.
        assert db.terminate(f"dstream:{task}") >= 1
    live.wait(lambda lv: len(lv.data) >= total, "every change")
    assert live.stop() == 0
    assert [m["data"]["id"] for m in live.data] == list(range(1, total + 1))


def test_unchanged_toast_values_come_from_the_old_row_and_truncates_are_reported(db: Db) -> None:
    table = db.create_table("t", "id int PRIMARY KEY, small text, big text")
    db.execute(f"ALTER TABLE {table} ALTER COLUMN big SET STORAGE EXTERNAL")
    db.execute(f"ALTER TABLE {table} REPLICA IDENTITY FULL")
    db.create_slot(db.name("slot"))
    big = "x" * 10_000
    db.execute(f"INSERT INTO {table} VALUES (1, 'a', %s)", (big,))
    db.execute(f"UPDATE {table} SET small = 'b' WHERE id = 1")  # big is not rewritten: TOAST unchanged
    db.execute(f"TRUNCATE {table}")
    live = LiveInput(PostgresCdcInputProvider, config(db, [table]))
    live.wait(lambda lv: len(lv.data) == 3, "3 changes")
    assert live.stop() == 0
    _insert, update, truncate = live.data
    assert update["data"] == {"id": 1, "small": "b", "big": big}
    assert update["metadata"]["Before"] == {"id": 1, "small": "a", "big": big}
    assert truncate["metadata"]["OperationType"] == "Truncate"
    assert truncate["data"] == {}


def test_snapshot_of_a_table_without_a_key_pages_through_it_and_restarts_it_on_resume(db: Db) -> None:
    table = db.create_table("nokey", "id int, v text")
    db.execute(f"ALTER TABLE {table} REPLICA IDENTITY FULL")
    db.execute(f"INSERT INTO {table} SELECT g, 'x' FROM generate_series(1, 25000) g")
    db.create_slot(db.name("slot"))
    cfg = config(db, [table], snapshot="initial", batch_size=10_000)  # three pages, by ctid
    live = LiveInput(PostgresCdcInputProvider, cfg, auto_commit=False)
    live.wait(lambda lv: len(lv.data) == 25_000, "the snapshot")
    assert live.stop() == 0
    assert sorted(m["data"]["id"] for m in live.data) == list(range(1, 25_001))
    inside = [c for c in live.checkpoints if "snapshot" in c["tables"][f"public.{table}"]]
    assert inside
    assert all(c["tables"][f"public.{table}"]["snapshot"]["after"] is None for c in inside)  # no key to resume by
    resumed = LiveInput(PostgresCdcInputProvider, cfg, checkpoint=inside[0], auto_commit=False)
    resumed.wait(lambda lv: len(lv.data) == 25_000, "the table again, from its first row")
    assert resumed.stop() == 0
    assert sorted(m["data"]["id"] for m in resumed.data) == list(range(1, 25_001))
