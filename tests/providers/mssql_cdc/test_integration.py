"""mssql-cdc-input-provider against a real SQL Server 2022 (testcontainers), with the CDC
capture and cleanup jobs of SQL Server Agent.

Skipped unless DSTREAM_TEST_MSSQL=1: the SQL Server image is on MCR only, which development
machines cannot pull. .github/workflows/mssql.yml runs these after building and pushing the
provider images (`dstream providers push --all --build`) to a local registry: the pipeline
tests run the provider image through `dstream run` (host network), with the file output
provider as a local process.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
from datetime import date
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import pytest
from dstream_mssql_cdc.changes import Layout, RecordBuilder, pair_updates
from dstream_mssql_cdc.config import MssqlCdcConfig, Target
from dstream_mssql_cdc.lsn import LSN_MAX, format_lsn, from_bytes, increment_lsn, to_bytes
from dstream_mssql_cdc.stream import Window

from dstream import protocol
from tests.conftest import run_cli
from tests.faults import finish, kill, line_count, start_run, wait_until

from .fixtures import CUSTOMERS_COLUMNS, CUSTOMERS_ROWS, ORDERS_COLUMNS, ORDERS_ROWS, REF
from .live import LiveInput, wait_for

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from .conftest import Database

pytestmark = pytest.mark.mssql

PROVIDER_IMAGE = os.environ.get(
    "DSTREAM_TEST_MSSQL_PROVIDER_IMAGE", "127.0.0.1:5000/dstream/mssql-cdc-input-provider:0.1.0"
)
CONN_ENV = "DSTREAM_IT_MSSQL_CONNECTION"
LOGGER = "mssql-cdc-input-provider"


def create_tables(db: Database) -> None:
    db.execute(
        "CREATE TABLE dbo.Orders (id int PRIMARY KEY, customer nvarchar(50) NOT NULL, amount decimal(18, 2) NOT NULL,"
        " note nvarchar(100) NULL)"
    )
    db.execute(
        "CREATE TABLE dbo.Customers (id int PRIMARY KEY, name nvarchar(50) NOT NULL, photo varbinary(16) NULL,"
        " joined date NULL, ref uniqueidentifier NULL)"
    )


def fixture_workload(db: Database) -> None:
    """The workload recorded in fixtures.py, transaction for transaction."""
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


EXPECTED = [
    ("dbo.Orders", "Insert", {"id": 1, "customer": "alice", "amount": 9.99, "note": None}, None),
    (
        "dbo.Customers",
        "Insert",
        {"id": 7, "name": "Zoë", "photo": "iVBORw==", "joined": "2020-02-29", "ref": REF},
        None,
    ),
    (
        "dbo.Orders",
        "Update",
        {"id": 1, "customer": "alice", "amount": 12.5, "note": None},
        {"id": 1, "customer": "alice", "amount": 9.99, "note": None},
    ),
    ("dbo.Orders", "Insert", {"id": 2, "customer": "bob", "amount": 1.0, "note": "first"}, None),
    ("dbo.Orders", "Insert", {"id": 3, "customer": "carol", "amount": 100000000000000.01, "note": None}, None),
    (
        "dbo.Orders",
        "Delete",
        {"id": 1, "customer": "alice", "amount": 12.5, "note": None},
        {"id": 1, "customer": "alice", "amount": 12.5, "note": None},
    ),
    (
        "dbo.Customers",
        "Update",
        {"id": 7, "name": "Zoe", "photo": "iVBORw==", "joined": "2020-02-29", "ref": REF},
        {"id": 7, "name": "Zoë", "photo": "iVBORw==", "joined": "2020-02-29", "ref": REF},
    ),
]


def task_hcl(name: str, out: Path, tables: list[str] | None, extra: str = "") -> str:
    listed = f"tables = {json.dumps(tables)}" if tables is not None else ""
    return f"""
task "{name}" {{
  input {{
    provider_ref = "{PROVIDER_IMAGE}"
    config {{
      connection_string = env("{CONN_ENV}")
      {listed}
      poll_interval     = 0.1
      max_poll_interval = 1
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
    """The file output's envelopes; uniqueidentifier text in upper case (drivers differ in case)."""
    if not path.exists():
        return []
    found = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    for envelope in found:
        for row in (envelope["data"], envelope["metadata"].get("Before") or {}):
            if isinstance(row.get("ref"), str):
                row["ref"] = row["ref"].upper()
    return found


def captured_all(db: Database, counts: dict[str, int]) -> Callable[[], bool]:
    return lambda: all(db.captured(instance) >= n for instance, n in counts.items())


def test_recorded_shapes_match_the_server(database: Database) -> None:
    """fixtures.py's rows: same columns, same Python types, same operations, as this server gives."""
    from dstream_mssql_cdc.db import Session

    create_tables(database)
    database.enable_table("Orders")
    database.enable_table("Customers")
    fixture_workload(database)
    wait_for(captured_all(database, {"dbo_Orders": 6, "dbo_Customers": 3}), "the capture job")
    config = MssqlCdcConfig.model_validate({"connection_string": database.connection_string})
    session = Session(database.connection_string, Target.from_config(config, "it"), 15, 60)
    state = session.state()
    assert state.max_lsn is not None
    shapes = {"dbo_Orders": (ORDERS_COLUMNS, ORDERS_ROWS), "dbo_Customers": (CUSTOMERS_COLUMNS, CUSTOMERS_ROWS)}
    for instance in state.instances:
        columns, recorded = shapes[instance.name]
        result = session.changes(Window(instance.qualified, instance, instance.min_lsn, state.max_lsn, None, 100))
        assert result.columns == columns
        assert [row[2] for row in result.rows] == [row[2] for row in recorded]
        for got, want in zip(result.rows, recorded, strict=True):
            assert [type(v) for v in got] == [type(v) for v in want], instance.name
        if instance.name == "dbo_Orders":
            assert [tuple(r)[4:8] for r in result.rows] == [r[4:8] for r in recorded]
            assert Layout.of(result.columns).parse(result.rows)[-1].values[2] == Decimal("12.50")
        else:
            first = tuple(result.rows[0])
            assert first[4:8] == (7, "Zoë", b"\x89PNG", date(2020, 2, 29))
            assert first[8].upper() == REF
        # CommitTime is what sys.fn_cdc_map_lsn_to_time says for the commit LSN.
        for row in result.rows:
            assert row[-1] == session.commit_time(from_bytes(row[0]))
    # lsn.increment_lsn is sys.fn_cdc_increment_lsn, carries included.
    samples = [
        state.max_lsn,
        from_bytes(bytes.fromhex("0000002A000001F0FFFF")),
        from_bytes(bytes.fromhex("0000002AFFFFFFFFFFFF")),
    ]
    for value in samples:
        assert session.increment_lsn(value) == increment_lsn(value), format_lsn(value)
    assert to_bytes(LSN_MAX) == b"\xff" * 10
    # The log's end (sys.dm_db_log_stats) is readable as an LSN, and at or past the max LSN.
    log_end = session.log_end()
    assert log_end is not None
    assert log_end >= state.max_lsn
    assert session.retention_minutes() == 4320
    assert session.capture_job() == "running"
    # datetimeoffset: pyodbc needs the provider's converter (SQL type -155) or gets the driver's text.
    database.execute("CREATE TABLE dbo.Stamps (id int PRIMARY KEY, at datetimeoffset(7) NOT NULL)")
    database.enable_table("Stamps")
    database.execute("INSERT INTO dbo.Stamps VALUES (1, '2024-05-01 10:00:00.1234567 +02:00')")
    wait_for(captured_all(database, {"dbo_Stamps": 1}), "the capture job")
    state = session.state()
    assert state.max_lsn is not None
    stamps = next(i for i in state.instances if i.name == "dbo_Stamps")
    result = session.changes(Window(stamps.qualified, stamps, stamps.min_lsn, state.max_lsn, None, 10))
    record = RecordBuilder("dbo.Stamps").record(
        pair_updates(Layout.of(result.columns).parse(result.rows))[0], Layout.of(result.columns).names, "dbo_Stamps"
    )
    at = json.loads(protocol.data(record.data))["data"]["at"]
    assert at in ("2024-05-01T10:00:00.123456+02:00", "2024-05-01 10:00:00.1234567 +02:00"), at
    session.close()


def test_init_run_kill_9_resume_status_destroy_through_dstream_run(
    database: Database, task_file: Callable[..., Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(CONN_ENV, database.connection_string)
    create_tables(database)
    out = tmp_path / "out.jsonl"
    hcl = task_file(task_hcl("mssql-it", out, ["dbo.Orders", "Customers"], "enable_cdc = true"))

    plan = lifecycle("plan", "mssql-it", hcl)
    assert {(r["type"], r["name"], r["action"]) for r in plan} == {
        ("cdc_database", database.name, "create"),
        ("capture_instance", "dbo_Orders", "create"),
        ("capture_instance", "dbo_Customers", "create"),
    }
    assert database.value("SELECT is_cdc_enabled FROM sys.databases WHERE database_id = DB_ID()") == 0
    init = lifecycle("init", "mssql-it", hcl)
    assert [(r["type"], r["name"], r["action"], r["state"]) for r in init] == [
        ("cdc_database", database.name, "create", "enabled"),
        ("capture_instance", "dbo_Orders", "create", "present"),
        ("capture_instance", "dbo_Customers", "create", "present"),
    ]
    assert lifecycle("init", "mssql-it", hcl)[1]["action"] == "none"  # idempotent

    # 1. The recorded workload, through the provider image, then SIGTERM: exactly once, in order.
    fixture_workload(database)
    wait_for(captured_all(database, {"dbo_Orders": 6, "dbo_Customers": 3}), "the capture job")
    proc = start_run("mssql-it", hcl)
    wait_until(lambda: line_count(out) >= len(EXPECTED), f"{len(EXPECTED)} envelopes", proc)
    proc.send_signal(signal.SIGTERM)
    code, err = finish(proc)
    assert code == 0, err
    assert database.server.password not in err  # the connection string never reaches the logs
    got = envelopes(out)
    assert [
        (e["metadata"]["TableName"], e["metadata"]["OperationType"], e["data"], e["metadata"].get("Before"))
        for e in got
    ] == EXPECTED
    assert '"amount":100000000000000.01' in out.read_text()  # exact decimals
    ct = database.execute(
        "SELECT __$start_lsn, __$seqval FROM cdc.dbo_Orders_CT WHERE __$operation = 2 ORDER BY __$start_lsn, __$seqval"
    )
    inserts = [
        e["metadata"]
        for e in got
        if e["metadata"]["TableName"] == "dbo.Orders" and e["metadata"]["OperationType"] == "Insert"
    ]
    assert [(m["LSN"], m["SeqVal"], m["Seq"]) for m in inserts] == [
        (format_lsn(from_bytes(lsn)), format_lsn(from_bytes(seq)), format_lsn(from_bytes(seq))) for lsn, seq in ct
    ]
    first = got[0]["metadata"]
    commit_time = database.value("SELECT sys.fn_cdc_map_lsn_to_time(?)", bytes.fromhex(first["LSN"]))
    assert first["CommitTime"] == commit_time.isoformat(timespec="milliseconds")
    assert first["CaptureInstance"] == "dbo_Orders"

    # 2. kill -9 of dstream while changes stream in; the next run resumes: nothing missing.
    written: list[tuple[str, int]] = []

    def workload() -> None:
        conn = database.server.connect(database.name)
        for n in range(100, 1600):
            table = "Orders" if n % 3 else "Customers"
            values = "(?, N'w', 1.00, NULL)" if table == "Orders" else "(?, N'w', NULL, NULL, NULL)"
            conn.cursor().execute(f"INSERT INTO dbo.{table} VALUES {values}", n)  # noqa: S608 - fixed names
            written.append((f"dbo.{table}", n))
        conn.close()

    writer = threading.Thread(target=workload, daemon=True)
    writer.start()
    before = line_count(out)
    proc = start_run("mssql-it", hcl)
    wait_until(lambda: line_count(out) >= before + 200, "200 more envelopes", proc)
    kill(proc.pid, signal.SIGKILL)
    finish(proc)
    writer.join(300)
    assert not writer.is_alive()
    proc = start_run("mssql-it", hcl)

    def delivered() -> set[tuple[str, int]]:
        return {
            (e["metadata"]["TableName"], e["data"]["id"])
            for e in envelopes(out)
            if e["metadata"]["OperationType"] == "Insert"
        }

    wait_until(lambda: set(written) <= delivered(), f"all {len(written)} inserts", proc)
    proc.send_signal(signal.SIGTERM)
    code, err = finish(proc)
    assert code == 0, err
    missing = set(written) - delivered()
    assert not missing, f"{len(missing)} inserts missing after kill -9 and resume"

    # 3. status: the capture instances, who enabled them, retention, the capture job.
    status = {(r["type"], r["name"]): r for r in lifecycle("status", "mssql-it", hcl)}
    db_row = status[("cdc_database", database.name)]
    assert db_row["state"] == "enabled"
    assert db_row["details"]["owner"] == "mssql-it"
    assert db_row["details"]["retention_minutes"] == 4320
    assert db_row["details"]["capture_job"] == "running"
    assert status[("capture_instance", "dbo_Orders")]["details"]["owner"] == "mssql-it"

    # 4. destroy: only what this task enabled; CDC goes off on the database it enabled.
    destroy = lifecycle("destroy", "mssql-it", hcl)
    assert {(r["name"], r["action"]) for r in destroy} == {
        ("dbo_Orders", "delete"),
        ("dbo_Customers", "delete"),
        (database.name, "delete"),
    }
    assert database.value("SELECT is_cdc_enabled FROM sys.databases WHERE database_id = DB_ID()") == 0


def test_destroy_leaves_capture_instances_that_another_enabled(
    database: Database, task_file: Callable[..., Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(CONN_ENV, database.connection_string)
    create_tables(database)
    database.enable_table("Customers")  # someone else (and CDC on the database with it)
    hcl = task_file(task_hcl("mssql-own", tmp_path / "o.jsonl", ["dbo.Orders", "dbo.Customers"], "enable_cdc = true"))
    init = {r["name"]: r["action"] for r in lifecycle("init", "mssql-own", hcl)}
    assert init == {database.name: "none", "dbo_Orders": "create", "dbo_Customers": "none"}
    destroy = {r["name"]: (r["action"], r.get("state")) for r in lifecycle("destroy", "mssql-own", hcl)}
    assert destroy["dbo_Orders"] == ("delete", "absent")
    assert destroy["dbo_Customers"] == ("none", "present")
    assert destroy[database.name] == ("none", "enabled")
    names = {row[0] for row in database.execute("SELECT capture_instance FROM cdc.change_tables")}
    assert names == {"dbo_Customers"}


def test_a_checkpoint_older_than_cdc_retention_is_an_explicit_error(
    database: Database, task_file: Callable[..., Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(CONN_ENV, database.connection_string)
    create_tables(database)
    database.enable_table("Orders")
    out = tmp_path / "out.jsonl"
    hcl = task_file(task_hcl("mssql-purge", out, ["dbo.Orders"]))
    database.execute("INSERT INTO dbo.Orders VALUES (1, N'a', 1.00, NULL)")
    wait_for(captured_all(database, {"dbo_Orders": 1}), "the capture job")
    proc = start_run("mssql-purge", hcl)
    wait_until(lambda: line_count(out) >= 1, "the first change", proc)
    proc.send_signal(signal.SIGTERM)
    assert finish(proc)[0] == 0
    # More changes while the task is stopped, then CDC cleanup past its checkpoint.
    database.execute("INSERT INTO dbo.Orders VALUES (2, N'b', 2.00, NULL)")
    wait_for(captured_all(database, {"dbo_Orders": 2}), "the capture job")
    database.execute(
        "DECLARE @lsn binary(10) = sys.fn_cdc_get_max_lsn();"
        " EXEC sys.sp_cdc_cleanup_change_table @capture_instance = N'dbo_Orders', @low_water_mark = @lsn,"
        " @threshold = 5000"
    )
    proc = start_run("mssql-purge", hcl)
    code, err = finish(proc)
    assert code == 1
    assert "changes were purged by CDC retention" in err
    assert "re-snapshot needed" in err
    assert "dbo.Orders" in err
    assert line_count(out) == 1  # nothing more was emitted


def test_a_second_capture_instance_after_ddl_is_followed_at_its_start_lsn(database: Database) -> None:
    database.execute("CREATE TABLE dbo.Items (id int PRIMARY KEY, v int NOT NULL)")
    database.enable_table("Items", "dbo_Items_v1")
    database.execute("INSERT INTO dbo.Items VALUES (1, 1), (2, 2)")
    database.execute("ALTER TABLE dbo.Items ADD channel nvarchar(10) NULL")
    database.execute("INSERT INTO dbo.Items VALUES (3, 3, N'shop')")  # before the new instance: v1 only
    database.enable_table("Items", "dbo_Items_v2")
    database.execute("INSERT INTO dbo.Items VALUES (4, 4, N'web')")
    database.execute("UPDATE dbo.Items SET v = 40 WHERE id = 4")
    wait_for(captured_all(database, {"dbo_Items_v1": 6, "dbo_Items_v2": 3}), "the capture job")
    config = {"connection_string": database.connection_string, "tables": ["dbo.Items"], "poll_interval": 0.1}
    live = LiveInput(config)
    try:
        live.wait(lambda r: len(r.data) >= 5, "5 changes")
        # The old instance is disabled while the task runs: it already reads the new one.
        database.execute(
            "EXEC sys.sp_cdc_disable_table @source_schema = N'dbo', @source_name = N'Items', @capture_instance = N'dbo_Items_v1'"
        )
        database.execute("INSERT INTO dbo.Items VALUES (5, 5, N'app')")
        live.wait(lambda r: len(r.data) >= 6, "the change after the old instance was dropped")
    finally:
        assert live.stop() == 0
    got = [
        (m["data"]["id"], m["metadata"]["OperationType"], m["metadata"]["CaptureInstance"], m["data"].get("channel"))
        for m in live.data
    ]
    assert got == [
        (1, "Insert", "dbo_Items_v1", None),
        (2, "Insert", "dbo_Items_v1", None),
        (3, "Insert", "dbo_Items_v1", None),  # the old instance does not capture the new column
        (4, "Insert", "dbo_Items_v2", "web"),
        (4, "Update", "dbo_Items_v2", "web"),
        (5, "Insert", "dbo_Items_v2", "app"),
    ]
    assert "channel" not in live.data[0]["data"]


def test_a_stopped_capture_job_is_reported(database: Database, caplog: pytest.LogCaptureFixture) -> None:
    database.execute(
        "CREATE TABLE dbo.Ticks (id int IDENTITY PRIMARY KEY, at datetime2 NOT NULL DEFAULT SYSDATETIME())"
    )
    database.enable_table("Ticks")
    database.execute("INSERT INTO dbo.Ticks DEFAULT VALUES")
    wait_for(captured_all(database, {"dbo_Ticks": 1}), "the capture job")
    database.execute("EXEC sys.sp_cdc_stop_job @job_type = N'capture'")
    config = {
        "connection_string": database.connection_string,
        "tables": ["dbo.Ticks"],
        "poll_interval": 0.2,
        "max_poll_interval": 1,
        "capture_job_timeout": 5,
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
            live.wait(lambda r: len(r.data) >= 1, "the captured change")
            writer.start()
            wait_for(lambda: "the CDC capture job is not running" in caplog.text, "the capture-job warning")
            assert "while the transaction log moved on" in caplog.text
            database.execute("EXEC sys.sp_cdc_start_job @job_type = N'capture'")
            wait_for(lambda: "capturing changes again" in caplog.text, "the recovery")
            live.wait(lambda r: len(r.data) >= 3, "changes captured after the restart")
    finally:
        stop.set()
        writer.join(30)
        assert live.stop() == 0
