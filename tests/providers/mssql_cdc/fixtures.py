"""What pyodbc hands the provider, row for row: the column names (``cursor.description``) and
rows of the change query (db.Session.changes) for two tables, and error texts.

The rows are in pyodbc's own types: ``binary(10)`` LSNs and seqvals as ``bytes``,
``__$operation`` and ``__$command_id`` as ``int``, ``datetime`` for the commit time,
``Decimal`` for decimal/money, ``bytes`` for varbinary, ``str`` for nvarchar and
uniqueidentifier (pyodbc's default), ``date`` for date. Their shape (names, order, types)
is checked against a real SQL Server 2022 by test_integration.py in
.github/workflows/mssql.yml (test_recorded_shapes_match_the_server).

The workload (commit order):

- T1 @ 0000002A000001F00003: INSERT Orders 1
- T2 @ 0000002A000002100005: INSERT Customers 7; UPDATE Orders 1 (amount 9.99 → 12.50)
- T3 @ 0000002A000002300004: INSERT Orders 2, 3 (one statement); DELETE Orders 1
- T4 @ 0000002B000000100002: UPDATE Customers 7 (name) — the LSN's VLF part moved on
"""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from typing import Any


def lsn(vlf: int, block: int, slot: int) -> bytes:
    """A binary(10) LSN from its VLF:block:slot parts, as SQL Server stores it."""
    return vlf.to_bytes(4, "big") + block.to_bytes(4, "big") + slot.to_bytes(2, "big")


T1 = b"\x00\x00\x00\x2a\x00\x00\x01\xf0\x00\x03"  # 0000002A000001F00003
T2 = lsn(0x2A, 0x210, 5)
T3 = lsn(0x2A, 0x230, 4)
T4 = lsn(0x2B, 0x10, 2)
TIME1 = datetime(2024, 5, 1, 10, 0, 0, 123000)
TIME2 = datetime(2024, 5, 1, 10, 0, 1, 127000)
TIME3 = datetime(2024, 5, 1, 10, 0, 2, 130000)
TIME4 = datetime(2024, 5, 1, 10, 0, 3, 133000)

ORDERS_COLUMNS = (
    "__$start_lsn",
    "__$seqval",
    "__$operation",
    "__$update_mask",
    "id",
    "customer",
    "amount",
    "note",
    "__$command_id",
    "__$dstream_commit_time",
)
ORDERS_ROWS: list[tuple[Any, ...]] = [
    (T1, lsn(0x2A, 0x1E8, 2), 2, b"\x0f", 1, "alice", Decimal("9.99"), None, 1, TIME1),
    (T2, lsn(0x2A, 0x208, 2), 3, b"\x04", 1, "alice", Decimal("9.99"), None, 2, TIME2),
    (T2, lsn(0x2A, 0x208, 2), 4, b"\x04", 1, "alice", Decimal("12.50"), None, 2, TIME2),
    (T3, lsn(0x2A, 0x220, 2), 2, b"\x0f", 2, "bob", Decimal("1.00"), "first", 1, TIME3),
    (T3, lsn(0x2A, 0x220, 3), 2, b"\x0f", 3, "carol", Decimal("100000000000000.01"), None, 1, TIME3),
    (T3, lsn(0x2A, 0x228, 2), 1, b"\x0f", 1, "alice", Decimal("12.50"), None, 2, TIME3),
]

CUSTOMERS_COLUMNS = (
    "__$start_lsn",
    "__$seqval",
    "__$operation",
    "__$update_mask",
    "id",
    "name",
    "photo",
    "joined",
    "ref",
    "__$command_id",
    "__$dstream_commit_time",
)
REF = "C5A8F1E2-3B4D-4E6F-8A9B-0C1D2E3F4A5B"
CUSTOMERS_ROWS: list[tuple[Any, ...]] = [
    (T2, lsn(0x2A, 0x200, 2), 2, b"\x1f", 7, "Zoë", b"\x89PNG", date(2020, 2, 29), REF, 1, TIME2),
    (T4, lsn(0x2B, 0x8, 2), 3, b"\x02", 7, "Zoë", b"\x89PNG", date(2020, 2, 29), REF, 1, TIME4),
    (T4, lsn(0x2B, 0x8, 2), 4, b"\x02", 7, "Zoe", b"\x89PNG", date(2020, 2, 29), REF, 1, TIME4),
]

# A second capture instance of Orders (after ALTER TABLE ... ADD channel), created at
# V2_START: both instances hold the changes from there on; dbo_Orders holds T5 too.
V2_START = lsn(0x2C, 0x100, 1)
T5 = lsn(0x2C, 0x0F0, 3)  # before the new instance's start: only in dbo_Orders
T6 = lsn(0x2C, 0x180, 4)  # after it: in both
ORDERS_V1_LATE_ROWS: list[tuple[Any, ...]] = [
    (T5, lsn(0x2C, 0x0E8, 2), 2, b"\x0f", 4, "dan", Decimal("5.00"), None, 1, TIME4),
    (T6, lsn(0x2C, 0x178, 2), 2, b"\x0f", 5, "eve", Decimal("6.00"), None, 1, TIME4),
]
ORDERS_V2_COLUMNS = (*ORDERS_COLUMNS[:8], "channel", *ORDERS_COLUMNS[8:])
ORDERS_V2_ROWS: list[tuple[Any, ...]] = [
    (T6, lsn(0x2C, 0x178, 2), 2, b"\x1f", 5, "eve", Decimal("6.00"), None, "web", 1, TIME4),
]

# A datetimeoffset as the ODBC driver hands it (SQL_SS_TIMESTAMPOFFSET_STRUCT, 20 bytes):
# 2024-05-01 10:00:00.1234567 +02:00 → year, month, day, hour, minute, second (int16 each),
# fraction in nanoseconds (uint32), offset hours and minutes (int16 each), little-endian.
# fraction 123456700 ns; SQL Server keeps 100 ns, Python microseconds: .123456.
DATETIMEOFFSET = bytes.fromhex("e807050001000a0000000000bccc5b0702000000")

# Error texts exactly as pyodbc reports them (args[0], args[1]).
ERRORS = {
    "unreachable_freetds": (
        "08S01",
        "[08S01] [FreeTDS][SQL Server]Unable to connect: Adaptive Server is unavailable or does not exist "
        "(20009) (SQLDriverConnect)",
    ),
    "driver_missing": (
        "01000",
        "[01000] [unixODBC][Driver Manager]Can't open lib 'ODBC Driver 18 for SQL Server' : file not found (0) "
        "(SQLDriverConnect)",
    ),
    "no_driver": (
        "IM002",
        "[IM002] [unixODBC][Driver Manager]Data source name not found and no default driver specified (0) "
        "(SQLDriverConnect)",
    ),
    "login_failed": (
        "28000",
        "[28000] [Microsoft][ODBC Driver 18 for SQL Server][SQL Server]Login failed for user 'dstream'. (18456) "
        "(SQLDriverConnect)",
    ),
    "out_of_range": (
        "42000",
        "[42000] [FreeTDS][SQL Server]An insufficient number of arguments were supplied for the procedure or "
        "function cdc.fn_cdc_get_all_changes_dbo_Orders. (313) (SQLExecDirectW)",
    ),
    "cdc_off": (
        "42S02",
        "[42S02] [FreeTDS][SQL Server]Invalid object name 'cdc.change_tables'. (208) (SQLExecDirectW)",
    ),
    "permission": (
        "42000",
        "[42000] [FreeTDS][SQL Server]The SELECT permission was denied on the object 'fn_cdc_get_all_changes_"
        "dbo_Orders', database 'shop', schema 'cdc'. (229) (SQLExecDirectW)",
    ),
    "timeout": ("HYT00", "[HYT00] [FreeTDS][SQL Server]Query timeout expired (0) (SQLExecDirectW)"),
    "deadlock": (
        "40001",
        "[40001] [FreeTDS][SQL Server]Transaction (Process ID 61) was deadlocked on lock resources with another "
        "process and has been chosen as the deadlock victim. Rerun the transaction. (1205) (SQLExecDirectW)",
    ),
    "link_failure": (
        "08S01",
        "[08S01] [FreeTDS][SQL Server]Write to the server failed (20006) (SQLExecDirectW); [08S01] "
        "[FreeTDS][SQL Server]Communication link failure (0) (SQLExecDirectW)",
    ),
}
