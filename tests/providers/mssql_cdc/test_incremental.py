"""snapshot = "incremental" against the recorded server: chunks between the changes, the
DBLog drop rule with the signal table's open/close rows, resume after a kill from the last
acknowledged chunk row, the `dstream snapshot` signal, refusals, init/destroy of the signal
table. (The recorded server's INSERT semantics and their evidence: server.py's docstring.)"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import pytest
from dstream_mssql_cdc.catalog import Column

from dstream.sdk.testing import run_provider

from .fixtures import ORDERS_COLUMNS, START, T5, order
from .server import Change, Instance, Server, Table, provider_for

pytestmark = pytest.mark.unit

CONN = "DRIVER={FreeTDS};SERVER=db;PORT=1433;DATABASE=shop;UID=dstream;PWD=hunter22;TDS_Version=7.4"
LOGGER = "mssql-cdc-input-provider"
SIGNAL_COLUMNS = [
    Column("id", "varchar", 64, None, None, 1),
    Column("type", "varchar", 32, None, None, 2),
    Column("data", "varchar", 2048, None, None, 3),
]


def server_with(n: int = 10, signal: bool = True) -> Server:
    orders = Table("dbo", "Orders", 101, rows=[order(i, f"c{i}", "1.00") for i in range(1, n + 1)], key=("id",))
    instances = [Instance("dbo_Orders", orders, START, ORDERS_COLUMNS)]
    if signal:
        signals = Table("dbo", "dstream_signals", 909, key=("id",))
        instances.append(Instance("dbo_dstream_signals", signals, START, SIGNAL_COLUMNS))
    return Server(instances, max_lsn=T5, snapshot_isolation=True)


def run(server: Server, checkpoint: Any = None, every: bool = False, command: str = "run", **config: Any) -> Any:
    settings = {
        "connection_string": CONN,
        "tables": ["dbo.Orders"],
        "snapshot": "incremental",
        "snapshot_chunk_size": 4,
        "poll_interval": "1ms",
        "max_poll_interval": "2ms",
        **config,
    }
    cls = provider_for(server)
    if every:
        cls = type("Every", (cls,), {"checkpoint_every": 1})
    return run_provider(cls, settings, checkpoint=checkpoint, task="orders", command=command)


def out(result: Any) -> list[tuple[str, int]]:
    return [
        (m["metadata"]["OperationType"], m["data"]["id"])
        for m in result.data
        if m["metadata"]["OperationType"] != "SchemaChange"
    ]


def replica(result: Any, start: dict[int, Any] | None = None) -> dict[int, Any]:
    """Apply the output in order, by Key: Read/Insert/Update upsert (old key removed), Delete removes."""
    rows = dict(start or {})
    for m in result.data:
        meta, data = m["metadata"], m["data"]
        op = meta["OperationType"]
        if op == "SchemaChange":
            continue
        if op == "Delete":
            rows.pop(meta["Key"]["id"], None)
            continue
        before = meta.get("Before")
        if op == "Update" and before is not None:
            rows.pop(before["id"], None)
        rows[data["id"]] = data["customer"]
    return rows


def source(server: Server) -> dict[int, Any]:
    return {r["id"]: r["customer"] for r in server.instances[0].table.rows}


def update_on_open(target: int, customer: str) -> Any:
    """A concurrent writer: right after the first chunk's open row, UPDATE a row of that chunk."""
    done: list[bool] = []

    def hook(server: Server, values: dict[str, Any]) -> None:
        if done or values.get("type") != "snapshot-window-open":
            return
        done.append(True)
        orders = server.instances[0]
        row = next(r for r in orders.table.rows if r["id"] == target)
        old = dict(row)
        row["customer"] = customer
        at = (server.max_lsn or 0) + (1 << 16)
        server.commit("dbo_Orders", [Change(at, at, 3, b"\x02", 1, old), Change(at, at, 4, b"\x02", 1, dict(row))])

    return hook


def test_chunks_stream_between_changes_and_a_change_inside_a_window_drops_its_row() -> None:
    server = server_with(10)
    server.on_insert.append(update_on_open(2, "changed"))
    result = run(server)
    assert result.exit_code == 0, result.stderr if hasattr(result, "stderr") else ""
    # chunk 1 (ids 1-4): id 2 changed between its open and close rows, so its Read is dropped
    # and the Update, emitted where the stream has it, carries the newer state
    assert out(result) == [
        ("Update", 2),
        ("Read", 1),
        ("Read", 3),
        ("Read", 4),
        ("Read", 5),
        ("Read", 6),
        ("Read", 7),
        ("Read", 8),
        ("Read", 9),
        ("Read", 10),
    ]
    assert replica(result) == source(server)
    kinds = [r["type"] for r in server.instances[1].table.rows]
    # three chunks (4 + 4 + 2 rows), an open and a close row each, after the run's start row
    assert kinds == ["dstream-run-start"] + ["snapshot-window-open", "snapshot-window-close"] * 3
    chunks = [s for s in server.statements if "FROM [dbo].[Orders]" in s]
    assert all(s.startswith("SELECT TOP (?)") and "ORDER BY [__$dstream_source].[id]" in s for s in chunks)
    assert server.snapshots_done == 0  # no snapshot transaction: each chunk is one statement
    reads = [m["metadata"] for m in result.data if m["metadata"]["OperationType"] == "Read"]
    assert reads[0]["Key"] == {"id": 1}
    assert reads[0]["CaptureInstance"] == "dbo_Orders"
    last = result.checkpoints[-1]["tables"]["dbo.Orders"]
    assert "incremental" not in last  # done: the table streams on


def test_a_kill_at_any_acknowledged_row_resumes_after_it_and_the_replica_equals_the_source() -> None:
    full = run(server_with(10), every=True)
    messages = full.messages
    reads = [i for i, m in enumerate(messages) if m.get("data") and m["metadata"]["OperationType"] == "Read"]
    assert len(reads) == 10
    for n, index in enumerate(reads[:-1]):
        checkpoint = next(m["checkpoint"] for m in messages[index + 1 :] if "checkpoint" in m and "data" not in m)
        inside = checkpoint["tables"]["dbo.Orders"]
        assert inside["incremental"]["after"] == [str(n + 1)], (n, inside)
        server = server_with(10)
        server.max_lsn = full_max(checkpoint)
        resumed = run(server, checkpoint)
        assert out(resumed) == [("Read", i) for i in range(n + 2, 11)], n  # exactly the rest


def full_max(checkpoint: dict[str, Any]) -> int:
    from dstream_mssql_cdc.lsn import parse_lsn

    return max(parse_lsn(p["lsn"]) for p in checkpoint["tables"].values())


def test_the_snapshot_verb_inserts_an_execute_snapshot_row_that_a_running_task_acts_on() -> None:
    server = server_with(3)
    first = run(server)
    assert [op for op, _ in out(first)] == ["Read"] * 3
    sent = run(server, {"tables": ["Orders"], "where": {"Orders": "amount > 0"}}, command="snapshot")
    assert sent.exit_code == 0
    signal = server.instances[1].table.rows[-1]
    assert signal["type"] == "execute-snapshot"
    assert json.loads(signal["data"]) == {
        "data-collections": ["dbo.Orders"],
        "type": "incremental",
        "additional-conditions": [{"data-collection": "dbo.Orders", "filter": "amount > 0"}],
    }
    again = run(server, first.checkpoints[-1])
    assert out(again) == [("Read", 1), ("Read", 2), ("Read", 3)]
    chunk = next(s for s in server.statements[::-1] if "FROM [dbo].[Orders]" in s)
    assert "(amount > 0)" in chunk or "WHERE amount > 0" in chunk


def test_refusals_are_one_line(caplog: pytest.LogCaptureFixture) -> None:
    server = server_with(3)
    logs = Table("dbo", "Log", 404, rows=[{"msg": "a"}])
    server.instances.append(Instance("dbo_Log", logs, START, [Column("msg", "nvarchar", 20, ordinal=1)]))
    with caplog.at_level(logging.ERROR, LOGGER):
        result = run(server, tables=["dbo.Orders", "dbo.Log"])
    assert result.exit_code != 0
    line = next(r.getMessage() for r in caplog.records if "has no key" in r.getMessage())
    assert "dbo.Log has no key" in line
    assert 'snapshot = "initial"' in line
    assert "\n" not in line
    assert not out(result)  # refused before anything went out
    caplog.clear()
    with caplog.at_level(logging.ERROR, LOGGER):
        missing = run(server_with(3, signal=False))
    assert missing.exit_code != 0
    assert "needs the signal table dbo.dstream_signals" in caplog.text
    assert "dstream init orders" in caplog.text
    verb = run(server_with(3), {"tables": ["dbo.Nope"]}, command="snapshot")
    assert any("is not one of the task's tables" in json.dumps(m) for m in verb.messages)


def test_init_creates_the_signal_table_with_cdc_and_destroy_drops_it() -> None:
    server = server_with(1, signal=False)
    calls: list[str] = []
    server.on_insert.clear()

    from .server import RecordedSession

    original = RecordedSession.execute

    def record(self: Any, sql: str, *params: Any) -> None:
        if sql.startswith("INSERT") and self.server.table("dbo", "dstream_signals") is not None:
            original(self, sql, *params)
            return
        calls.append(sql)

    RecordedSession.execute = record  # type: ignore[method-assign]
    try:
        assert run(server, command="init").exit_code == 0
    finally:
        RecordedSession.execute = original  # type: ignore[method-assign]
    assert any(c.startswith("CREATE TABLE [dbo].[dstream_signals] (id VARCHAR(64) NOT NULL PRIMARY KEY") for c in calls)
    assert any("sys.sp_cdc_enable_table" in c for c in calls)
    assert not any("DROP TABLE" in c for c in calls)
    calls.clear()
    with_signal = server_with(1)
    RecordedSession.execute = record  # type: ignore[method-assign]
    try:
        run(with_signal, command="destroy")
        run(with_signal, command="init")  # present: nothing to create
    finally:
        RecordedSession.execute = original  # type: ignore[method-assign]
    assert calls[-2:] == [
        "EXEC sys.sp_cdc_disable_table @source_schema = ?, @source_name = ?, @capture_instance = N'all'",
        "DROP TABLE [dbo].[dstream_signals]",
    ]


def test_status_shows_the_signal_table_and_each_snapshot_under_way() -> None:
    full = run(server_with(10), every=True)
    inside = next(c for c in full.checkpoints if "incremental" in c["tables"].get("dbo.Orders", {}))
    status = run(server_with(10), inside, command="status")
    rows = [m["resource"] for m in status.messages if m.get("resource", {}).get("type") == "signal_table"]
    assert rows, status.messages
    assert rows[0]["name"] == "dbo.dstream_signals"
    assert (
        rows[0]["details"]["snapshots"]["dbo.Orders"]["rows"] == inside["tables"]["dbo.Orders"]["incremental"]["rows"]
    )


def test_a_stop_snapshot_row_stops_it_after_the_chunks_already_closed() -> None:
    from dstream_mssql_cdc.incremental import signal_data, signal_insert_sql

    from .server import RecordedSession

    server = server_with(10)
    sent: list[bool] = []

    def stop_after_first_close(target: Server, values: dict[str, Any]) -> None:
        if sent or values.get("type") != "snapshot-window-close":
            return
        sent.append(True)  # a DBA's INSERT, committed right after the first chunk's close row
        insert = signal_insert_sql("dbo.dstream_signals")
        RecordedSession(target).execute(insert, "dba-stop", "stop-snapshot", signal_data(["dbo.Orders"]))

    server.on_insert.append(stop_after_first_close)
    result = run(server)
    assert result.exit_code == 0
    assert out(result) == [("Read", 1), ("Read", 2), ("Read", 3), ("Read", 4)]
    assert "incremental" not in result.checkpoints[-1]["tables"]["dbo.Orders"]  # stopped: not resumed later


def snapshot_gauges(result: Any) -> list[tuple[str, float]]:
    return [(g["name"], g["value"]) for g in result.gauges if g["name"].startswith("snapshot_")]


def test_progress_gauges_give_rows_chunks_percent_of_the_partition_estimate_and_a_rate() -> None:
    server = server_with(10)
    server.instances[0].table.estimate = 20  # sys.partitions' count is approximate: not the rows read
    result = run(server)
    assert result.exit_code == 0
    assert "row_estimate" in server.calls
    gauges = snapshot_gauges(result)
    percents = [v for n, v in gauges if n == "snapshot_percent"]
    assert percents == [20.0, 40.0, 100.0]  # 4 and 8 of 20 rows, then done (a short chunk)
    assert [v for n, v in gauges if n == "snapshot_rows"] == [4.0, 8.0, 10.0]
    assert [v for n, v in gauges if n == "snapshot_chunks"] == [1.0, 2.0, 3.0]
    rates = [v for n, v in gauges if n == "snapshot_rows_per_second"]
    assert len(rates) == 3
    assert rates[-1] > 0
    assert all(g["labels"] == {"table": "dbo.Orders"} for g in result.gauges if g["name"].startswith("snapshot_"))
    # the estimate rides in the cursor, so `dstream status` shows the percentage from the checkpoint
    inside = next(c for c in result.checkpoints if "incremental" in c["tables"].get("dbo.Orders", {}))
    assert inside["tables"]["dbo.Orders"]["incremental"]["total"] == 20


def test_without_a_permission_on_the_table_there_is_no_estimate_and_no_percentage() -> None:
    server = server_with(10)
    server.instances[0].table.permitted = False  # sys.partitions shows it no partition
    result = run(server)
    assert result.exit_code == 0
    names = {n for n, _ in snapshot_gauges(result)}
    assert "snapshot_rows_per_second" in names
    percents = [v for n, v in snapshot_gauges(result) if n == "snapshot_percent"]
    assert percents == [100.0]  # only once done; never a made-up fraction
    assert replica(result) == source(server)


def test_status_shows_each_tables_snapshot_rows_chunks_and_percent() -> None:
    server = server_with(10)
    server.instances[0].table.estimate = 10
    full = run(server, every=True)
    inside = next(c for c in full.checkpoints if c["tables"].get("dbo.Orders", {}).get("incremental", {}).get("rows"))
    cursor = inside["tables"]["dbo.Orders"]["incremental"]
    status = run(server_with(10), inside, command="status")
    table = next(
        m["resource"]
        for m in status.messages
        if m.get("resource", {}).get("type") == "table" and m["resource"]["name"] == "dbo.Orders"
    )
    assert table["details"]["snapshot_rows"] == cursor["rows"]
    assert table["details"]["snapshot_chunks"] == cursor["chunks"]
    assert table["details"]["snapshot_percent"] == round(100.0 * cursor["rows"] / 10, 1)
    assert time.time() - 60 < cursor["started"] <= time.time()  # when it started: status's rate
    # status ran before this line: its rate is at least the one computed now
    assert table["details"]["snapshot_rows_per_second"] >= cursor["rows"] / (time.time() - cursor["started"]) - 0.1


# -- signals sent before a task's first run ------------------------------------------------


def dba_signal(server: Server, row_id: str, kind: str, tables: list[str], where: dict[str, str] | None = None) -> None:
    """A DBA's INSERT into the signal table (its own transaction: a change at a new commit LSN)."""
    from dstream_mssql_cdc.incremental import signal_data, signal_insert_sql

    from .server import RecordedSession

    RecordedSession(server).execute(signal_insert_sql("dbo.dstream_signals"), row_id, kind, signal_data(tables, where))


def streaming_checkpoint() -> dict[str, Any]:
    """A task that streamed dbo.Orders up to T5 before it took snapshot = "incremental" on."""
    from dstream_mssql_cdc.lsn import format_lsn, increment_lsn

    return {"tables": {"dbo.Orders": {"lsn": format_lsn(increment_lsn(T5))}}, "order": "seqval"}


def test_init_records_the_tasks_mark_once() -> None:
    from dstream_mssql_cdc.lsn import format_lsn, increment_lsn

    server = server_with(1)
    first = run(server, command="init")
    assert first.exit_code == 0
    marks = [r for r in server.instances[1].table.rows if r["type"] == "dstream-task-init"]
    assert [m["id"] for m in marks] == ["dstream-init-orders"]
    mark = json.loads(marks[0]["data"])
    assert mark == {"task": "orders", "lsn": format_lsn(increment_lsn(T5))}  # past the max LSN then
    assert run(server, command="init").exit_code == 0  # again: the first mark stays, no second one
    assert [r["id"] for r in server.instances[1].table.rows if r["type"] == "dstream-task-init"] == [marks[0]["id"]]


def test_a_snapshot_asked_for_after_init_and_before_the_first_incremental_run_is_done_by_it() -> None:
    """`dstream snapshot` (and a DBA's INSERT) on a task that has not read the signal table yet:
    it reads the signals sent since `dstream init`, as a stopped task reads those sent meanwhile."""
    server = server_with(5)
    assert run(server, command="init").exit_code == 0
    sent = run(server, {"tables": ["dbo.Orders"], "where": {"dbo.Orders": "id > 2"}}, command="snapshot")
    assert sent.exit_code == 0
    result = run(server, streaming_checkpoint())
    assert result.exit_code == 0
    assert out(result) == [("Read", i) for i in range(1, 6)]  # the recorded server does not evaluate `where`
    chunk = next(s for s in server.statements[::-1] if "FROM [dbo].[Orders]" in s)
    assert "id > 2" in chunk
    again = run(server, result.checkpoints[-1])
    assert out(again) == []  # the signal is behind the stored position now: not acted on twice


def test_without_a_mark_the_signal_table_is_read_from_its_latest_change_and_the_log_says_why(
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = server_with(5)  # the signal table exists (created by hand, or by another task's init)
    dba_signal(server, "dba-1", "execute-snapshot", ["dbo.Orders"])
    with caplog.at_level(logging.INFO, LOGGER):
        result = run(server, streaming_checkpoint())
    assert result.exit_code == 0
    assert out(result) == []
    assert "signals sent before this run are not seen" in caplog.text
    assert "dstream init orders" in caplog.text


def test_signals_sent_before_a_first_run_leave_its_own_snapshot_of_a_table_whole(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A first run snapshots every table from its first row, planned after the signals sent
    before it: a partial (where) request or a stop sent before it does not cut that snapshot short."""
    server = server_with(10)
    assert run(server, command="init").exit_code == 0
    dba_signal(server, "dba-where", "execute-snapshot", ["dbo.Orders"], {"dbo.Orders": "id > 8"})
    dba_signal(server, "dba-stop", "stop-snapshot", ["dbo.Orders"])
    with caplog.at_level(logging.INFO, LOGGER):
        result = run(server)
    assert result.exit_code == 0
    assert out(result) == [("Read", i) for i in range(1, 11)]
    chunks = [s for s in server.statements if "FROM [dbo].[Orders]" in s]
    assert chunks
    assert not any("id > 8" in s for s in chunks)
    assert "'dba-stop' for dbo.Orders was sent before this run" in caplog.text
    assert "reading the signals sent to dbo.dstream_signals since `dstream init`" in caplog.text


def test_a_mark_older_than_the_signal_tables_cdc_retention_starts_at_its_oldest_change_and_warns(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from .server import lsn

    server = server_with(5)
    assert run(server, command="init").exit_code == 0
    dba_signal(server, "dba-1", "execute-snapshot", ["dbo.Orders"])
    server.instances[1].min_lsn = lsn(0x2B, 0x31, 1)  # the cleanup job ran: above the mark (T5), below the signal
    with caplog.at_level(logging.WARNING, LOGGER):
        result = run(server, streaming_checkpoint())
    assert result.exit_code == 0
    assert out(result) == [("Read", i) for i in range(1, 6)]
    assert "were purged by CDC retention before this task's first run" in caplog.text


def test_an_init_that_creates_the_signal_table_marks_all_of_it_as_the_tasks(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every signal a table holds was sent after the init that created it: the mark is 0 and the
    first run reads from the capture instance's start (no purge warning: nothing was purged)."""
    from dstream_mssql_cdc.lsn import format_lsn

    from .server import RecordedSession, lsn

    server = server_with(5, signal=False)
    original = RecordedSession.execute

    def execute(self: Any, sql: str, *params: Any) -> None:
        if sql.startswith("CREATE TABLE [dbo].[dstream_signals]"):  # CDC enabled right after: starts past T5
            signals = Table("dbo", "dstream_signals", 909, key=("id",))
            self.server.instances.append(Instance("dbo_dstream_signals", signals, lsn(0x2B, 0x30, 2), SIGNAL_COLUMNS))
        elif not sql.startswith("EXEC sys.sp_cdc_enable_table"):
            original(self, sql, *params)

    monkeypatch.setattr(RecordedSession, "execute", execute)
    assert run(server, command="init").exit_code == 0
    mark = next(r for r in server.instances[1].table.rows if r["type"] == "dstream-task-init")
    assert json.loads(mark["data"])["lsn"] == format_lsn(0)
    dba_signal(server, "dba-1", "execute-snapshot", ["dbo.Orders"])
    with caplog.at_level(logging.INFO, LOGGER):
        result = run(server, streaming_checkpoint())
    assert result.exit_code == 0
    assert out(result) == [("Read", i) for i in range(1, 6)]
    assert "purged" not in caplog.text


def test_chunks_wait_for_the_output_to_acknowledge_earlier_ones() -> None:
    """Ack pacing (dstream.sdk.cdc.pacing), as on PostgreSQL: an output that acknowledges
    nothing gets two released chunks and no third; acknowledged, every chunk comes."""
    server = server_with(20)
    deaf = type("Deaf", (provider_for(server),), {"on_committed": lambda self, position: None})
    stalled = run_provider(
        deaf,
        {
            "connection_string": CONN,
            "tables": ["dbo.Orders"],
            "snapshot": "incremental",
            "snapshot_chunk_size": 4,
            "poll_interval": "1ms",
            "max_poll_interval": "2ms",
        },
        task="orders",
    )
    assert stalled.exit_code == 0
    assert out(stalled) == [("Read", i) for i in range(1, 9)]  # two chunks of four
    served = server_with(20)
    assert out(run(served)) == [("Read", i) for i in range(1, 21)]
    assert [r["type"] for r in served.instances[1].table.rows].count(
        "snapshot-window-close"
    ) == 6  # 5 full, 1 empty: the end
