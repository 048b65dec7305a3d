"""mssql-cdc-input-provider against a real SQL Server 2022 (testcontainers), with the CDC
capture and cleanup jobs of SQL Server Agent: every point of issue 13 on the real thing.

Skipped unless DSTREAM_TEST_MSSQL=1: the SQL Server image is on MCR only, which development
machines cannot pull. .github/workflows/mssql.yml runs these after building and pushing the
provider image to a local registry: the pipeline test runs the image through `dstream run`
(host network); the kill -9 tests run the provider as a local process (so the process that
is killed is the provider, as a crash would), with the file output provider.

Timeouts: the first test's pytest timeout also covers the server's start-up (conftest.py
waits up to STARTUP = 240 s), so every test here allows at least 900 s.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import threading
import time
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil
import pytest
from dstream_mssql_cdc.changes import Layout
from dstream_mssql_cdc.config import MssqlCdcConfig, Target
from dstream_mssql_cdc.lsn import LSN_MAX, format_lsn, from_bytes, increment_lsn, to_bytes
from dstream_mssql_cdc.sql import changes_query

from tests.conftest import run_cli
from tests.faults import finish, gone, kill, line_count, provider_pid, slow_file_output, start_run, wait_until

from .conftest import STARTUP
from .fixtures import CUSTOMERS_COLUMNS, ORDERS_COLUMNS, REF
from .live import LiveInput

if TYPE_CHECKING:
    from collections.abc import Callable

    from dstream_mssql_cdc.db import Session

    from .conftest import Database

pytestmark = [pytest.mark.mssql, pytest.mark.timeout(int(STARTUP) + 660)]

PROVIDER_IMAGE = os.environ.get(
    "DSTREAM_TEST_MSSQL_PROVIDER_IMAGE", "127.0.0.1:5000/dstream/mssql-cdc-input-provider:0.1.0"
)
CONN_ENV = "DSTREAM_IT_MSSQL_CONNECTION"
LOGGER = "mssql-cdc-input-provider"
FAST = {"poll_interval": "100ms", "max_poll_interval": "1s"}


def create_tables(db: Database) -> None:
    db.execute(
        "CREATE TABLE dbo.Orders (id int PRIMARY KEY, customer nvarchar(50) NOT NULL, amount decimal(18, 2) NOT NULL,"
        " note nvarchar(max) NULL)"
    )
    db.execute(
        "CREATE TABLE dbo.Customers (id int PRIMARY KEY, name nvarchar(50) NOT NULL, photo varbinary(max) NULL,"
        " joined date NULL, ref uniqueidentifier NULL)"
    )


def fixture_workload(db: Database) -> None:
    """The workload of fixtures.py, transaction for transaction."""
    db.execute("INSERT INTO dbo.Orders VALUES (1, N'alice', 9.99, NULL)")
    db.execute(
        "BEGIN TRAN; INSERT INTO dbo.Customers VALUES (7, N'Zoë', 0x89504E47, '2020-02-29', ?);"
        " UPDATE dbo.Orders SET amount = 12.50 WHERE id = 1; COMMIT",
        REF,
    )
    db.execute(
        "BEGIN TRAN; INSERT INTO dbo.Orders VALUES (2, N'bob', 1.00, N'first'), (3, N'carol', 100000000000000.01, NULL);"
        " DELETE FROM dbo.Orders WHERE id = 1; COMMIT"
    )
    db.execute("UPDATE dbo.Customers SET name = N'Zoe' WHERE id = 7")
    # a key change of two rows: Split/Sort/Collapse records D(2), U(3), I(4) (fixtures.py, T5)
    db.execute("UPDATE dbo.Orders SET id = id + 1 WHERE id IN (2, 3)")


def captured_all(db: Database, counts: dict[str, int]) -> Callable[[], bool]:
    return lambda: all(db.captured(instance) >= n for instance, n in counts.items())


def session_for(connection_string: str) -> Session:
    from dstream_mssql_cdc.db import Session

    config = MssqlCdcConfig.model_validate({"connection_string": connection_string})
    return Session(connection_string, Target.from_config(config, "it"), 15, 60)


def rows(live: LiveInput) -> list[tuple[str, str, Any]]:
    return [(m["metadata"]["TableName"], m["metadata"]["OperationType"], m["data"].get("id")) for m in live.rows]


def test_recorded_shapes_match_the_server(database: Database) -> None:
    """What fixtures.py and server.py record is what this server answers: the help procedure's
    columns and lists, the captured columns, change rows in both modes, commit times with offset."""
    create_tables(database)
    database.enable_table("Orders")
    database.enable_table("Customers")
    fixture_workload(database)
    wait_until(captured_all(database, {"dbo_Orders": 10, "dbo_Customers": 3}), "the capture job")
    session = session_for(database.connection_string)
    state = session.state()
    assert state.max_lsn is not None
    assert state.max_time is not None
    assert state.max_time.utcoffset() is not None  # TODATETIMEOFFSET: an aware time
    instances = {i.name: i for i in state.instances}
    orders = instances["dbo_Orders"]
    assert (orders.schema, orders.table, orders.key, orders.captured) == (
        "dbo",
        "Orders",
        ("id",),
        ("id", "customer", "amount", "note"),
    )
    assert orders.min_lsn > 0
    assert orders.role is None
    for instance, recorded in ((orders, ORDERS_COLUMNS), (instances["dbo_Customers"], CUSTOMERS_COLUMNS)):
        columns = session.captured_columns(instance)
        assert [(c.name, c.type, c.max_length, c.lob, c.sql_type) for c in columns] == [
            (c.name, c.type, c.max_length, c.lob, c.sql_type) for c in recorded
        ]
        lob = [c for c in columns if c.lob]
        assert [c.ordinal for c in lob] == [c.ordinal for c in recorded if c.lob]
    # change rows: metadata as bytes/ints, the values' Python types, in both modes
    columns = session.captured_columns(orders)
    layout = Layout(columns)
    for direct in (True, False):
        rows_ = list(
            session.stream(changes_query(orders, columns, direct), to_bytes(orders.min_lsn), to_bytes(state.max_lsn))
        )
        assert [type(v) for v in rows_[0][:5]] == [bytes, bytes, int, bytes, int if direct else type(None)]
        assert isinstance(rows_[0][5], bool)  # the note's changed flag
        parsed = list(layout.parse(rows_))
        assert [r.operation for r in parsed][:3] == [2, 3, 4]
        assert parsed[0].values == (1, "alice", Decimal("9.99"), None)
        # the update of the amount left the nvarchar(max) note unchanged: its bit is clear
        assert parsed[1].changed == (False,)
        # the key change as fixtures.py records it (Split/Sort/Collapse): D(2), U(3) old + new, I(4)
        assert [(r.operation, r.values[0]) for r in parsed[-4:]] == [(1, 2), (3, 3), (4, 3), (2, 4)]
        assert [(r.values[1]) for r in parsed[-3:-1]] == ["carol", "bob"]  # U(3): carol's row becomes bob's
    customers = instances["dbo_Customers"]
    ccols = session.captured_columns(customers)
    first = next(
        iter(
            session.stream(changes_query(customers, ccols, True), to_bytes(customers.min_lsn), to_bytes(state.max_lsn))
        )
    )
    assert first[6:10] == (7, "Zoë", b"\x89PNG", date(2020, 2, 29))
    assert first[10].upper() == REF
    times = session.commit_times([from_bytes(first[0])])
    assert isinstance(times[from_bytes(first[0])], datetime)
    # the window end: at most n changes, the LSN of the last
    count, last = session.window_end(orders, True, 2, orders.min_lsn, state.max_lsn)
    assert count == 2
    assert last is not None
    # lsn.increment_lsn is sys.fn_cdc_increment_lsn, carries included
    for value in (
        state.max_lsn,
        from_bytes(bytes.fromhex("0000002A000001F0FFFF")),
        from_bytes(bytes.fromhex("0000002AFFFFFFFFFFFF")),
    ):
        assert session.increment_lsn(value) == increment_lsn(value), format_lsn(value)
    assert to_bytes(LSN_MAX) == b"\xff" * 10
    log_end = session.log_end()
    assert log_end is not None
    assert log_end >= state.max_lsn
    assert session.retention_minutes() == 4320
    assert session.capture_job() == "running"
    session.close()


def test_a_least_privileged_login_runs_and_a_missing_right_is_the_named_error(database: Database) -> None:
    """SELECT on the captured columns (and the gating role) is all `run` needs: it reads through the
    cdc functions. A column it may not read is an error naming login, table, right and GRANT."""
    create_tables(database)
    database.execute("CREATE ROLE cdc_readers")
    database.enable_table("Orders", role="cdc_readers")
    database.enable_table("Customers")
    fixture_workload(database)
    wait_until(captured_all(database, {"dbo_Orders": 10, "dbo_Customers": 3}), "the capture job")
    reader = database.login(
        "dstream_reader",
        [
            "GRANT SELECT ON dbo.Orders TO {user}",
            "GRANT SELECT ON dbo.Customers TO {user}",
            "ALTER ROLE cdc_readers ADD MEMBER {user}",
        ],
    )
    config = {"connection_string": reader, "tables": ["dbo.Orders", "dbo.Customers"], "snapshot": "never", **FAST}
    live = LiveInput(config)
    try:
        # 10 envelopes: Orders I1, U1, I2, I3, D1, D2, U3, I4 (T5 is D/U/I), Customers I7, U7
        live.wait(lambda r: len(r.rows) >= 10, "every change, as the least-privileged login")
    finally:
        assert live.stop() == 0
    assert len(live.rows) == 10
    assert [r[:2] for r in rows(live)].count(("dbo.Orders", "Insert")) == 4
    assert all(m["metadata"]["CommandID"] is None for m in live.rows)  # function mode: no command id
    assert all(m["metadata"]["CommitTime"] for m in live.rows)  # sys.fn_cdc_map_lsn_to_time is public


def test_the_named_errors_text(database: Database, caplog: pytest.LogCaptureFixture) -> None:
    create_tables(database)
    database.execute("CREATE ROLE cdc_readers")
    database.enable_table("Orders", role="cdc_readers")
    database.enable_table("Customers")
    database.execute("INSERT INTO dbo.Orders VALUES (1, N'a', 1, NULL)")
    wait_until(captured_all(database, {"dbo_Orders": 1}), "the capture job")
    cols = database.login(
        "dstream_cols2", ["GRANT SELECT ON dbo.Orders TO {user}", "GRANT SELECT ON dbo.Customers (id, name) TO {user}"]
    )
    config = {"connection_string": cols, "tables": ["dbo.Orders", "dbo.Customers"], "snapshot": "never", **FAST}
    with caplog.at_level(logging.ERROR, LOGGER):
        live = LiveInput(config)
        live.wait(lambda r: r.exit_code is not None, "the run to fail")
    text = caplog.text
    assert "login 'dstream_cols2' (database user 'dstream_cols2') may not read the changes of dbo.Orders" in text
    assert "what is missing is membership of the capture instance's gating role" in text  # Orders: the role
    caplog.clear()
    database.execute("ALTER ROLE cdc_readers ADD MEMBER [dstream_cols2]")
    with caplog.at_level(logging.ERROR, LOGGER):
        live = LiveInput(config)
        live.wait(lambda r: r.exit_code is not None, "the run to fail")
    assert "may not read the changes of dbo.Customers" in caplog.text
    assert "Missing: SELECT on [photo], [joined], [ref]" in caplog.text
    assert "GRANT SELECT ON [dbo].[Customers] TO [dstream_cols2];" in caplog.text


def snapshot_state(hcl: Path, task: str) -> Any:
    result = run_cli("state", "show", task, "-f", str(hcl))
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["checkpoint"]


def snapshot_rows(checkpoint: Any) -> int:
    if not checkpoint:
        return 0
    return sum(p.get("snapshot", {}).get("rows", 0) for p in checkpoint["tables"].values())


def inside_snapshot(checkpoint: Any) -> bool:
    return bool(checkpoint) and any("snapshot" in p for p in checkpoint["tables"].values())


def local_task(
    name: str, out: Path, tables: list[str], extra: str = "", output: str = 'provider_path = "file-output-provider"'
) -> str:
    return f"""
task "{name}" {{
  input {{
    provider_path = "mssql-cdc-input-provider"
    config {{
      connection_string = env("{CONN_ENV}")
      tables            = {json.dumps(tables)}
      poll_interval     = "100ms"
      max_poll_interval = "1s"
      {extra}
    }}
  }}
  output {{
    {output}
    config {{
      path  = "{out}"
      fsync = false
    }}
  }}
}}
"""


SLOW_OUTPUT = slow_file_output(1000, 0.25)  # 4000 rows/s: the run is still inside the snapshot when it is killed


def test_a_snapshot_of_three_tables_killed_inside_resumes_and_then_streams(
    database: Database,
    task_file: Callable[..., Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    script: Callable[[str, str], Path],
) -> None:
    monkeypatch.setenv(CONN_ENV, database.connection_string)
    tables = ["Alpha", "Beta", "Gamma"]
    for table in tables:
        # rows of 1 KB: what the input read ahead cannot all sit in the pipes and the relay's buffers
        database.execute(f"CREATE TABLE dbo.{table} (id int PRIMARY KEY, v nvarchar(20) NOT NULL, pad nchar(500) NULL)")
        database.execute(
            f"INSERT INTO dbo.{table} SELECT TOP (50000) ROW_NUMBER() OVER (ORDER BY (SELECT NULL)), N'x', N'p'"  # noqa: S608
            " FROM sys.all_columns a CROSS JOIN sys.all_columns b"
        )
        database.enable_table(table)
    database.execute("INSERT INTO dbo.Alpha VALUES (-1, N'seen by capture', NULL)")
    wait_until(captured_all(database, {"dbo_Alpha": 1}), "the capture job")
    out = tmp_path / "out.jsonl"
    names = [f"dbo.{t}" for t in tables]
    extra = "batch_size = 5000\n      enable_cdc = true"
    hcl = task_file(local_task("snap", out, names, extra))
    slow = script("slow-output-provider", SLOW_OUTPUT)
    slow_hcl = task_file(local_task("snap", out, names, extra, f'provider_path = "{slow}"'), name="slow.hcl")
    assert run_cli("init", "snap", "-f", str(hcl), timeout=300).returncode == 0  # allows snapshot isolation

    proc = start_run("snap", slow_hcl)
    wait_until(lambda: line_count(out) >= 20_000, "20000 snapshot rows in the output", proc)
    children = psutil.Process(proc.pid).children(recursive=True)
    kill(provider_pid(proc, "mssql-cdc-input-provider"))
    assert finish(proc)[0] == 1
    wait_until(lambda: all(gone(c) for c in children), "the killed run's providers to exit")
    inside = snapshot_state(hcl, "snap")
    assert inside_snapshot(inside), inside
    assert 0 < snapshot_rows(inside) < 150_000, inside  # killed after acknowledged chunks, before the end
    # Writes while the task is down, and after: all of them come as changes once the snapshot is done.
    database.execute("UPDATE dbo.Beta SET v = N'changed' WHERE id <= 10")
    proc = start_run("snap", hcl)
    wait_until(lambda: not inside_snapshot(snapshot_state(hcl, "snap")), "the end of the snapshot", proc)
    database.execute("INSERT INTO dbo.Gamma VALUES (60000, N'after', NULL)")
    wait_until(lambda: '"id":60000' in out.read_text(), "the change after the snapshot", proc)
    proc.send_signal(signal.SIGTERM)
    code, err = finish(proc)
    assert code == 0, err
    assert "resuming the snapshot of" in err
    envelopes = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
    for name in names:
        ids = {
            e["data"]["id"]
            for e in envelopes
            if e["metadata"]["TableName"] == name and e["metadata"]["OperationType"] == "Read"
        }
        assert set(range(1, 50_001)) <= ids, f"{name}: {50_000 - len(ids & set(range(1, 50_001)))} rows missing"
    reads = sum(1 for e in envelopes if e["metadata"]["OperationType"] == "Read")
    assert reads < 2 * 150_000  # resumed after the acknowledged chunks, not from the start
    changes = [
        (e["metadata"]["TableName"], e["metadata"]["OperationType"], e["data"]["id"])
        for e in envelopes
        if e["metadata"]["OperationType"] not in ("Read", "SchemaChange")
    ]
    assert ("dbo.Gamma", "Insert", 60000) in changes  # the stream goes on after the snapshot
    # Changes made while the task was down follow the snapshot's point: they come as changes.
    assert {c[2] for c in changes if c[:2] == ("dbo.Beta", "Update")} == set(range(1, 11))
    assert ("dbo.Alpha", "Insert", -1) not in changes  # committed before the snapshot: in its rows only


def test_a_keyless_table_killed_inside_its_snapshot_is_read_again_and_streams_from_the_new_point(
    database: Database,
    task_file: Callable[..., Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    script: Callable[[str, str], Path],
) -> None:
    """Issue 22, defect 7: the re-read's rows are as of the new snapshot M2, so the changes
    made while the task was down are in them and must not come again as changes."""
    monkeypatch.setenv(CONN_ENV, database.connection_string)
    database.execute("CREATE TABLE dbo.Heap (id int NOT NULL, v nvarchar(20) NOT NULL, pad nchar(500) NULL)")
    database.execute(
        "INSERT INTO dbo.Heap SELECT TOP (50000) ROW_NUMBER() OVER (ORDER BY (SELECT NULL)), N'x', N'p'"
        " FROM sys.all_columns a CROSS JOIN sys.all_columns b"
    )
    database.enable_table("Heap")
    database.execute("INSERT INTO dbo.Heap VALUES (-1, N'seen by capture', NULL)")
    wait_until(captured_all(database, {"dbo_Heap": 1}), "the capture job")
    out = tmp_path / "out.jsonl"
    extra = "batch_size = 5000\n      enable_cdc = true"
    hcl = task_file(local_task("heap", out, ["dbo.Heap"], extra))
    slow = script("slow-output-provider", SLOW_OUTPUT)
    slow_hcl = task_file(local_task("heap", out, ["dbo.Heap"], extra, f'provider_path = "{slow}"'), name="slow.hcl")
    assert run_cli("init", "heap", "-f", str(hcl), timeout=300).returncode == 0

    proc = start_run("heap", slow_hcl)
    wait_until(lambda: line_count(out) >= 10_000, "10000 snapshot rows in the output", proc)
    children = psutil.Process(proc.pid).children(recursive=True)
    kill(provider_pid(proc, "mssql-cdc-input-provider"))
    assert finish(proc)[0] == 1
    wait_until(lambda: all(gone(c) for c in children), "the killed run's providers to exit")
    inside = snapshot_state(hcl, "heap")
    assert inside_snapshot(inside), inside
    database.execute("UPDATE dbo.Heap SET v = N'changed' WHERE id BETWEEN 1 AND 10")  # while the task is down
    wait_until(captured_all(database, {"dbo_Heap": 1 + 2 * 10}), "the capture job to harvest the updates")
    proc = start_run("heap", hcl)
    wait_until(lambda: not inside_snapshot(snapshot_state(hcl, "heap")), "the end of the snapshot", proc)
    database.execute("INSERT INTO dbo.Heap VALUES (60000, N'after', NULL)")
    wait_until(lambda: '"id":60000' in out.read_text(), "the change after the snapshot", proc)
    proc.send_signal(signal.SIGTERM)
    code, err = finish(proc)
    assert code == 0, err
    assert "restarting the snapshot of dbo.Heap from its first row" in err
    envelopes = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
    last_read = {
        e["data"]["id"]: e["data"]["v"] for e in envelopes if e["metadata"]["OperationType"] == "Read"
    }  # the re-read's rows come after the first pass's
    assert set(range(1, 50_001)) <= set(last_read)
    assert {last_read[i] for i in range(1, 11)} == {"changed"}  # the re-read is as of M2
    changes = [
        (e["metadata"]["OperationType"], e["data"]["id"])
        for e in envelopes
        if e["metadata"]["OperationType"] not in ("Read", "SchemaChange")
    ]
    assert not [c for c in changes if c[0] == "Update"], changes[:20]  # in the rows already: not again
    assert ("Insert", 60000) in changes


def apply_in_order(envelopes: list[dict[str, Any]]) -> dict[int, Any]:
    """A replica built by applying the output in order, by Key: Read/Insert/Update upsert (an
    update's old key removed), Delete removes."""
    rows: dict[int, Any] = {}
    for e in envelopes:
        meta, data = e["metadata"], e["data"]
        op = meta["OperationType"]
        if op == "SchemaChange":
            continue
        if op == "Delete":
            rows.pop(meta["Key"]["id"], None)
            continue
        before = meta.get("Before")
        if op == "Update" and before is not None:
            rows.pop(before["id"], None)
        rows[data["id"]] = data["v"]
    return rows


@pytest.mark.timeout(int(STARTUP) + 2400)  # each chunk waits for the capture job to harvest its close row
def test_an_incremental_snapshot_killed_inside_under_concurrent_writes_ends_with_the_sources_rows(
    database: Database,
    task_file: Callable[..., Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    script: Callable[[str, str], Path],
) -> None:
    """Issue 24 on SQL Server: 100K rows snapshotted in chunks between the changes (watermark
    rows in the CDC-enabled signal table init creates), updates, key updates, inserts and
    deletes throughout, kill -9 inside the snapshot; the output applied in order equals the table."""
    monkeypatch.setenv(CONN_ENV, database.connection_string)
    database.execute("CREATE TABLE dbo.Big (id int PRIMARY KEY, v int NOT NULL, pad nchar(200) NULL)")
    database.execute(
        "INSERT INTO dbo.Big SELECT TOP (100000) ROW_NUMBER() OVER (ORDER BY (SELECT NULL)), 0, N'p'"
        " FROM sys.all_columns a CROSS JOIN sys.all_columns b"
    )
    database.enable_table("Big")
    out = tmp_path / "out.jsonl"
    extra = 'snapshot = "incremental"\n      snapshot_chunk_size = 2000\n      enable_cdc = true'
    hcl = task_file(local_task("incr", out, ["dbo.Big"], extra))
    slow = script("slow-output-provider", SLOW_OUTPUT)
    slow_hcl = task_file(local_task("incr", out, ["dbo.Big"], extra, f'provider_path = "{slow}"'), name="slow.hcl")
    assert run_cli("init", "incr", "-f", str(hcl), timeout=300).returncode == 0  # creates the signal table
    assert (
        database.value(
            "SELECT COUNT(*) FROM cdc.change_tables WHERE source_object_id = OBJECT_ID(N'dbo.dstream_signals')"
        )
        == 1
    )
    stop = threading.Event()

    def writer() -> None:  # through the whole snapshot, both runs and the kill
        conn = database.server.connect(database.name)
        n = 0
        while not stop.is_set():
            n += 1
            key = 1 + (n * 7919) % 100_000
            cur = conn.cursor()
            if n % 10 == 0:
                cur.execute("DELETE FROM dbo.Big WHERE id = ?", key)
            elif n % 10 == 1:
                cur.execute("UPDATE dbo.Big SET id = ? WHERE id = ?", 200_000 + n, key)  # a key update
            elif n % 10 == 2:
                cur.execute("INSERT INTO dbo.Big (id, v) VALUES (?, ?)", 300_000 + n, n)
            else:
                cur.execute("UPDATE dbo.Big SET v = ? WHERE id = ?", n, key)
            time.sleep(0.005)  # pacing: a steady stream of writes, not a race fix
        conn.close()

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    try:
        proc = start_run("incr", slow_hcl)
        wait_until(lambda: line_count(out) >= 20_000, "20000 lines in the output", proc)
        children = psutil.Process(proc.pid).children(recursive=True)
        kill(provider_pid(proc, "mssql-cdc-input-provider"))
        assert finish(proc)[0] == 1
        wait_until(lambda: all(gone(c) for c in children), "the killed run's providers to exit")
        inside = snapshot_state(hcl, "incr")
        assert "incremental" in inside["tables"]["dbo.Big"], inside  # killed inside the snapshot
        proc = start_run("incr", hcl)
        wait_until(
            lambda: "incremental" not in snapshot_state(hcl, "incr")["tables"]["dbo.Big"],
            "the end of the incremental snapshot",
            proc,
            timeout=1500,
            interval=2.0,
        )
    finally:
        stop.set()
        thread.join()
    expected = {int(i): int(v) for i, v in database.execute("SELECT id, v FROM dbo.Big")}

    def caught_up() -> bool:
        lines = [json.loads(x) for x in out.read_text().splitlines() if x.strip()]
        return apply_in_order(lines) == expected

    wait_until(caught_up, "the replica to equal the table", proc, timeout=600, interval=2.0)
    proc.send_signal(signal.SIGTERM)
    code, err = finish(proc)
    assert code == 0, err
    assert "resuming the incremental snapshot of dbo.Big" in err
    envelopes = [json.loads(x) for x in out.read_text().splitlines() if x.strip()]
    reads = sum(1 for e in envelopes if e["metadata"]["OperationType"] == "Read")
    assert reads < 2 * 100_000  # resumed after the acknowledged chunks, not from the first row
    summary_line(f"mssql incremental snapshot: {reads} Read envelopes for 100000 rows across a kill -9")
    assert run_cli("destroy", "incr", "-f", str(hcl), timeout=300).returncode == 0
    assert database.value("SELECT OBJECT_ID(N'dbo.dstream_signals')") is None


def verb(config: dict[str, Any], command: str, task: str, arguments: Any = None) -> Any:
    """A lifecycle verb of the provider, run in this process as `dstream <verb>` sends it."""
    from dstream_mssql_cdc import MssqlCdcInputProvider

    from dstream.sdk.testing import run_provider

    result = run_provider(MssqlCdcInputProvider, config, checkpoint=arguments, task=task, command=command)
    assert result.exit_code == 0, result.messages
    return result


def snapshot_gauges(live: LiveInput, name: str) -> list[float]:
    return [m["gauge"]["value"] for m in live.messages if "gauge" in m and m["gauge"]["name"] == name]


@pytest.mark.timeout(int(STARTUP) + 900)
def test_incremental_snapshot_progress_reaches_100_percent_with_a_rate_for_a_login_without_view_database_state(
    database: Database,
) -> None:
    """Issue 24's progress on SQL Server: the row estimate comes from sys.partitions, which a
    login with SELECT on the table sees without VIEW DATABASE STATE; percent climbs to 100 and
    the rate is positive."""
    database.execute("CREATE TABLE dbo.Prog (id int PRIMARY KEY, v int NOT NULL)")
    database.execute(
        "INSERT INTO dbo.Prog SELECT TOP (5000) ROW_NUMBER() OVER (ORDER BY (SELECT NULL)), 0"
        " FROM sys.all_columns a CROSS JOIN sys.all_columns b"
    )
    database.enable_table("Prog")
    database.execute("CREATE TABLE dbo.Hidden (id int PRIMARY KEY)")
    database.execute("INSERT INTO dbo.Hidden VALUES (1), (2)")
    admin = {"connection_string": database.connection_string, "tables": ["dbo.Prog"], "snapshot": "incremental"}
    verb({**admin, "enable_cdc": True}, "init", "progress")  # the signal table, CDC on it, the task's mark
    reader = database.login(
        "dstream_progress",
        [
            "GRANT SELECT ON dbo.Prog TO {user}",
            "GRANT SELECT, INSERT ON dbo.dstream_signals TO {user}",
        ],
    )
    session = session_for(reader)
    session.connect()
    try:
        assert session.value("SELECT HAS_PERMS_BY_NAME(DB_NAME(), N'DATABASE', N'VIEW DATABASE STATE')") == 0
        estimate = session.row_estimate(int(database.value("SELECT OBJECT_ID(N'dbo.Prog')")))
        assert estimate is not None
        assert estimate > 0
        # the recorded server's rule (server.py): no permission on a table, no partition of it visible
        assert session.row_estimate(int(database.value("SELECT OBJECT_ID(N'dbo.Hidden')"))) is None
    finally:
        session.close()
    config = {**admin, "connection_string": reader, "snapshot_chunk_size": 500, **FAST}
    live = LiveInput(config, task="progress")
    try:
        live.wait(lambda r: 100.0 in snapshot_gauges(r, "snapshot_percent"), "the snapshot at 100%", timeout=600)
    finally:
        assert live.stop() == 0
    percents = snapshot_gauges(live, "snapshot_percent")
    assert percents == sorted(percents), percents  # it only climbs
    assert any(0.0 < p < 100.0 for p in percents), percents  # the estimate gave real intermediate values
    assert snapshot_gauges(live, "snapshot_rows")[-1] == 5000.0
    assert snapshot_gauges(live, "snapshot_rows_per_second")[-1] > 0
    assert sorted(m["data"]["id"] for m in live.rows if m["metadata"]["OperationType"] == "Read") == list(
        range(1, 5001)
    )
    summary_line(f"mssql incremental snapshot progress: estimate {estimate} rows, percents {percents}")


@pytest.mark.timeout(int(STARTUP) + 900)
def test_signals_sent_before_a_tasks_first_incremental_run_are_acted_on_and_leave_a_first_snapshot_whole(
    database: Database,
) -> None:
    """A task that streamed with snapshot = "never", switched to "incremental" and init-ed, gets a
    `dstream snapshot --where` while stopped and before it ever read the signal table: its next run
    snapshots exactly the rows of the condition. A new task given a stop-snapshot before its first
    run still snapshots every row (its own first snapshot stands, planned after the signal)."""
    database.execute("CREATE TABLE dbo.Pre (id int PRIMARY KEY, v int NOT NULL)")
    database.execute(
        "INSERT INTO dbo.Pre SELECT TOP (300) ROW_NUMBER() OVER (ORDER BY (SELECT NULL)), 0"
        " FROM sys.all_columns a CROSS JOIN sys.all_columns b"
    )
    database.enable_table("Pre")
    base = {"connection_string": database.connection_string, "tables": ["dbo.Pre"], **FAST}
    database.execute("UPDATE dbo.Pre SET v = 1 WHERE id = 1")
    wait_until(captured_all(database, {"dbo_Pre": 2}), "the capture job")
    streaming = LiveInput({**base, "snapshot": "never", "start": "latest"}, task="pre")
    try:
        streaming.wait(lambda r: bool(r.checkpoints), "a checkpoint of the streaming task")
    finally:
        assert streaming.stop() == 0
    checkpoint = streaming.checkpoints[-1]
    assert "dbo.Pre" in checkpoint["tables"]
    incremental = {**base, "snapshot": "incremental"}
    verb({**incremental, "enable_cdc": True}, "init", "pre")  # the signal table and the task's mark
    verb(incremental, "snapshot", "pre", {"tables": ["dbo.Pre"], "where": {"dbo.Pre": "id > 100"}})
    resumed = LiveInput(incremental, checkpoint, task="pre")
    try:
        resumed.wait(lambda r: 100.0 in snapshot_gauges(r, "snapshot_percent"), "the signalled snapshot", timeout=600)
    finally:
        assert resumed.stop() == 0
    reads = sorted(m["data"]["id"] for m in resumed.rows if m["metadata"]["OperationType"] == "Read")
    assert reads == list(range(101, 301))  # the condition's rows, once
    # A second task on the same signal table: its mark comes after the first task's signal (not
    # its), then a DBA's stop-snapshot before its first run, which its own first snapshot overrides.
    verb({**incremental, "enable_cdc": True}, "init", "fresh")
    database.execute(
        "INSERT INTO dbo.dstream_signals (id, type, data) VALUES ('dba-stop', 'stop-snapshot',"
        ' N\'{"data-collections": ["dbo.Pre"], "type": "incremental"}\')'
    )
    fresh = LiveInput({**incremental, "snapshot_chunk_size": 100}, task="fresh")
    try:
        fresh.wait(lambda r: 100.0 in snapshot_gauges(r, "snapshot_percent"), "the fresh task's snapshot", timeout=600)
    finally:
        assert fresh.stop() == 0
    assert sorted(m["data"]["id"] for m in fresh.rows if m["metadata"]["OperationType"] == "Read") == list(
        range(1, 301)
    )


def summary_line(text: str) -> None:
    """A line of the workflow's job summary (GitHub Actions), and of the test log."""
    logging.getLogger(LOGGER).info("%s", text)
    path = os.environ.get("GITHUB_STEP_SUMMARY")
    if path:
        with Path(path).open("a", encoding="utf-8") as summary:
            summary.write(text + "\n")


class Lines:
    """Lines of a growing file, counted incrementally (a re-read of a 0.5 GB file each poll would
    compete with the run it measures)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.count = 0

    def __call__(self) -> int:
        if self.path.exists():
            with self.path.open("rb") as f:
                f.seek(self.offset)
                data = f.read()
            self.offset += len(data)
            self.count += data.count(b"\n")
        return self.count


def wait_progress(
    count: Callable[[], int], target: int, what: str, proc: Any, stall: float = 120.0, limit: float = 2000.0
) -> None:
    """Wait for ``count() >= target`` while it keeps growing: fail when it stalls for ``stall``
    seconds or ``limit`` passes (review row 7: a fixed 120 s for a million rows needed > 8,300/s)."""
    started = last_change = time.monotonic()
    seen = -1
    while (now := count()) < target:
        if proc.poll() is not None:
            err = proc.stderr.read().decode() if proc.stderr else ""
            raise AssertionError(f"dstream exited ({proc.returncode}) before {what} ({now}/{target}):\n{err[-3000:]}")
        moment = time.monotonic()
        if now != seen:
            seen, last_change = now, moment
        if moment - last_change > stall or moment - started > limit:
            raise AssertionError(f"timed out waiting for {what}: {now}/{target} after {moment - started:.0f}s")
        time.sleep(1.0)


@pytest.mark.timeout(int(STARTUP) + 2400)
def test_a_million_row_update_backlog_is_read_with_no_query_over_query_timeout(
    database: Database, task_file: Callable[..., Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(CONN_ENV, database.connection_string)
    database.execute("CREATE TABLE dbo.Big (id int PRIMARY KEY, v int NOT NULL, pad nchar(20) NOT NULL DEFAULT N'p')")
    database.execute(
        "INSERT INTO dbo.Big (id, v) SELECT TOP (1000000) ROW_NUMBER() OVER (ORDER BY (SELECT NULL)), 0"
        " FROM sys.all_columns a CROSS JOIN sys.all_columns b CROSS JOIN sys.all_columns c"
    )
    database.enable_table("Big")
    database.execute("INSERT INTO dbo.Big (id, v) VALUES (-1, 0)")  # the capture job has started
    wait_until(captured_all(database, {"dbo_Big": 1}), "the capture job")
    for first in range(1, 1_000_001, 100_000):  # the backlog: ten 100,000-row transactions
        database.execute("UPDATE dbo.Big SET v = 1 WHERE id BETWEEN ? AND ?", first, first + 99_999)
    wait_until(
        captured_all(database, {"dbo_Big": 1 + 2 * 1_000_000}), "the capture job to harvest the backlog", timeout=1800
    )
    out = tmp_path / "out.jsonl"
    hcl = task_file(local_task("big", out, ["dbo.Big"], 'snapshot = "never"\n      query_timeout = "30s"'))
    started = time.monotonic()
    proc = start_run("big", hcl)
    wait_progress(Lines(out), 1_000_002, "every change of the backlog", proc)
    took = time.monotonic() - started
    proc.send_signal(signal.SIGTERM)
    code, err = finish(proc)
    assert code == 0, err
    assert "timed out" not in err  # no query over query_timeout (it would be retried as a lost connection)
    assert "more than half of query_timeout" not in err
    updates = 0
    with out.open() as lines:
        for line in lines:
            if '"OperationType":"Update"' in line:
                updates += 1
    assert updates == 1_000_000
    slowest = next((line for line in err.splitlines() if "changes/s" in line), "")
    summary_line(
        f"mssql-cdc: 1,000,000-row update backlog read in {took:.0f}s ({1_000_000 / took:,.0f} changes/s); {slowest.strip()}"
    )


def test_function_mode_reads_a_transaction_larger_than_batch_size_in_pages_and_says_how_long_they_took(
    database: Database, caplog: pytest.LogCaptureFixture
) -> None:
    """Review row 6, the part only a real server can measure: a least-privileged login (function
    mode) reads one 200,000-change transaction with batch_size 10,000 in TOP pages; no page may
    pass query_timeout, and the slowest one's time goes to the job summary."""
    database.execute("CREATE TABLE dbo.Wide (id int PRIMARY KEY, v int NOT NULL)")
    database.enable_table("Wide")
    database.execute("INSERT INTO dbo.Wide SELECT value, 0 FROM GENERATE_SERIES(1, 200000)")
    wait_until(captured_all(database, {"dbo_Wide": 200_000}), "the capture job", timeout=600)
    reader = database.login("dstream_pages", ["GRANT SELECT ON dbo.Wide TO {user}"])
    config = {"connection_string": reader, "tables": ["dbo.Wide"], "snapshot": "never", "batch_size": 10_000}
    started = time.monotonic()
    with caplog.at_level(logging.INFO, LOGGER):
        live = LiveInput({**config, "query_timeout": "60s", **FAST})
        try:
            live.wait(lambda r: len(r.rows) >= 200_000, "the whole transaction", 1800)
        finally:
            assert live.stop() == 0
    took = time.monotonic() - started
    assert len({m["data"]["id"] for m in live.rows}) == 200_000
    assert all(m["metadata"]["CommandID"] is None for m in live.rows)  # function mode
    assert "timed out" not in caplog.text
    slowest = next((r.getMessage() for r in caplog.records if "changes/s" in r.getMessage()), "")
    summary_line(f"mssql-cdc: function mode, one 200,000-change transaction in pages of 10,000: {took:.0f}s; {slowest}")


def test_a_capture_instance_switch_mid_stream_announces_the_new_columns_and_loses_no_row(database: Database) -> None:
    database.execute("CREATE TABLE dbo.Items (id int PRIMARY KEY, v int NOT NULL)")
    database.enable_table("Items", "dbo_Items_v1")
    database.execute("INSERT INTO dbo.Items VALUES (1, 1), (2, 2)")
    wait_until(captured_all(database, {"dbo_Items_v1": 2}), "the capture job")
    live = LiveInput(
        {"connection_string": database.connection_string, "tables": ["dbo.Items"], "snapshot": "never", **FAST}
    )
    stop = threading.Event()
    written: list[int] = []

    def writer() -> None:  # changes keep coming while the schema changes
        conn = database.server.connect(database.name)
        n = 100
        while not stop.is_set():
            conn.cursor().execute("INSERT INTO dbo.Items (id, v) VALUES (?, ?)", n, n)
            written.append(n)
            n += 1
            time.sleep(0.02)  # pacing: a steady trickle, not a race fix
        conn.close()

    thread = threading.Thread(target=writer, daemon=True)
    try:
        live.wait(lambda r: len(r.rows) >= 2, "the first changes")
        thread.start()
        database.execute("ALTER TABLE dbo.Items ADD channel nvarchar(10) NULL")
        database.enable_table("Items", "dbo_Items_v2")
        database.execute("INSERT INTO dbo.Items VALUES (3, 3, N'web')")
        wait_until(captured_all(database, {"dbo_Items_v2": 1}), "the new capture instance")
        live.wait(lambda r: any(m["data"].get("id") == 3 for m in r.rows), "the row of the new shape")
        stop.set()
        thread.join(30)
        live.wait(lambda r: {m["data"]["id"] for m in r.rows} >= set(written), "every row written meanwhile")
    finally:
        stop.set()
        assert live.stop() == 0
    data = live.data
    switch = next(
        i
        for i, m in enumerate(data)
        if m["metadata"]["OperationType"] == "SchemaChange" and m["metadata"].get("Reason") == "capture instance switch"
    )
    first_v2 = next(
        i
        for i, m in enumerate(data)
        if m["metadata"].get("CaptureInstance") == "dbo_Items_v2" and m["metadata"]["OperationType"] != "SchemaChange"
    )
    assert switch < first_v2
    change = data[switch]["metadata"]
    assert change["PreviousCaptureInstance"] == "dbo_Items_v1"
    assert [c["name"] for c in change["Columns"]] == ["id", "v", "channel"]
    ids = [m["data"]["id"] for m in live.rows]
    assert len(ids) == len(set(ids))  # none twice across the switch
    assert set(written) | {1, 2, 3} <= set(ids)  # none lost


def test_large_objects_and_types_pyodbc_cannot_read(database: Database) -> None:
    database.execute(
        "CREATE TABLE dbo.Docs (id int PRIMARY KEY, title nvarchar(20) NOT NULL, body nvarchar(max) NULL,"
        " blob varbinary(max) NULL, old ntext NULL, pic image NULL, doc xml NULL, v sql_variant NULL,"
        " node hierarchyid NULL, shape geometry NULL, place geography NULL)"
    )
    database.enable_table("Docs")
    database.execute(
        "INSERT INTO dbo.Docs VALUES (1, N't', REPLICATE(CAST(N'b' AS nvarchar(max)), 9000), 0x0102, N'old', 0x03,"
        " N'<a>1</a>', CAST(12.5 AS decimal(5, 2)), hierarchyid::Parse('/1/2/'), geometry::Point(1, 2, 0),"
        " geography::Point(47.5, 8.5, 4326))"
    )
    database.execute("INSERT INTO dbo.Docs (id, title, v) VALUES (2, N'u', CAST(0xCAFE AS varbinary(2)))")
    # money in a sql_variant keeps its 4 decimals; a geometry its Z and M (review row 13)
    database.execute(
        "INSERT INTO dbo.Docs (id, title, v, shape) VALUES (3, N'm', CAST(12.3456 AS money),"
        " geometry::STGeomFromText('POINT (1 2 3 4)', 0))"
    )
    database.execute("UPDATE dbo.Docs SET title = N't2' WHERE id = 1")  # the large objects unchanged
    database.execute("DELETE FROM dbo.Docs WHERE id = 1")
    wait_until(captured_all(database, {"dbo_Docs": 6}), "the capture job")
    config = {"connection_string": database.connection_string, "tables": ["dbo.Docs"], "snapshot": "never", **FAST}
    live = LiveInput({**config, "unavailable_value": "<unavailable>"})
    try:
        live.wait(lambda r: len(r.rows) >= 5, "the five changes")
    finally:
        assert live.stop() == 0
    insert, variant, money, update, delete = live.rows
    assert money["data"]["v"] == "12.3456"
    assert money["data"]["shape"] == "SRID=0;POINT (1 2 3 4)"
    assert insert["data"]["body"] == "b" * 9000
    assert insert["data"]["v"] == "12.50"  # sql_variant as text
    assert insert["data"]["node"] == "/1/2/"
    assert insert["data"]["shape"] == "SRID=0;POINT (1 2)"
    assert insert["data"]["place"].startswith("SRID=4326;POINT (8.5 47.5")
    assert insert["data"]["doc"] == "<a>1</a>"
    assert variant["data"]["v"] == "0xCAFE"
    before = update["metadata"]["Before"]
    assert before["old"] == before["pic"] == "<unavailable>"  # ntext/image: never in before-images
    assert before["body"] == "<unavailable>"  # nvarchar(max) unchanged: not recorded
    assert set(update["metadata"]["BeforeUnavailable"]) >= {"body", "blob", "old", "pic"}
    assert update["data"]["title"] == "t2"
    assert delete["data"]["old"] == delete["data"]["pic"] == "<unavailable>"  # never in deletes
    assert delete["data"]["body"] == "b" * 9000  # (n)varchar(max) has its value in a delete
    excluded = LiveInput({**config, "exclude_columns": {"dbo.Docs": ["body", "blob"]}})
    try:
        excluded.wait(lambda r: len(r.rows) >= 5, "the five changes again")
    finally:
        assert excluded.stop() == 0
    assert all("body" not in m["data"] and "blob" not in m["data"] for m in excluded.rows)


def test_a_hierarchyid_key_larger_than_batch_size_is_snapshotted_whole(database: Database) -> None:
    """Review row 2: /1/10/ < /1/2/ as text, > as a hierarchyid; every row is read once."""
    database.execute("CREATE TABLE dbo.Tree (node hierarchyid PRIMARY KEY, v int NOT NULL)")
    database.execute(
        "INSERT INTO dbo.Tree SELECT hierarchyid::Parse(CONCAT('/1/', value, '/')), value FROM GENERATE_SERIES(1, 25)"
    )
    database.enable_table("Tree")
    database.execute("INSERT INTO dbo.Tree VALUES (hierarchyid::Parse('/2/'), 0)")
    wait_until(captured_all(database, {"dbo_Tree": 1}), "the capture job")
    config = {"connection_string": database.connection_string, "tables": ["dbo.Tree"], "batch_size": 4, **FAST}
    live = LiveInput({**config, "snapshot_isolation": "read_committed"})
    try:
        live.wait(lambda r: sum(m["metadata"]["OperationType"] == "Read" for m in r.rows) >= 26, "every row")
    finally:
        assert live.stop() == 0
    read = [m["data"]["node"] for m in live.rows if m["metadata"]["OperationType"] == "Read"]
    assert sorted(read) == sorted([f"/1/{i}/" for i in range(1, 26)] + ["/2/"])


def test_deferred_updates_and_a_transaction_larger_than_batch_size_across_tables(database: Database) -> None:
    create_tables(database)
    database.enable_table("Orders")
    database.enable_table("Customers")
    database.execute("INSERT INTO dbo.Orders (id, customer, amount) SELECT value, N'c', 1 FROM GENERATE_SERIES(1, 10)")
    # one transaction, 3000 changes per table, the tables' statements interleaved
    batches = []
    for n in range(0, 3000, 500):
        batches.append(
            f"INSERT INTO dbo.Orders (id, customer, amount) SELECT value, N'big', 1 FROM GENERATE_SERIES({1000 + n}, {1499 + n});"  # noqa: S608
            f" INSERT INTO dbo.Customers (id, name) SELECT value, N'big' FROM GENERATE_SERIES({1000 + n}, {1499 + n});"
        )
    database.execute("BEGIN TRAN; " + " ".join(batches) + " COMMIT")
    # a key update of 10 rows: Split/Sort/Collapse records D(1), U(2..10), I(11): 20 change-table
    # rows (an update is two), 11 envelopes
    database.execute("UPDATE dbo.Orders SET id = id + 1 WHERE id BETWEEN 1 AND 10")
    wait_until(captured_all(database, {"dbo_Orders": 10 + 3000 + 20, "dbo_Customers": 3000}), "the capture job")
    config = {"connection_string": database.connection_string, "tables": ["dbo.Orders", "dbo.Customers"]}
    live = LiveInput({**config, "snapshot": "never", "batch_size": 1000, **FAST})
    try:
        live.wait(lambda r: len(r.rows) >= 10 + 6000 + 11, "every change")
    finally:
        assert live.stop() == 0
    big = [
        m
        for m in live.rows
        if m["data"].get("customer", m["data"].get("name")) == "big" and m["metadata"]["OperationType"] == "Insert"
    ]
    assert len(big) == 6000
    assert len({m["metadata"]["LSN"] for m in big}) == 1  # one transaction
    for table in ("dbo.Orders", "dbo.Customers"):  # each table in statement order (__$command_id, documented)
        ids = [m["data"]["id"] for m in big if m["metadata"]["TableName"] == table]
        assert ids == sorted(ids), table
    assert [m["metadata"]["CommandID"] for m in big] == sorted(m["metadata"]["CommandID"] for m in big)
    # Across tables the merge follows __$command_id, whose numbering across change tables Microsoft does
    # not document (review row 10): observed, not asserted.
    tables = [m["metadata"]["TableName"] for m in big]
    interleaved = tables == [t for _ in range(6) for t in ["dbo.Orders"] * 500 + ["dbo.Customers"] * 500]
    summary_line(f"mssql-cdc: cross-table statement order inside one transaction by __$command_id: {interleaved}")
    key_update = [m for m in live.rows if m["metadata"]["TableName"] == "dbo.Orders" and m["data"]["id"] <= 11]
    assert [m["metadata"]["OperationType"] for m in key_update[-11:]] == ["Delete"] + ["Update"] * 9 + ["Insert"]
    # The key update, replayed by key, ends in the table's state (deletes come before inserts).
    orders: dict[int, Any] = {}
    for m in live.rows:
        if m["metadata"]["TableName"] != "dbo.Orders":
            continue
        key = m["metadata"]["Key"]["id"]
        if m["metadata"]["OperationType"] == "Delete":
            orders.pop(key, None)
            continue
        before = m["metadata"].get("Before")
        if before is not None and before["id"] != key:
            orders.pop(before["id"], None)  # an update that moved the key
        orders[key] = m["data"]
    assert sorted(orders) == [i for (i,) in database.execute("SELECT id FROM dbo.Orders ORDER BY id")]


def task_hcl(name: str, out: Path, tables: list[str] | None, extra: str = "") -> str:
    listed = f"tables = {json.dumps(tables)}" if tables is not None else ""
    return f"""
task "{name}" {{
  input {{
    provider_ref = "{PROVIDER_IMAGE}"
    config {{
      connection_string = env("{CONN_ENV}")
      {listed}
      poll_interval     = "100ms"
      max_poll_interval = "1s"
      {extra}
    }}
    container {{ network = "host" }}
  }}
  output {{
    provider_path = "file-output-provider"
    config {{
      path  = "{out}"
      fsync = false
    }}
  }}
}}
"""


def lifecycle(verb: str, task: str, hcl: Path) -> list[dict[str, Any]]:
    result = run_cli(verb, task, "-f", str(hcl), "--json", *(["--yes"] if verb == "destroy" else []), timeout=300)
    assert result.returncode == 0, result.stderr
    return [row for row in json.loads(result.stdout)["resources"] if row["role"] == "input"]


def envelopes(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_init_snapshot_run_kill_9_resume_status_destroy_through_dstream_run(
    database: Database, task_file: Callable[..., Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(CONN_ENV, database.connection_string)
    create_tables(database)
    database.execute("INSERT INTO dbo.Orders VALUES (1, N'before', 1.00, NULL)")  # a row the snapshot brings
    out = tmp_path / "out.jsonl"
    hcl = task_file(task_hcl("mssql-it", out, ["dbo.Orders", "Customers"], "enable_cdc = true"))
    plan = lifecycle("plan", "mssql-it", hcl)
    assert {(r["type"], r["name"], r["action"]) for r in plan} == {
        ("cdc_database", database.name, "create"),
        ("snapshot_isolation", database.name, "update"),
        ("capture_instance", "dbo_Orders", "create"),
        ("capture_instance", "dbo_Customers", "create"),
    }
    init = lifecycle("init", "mssql-it", hcl)
    assert [(r["type"], r["action"]) for r in init] == [
        ("cdc_database", "create"),
        ("snapshot_isolation", "update"),
        ("capture_instance", "create"),
        ("capture_instance", "create"),
    ]
    assert lifecycle("init", "mssql-it", hcl)[2]["action"] == "none"  # idempotent
    proc = start_run("mssql-it", hcl)
    # The run's snapshot reads what the table holds when it starts (review row 3): a row inserted
    # before `run` is a Read; one inserted once the snapshot is done is a change.
    wait_until(lambda: any(e["metadata"]["OperationType"] == "Read" for e in envelopes(out)), "the snapshot", proc)
    database.execute("INSERT INTO dbo.Orders VALUES (2, N'after', 2.00, NULL)")
    wait_until(
        lambda: any(e["data"].get("id") == 2 and e["metadata"]["OperationType"] == "Insert" for e in envelopes(out)),
        "the change after the snapshot",
        proc,
    )
    # kill -9 of dstream while changes stream in; the next run resumes: nothing missing
    written: list[int] = []

    def workload() -> None:
        conn = database.server.connect(database.name)
        for n in range(100, 1100):
            conn.cursor().execute("INSERT INTO dbo.Orders VALUES (?, N'w', 1.00, NULL)", n)
            written.append(n)
        conn.close()

    writer = threading.Thread(target=workload, daemon=True)
    writer.start()
    wait_until(lambda: line_count(out) >= 200, "200 envelopes", proc)
    kill(proc.pid, signal.SIGKILL)
    finish(proc)
    writer.join(300)
    assert not writer.is_alive()
    proc = start_run("mssql-it", hcl)
    wait_until(
        lambda: set(written) <= {e["data"].get("id") for e in envelopes(out)}, f"all {len(written)} inserts", proc
    )
    proc.send_signal(signal.SIGTERM)
    code, err = finish(proc)
    assert code == 0, err
    assert database.server.password not in err
    got = envelopes(out)
    reads = [e for e in got if e["metadata"]["OperationType"] == "Read"]
    assert [e["data"]["id"] for e in reads] == [1]
    first = next(e for e in got if e["metadata"]["OperationType"] == "Insert")
    commit_time = database.value("SELECT sys.fn_cdc_map_lsn_to_time(?)", bytes.fromhex(first["metadata"]["LSN"]))
    assert first["metadata"]["CommitTime"].startswith(commit_time.isoformat(timespec="milliseconds"))
    assert re.search(r"[+-]\d\d:\d\d$", first["metadata"]["CommitTime"])  # with the server's UTC offset
    # status: the task's checkpoint gives each table's lag
    status = {(r["type"], r["name"]): r for r in lifecycle("status", "mssql-it", hcl)}
    assert status[("cdc_database", database.name)]["details"]["capture_job"] == "running"
    assert status[("table", "dbo.Orders")]["state"] == "streaming"
    assert status[("table", "dbo.Orders")]["details"]["lag_seconds"] is not None
    assert status[("capture_instance", "dbo_Orders")]["details"]["key"] == ["id"]
    destroy = lifecycle("destroy", "mssql-it", hcl)
    assert {(r["name"], r["action"]) for r in destroy} >= {("dbo_Orders", "delete"), ("dbo_Customers", "delete")}
    assert database.value("SELECT is_cdc_enabled FROM sys.databases WHERE database_id = DB_ID()") == 0


def test_a_checkpoint_older_than_cdc_retention_is_an_explicit_error_or_with_when_needed_a_new_snapshot(
    database: Database, task_file: Callable[..., Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(CONN_ENV, database.connection_string)
    create_tables(database)
    database.enable_table("Orders")
    out = tmp_path / "out.jsonl"
    hcl = task_file(local_task("purge", out, ["dbo.Orders"], 'snapshot = "never"'))
    database.execute("INSERT INTO dbo.Orders VALUES (1, N'a', 1.00, NULL)")
    wait_until(captured_all(database, {"dbo_Orders": 1}), "the capture job")
    proc = start_run("purge", hcl)
    wait_until(lambda: line_count(out) >= 2, "the schema envelope and the first change", proc)
    proc.send_signal(signal.SIGTERM)
    assert finish(proc)[0] == 0
    database.execute("INSERT INTO dbo.Orders VALUES (2, N'b', 2.00, NULL)")
    wait_until(captured_all(database, {"dbo_Orders": 2}), "the capture job")
    database.execute(
        "DECLARE @lsn binary(10) = sys.fn_cdc_get_max_lsn();"
        " EXEC sys.sp_cdc_cleanup_change_table @capture_instance = N'dbo_Orders', @low_water_mark = @lsn,"
        " @threshold = 5000"
    )
    before = line_count(out)
    code, err = finish(start_run("purge", hcl))
    assert code == 1
    assert "changes were purged by CDC retention" in err
    assert line_count(out) == before  # nothing more was emitted
    # This database never had ALLOW_SNAPSHOT_ISOLATION set (no `init`; it is OFF in a new database), so
    # the default snapshot_isolation = "snapshot" would fail with error 3952 (review row 4).
    extra = 'snapshot = "when_needed"\n      snapshot_isolation = "read_committed"'
    again = task_file(local_task("purge", out, ["dbo.Orders"], extra), name="again.hcl")
    proc = start_run("purge", again)
    wait_until(
        lambda: sum(1 for e in envelopes(out) if e["metadata"]["OperationType"] == "Read") >= 2, "a new snapshot", proc
    )
    proc.send_signal(signal.SIGTERM)
    code, err = finish(proc)
    assert code == 0, err


def test_a_stopped_capture_job_is_reported(database: Database, caplog: pytest.LogCaptureFixture) -> None:
    database.execute(
        "CREATE TABLE dbo.Ticks (id int IDENTITY PRIMARY KEY, at datetime2 NOT NULL DEFAULT SYSDATETIME())"
    )
    database.enable_table("Ticks")
    database.execute("INSERT INTO dbo.Ticks DEFAULT VALUES")
    wait_until(captured_all(database, {"dbo_Ticks": 1}), "the capture job")
    database.execute("EXEC sys.sp_cdc_stop_job @job_type = N'capture'")
    config = {
        "connection_string": database.connection_string,
        "tables": ["dbo.Ticks"],
        "snapshot": "never",
        "poll_interval": "200ms",
        "max_poll_interval": "1s",
        "capture_job_timeout": "5s",
    }
    live = LiveInput(config)
    stop = threading.Event()

    def ticks() -> None:  # the log keeps moving while the job is stopped
        conn = database.server.connect(database.name)
        while not stop.wait(0.5):
            conn.cursor().execute("INSERT INTO dbo.Ticks DEFAULT VALUES")
        conn.close()

    writer = threading.Thread(target=ticks, daemon=True)
    try:
        with caplog.at_level(logging.INFO, LOGGER):
            live.wait(lambda r: len(r.rows) >= 1, "the captured change")
            writer.start()
            wait_until(lambda: "the CDC capture job is not running" in caplog.text, "the capture-job warning")
            assert "while the transaction log moved on" in caplog.text
            database.execute("EXEC sys.sp_cdc_start_job @job_type = N'capture'")
            wait_until(lambda: "capturing changes again" in caplog.text, "the recovery")
            live.wait(lambda r: len(r.rows) >= 3, "changes captured after the restart")
    finally:
        stop.set()
        writer.join(30)
        assert live.stop() == 0
