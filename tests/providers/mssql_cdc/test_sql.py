"""The SQL text: explicit column lists with the types pyodbc cannot read converted in SQL
(defect 5), bounded windows in function and direct mode with their documented order
(defects 1, 3, 7), the changed flags of large objects (defect 4), snapshot chunks."""

from __future__ import annotations

import pytest
from dstream_mssql_cdc.catalog import CaptureInstance, Column
from dstream_mssql_cdc.sql import (
    changed_flags,
    changes_query,
    key_bound,
    key_text,
    keyset,
    keyset_params,
    select_list,
    snapshot_query,
    window_end_query,
)

pytestmark = pytest.mark.unit

ODD = [
    Column("id", "int", ordinal=1),
    Column("v", "sql_variant", ordinal=2),
    Column("node", "hierarchyid", ordinal=3),
    Column("shape", "geometry", ordinal=4),
    Column("place", "geography", ordinal=5),
    Column("doc", "xml", ordinal=6),
    Column("body", "nvarchar", -1, ordinal=7),
    Column("odd]name", "int", ordinal=8),
]
ORDERS = CaptureInstance("dbo_Orders", "dbo", "Orders", 101, 1, key=("id",))


def test_columns_are_listed_and_what_pyodbc_cannot_read_is_converted_in_sql() -> None:
    text = select_list(ODD)
    assert "*" not in text
    assert text.startswith("[id] AS [id], ")
    assert "SQL_VARIANT_PROPERTY([v], 'BaseType')" in text  # FreeTDS's SQL_SS_VARIANT never reaches pyodbc
    assert "CONVERT(nvarchar(max), CONVERT(varbinary(8000), [v]), 1)" in text  # binary variants as 0x hex
    assert "CONVERT(nvarchar(max), CONVERT(float, [v]), 3)" in text  # 17 significant digits
    assert "[node].ToString() AS [node]" in text
    # AsTextZM: STAsText "will not contain any Z (elevation) or M (measure) values" (review row 13)
    assert "CONCAT(N'SRID=', [shape].STSrid, N';', [shape].AsTextZM()) END AS [shape]" in text
    assert "[place].AsTextZM()" in text
    # money keeps its 4 decimals: style 0 gives "two digits to the right of the decimal point"
    assert "WHEN SQL_VARIANT_PROPERTY([v], 'BaseType') IN ('money', 'smallmoney') THEN" in text
    assert "CONVERT(nvarchar(max), CONVERT(money, [v]), 2)" in text
    assert "CONVERT(nvarchar(max), [doc]) AS [doc]" in text
    assert "[body] AS [body]" in text  # nvarchar(max) reads as it is
    assert "[odd]]name] AS [odd]]name]" in text  # identifiers bracket-quoted


def test_large_objects_get_microsofts_changed_flag_from_their_ordinal() -> None:
    assert changed_flags(ODD) == (
        ", sys.fn_cdc_is_bit_set(6, __$update_mask) AS [__$dstream_changed_doc]"
        ", sys.fn_cdc_is_bit_set(7, __$update_mask) AS [__$dstream_changed_body]"
    )
    assert changed_flags(ODD[:2]) == ""


def test_function_mode_reads_one_bounded_window_through_the_query_function_in_seqval_order() -> None:
    sql = changes_query(ORDERS, ODD[:1], direct=False)
    assert sql == (
        "SELECT __$start_lsn, __$seqval, __$operation, __$update_mask, CAST(NULL AS int) AS __$command_id,"
        " [id] AS [id] FROM cdc.[fn_cdc_get_all_changes_dbo_Orders](?, ?, N'all update old')"
        " ORDER BY __$start_lsn, __$seqval, __$operation"
    )
    assert "_CT" not in sql
    assert "lsn_time_mapping" not in sql
    assert "TOP" not in sql  # a window is read whole: no page re-sorts the rest of a backlog


def test_direct_mode_reads_the_change_table_in_its_clustered_order_by_command_id() -> None:
    sql = changes_query(ORDERS, ODD[:1], direct=True)
    assert (
        "FROM cdc.[dbo_Orders_CT] WHERE __$start_lsn >= ? AND __$start_lsn <= ? AND __$operation IN (1, 2, 3, 4)" in sql
    )
    assert sql.endswith("ORDER BY __$start_lsn, __$command_id, __$seqval, __$operation")
    assert "__$update_mask, __$command_id, [id] AS [id]" in sql


def test_the_window_end_counts_at_most_n_changes_in_index_order() -> None:
    function = window_end_query(ORDERS, direct=False)
    assert function == (
        "SELECT COUNT(*), MAX(w.l) FROM (SELECT TOP (?) __$start_lsn AS l FROM"
        " cdc.[fn_cdc_get_all_changes_dbo_Orders](?, ?, N'all') ORDER BY __$start_lsn) AS w"
    )
    direct = window_end_query(ORDERS, direct=True)
    assert (
        "FROM cdc.[dbo_Orders_CT] WHERE __$start_lsn >= ? AND __$start_lsn <= ? AND __$operation IN (1, 2, 4)" in direct
    )


KEYS = [
    Column("region", "nvarchar", 10),
    Column("at", "datetime2", scale=7),
    Column("n", "float"),
    Column("raw", "varbinary", 16),
]


def test_snapshot_chunks_page_by_key_with_exact_key_texts() -> None:
    assert [key_text(k) for k in KEYS] == [
        "CONVERT(nvarchar(4000), [region])",
        "CONVERT(nvarchar(4000), [at], 121)",
        "CONVERT(nvarchar(4000), [n], 3)",
        "CONVERT(nvarchar(4000), [raw], 1)",
    ]
    assert [key_bound(k) for k in KEYS] == [
        "CONVERT(nvarchar(10), ?)",
        "CONVERT(datetime2(7), ?, 121)",
        "CONVERT(float, ?, 3)",
        "CONVERT(varbinary(16), ?, 1)",
    ]
    assert key_text(Column("h", "hierarchyid")) == "[h].ToString()"
    assert key_bound(Column("h", "hierarchyid")) == "hierarchyid::Parse(?)"
    two = KEYS[:2]
    assert keyset(two) == (
        "([region] > CONVERT(nvarchar(10), ?)) OR ([region] = CONVERT(nvarchar(10), ?) AND [at] > CONVERT(datetime2(7), ?, 121))"
    )
    assert keyset_params(("eu", "2024-01-01")) == ["eu", "eu", "2024-01-01"]
    first = snapshot_query(
        "[dbo].[Sales]", [Column("region", "nvarchar", 10), Column("v", "int")], two[:1], resume=False
    )
    assert first == (
        "SELECT TOP (?) CONVERT(nvarchar(4000), [region]) AS [__$dstream_key_0], [region] AS [region], [v] AS [v]"
        " FROM [dbo].[Sales] AS [__$dstream_source] ORDER BY [__$dstream_source].[region]"
    )
    after = snapshot_query("[dbo].[Sales]", [Column("v", "int")], two, resume=True)
    assert " WHERE ([region] > CONVERT(nvarchar(10), ?)) OR " in after
    # qualified: an unqualified name would bind to the select-list alias (review row 2)
    assert after.endswith("ORDER BY [__$dstream_source].[region], [__$dstream_source].[at]")
    assert snapshot_query("[dbo].[Log]", [Column("v", "int")], [], resume=False) == "SELECT [v] AS [v] FROM [dbo].[Log]"


def test_an_incremental_chunk_ands_its_where_condition_with_the_keyset_in_parentheses() -> None:
    two = KEYS[:2]
    first = snapshot_query("[dbo].[Sales]", [Column("v", "int")], two, resume=False, where="v > 1 OR v < -1")
    assert " AS [__$dstream_source] WHERE v > 1 OR v < -1 ORDER BY [__$dstream_source].[region]," in first
    after = snapshot_query("[dbo].[Sales]", [Column("v", "int")], two, resume=True, where="v > 1 OR v < -1")
    # an OR in either part must not escape it: (keyset) AND (condition)
    assert " WHERE (([region] > CONVERT(nvarchar(10), ?)) OR ([region] = " in after
    assert ")) AND (v > 1 OR v < -1) ORDER BY [__$dstream_source].[region]" in after
