"""Initial snapshots (dstream.sdk.cdc's machinery with SQL Server's consistency) against the
recorded server: consistent handoff to the stream, resume after a kill at any row from the
last acknowledged one, tables added later snapshotted alone, when_needed, tables without a
key, snapshot row ids that never collide."""

from __future__ import annotations

import json
import logging
from typing import Any, ClassVar

import pytest
from dstream_mssql_cdc.catalog import Column
from dstream_mssql_cdc.lsn import format_lsn, increment_lsn

from dstream.sdk.testing import run_provider

from .fixtures import START, T5, order, shop
from .server import Change, Instance, RecordedProvider, Server, Table, lsn, provider_for

pytestmark = pytest.mark.unit

CONN = "DRIVER={FreeTDS};SERVER=db;PORT=1433;DATABASE=shop;UID=dstream;PWD=hunter22;TDS_Version=7.4"
LOGGER = "mssql-cdc-input-provider"


def run(server: Server, checkpoint: Any = None, every: bool = False, **config: Any) -> Any:
    settings = {"connection_string": CONN, "tables": ["dbo.Orders", "Customers"], "poll_interval": "1ms"}
    settings.update({"max_poll_interval": "2ms", **config})
    cls = provider_for(server)
    if every:
        cls = type("Every", (cls,), {"checkpoint_every": 1})
    return run_provider(cls, settings, checkpoint=checkpoint, task="orders")


def rows(result: Any) -> list[tuple[str, str, Any]]:
    return [
        (m["metadata"]["TableName"], m["metadata"]["OperationType"], m["data"].get("id"))
        for m in result.data
        if m["metadata"]["OperationType"] != "SchemaChange"
    ]


def big_shop(n: int = 10) -> Server:
    server = shop()
    server.instances[0].table.rows = [order(i, f"c{i}", "1.00") for i in range(1, n + 1)]
    return server


def test_the_first_run_emits_every_row_then_only_changes_after_the_snapshots_lsn() -> None:
    server = shop()
    after = lsn(0x50, 0x10, 1)
    server.script[3] = lambda s: s.commit(
        "dbo_Orders", [Change(after, lsn(0x50, 0x8, 1), 2, b"\x0f", 1, order(9, "new", "2"))]
    )
    result = run(server)
    assert result.exit_code == 0
    assert rows(result) == [
        ("dbo.Orders", "Read", 3),
        ("dbo.Orders", "Read", 4),
        ("dbo.Customers", "Read", 7),
        ("dbo.Orders", "Insert", 9),  # the workload (<= the snapshot's max LSN) is in the rows, not repeated
    ]
    reads = [m["metadata"] for m in result.data if m["metadata"]["OperationType"] == "Read"]
    handoff = format_lsn(increment_lsn(T5))  # the changes start just above the snapshot's max LSN
    assert {m["LSN"] for m in reads} == {handoff}
    assert reads[0] == {
        "TableName": "dbo.Orders",
        "OperationType": "Read",
        "LSN": handoff,
        "Key": {"id": 3},
        "CaptureInstance": "dbo_Orders",
    }
    schema = [m["metadata"] for m in result.data if m["metadata"]["OperationType"] == "SchemaChange"]
    assert [(m["TableName"], m["Reason"]) for m in schema] == [
        ("dbo.Orders", "snapshot started"),
        ("dbo.Customers", "snapshot started"),
    ]
    session_isolation = [c for c in server.calls if c == "begin_snapshot"]
    assert session_isolation == ["begin_snapshot"]  # one snapshot transaction for both tables
    assert any("SELECT TOP (?)" in s and "FROM [dbo].[Orders]" in s for s in server.statements)


def test_a_snapshot_killed_at_any_row_resumes_after_the_last_acknowledged_row() -> None:
    full = run(big_shop(), every=True, batch_size=3)
    assert [r[2] for r in rows(full) if r[0] == "dbo.Orders"] == list(range(1, 11))
    messages = full.messages
    reads = [
        i for i, m in enumerate(messages) if "data" in m and m["data"] and m["metadata"]["OperationType"] == "Read"
    ]
    for n, index in enumerate(reads):
        checkpoint = next(m["checkpoint"] for m in messages[index + 1 :] if "checkpoint" in m and "data" not in m)
        resumed = run(big_shop(), checkpoint, batch_size=3)
        expected = [r for r in rows(full) if r[1] == "Read"][n + 1 :]
        assert rows(resumed) == expected, (n, checkpoint)  # exactly the rest: nothing missing, nothing again


def test_the_checkpoint_inside_a_snapshot_holds_the_last_key_and_the_other_tables_positions() -> None:
    full = run(big_shop(), every=True, batch_size=3)
    inside = [c for c in full.checkpoints if "snapshot" in c["tables"].get("dbo.Orders", {})]
    assert inside[4]["tables"]["dbo.Orders"] == {
        "lsn": format_lsn(increment_lsn(T5)),
        "snapshot": {"after": ["5"], "rows": 5},
    }
    assert "dbo.Customers" in inside[4]["tables"]  # a table still to come is in the checkpoint: it resumes too


def test_a_table_added_later_is_snapshotted_alone_while_the_others_stream_on() -> None:
    server = shop()
    first = run(server, tables=["dbo.Orders"])
    assert rows(first) == [("dbo.Orders", "Read", 3), ("dbo.Orders", "Read", 4)]
    checkpoint = first.checkpoints[-1]
    later = lsn(0x51, 0x10, 1)
    server.commit("dbo_Orders", [Change(later, lsn(0x51, 0x8, 1), 2, b"\x0f", 1, order(10, "later", "1"))])
    second = run(server, checkpoint)
    assert rows(second) == [("dbo.Customers", "Read", 7), ("dbo.Orders", "Insert", 10)]
    assert second.checkpoints[-1]["tables"].keys() == {"dbo.Orders", "dbo.Customers"}


def test_when_needed_snapshots_a_purged_table_again_and_initial_refuses(caplog: pytest.LogCaptureFixture) -> None:
    purged = {
        "tables": {
            "dbo.Orders": {"lsn": format_lsn(START - 1)},
            "dbo.Customers": {"lsn": format_lsn(increment_lsn(T5))},
        }
    }
    assert run(shop(), purged).exit_code == 1
    assert "changes were purged by CDC retention" in caplog.text
    with caplog.at_level(logging.WARNING, LOGGER):
        again = run(shop(), purged, snapshot="when_needed")
    assert again.exit_code == 0
    assert rows(again) == [("dbo.Orders", "Read", 3), ("dbo.Orders", "Read", 4)]  # Customers streams on
    assert 'snapshotting the table again (snapshot = "when_needed")' in caplog.text


def test_a_table_without_a_key_is_read_in_one_statement_and_its_rows_never_share_an_id() -> None:
    server = shop()
    log = Table("dbo", "Log", 404, rows=[{"msg": "same"}, {"msg": "same"}, {"msg": "other"}])
    server.instances.append(Instance("dbo_Log", log, START, [Column("msg", "nvarchar", 20, ordinal=1)]))
    first = run(server, tables=["dbo.Log"], every=True)
    reads = [m["metadata"] for m in first.data if m["metadata"]["OperationType"] == "Read"]
    assert len(reads) == 3
    assert all("Key" not in m for m in reads)
    assert len({m["Seq"] for m in reads}) == 3  # two equal rows, two ids
    inside = next(c for c in first.checkpoints if "snapshot" in c["tables"].get("dbo.Log", {}))
    assert inside["tables"]["dbo.Log"]["snapshot"]["after"] is None  # nothing to resume by
    again = run(server, inside, tables=["dbo.Log"])
    seqs = [m["metadata"]["Seq"] for m in again.data if m["metadata"]["OperationType"] == "Read"]
    assert len(seqs) == 3  # from its first row again
    assert not set(seqs) & {m["Seq"] for m in reads}  # another pass, other ids: duplicates, never losses


def test_snapshot_rows_ids_are_unique_per_row() -> None:
    result = run(big_shop(50), batch_size=7)
    ids = [
        json.dumps(
            [
                m["metadata"]["TableName"],
                m["metadata"]["LSN"],
                m["metadata"].get("Seq"),
                m["metadata"]["OperationType"],
                m["metadata"].get("Key"),
            ]
        )
        for m in result.data
        if m["metadata"]["OperationType"] == "Read"
    ]
    assert len(ids) == len(set(ids)) == 51


def test_read_committed_snapshots_without_a_snapshot_transaction() -> None:
    server = shop()
    isolation: list[str] = []

    class Watch(RecordedProvider):
        def _session(self) -> Any:
            session = super()._session()
            original = session.begin_snapshot

            def begin(level: str) -> Any:
                isolation.append(level)
                return original(level)

            session.begin_snapshot = begin
            return session

    Watch.server = server
    settings = {"connection_string": CONN, "tables": ["dbo.Orders"], "poll_interval": "1ms", "max_poll_interval": "2ms"}
    run_provider(Watch, settings, task="orders")
    run_provider(Watch, {**settings, "snapshot_isolation": "read_committed"}, task="orders")
    assert isolation == ["snapshot", "read_committed"]


def test_the_snapshot_waits_for_the_capture_job_to_start_capturing_the_table(caplog: pytest.LogCaptureFixture) -> None:
    server = shop()
    server.instances[0].min_lsn = 0
    server.script[4] = lambda s: setattr(s.instances[0], "min_lsn", START)
    with caplog.at_level(logging.INFO, LOGGER):
        result = run(server, tables=["dbo.Orders"])
    assert rows(result) == [("dbo.Orders", "Read", 3), ("dbo.Orders", "Read", 4)]
    assert "waiting for the CDC capture job to start capturing dbo.Orders before the snapshot" in caplog.text


class LosesOnce(RecordedProvider):
    lost: ClassVar[bool] = False

    def _session(self) -> Any:
        session = super()._session()
        original = session.query

        def query(sql: str, *params: Any) -> Any:
            if "WHERE" in sql and not LosesOnce.lost:
                LosesOnce.lost = True
                from dstream_mssql_cdc.errors import ConnectionLost

                raise ConnectionLost("lost the connection to SQL Server at db,1433/shop: Communication link failure")
            return original(sql, *params)

        session.query = query
        return session


def test_a_connection_lost_inside_the_snapshot_resumes_it_where_it_stopped() -> None:
    LosesOnce.server = big_shop()
    settings = {
        "connection_string": CONN,
        "tables": ["dbo.Orders"],
        "batch_size": 3,
        "poll_interval": "1ms",
        "max_poll_interval": "2ms",
    }
    result = run_provider(LosesOnce, settings, task="orders")
    assert [r[2] for r in rows(result)] == list(range(1, 11))  # once each: the retry went on after key 3


def test_a_captured_column_dropped_from_the_table_is_left_out_of_the_snapshot(caplog: pytest.LogCaptureFixture) -> None:
    server = shop()
    server.instances[0].table.dropped_columns = ["note"]
    with caplog.at_level(logging.WARNING, LOGGER):
        result = run(server, tables=["dbo.Orders"])
    reads = [m["data"] for m in result.data if m["metadata"]["OperationType"] == "Read"]
    assert reads == [
        {"id": 3, "customer": "bob", "amount": 1.0},
        {"id": 4, "customer": "carol", "amount": 100000000000000.02},
    ]
    assert "captured column(s) note no longer exist in the table" in caplog.text
    assert all("[note]" not in s for s in server.statements if "FROM [dbo].[Orders]" in s)


class LosesInsideCustomers(RecordedProvider):
    lost: ClassVar[bool] = False

    def _session(self) -> Any:
        session = super()._session()
        original = session.query

        def query(sql: str, *params: Any) -> Any:
            if "[Customers]" in sql and not LosesInsideCustomers.lost:
                LosesInsideCustomers.lost = True
                from dstream_mssql_cdc.errors import ConnectionLost

                raise ConnectionLost("lost the connection to SQL Server at db,1433/shop: Communication link failure")
            return original(sql, *params)

        session.query = query
        return session


def test_a_table_snapshotted_before_a_lost_connection_streams_after_the_retried_pass() -> None:
    """Review row 1: Orders is done when the connection drops inside Customers' snapshot; the
    retried pass re-plans Customers alone, and Orders must still be polled afterwards."""
    server = shop()
    after = lsn(0x50, 0x10, 1)
    server.script[5] = lambda s: s.commit(
        "dbo_Orders", [Change(after, lsn(0x50, 0x8, 1), 2, b"\x0f", 1, order(9, "new", "2"))]
    )
    LosesInsideCustomers.server = server
    settings = {"connection_string": CONN, "tables": ["dbo.Orders", "Customers"], "poll_interval": "1ms"}
    result = run_provider(LosesInsideCustomers, {**settings, "max_poll_interval": "2ms"}, task="orders")
    assert LosesInsideCustomers.lost
    assert result.exit_code == 0
    assert rows(result) == [
        ("dbo.Orders", "Read", 3),
        ("dbo.Orders", "Read", 4),
        ("dbo.Customers", "Read", 7),
        ("dbo.Orders", "Insert", 9),  # Orders streams although the retried pass held Customers only
    ]


def test_a_hierarchyid_key_is_paged_in_hierarchy_order_and_no_row_is_skipped() -> None:
    """Review row 2: /1/10/ sorts before /1/2/ as text, after it as a hierarchyid; chunks must be
    ordered by what their bounds compare (the column), not by the converted text."""
    nodes = [f"/1/{i}/" for i in range(1, 13)]
    columns = [Column("node", "hierarchyid", None, None, None, 1), Column("v", "int", None, 10, 0, 2)]
    table = Table("dbo", "Tree", 303, key=("node",), rows=[{"node": n, "v": i} for i, n in enumerate(nodes)])
    server = Server([Instance("dbo_Tree", table, START, columns)], max_lsn=T5, snapshot_isolation=True)
    result = run(server, tables=["dbo.Tree"], batch_size=3)
    read = [m["data"]["node"] for m in result.data if m["metadata"]["OperationType"] == "Read"]
    assert sorted(read) == sorted(nodes)
    assert len(read) == len(nodes)


def test_the_snapshot_in_a_database_without_snapshot_isolation_is_the_named_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """ALLOW_SNAPSHOT_ISOLATION is off in a new database: error 3952 names the fix; read_committed works."""
    with caplog.at_level(logging.ERROR, LOGGER):
        result = run(shop(snapshot_isolation=False), tables=["dbo.Orders"])
    assert result.exit_code != 0
    assert "SET ALLOW_SNAPSHOT_ISOLATION ON" in caplog.text
    assert not rows(result)
    committed = run(shop(snapshot_isolation=False), tables=["dbo.Orders"], snapshot_isolation="read_committed")
    assert rows(committed) == [("dbo.Orders", "Read", 3), ("dbo.Orders", "Read", 4)]


def test_a_table_without_a_key_restarted_from_its_first_row_streams_from_the_new_snapshots_point() -> None:
    """Issue 22, defect 7: a kill -9 inside a keyless table's snapshot reads it again from its
    first row as of a new snapshot (max LSN M2); its changes must start above M2, or every
    change between the first pass's point and M2 arrives twice (in the rows and as a change).
    A SNAPSHOT transaction sees every transaction committed before it began (server.py's
    docstring: "Isolation Element (ASSL)"), and the capture job harvested every change <= M2."""
    server = shop()
    log = Table("dbo", "Log", 404, rows=[{"msg": "a"}, {"msg": "b"}])
    server.instances.append(Instance("dbo_Log", log, START, [Column("msg", "nvarchar", 20, ordinal=1)]))
    first = run(server, tables=["dbo.Log"], every=True)
    inside = next(c for c in first.checkpoints if "snapshot" in c["tables"].get("dbo.Log", {}))
    assert inside["tables"]["dbo.Log"]["lsn"] == format_lsn(increment_lsn(T5))
    between = lsn(0x50, 0x10, 1)  # committed after the first pass's point, before the second's
    log.rows.append({"msg": "c"})
    server.commit("dbo_Log", [Change(between, lsn(0x50, 0x8, 1), 2, b"\x01", 1, {"msg": "c"})])
    again = run(server, inside, tables=["dbo.Log"])
    assert again.exit_code == 0
    out = [(m["metadata"]["OperationType"], m["data"]["msg"]) for m in again.data if m["data"]]
    assert out == [("Read", "a"), ("Read", "b"), ("Read", "c")]  # "c" once: no Insert after its Read
    handoff = format_lsn(increment_lsn(between))
    assert {m["metadata"]["LSN"] for m in again.data if m["metadata"]["OperationType"] == "Read"} == {handoff}
    assert again.checkpoints[-1]["tables"]["dbo.Log"] == {"lsn": handoff}
