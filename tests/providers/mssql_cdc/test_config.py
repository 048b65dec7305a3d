"""Config validation (through the SDK host, as a user meets it), ODBC connection strings,
table names, and the ODBC errors the provider translates."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest
from dstream_mssql_cdc import MssqlCdcConfig, MssqlCdcInputProvider
from dstream_mssql_cdc.config import Target, parse_connection_string, parse_table_name, quote_name
from dstream_mssql_cdc.errors import CdcError, ConnectionLost, Purged, clean_message, translate

from dstream.sdk.testing import run_provider

from .fixtures import ERRORS

pytestmark = pytest.mark.unit

SECRET = "S3cr3t;pa{ss}}word"
CONN = (
    "DRIVER={FreeTDS};SERVER=db.example;PORT=1433;DATABASE=shop;UID=dstream;PWD={S3cr3t;pa{ss}}}}word};TDS_Version=7.4"
)


def error_of(config: dict[str, Any]) -> str:
    result = run_provider(MssqlCdcInputProvider, config)
    assert result.exit_code == 1
    assert result.error is not None
    assert result.data == []
    return result.error


def test_connection_strings_parse_like_odbc_with_braced_values() -> None:
    parsed = parse_connection_string(CONN)
    assert parsed["driver"] == "FreeTDS"
    assert parsed["pwd"] == SECRET  # ';' and '{' inside braces, '}}' is one '}'
    assert parsed["tds_version"] == "7.4"
    assert parse_connection_string(" Driver = {ODBC Driver 18 for SQL Server} ; Server=tcp:h,1433;;") == {
        "driver": "ODBC Driver 18 for SQL Server",
        "server": "tcp:h,1433",
    }


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("DRIVER={FreeTDS;PWD=hunter22", "no closing '}'"),
        ("DRIVER=x;hunter22;", "has no '='"),
        ("=hunter22", "empty name"),
        ("DRIVER={x}hunter22", "unexpected text after the braced value of DRIVER"),
    ],
)
def test_bad_connection_strings_are_explained_without_repeating_them(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as caught:
        parse_connection_string(text)
    assert "hunter22" not in str(caught.value)


def test_an_invalid_config_gets_an_error_handshake_that_never_shows_the_secret() -> None:
    message = error_of({"connection_string": "SERVER=db;UID=sa;PWD=hunter22"})
    assert message.startswith("invalid config: config.connection_string:")
    assert "names no DRIVER" in message
    assert "hunter22" not in message
    message = error_of({"connection_string": "DRIVER={x;PWD=hunter22"})
    assert "no closing" in message
    assert "hunter22" not in message


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"tables": []}, "config.tables: List should have at least 1 item"),
        ({"tables": ["dbo.Orders", "DBO.orders"]}, "config.tables: table 'DBO.orders' is listed twice"),
        ({"tables": ["shop.dbo.Orders"]}, "has 3 parts: use schema.table"),
        ({"tables": ["dbo."]}, "has an empty part"),
        ({"start": "now"}, "config.start: Input should be 'earliest' or 'latest'"),
        ({"snapshot": "always"}, "config.snapshot: Input should be 'initial', 'when_needed', 'never' or 'incremental'"),
        ({"snapshot": "incremental", "tables": None}, 'snapshot = "incremental" needs the tables listed in `tables`'),
        ({"tables": ["dbo.dstream_signals"]}, "dbo.dstream_signals is the signal table: it cannot be one of `tables`"),
        ({"query_mode": "table"}, "config.query_mode: Input should be 'auto', 'function' or 'direct'"),
        ({"columns": {"dbo.Orders": []}}, "dbo.Orders: the column list must name at least one column"),
        ({"columns": {"dbo.Orders": ["a", "A"]}}, "dbo.Orders: a column is listed twice"),
        (
            {"columns": {"dbo.Orders": ["id"]}, "exclude_columns": {"DBO.orders": ["note"]}},
            "set either columns or exclude_columns for a table, not both",
        ),
        (
            {"tables": ["dbo.Customers"], "columns": {"dbo.Orders": ["id"]}},
            "dbo.Orders has a column list but is not in tables",
        ),
        ({"query_timeout": "soon"}, "config.query_timeout"),
        ({"poll_interval": 2, "max_poll_interval": 1}, "max_poll_interval (1s) is shorter than poll_interval (2s)"),
        ({"batch_size": 0}, "config.batch_size"),
        ({"parallelism": 0}, "config.parallelism"),
        ({"table": ["dbo.Orders"]}, "unknown setting 'config.table' (did you mean 'tables'?)"),
    ],
)
def test_config_errors_name_the_setting(config: dict[str, Any], message: str) -> None:
    assert message in error_of({"connection_string": CONN, **config})


def test_defaults_and_the_schema_marks_the_connection_string_secret() -> None:
    config = MssqlCdcConfig.model_validate({"connection_string": CONN})
    assert config.tables is None  # every CDC-enabled table
    assert config.start == "earliest"
    assert config.enable_cdc is False
    assert (config.snapshot, config.snapshot_isolation, config.query_mode) == ("initial", "snapshot", "auto")
    assert config.unavailable_value == "__dstream_unavailable_value"
    durations = MssqlCdcConfig.model_validate(
        {"connection_string": CONN, "poll_interval": "200ms", "query_timeout": "2m", "capture_job_timeout": "1m30s"}
    )
    assert (durations.poll_interval, durations.query_timeout, durations.capture_job_timeout) == (0.2, 120.0, 90.0)
    filtered = MssqlCdcConfig.model_validate(
        {"connection_string": CONN, "columns": {"Orders": ["id"]}, "exclude_columns": {"dbo.Docs": ["body"]}}
    )
    assert filtered.column_filter("dbo", "Orders") == ("only", ["id"])  # no schema: any schema
    assert filtered.column_filter("DBO", "docs") == ("except", ["body"])
    assert filtered.column_filter("dbo", "Other") is None
    assert SECRET not in repr(config)
    schema = MssqlCdcConfig.model_json_schema()
    assert schema["required"] == ["connection_string"]
    assert schema["properties"]["connection_string"]["writeOnly"] is True
    assert {"poll_interval", "max_poll_interval", "batch_size", "start", "tables", "enable_cdc"} <= set(
        schema["properties"]
    )


def test_messages_name_the_server_and_database_never_the_credentials() -> None:
    target = Target.from_config(MssqlCdcConfig.model_validate({"connection_string": CONN}), "orders")
    assert str(target) == "db.example,1433/shop"
    assert target.task_hint == "orders"
    other = MssqlCdcConfig.model_validate(
        {"connection_string": "Driver={ODBC Driver 18 for SQL Server};Server=tcp:h,1"}
    )
    assert str(Target.from_config(other, None)) == "tcp:h,1/(default database)"


@pytest.mark.parametrize(
    ("name", "parsed"),
    [
        ("dbo.Orders", ("dbo", "Orders")),
        ("Orders", (None, "Orders")),
        (" sales . Orders ", ("sales", "Orders")),
        ("[dbo].[Order Details]", ("dbo", "Order Details")),
        ("[my.schema].[a]]b]", ("my.schema", "a]b")),
    ],
)
def test_table_names(name: str, parsed: tuple[str | None, str]) -> None:
    assert parse_table_name(name) == parsed


def test_identifiers_are_bracket_quoted() -> None:
    assert quote_name("fn_cdc_get_all_changes_dbo_Orders") == "[fn_cdc_get_all_changes_dbo_Orders]"
    assert quote_name("x]; DROP TABLE t; --") == "[x]]; DROP TABLE t; --]"


def test_the_provider_module_imports_without_pyodbc() -> None:
    """The catalogue and `dstream spec` import the class where no ODBC driver manager exists."""
    code = (
        "import sys; sys.modules['pyodbc'] = None\n"
        "from dstream_mssql_cdc import MssqlCdcInputProvider as P\n"
        "from dstream.sdk.base import supported_verbs\n"
        "print(supported_verbs(P), len(P.Config.model_json_schema()['properties']))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.startswith("['run', 'check', 'init', 'plan', 'status', 'destroy', 'snapshot']")


# -- ODBC errors ---------------------------------------------------------------------------------

TARGET = Target("db.example,1433", "shop", "orders")


def translated(name: str, **kwargs: Any) -> CdcError:
    state, text = ERRORS[name]
    return translate(state, text, TARGET, **kwargs)


def test_driver_prefixes_and_call_suffixes_are_stripped_and_the_native_number_kept() -> None:
    assert clean_message(ERRORS["login_failed"][1]) == (18456, "Login failed for user 'dstream'.")
    native, text = clean_message(ERRORS["link_failure"][1])
    assert native == 20006
    assert text == "Write to the server failed; Communication link failure"


def test_connection_problems_are_retried_and_say_where() -> None:
    error = translated("unreachable_freetds", connecting=True)
    assert isinstance(error, ConnectionLost)
    assert str(error).startswith("cannot connect to SQL Server at db.example,1433/shop: Unable to connect")
    assert "PORT=1433" in str(error)
    for name in ("link_failure", "deadlock"):
        assert isinstance(translated(name), ConnectionLost)
    timeout = translated("timeout")
    assert isinstance(timeout, ConnectionLost)
    for name in ("version_store_rollback", "version_store_full"):  # review row 11: a new transaction may succeed
        assert isinstance(translated(name), ConnectionLost), name
    assert "query_timeout" in str(timeout)


def test_set_up_problems_are_not_retried_and_say_what_to_do() -> None:
    missing = translated("driver_missing", drivers=["FreeTDS"])
    assert not isinstance(missing, ConnectionLost)
    assert "not installed (installed drivers: FreeTDS)" in str(missing)
    assert "DRIVER={FreeTDS}" in str(missing)
    assert "not installed" in str(translated("no_driver"))
    login = translated("login_failed")
    assert not isinstance(login, ConnectionLost)
    assert "login failed on db.example,1433/shop" in str(login)
    assert "sp_cdc_enable_db" in str(translated("cdc_off"))
    assert "dstream init orders" in str(translated("cdc_off"))
    assert "permission denied" in str(translated("permission"))
    purged = translated("out_of_range")
    assert isinstance(purged, Purged)
    assert "validity interval" in str(purged)
    generic = translate("42000", "[42000] [FreeTDS][SQL Server]Something else (50000) (SQLExecDirectW)", TARGET)
    assert str(generic) == "SQL Server error at db.example,1433/shop (42000/50000): Something else"
