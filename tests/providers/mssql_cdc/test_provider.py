"""The provider as the orchestrator runs it (the SDK host, in-process): handshakes, start
checks, checkpoints, reconnects, table discovery, capture-job warnings. The thin SQL layer
answers from recordings (recorded.py); the real server runs in test_integration.py."""

from __future__ import annotations

import logging
import socket
from typing import Any

import pytest
from dstream_mssql_cdc import MssqlCdcInputProvider
from dstream_mssql_cdc.infra import SourceTable
from dstream_mssql_cdc.lsn import format_lsn, increment_lsn
from dstream_mssql_cdc.stream import CaptureInstance, ServerState

from dstream.sdk.testing import run_provider

from .fixtures import T1, T2, T3, T4, T5, T6
from .recorded import Script, provider_for
from .test_stream import CUSTOMERS, EXPECTED, ORDERS, RECORDED, STATE, L

pytestmark = pytest.mark.unit

CONN = "DRIVER={FreeTDS};SERVER=db;PORT=1433;DATABASE=shop;UID=dstream;PWD=hunter22;TDS_Version=7.4"
FAST = {"poll_interval": 0.001, "max_poll_interval": 0.002}
TABLES = {"dbo.orders": SourceTable(101, "dbo", "Orders"), "dbo.customers": SourceTable(202, "dbo", "Customers")}
LOGGER = "mssql-cdc-input-provider"


def run(script: Script, checkpoint: Any = None, **config: Any) -> Any:
    settings = {"connection_string": CONN, "tables": ["dbo.Orders", "Customers"], **FAST, **config}
    return run_provider(provider_for(script), settings, checkpoint=checkpoint, task="orders")


def keys(result: Any) -> list[tuple[str, str, str]]:
    return [(m["metadata"]["TableName"], m["metadata"]["LSN"], m["metadata"]["OperationType"]) for m in result.data]


def test_a_run_emits_every_change_once_with_the_starting_positions_first() -> None:
    script = Script([STATE], RECORDED, TABLES)
    result = run(script)
    assert result.exit_code == 0
    assert result.handshake is not None
    assert result.handshake["status"] == "ready"
    assert result.handshake["verbs"] == ["run", "init", "plan", "status", "destroy"]
    assert result.handshake["features"] == []  # no commit feature: CDC keeps changes by time, not by reader
    assert keys(result) == EXPECTED
    first = result.messages[0]
    assert first == {
        "checkpoint": {
            "tables": {
                "dbo.Orders": {"lsn": format_lsn(ORDERS.min_lsn)},
                "dbo.Customers": {"lsn": format_lsn(CUSTOMERS.min_lsn)},
            }
        }
    }
    done = format_lsn(increment_lsn(L(T4)))
    assert result.checkpoints[-1] == {"tables": {"dbo.Orders": {"lsn": done}, "dbo.Customers": {"lsn": done}}}
    assert script.connects == 1


def test_a_checkpoint_resumes_after_it_and_start_latest_is_kept_across_restarts() -> None:
    later = ServerState(L(T6), (ORDERS,))
    first = run(Script([STATE], RECORDED, TABLES), tables=["dbo.Orders"], start="latest")
    assert first.data == []  # nothing after the max LSN at the first start
    pinned = first.checkpoints[0]
    assert pinned == {"tables": {"dbo.Orders": {"lsn": format_lsn(increment_lsn(L(T4)))}}}
    # Changes committed while the task was stopped are not skipped by "latest".
    again = run(Script([later], RECORDED, TABLES), checkpoint=pinned, tables=["dbo.Orders"], start="latest")
    assert [k[1] for k in keys(again)] == [format_lsn(L(T5)), format_lsn(L(T6))]
    assert again.messages[0] == {"data": again.data[0]["data"], "metadata": again.data[0]["metadata"]}


def test_a_lost_connection_is_retried_and_nothing_is_lost_or_repeated(caplog: pytest.LogCaptureFixture) -> None:
    script = Script([STATE], RECORDED, TABLES, fail_changes_at={1})
    with caplog.at_level(logging.WARNING, LOGGER):
        result = run(script, parallelism=1, reconnect_timeout=5)
    assert result.exit_code == 0
    assert keys(result) == EXPECTED
    assert any("Communication link failure; reconnecting in" in r.getMessage() for r in caplog.records)
    assert "hunter22" not in caplog.text


def test_parallel_queries_give_the_same_stream() -> None:
    result = run(Script([STATE], RECORDED, TABLES), parallelism=2)
    assert keys(result) == EXPECTED


def test_a_purged_checkpoint_fails_the_run_before_any_data(caplog: pytest.LogCaptureFixture) -> None:
    cleaned = ServerState(L(T4), (CaptureInstance("dbo_Orders", "dbo", "Orders", 101, L(T3), None, 11), CUSTOMERS))
    checkpoint = {"tables": {"dbo.Orders": {"lsn": format_lsn(L(T2))}, "dbo.Customers": {"lsn": format_lsn(L(T1))}}}
    with caplog.at_level(logging.ERROR, LOGGER):
        result = run(Script([cleaned], RECORDED, TABLES), checkpoint=checkpoint)
    assert result.exit_code == 1
    assert result.data == []
    assert result.checkpoints == []
    assert "changes were purged by CDC retention" in caplog.text
    assert "re-snapshot needed" in caplog.text


def test_a_checkpoint_of_another_provider_is_refused(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, LOGGER):
        result = run(Script([STATE], RECORDED, TABLES), checkpoint={"lsn": "0/16B3748"})
    assert result.exit_code == 1
    assert "was the task's state written by another provider?" in caplog.text


def test_missing_tables_and_tables_without_cdc_are_explained(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, LOGGER):
        result = run(Script([STATE], RECORDED, TABLES), tables=["dbo.Orders", "dbo.Nope"])
    assert result.exit_code == 1
    assert "table 'dbo.Nope' does not exist in database shop" in caplog.text
    caplog.clear()
    only_customers = ServerState(L(T4), (CUSTOMERS,))
    with caplog.at_level(logging.ERROR, LOGGER):
        result = run(Script([only_customers], RECORDED, TABLES))
    assert result.exit_code == 1
    assert "dbo.Orders has no CDC capture instance" in caplog.text


def test_without_tables_every_cdc_table_is_captured_and_tables_enabled_later_join() -> None:
    orders_only = ServerState(L(T4), (ORDERS,))
    script = Script([orders_only, STATE], RECORDED, TABLES)
    result = run(script, tables=None)
    assert result.exit_code == 0
    assert sorted(keys(result)) == sorted(EXPECTED)
    customers = [k for k in keys(result) if k[0] == "dbo.Customers"]
    assert customers == [k for k in EXPECTED if k[0] == "dbo.Customers"]  # from its first change
    assert set(result.checkpoints[-1]["tables"]) == {"dbo.Orders", "dbo.Customers"}


def test_a_capture_job_that_never_ran_is_reported(caplog: pytest.LogCaptureFixture) -> None:
    nothing = ServerState(None, (ORDERS, CUSTOMERS))
    with caplog.at_level(logging.WARNING, LOGGER):
        result = run(Script([nothing], RECORDED, TABLES))
    assert result.exit_code == 0
    assert result.data == []
    assert "the CDC capture job is not running: sys.fn_cdc_get_max_lsn() is NULL" in caplog.text


def test_cdc_off_on_the_database_is_explained(caplog: pytest.LogCaptureFixture) -> None:
    script = Script([STATE], RECORDED, TABLES)
    script.database = type(script.database)("shop", False, "16.0")
    with caplog.at_level(logging.ERROR, LOGGER):
        result = run(script)
    assert result.exit_code == 1
    assert "CDC is not enabled on database shop" in caplog.text
    assert "sp_cdc_enable_db" in caplog.text


# -- the real pyodbc and FreeTDS (the ODBC driver manager must be installed) -------------------


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("verb", ["run", "status", "init"])
def test_an_unreachable_server_gets_a_clear_error_handshake_without_the_secret(verb: str) -> None:
    try:
        import pyodbc
    except ImportError as exc:
        pytest.skip(f"pyodbc cannot load the ODBC driver manager here ({exc}): apt-get install unixodbc tdsodbc")
    if "FreeTDS" not in pyodbc.drivers():
        pytest.skip("the FreeTDS ODBC driver is not installed here (apt-get install tdsodbc)")
    conn = f"DRIVER={{FreeTDS}};SERVER=127.0.0.1;PORT={closed_port()};DATABASE=shop;UID=sa;PWD=hunter22"
    result = run_provider(MssqlCdcInputProvider, {"connection_string": conn, "login_timeout": 3}, command=verb)
    assert result.exit_code == 1
    assert result.error is not None
    assert result.error.startswith("ConnectionLost: cannot connect to SQL Server at 127.0.0.1,")
    assert "/shop" in result.error
    assert "hunter22" not in result.error
    assert result.data == []
