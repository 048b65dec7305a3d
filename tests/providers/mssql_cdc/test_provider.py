"""The provider as the orchestrator runs it (the SDK host, in-process) against the recorded
server (server.py): commit order, bounded windows, resume from every checkpoint,
least-privilege reads, permission errors, dropped capture instances, capture-instance
switches, reconnects, lag. Snapshots are in test_snapshot.py; the real server runs in
test_integration.py (.github/workflows/mssql.yml)."""

from __future__ import annotations

import inspect
import logging
import socket
from datetime import datetime
from typing import Any, ClassVar

import pytest
from dstream_mssql_cdc import MssqlCdcInputProvider
from dstream_mssql_cdc.catalog import Column
from dstream_mssql_cdc.db import Session
from dstream_mssql_cdc.lsn import format_lsn, increment_lsn

from dstream.sdk.testing import run_provider

from .fixtures import EXPECTED, ORDERS_COLUMNS, START, T2, T3, T4, T5, order, shop
from .server import Change, Instance, RecordedProvider, Server, Table, lsn, provider_for

pytestmark = pytest.mark.unit
ALL = b"\x0f"

CONN = "DRIVER={FreeTDS};SERVER=db;PORT=1433;DATABASE=shop;UID=dstream;PWD=hunter22;TDS_Version=7.4"
FAST = {"poll_interval": "1ms", "max_poll_interval": "2ms"}
LOGGER = "mssql-cdc-input-provider"


def run(server: Server, checkpoint: Any = None, cls: type[RecordedProvider] | None = None, **config: Any) -> Any:
    settings = {"connection_string": CONN, "tables": ["dbo.Orders", "Customers"], "snapshot": "never", **FAST}
    settings.update(config)
    provider = cls if cls is not None else provider_for(server)
    if cls is not None:
        provider.server = server
    return run_provider(provider, settings, checkpoint=checkpoint, task="orders")


def rows(result: Any) -> list[tuple[str, str, Any]]:
    return [
        (m["metadata"]["TableName"], m["metadata"]["OperationType"], m["data"].get("id"))
        for m in result.data
        if m["metadata"]["OperationType"] != "SchemaChange"
    ]


def test_a_run_emits_every_change_once_in_commit_order_with_the_starting_positions_first() -> None:
    server = shop()
    result = run(server)
    assert result.exit_code == 0
    assert result.handshake is not None
    assert result.handshake["verbs"] == ["run", "check", "init", "plan", "status", "destroy", "snapshot"]
    # CDC keeps changes by time, not by reader: acknowledgements only pace incremental snapshot chunks
    assert result.handshake["features"] == ["commit"]
    assert rows(result) == EXPECTED
    start = {"lsn": format_lsn(START)}
    assert result.messages[0] == {
        "checkpoint": {"tables": {"dbo.Orders": start, "dbo.Customers": start}, "order": "command_id"}
    }
    done = {"lsn": format_lsn(increment_lsn(T5))}
    assert result.checkpoints[-1] == {"tables": {"dbo.Orders": done, "dbo.Customers": done}, "order": "command_id"}
    schema = [m["metadata"] for m in result.data[:2]]
    assert [(m["OperationType"], m["TableName"], m["Reason"]) for m in schema] == [
        ("SchemaChange", "dbo.Orders", "capture started"),
        ("SchemaChange", "dbo.Customers", "capture started"),
    ]
    assert schema[0]["Columns"][2] == {"name": "amount", "type": "decimal(18, 2)"}
    assert schema[0]["KeyColumns"] == ["id"]


def test_a_deferred_update_keeps_its_order_by_command_id_and_function_mode_says_what_it_cannot_order(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """KB3030352 ("The change table is ordered incorrectly for updated rows"): an update recorded as a
    delete and an insert of the same row, where "an insert operation may unexpectedly appear before a
    delete operation" in the log (__$seqval); __$command_id, added by that fix, orders them. Replayed
    by key, the seqval order loses the row."""
    tx = lsn(0x33, 0x10, 1)
    pair = [
        Change(tx, lsn(0x33, 0x8, 1), 2, ALL, 2, order(4, "carol", "7.00")),  # logged first, command 2
        Change(tx, lsn(0x33, 0x8, 2), 1, ALL, 1, order(4, "carol", "100000000000000.01")),
    ]

    def server() -> Server:
        found = shop()
        found.script[2] = lambda s: s.commit("dbo_Orders", pair)
        return found

    direct = run(server())
    assert rows(direct)[-2:] == [("dbo.Orders", "Delete", 4), ("dbo.Orders", "Insert", 4)]
    assert replay(direct)["dbo.Orders"] == {3: "bob", 4: "carol"}  # the table as it is
    least = server()
    for instance in least.instances:
        instance.readable = False  # a least-privileged login: the change tables are not readable
    with caplog.at_level(logging.WARNING, LOGGER):
        function = run(least)
    assert rows(function)[-2:] == [("dbo.Orders", "Insert", 4), ("dbo.Orders", "Delete", 4)]
    assert replay(function)["dbo.Orders"] == {3: "bob"}  # what the seqval order does to a replay
    assert "ordered by __$seqval, which Microsoft documents is not the order of operations" in caplog.text
    assert "GRANT SELECT ON cdc.[dbo_Orders_CT] TO [dstream_reader]" in caplog.text
    assert function.checkpoints[-1]["order"] == "seqval"
    assert all(m["metadata"]["CommandID"] is None for m in function.data if "CommandID" in m["metadata"])


def test_a_multi_row_key_update_arrives_as_delete_update_insert_and_replays_to_the_table() -> None:
    """T5 as SQL Server records it (Split/Sort/Collapse, fixtures.py): D(2), U(3), I(4); the update's
    Before is the old row 3, its data the new one."""
    result = run(shop())
    t5 = [m for m in result.data if m["metadata"].get("LSN") == format_lsn(T5)]
    assert [(m["metadata"]["OperationType"], m["metadata"]["Key"]["id"]) for m in t5] == [
        ("Delete", 2),
        ("Update", 3),
        ("Insert", 4),
    ]
    assert t5[1]["metadata"]["Before"]["customer"] == "carol"
    assert t5[1]["data"]["customer"] == "bob"
    assert replay(result)["dbo.Orders"] == {3: "bob", 4: "carol"}


def replay(result: Any) -> dict[str, dict[Any, Any]]:
    tables: dict[str, dict[Any, Any]] = {}
    for m in result.data:
        meta = m["metadata"]
        rows = tables.setdefault(meta["TableName"], {})
        if meta["OperationType"] == "Delete":
            rows.pop(meta["Key"]["id"], None)
        elif meta["OperationType"] in ("Insert", "Update", "Read"):
            rows[meta["Key"]["id"]] = m["data"].get("customer", m["data"].get("name"))
    return tables


ALLOWED = {
    # what run may call: the cdc functions, sys.sp_cdc_help_change_data_capture, sys.sp_cdc_get_captured_columns,
    # catalog views of readable tables and permission functions (Microsoft's CDC security model)
    "database",
    "login",
    "state",
    "instances",
    "captured_columns",
    "table",
    "tracked_tables",
    "denied_columns",
    "is_role_member",
    "can_select",
    "window_end",
    "commit_times",
    "stream",
    "max_lsn",
    # the snapshot: SELECT on the tables themselves, in a SNAPSHOT-isolation transaction
    "column_names",
    "begin_snapshot",
    "query",
    # an incremental snapshot's row estimate: sys.partitions, visible with a permission on the table
    "row_estimate",
}


def test_a_least_privileged_login_runs_through_the_cdc_functions_and_the_help_procedure_only() -> None:
    server = shop()
    for instance in server.instances:
        instance.readable = False
    tx = lsn(0x37, 0x10, 1)
    server.script[4] = lambda s: s.commit(
        "dbo_Orders", [Change(tx, lsn(0x37, 0x8, 1), 2, b"\x0f", 1, order(800, "o", "1"))]
    )
    result = run(server, snapshot="initial")
    assert result.exit_code == 0
    assert rows(result)[-1] == ("dbo.Orders", "Insert", 800)
    assert set(server.calls) <= ALLOWED, set(server.calls) - ALLOWED
    for statement in server.statements:
        assert "_CT" not in statement
        assert "cdc.[fn_cdc_get_all_changes_" in statement or "FROM [dbo]." in statement  # changes, or the snapshot
    # The SQL of every Session method run used reaches change data through the cdc functions only.
    for name in set(server.calls) - {"stream", "query"}:
        sql = " ".join(_strings(getattr(Session, name)))
        for forbidden in ("cdc.change_tables", "lsn_time_mapping", "_CT", "cdc.captured_columns", "cdc.index_columns"):
            assert forbidden not in sql, (name, forbidden)
    assert "EXEC sys.sp_cdc_help_change_data_capture" in " ".join(_strings(Session.instances))


def _strings(function: Any) -> list[str]:
    """The string constants of a function's code (its SQL), without its docstring."""
    code = function.__code__
    found = [c for c in code.co_consts if isinstance(c, str) and c != function.__doc__]
    for const in code.co_consts:
        if inspect.iscode(const):
            found += [c for c in const.co_consts if isinstance(c, str)]
    return found


def test_windows_are_bounded_share_one_end_per_poll_and_keep_commit_order_across_polls() -> None:
    server = shop()
    result = run(server, batch_size=2)
    assert rows(result) == EXPECTED
    by_poll: dict[int, list[tuple[str, int, int]]] = {}
    for name, start, end in server.windows:
        by_poll.setdefault(end, []).append((name, start, end))
    assert len(by_poll) > 2  # the backlog came in several polls
    for name, start, end in server.windows:
        instance = server.instance(name)
        changes = [c for c in instance.changes if start <= c.start_lsn <= end and c.operation != 3]
        commits = sorted({c.start_lsn for c in changes})
        # at most batch_size changes, or one whole transaction, or up to the transaction that reached it
        assert len(changes) <= 2 or len(commits) <= 2, (name, len(changes), commits)
    ends = [end for _, _, end in server.windows]
    assert ends == sorted(ends)  # each poll ends where the next one starts: commit order holds across polls


class EveryRecord(RecordedProvider):
    checkpoint_every: ClassVar[int] = 1  # type: ignore[misc]


@pytest.mark.parametrize("batch", [1, 2, 100])
def test_resuming_from_any_checkpoint_loses_and_repeats_nothing(batch: int) -> None:
    full = run(shop(), cls=type("E", (EveryRecord,), {}), batch_size=batch)
    changes = [m for m in full.messages if "data" in m and m["metadata"]["OperationType"] != "SchemaChange"]
    assert len(changes) == len(EXPECTED)
    for i, message in enumerate(changes):
        resumed = run(
            shop(), message["checkpoint"] if "checkpoint" in message else _position_of(full, message), batch_size=batch
        )
        assert rows(resumed) == EXPECTED[i + 1 :], i


def _position_of(result: Any, message: dict[str, Any]) -> Any:
    index = result.messages.index(message)
    return next(m["checkpoint"] for m in result.messages[index + 1 :] if "checkpoint" in m and "data" not in m)


def test_a_transaction_larger_than_batch_size_across_tables_comes_whole_in_command_order() -> None:
    server = shop()
    big = lsn(0x30, 0x10, 1)
    orders = [Change(big, lsn(0x30, 0x8, 2 * i), 2, b"\x0f", 2 * i + 2, order(100 + i, "o", "1")) for i in range(5)]
    customers = [
        Change(
            big,
            lsn(0x30, 0x8, 2 * i + 1),
            2,
            b"\x1f",
            2 * i + 1,
            {"id": 100 + i, "name": "c", "photo": None, "joined": None, "ref": None},
        )
        for i in range(5)
    ]
    server.script[2] = lambda s: (s.commit("dbo_Orders", orders), s.commit("dbo_Customers", customers))
    result = run(server, batch_size=2)
    tail = rows(result)[-10:]
    assert tail == [(t, "Insert", 100 + i) for i in range(5) for t in ("dbo.Customers", "dbo.Orders")]
    windows = [w for w in server.windows if w[2] == big]
    assert {name for name, _, _ in windows} == {"dbo_Orders", "dbo_Customers"}  # one window each, whole


def test_inside_a_transaction_tables_are_merged_by_command_id_before_seqval() -> None:
    """Defect 7: (start_lsn, command_id, seqval), as Debezium compares positions, not (start_lsn, seqval)."""
    server = shop()
    tx = lsn(0x31, 0x10, 1)
    server.script[2] = lambda s: (
        s.commit("dbo_Orders", [Change(tx, lsn(0x31, 0x8, 1), 2, b"\x0f", 2, order(200, "o", "1"))]),
        s.commit("dbo_Customers", [Change(tx, lsn(0x31, 0x8, 2), 2, b"\x1f", 1, {"id": 200, "name": "c"})]),
    )
    assert rows(run(server))[-2:] == [("dbo.Customers", "Insert", 200), ("dbo.Orders", "Insert", 200)]


def test_a_null_command_id_orders_by_seqval() -> None:
    server = shop()
    tx = lsn(0x32, 0x10, 1)
    changes = [Change(tx, lsn(0x32, 0x8, n), 2, b"\x0f", None, order(300 + n, "o", "1")) for n in (3, 1, 2)]
    server.script[2] = lambda s: s.commit("dbo_Orders", changes)
    assert [r[2] for r in rows(run(server))[-3:]] == [301, 302, 303]


def test_a_table_this_login_may_not_read_is_an_error_naming_login_table_right_and_grant(
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = shop()
    server.instances[0].table.denied = ["amount"]  # the help procedure hides dbo_Orders; min LSN would be 0
    result = run(server)
    assert result.exit_code == 1
    assert rows(result) == []
    assert (
        "login 'dstream_reader' (database user 'dstream_reader') may not read the changes of dbo.Orders" in caplog.text
    )
    assert "Missing: SELECT on [amount]" in caplog.text
    assert "GRANT SELECT ON [dbo].[Orders] TO [dstream_reader];" in caplog.text


def test_a_missing_gating_role_is_an_error_naming_it(caplog: pytest.LogCaptureFixture) -> None:
    server = shop()
    server.instances[1].role = "cdc_readers"
    result = run(server)
    assert result.exit_code == 1
    assert "may not read the changes of dbo.Customers" in caplog.text
    assert "what is missing is membership of the capture instance's gating role" in caplog.text
    server.roles.add("cdc_readers")
    assert rows(run(server)) == EXPECTED


def test_a_capture_instance_that_has_not_started_is_waited_for_not_an_error() -> None:
    server = shop()
    server.instances[1].min_lsn = 0  # visible to this login, no low endpoint yet: capture not started
    server.script[3] = lambda s: setattr(s.instances[1], "min_lsn", START)
    result = run(server)
    assert result.exit_code == 0
    assert sorted(rows(result)) == sorted(EXPECTED)
    assert [r for r in rows(result) if r[0] == "dbo.Customers"] == [r for r in EXPECTED if r[0] == "dbo.Customers"]
    assert "dbo.Customers" not in result.messages[0]["checkpoint"]["tables"]  # no position while not started


def test_a_capture_instance_dropped_between_planning_and_querying_is_re_read_and_the_run_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Defect 6: error 208 is no "CDC is not enabled": Debezium drops the table and goes on."""
    server = shop()
    tx = lsn(0x33, 0x10, 1)

    def drop(s: Server) -> None:
        s.commit("dbo_Orders", [Change(tx, lsn(0x33, 0x8, 1), 2, b"\x0f", 1, order(400, "o", "1"))])
        s.instances[1].dropped_on_query = True  # dropped after this poll's planning

    server.script[2] = drop
    with caplog.at_level(logging.WARNING, LOGGER):
        result = run(server, tables=None)
    assert result.exit_code == 0
    assert rows(result)[-1] == ("dbo.Orders", "Insert", 400)
    assert "capture instance dbo_Customers no longer exists" in caplog.text
    assert "reading the capture instances again and going on" in caplog.text
    assert "dbo.Customers has no capture instance any more" in caplog.text


def test_a_capture_instance_switch_announces_the_new_columns_before_its_first_row() -> None:
    server = shop()
    v2_start = lsn(0x40, 0x1, 1)
    columns = [*ORDERS_COLUMNS, Column("channel", "nvarchar", 10, None, None, 5)]
    orders = server.instances[0].table
    v2 = Instance("dbo_Orders_v2", orders, v2_start, columns, created=datetime(2024, 6, 1))
    before = lsn(0x3F, 0x10, 1)
    after = lsn(0x40, 0x10, 1)

    def switch(s: Server) -> None:
        s.commit("dbo_Orders", [Change(before, lsn(0x3F, 0x8, 1), 2, b"\x0f", 1, order(500, "v1", "1"))])
        s.instances.append(v2)
        row = {**order(501, "v2", "1"), "channel": "web"}
        s.commit("dbo_Orders", [Change(after, lsn(0x40, 0x8, 1), 2, b"\x0f", 1, order(501, "v2", "1"))])
        s.commit("dbo_Orders_v2", [Change(after, lsn(0x40, 0x8, 1), 2, b"\x1f", 1, row)])

    server.script[2] = switch
    result = run(server)
    tail = [
        m
        for m in result.data
        if m["data"].get("id") in (500, 501) or m["metadata"].get("CaptureInstance") == "dbo_Orders_v2"
    ]
    assert [(m["metadata"]["OperationType"], m["metadata"]["CaptureInstance"]) for m in tail] == [
        ("Insert", "dbo_Orders"),
        ("SchemaChange", "dbo_Orders_v2"),
        ("Insert", "dbo_Orders_v2"),
    ]
    change = tail[1]["metadata"]
    assert change["LSN"] == format_lsn(v2_start)
    assert change["PreviousCaptureInstance"] == "dbo_Orders"
    assert change["Columns"][-1] == {"name": "channel", "type": "nvarchar(10)"}
    assert [c["name"] for c in change["PreviousColumns"]] == ["id", "customer", "amount", "note"]
    assert tail[2]["data"]["channel"] == "web"


def test_a_column_type_altered_in_place_is_announced_before_the_rows_that_have_it() -> None:
    server = shop()
    tx = lsn(0x34, 0x10, 1)
    wider = [*ORDERS_COLUMNS[:2], Column("amount", "decimal", None, 28, 4, 3), ORDERS_COLUMNS[3]]

    def alter(s: Server) -> None:
        s.instances[0].columns = wider
        s.signature["dbo_Orders"] = ("amount", "decimal(28, 4)")  # what the driver describes now
        s.commit("dbo_Orders", [Change(tx, lsn(0x34, 0x8, 1), 2, b"\x0f", 1, order(600, "o", "1.2345"))])

    server.script[3] = alter  # after the first poll read the instance with its old types
    result = run(server)
    tail = result.data[-2:]
    assert tail[0]["metadata"]["OperationType"] == "SchemaChange"
    assert tail[0]["metadata"]["Reason"] == "column types changed"
    assert tail[0]["metadata"]["Columns"][2] == {"name": "amount", "type": "decimal(28, 4)"}
    assert tail[1]["data"]["id"] == 600


def test_a_lost_connection_is_retried_and_nothing_is_lost_or_repeated(caplog: pytest.LogCaptureFixture) -> None:
    server = shop()
    server.fail_stream_at = {2}  # the first poll's change queries
    with caplog.at_level(logging.WARNING, LOGGER):
        result = run(server, batch_size=2)
    assert rows(result) == EXPECTED
    assert "Communication link failure; reconnecting in" in caplog.text


def test_parallel_queries_give_the_same_stream() -> None:
    assert rows(run(shop(), parallelism=4, batch_size=3)) == rows(run(shop(), parallelism=1, batch_size=3)) == EXPECTED


def test_a_purged_checkpoint_fails_the_run_before_any_data(caplog: pytest.LogCaptureFixture) -> None:
    server = shop()
    checkpoint = {"tables": {"dbo.Orders": {"lsn": format_lsn(START - 1)}, "dbo.Customers": {"lsn": format_lsn(T3)}}}
    result = run(server, checkpoint)
    assert result.exit_code == 1
    assert result.data == []
    assert "changes were purged by CDC retention" in caplog.text
    assert 'snapshot = "when_needed" snapshots the table again by itself' in caplog.text


def test_a_checkpoint_inside_a_transaction_counted_in_another_order_reads_that_transaction_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = shop()
    for instance in server.instances:
        instance.readable = False  # function mode now; the checkpoint came from direct mode
    checkpoint = {
        "tables": {
            "dbo.Orders": {"lsn": format_lsn(T5), "index": 1},
            "dbo.Customers": {"lsn": format_lsn(increment_lsn(T5))},
        },
        "order": "command_id",
    }
    with caplog.at_level(logging.INFO, LOGGER):
        result = run(server, checkpoint)
    assert len(rows(result)) == 3  # T5 whole again (D, U, I): no change skipped
    assert "that transaction comes again from its start" in caplog.text


def test_a_checkpoint_of_another_provider_is_refused(caplog: pytest.LogCaptureFixture) -> None:
    result = run(shop(), {"value": 3})
    assert result.exit_code == 1
    assert "is not a SQL Server CDC position" in caplog.text


def test_missing_tables_tables_without_cdc_and_cdc_off_are_explained(caplog: pytest.LogCaptureFixture) -> None:
    assert run(shop(), tables=["dbo.Nope"]).exit_code == 1
    assert "table 'dbo.Nope' does not exist in database shop, or login 'dstream_reader' may not see it" in caplog.text
    server = shop()
    server.instances[0].table.tracked = False
    server.instances[0].dropped = True
    assert run(server).exit_code == 1
    assert "dbo.Orders has no CDC capture instance (CDC is not enabled on the table)" in caplog.text
    off = shop(cdc_enabled=False)
    assert run(off).exit_code == 1
    assert "CDC is not enabled on database shop" in caplog.text


def test_without_tables_every_readable_cdc_table_is_captured_and_tables_enabled_later_join() -> None:
    server = shop()
    extra = Table("dbo", "Extra", 303, key=("id",))
    tx = lsn(0x35, 0x10, 1)
    columns = [Column("id", "int", ordinal=1)]

    def enable(s: Server) -> None:
        s.instances.append(Instance("dbo_Extra", extra, tx, columns))
        s.commit("dbo_Extra", [Change(tx, lsn(0x35, 0x8, 1), 2, b"\x01", 1, {"id": 1})])

    server.script[2] = enable
    result = run(server, tables=None)
    assert rows(result)[-1] == ("dbo.Extra", "Insert", 1)


def test_lag_is_a_gauge_per_table() -> None:
    server = shop()
    server.max_lsn = T5
    result = run(server, batch_size=2)
    lag = [g for g in result.gauges if g["name"] == "lag_seconds"]
    assert {g["labels"]["table"] for g in lag} == {"dbo.Orders", "dbo.Customers"}
    assert all(g["value"] >= 0 for g in lag)
    assert any(g["value"] > 0 for g in lag)  # behind while the backlog is read (commit times from the server)


def test_status_shows_each_tables_lag_from_the_tasks_checkpoint() -> None:
    server = shop()
    checkpoint = {"tables": {"dbo.Orders": {"lsn": format_lsn(increment_lsn(T2))}}}
    settings = {"connection_string": CONN, "tables": ["dbo.Orders", "Customers"]}
    result = run_provider(provider_for(server), settings, command="status", checkpoint=checkpoint, task="orders")
    assert result.exit_code == 0
    tables = {r["name"]: r for r in result.resources if r["type"] == "table"}
    assert tables["dbo.Orders"]["state"] == "streaming"
    assert tables["dbo.Orders"]["details"]["lag_seconds"] == pytest.approx(3.01)  # T5's time - T2's time
    assert tables["dbo.Customers"]["state"] == "not started"
    instances = {r["name"]: r for r in result.resources if r["type"] == "capture_instance"}
    assert instances["dbo_Orders"]["details"]["columns"][0] == {"name": "id", "type": "int"}
    assert instances["dbo_Orders"]["details"]["key"] == ["id"]


def test_exclude_columns_drops_a_column_from_the_query_and_the_envelopes() -> None:
    server = shop()
    result = run(server, exclude_columns={"dbo.Orders": ["note"]})
    orders = [
        m
        for m in result.data
        if m["metadata"]["TableName"] == "dbo.Orders" and m["metadata"]["OperationType"] != "SchemaChange"
    ]
    assert all("note" not in m["data"] for m in orders)
    assert all("[note]" not in s for s in server.statements if "Orders" in s)
    assert all(m["data"]["amount"] is not None for m in orders)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("verb", ["run", "status"])
def test_an_unreachable_server_gets_a_clear_error_handshake_without_the_secret(verb: str) -> None:
    port = _free_port()
    conn = f"DRIVER={{FreeTDS}};SERVER=127.0.0.1;PORT={port};DATABASE=shop;UID=sa;PWD=hunter22;TDS_Version=7.4"
    result = run_provider(
        MssqlCdcInputProvider, {"connection_string": conn, "login_timeout": 2, "reconnect_timeout": 0}, command=verb
    )
    assert result.exit_code == 1
    assert result.error is not None
    assert f"cannot connect to SQL Server at 127.0.0.1,{port}/shop" in result.error
    assert "hunter22" not in result.error


def test_a_listed_tables_capture_instance_dropped_mid_run_leaves_the_stream_and_its_position_stays(
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = shop()
    tx = lsn(0x36, 0x10, 1)

    def drop(s: Server) -> None:
        s.commit("dbo_Orders", [Change(tx, lsn(0x36, 0x8, 1), 2, b"\x0f", 1, order(700, "o", "1"))])
        s.instances[1].dropped_on_query = True
        s.instances[1].table.tracked = False  # CDC disabled on it

    server.script[3] = drop
    with caplog.at_level(logging.WARNING, LOGGER):
        result = run(server)
    assert result.exit_code == 0
    assert rows(result)[-1] == ("dbo.Orders", "Insert", 700)
    assert "error 208" in caplog.text
    assert "dbo.Customers has no capture instance any more (CDC disabled on it)" in caplog.text
    assert "dbo.Customers" in result.checkpoints[-1]["tables"]


def test_a_permission_revoked_while_running_is_the_named_error_not_a_silent_stop(
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = shop()
    server.script[3] = lambda s: setattr(s.instances[1].table, "denied", ["name"])
    result = run(server)
    assert result.exit_code == 1
    assert "may not read the changes of dbo.Customers" in caplog.text
    assert "GRANT SELECT ON [dbo].[Customers] TO [dstream_reader];" in caplog.text


def test_direct_mode_checks_cleanup_before_a_window_goes_out_so_a_restart_meets_the_gap_too(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Review row 8: cleanup removed T3 (the stream's next transaction) after the poll was planned,
    before its query. No row or position past the gap goes out, and the next run stops there too."""
    checkpoint = {"tables": {"dbo.Orders": {"lsn": format_lsn(T3)}, "dbo.Customers": {"lsn": format_lsn(T3)}}}
    server = shop()
    server.cleanup_after_plan["dbo_Orders"] = T4
    result = run(server, checkpoint, query_mode="direct")
    assert result.exit_code == 1
    assert rows(result) == []  # T4 and T5 of Orders (past the gap) never went out
    assert "changes were purged by CDC retention" in caplog.text
    last = result.checkpoints[-1] if result.checkpoints else checkpoint
    assert last["tables"]["dbo.Orders"]["lsn"] == format_lsn(T3)
    caplog.clear()
    again = shop()
    again.instance("dbo_Orders").min_lsn = T4
    restarted = run(again, last, query_mode="direct")
    assert restarted.exit_code == 1  # the restart meets the gap too: never skipped silently
    assert "changes were purged by CDC retention" in caplog.text


def test_direct_mode_cleanup_after_a_complete_read_is_no_error() -> None:
    server = shop()
    server.cleanup_after_read["dbo_Orders"] = T5  # the cleanup job runs right after the window was read
    result = run(server, query_mode="direct")
    assert result.exit_code == 0
    assert rows(result) == EXPECTED


def test_function_mode_reads_a_transaction_larger_than_batch_size_in_bounded_pages() -> None:
    """Review row 6: function mode's order (start_lsn, seqval, operation) is not the change table's
    clustered key, so a statement sorts what it returns; a 40-change transaction (inserts, then
    updates whose old and new rows may fall on two pages) with batch_size 6 is read in pages whose
    sort holds at most 6 rows, every change once, in order."""
    server = shop()
    big = lsn(0x34, 0x10, 1)
    inserts = [Change(big, lsn(0x34, 0x8, i), 2, ALL, None, order(500 + i, "o", "1")) for i in range(20)]
    updates = [
        change
        for i in range(20)
        for change in (
            Change(big, lsn(0x34, 0x9, i), 3, b"\x04", None, order(500 + i, "o", "1")),
            Change(big, lsn(0x34, 0x9, i), 4, b"\x04", None, order(500 + i, "o", "2")),
        )
    ]
    server.script[2] = lambda s: s.commit("dbo_Orders", inserts + updates)
    for instance in server.instances:
        instance.readable = False  # function mode
    result = run(server, batch_size=6)
    assert result.exit_code == 0
    changes = [m for m in result.data if m["metadata"]["OperationType"] != "SchemaChange"]
    tail = [(m["metadata"]["OperationType"], m["data"]["id"], m["data"].get("amount")) for m in changes][-40:]
    assert tail == [("Insert", 500 + i, 1.0) for i in range(20)] + [("Update", 500 + i, 2.0) for i in range(20)]
    held = [n for name, n in server.sorts if name == "dbo_Orders"]
    assert max(held) <= 6, held  # today's single statement sorts the whole window: 60 rows
