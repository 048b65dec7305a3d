"""Capture instances, columns and access: the columns/exclude_columns option, the column
lists of sys.sp_cdc_help_change_data_capture, and the messages that tell "not authorized"
from "not started" (defect 2)."""

from __future__ import annotations

import pytest
from dstream_mssql_cdc.catalog import (
    CaptureInstance,
    Column,
    Login,
    SourceTable,
    access_message,
    gating_message,
    select_columns,
)
from dstream_mssql_cdc.errors import CdcError
from dstream_mssql_cdc.names import split_column_list

from .fixtures import ORDERS_COLUMNS

pytestmark = pytest.mark.unit

ORDERS = CaptureInstance(
    "dbo_Orders", "dbo", "Orders", 101, 5, key=("id",), captured=("id", "customer", "amount", "note")
)
LOGIN = Login("app_reader", "app_reader")
TABLE = SourceTable(101, "dbo", "Orders", tracked=True)


def test_column_lists_of_the_help_procedure_are_split_with_brackets() -> None:
    assert split_column_list("[id], [name]") == ("id", "name")
    assert split_column_list("[a, b], [c]]d]") == ("a, b", "c]d")
    assert split_column_list("id,name") == ("id", "name")
    assert split_column_list(None) == ()


def test_columns_and_exclude_columns_choose_captured_columns_and_keep_the_key() -> None:
    names = [c.name for c in select_columns("dbo.Orders", ORDERS, ORDERS_COLUMNS, ("except", ["note"]))]
    assert names == ["id", "customer", "amount"]
    names = [c.name for c in select_columns("dbo.Orders", ORDERS, ORDERS_COLUMNS, ("only", ["amount", "id"]))]
    assert names == ["id", "amount"]  # in capture order
    assert select_columns("dbo.Orders", ORDERS, ORDERS_COLUMNS, None) == ORDERS_COLUMNS
    with pytest.raises(CdcError, match="must include the key column\\(s\\) id"):
        select_columns("dbo.Orders", ORDERS, ORDERS_COLUMNS, ("only", ["amount"]))
    with pytest.raises(CdcError, match="names the key column\\(s\\) id"):
        select_columns("dbo.Orders", ORDERS, ORDERS_COLUMNS, ("except", ["ID"]))
    with pytest.raises(CdcError, match="colour is not captured by capture instance dbo_Orders"):
        select_columns("dbo.Orders", ORDERS, ORDERS_COLUMNS, ("except", ["colour"]))


def test_column_types_as_t_sql_spells_them() -> None:
    assert [c.sql_type for c in ORDERS_COLUMNS] == ["int", "nvarchar(50)", "decimal(18, 2)", "nvarchar(max)"]
    assert [c.lob for c in ORDERS_COLUMNS] == [False, False, False, True]
    assert Column("x", "ntext").lob
    assert Column("x", "xml").lob
    assert not Column("x", "varbinary", 16).lob
    assert Column("t", "datetime2", scale=3).sql_type == "datetime2(3)"


def test_a_table_whose_capture_instance_this_login_cannot_see_names_login_table_right_and_grant() -> None:
    message = access_message(LOGIN, TABLE, ["amount", "note"], "orders")
    assert "login 'app_reader' (database user 'app_reader') may not read the changes of dbo.Orders" in message
    assert "sys.fn_cdc_get_min_lsn returns 0 for it as if capture had not started" in message
    assert "Missing: SELECT on [amount], [note]" in message
    assert "GRANT SELECT ON [dbo].[Orders] TO [app_reader];" in message
    assert "ALTER ROLE [<gating role>] ADD MEMBER [app_reader];" in message
    gated = access_message(LOGIN, TABLE, [], "orders")
    assert "membership of the capture instance's gating role" in gated
    assert "GRANT SELECT" not in gated
    role = gating_message(LOGIN, CaptureInstance("dbo_Orders", "dbo", "Orders", 101, 5, role="cdc_readers"))
    assert "not a member of [cdc_readers], the gating role of capture instance dbo_Orders" in role
    assert "ALTER ROLE [cdc_readers] ADD MEMBER [app_reader];" in role
