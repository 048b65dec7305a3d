"""What a SQL Server with CDC holds for the unit tests, as pyodbc hands it to the provider:
``binary(10)`` LSNs and seqvals as bytes, ``__$operation`` and ``__$command_id`` as int
(None where the query function was read), ``Decimal`` for decimal/money, ``bytes`` for
varbinary, ``str`` for nvarchar, uniqueidentifier and what sql.py converts in SQL,
``date``/``datetime`` for dates, aware datetimes for ``TODATETIMEOFFSET`` commit times.
Their shape (columns, Python types, operations) is checked against a real SQL Server 2022
by test_integration.py in .github/workflows/mssql.yml (test_recorded_shapes_match_the_server).

The workload (commit order; ``cmd`` = ``__$command_id``):

- T1 @ 0000002A000001F00003: INSERT Orders 1
- T2 @ 0000002A000002100005: INSERT Customers 7 (cmd 1); UPDATE Orders 1 amount 9.99 → 12.50 (cmd 2)
- T3 @ 0000002A000002300004: INSERT Orders 2, 3 (one statement, cmd 1); DELETE Orders 1 (cmd 2)
- T4 @ 0000002B000000100002: UPDATE Customers 7 name (the photo, a varbinary(max), unchanged)
- T5 @ 0000002B000000300001: UPDATE Orders SET id = id + 1 WHERE id IN (2, 3) — a key change of
  several rows, which SQL Server runs with Split, Sort and Collapse (Paul White on DBA.SE /
  topanswers.xyz q=196 "Unique index updates and statistics row modification counters": "SQL Server
  always uses the Split, Sort, and Collapse combination of operators when maintaining a unique index as
  part of an update that affects (or might affect) more than one row"; Craig Freedman, "Maintaining
  Unique Indexes": Collapse turns an adjacent delete and insert of the same key into an update). So
  CDC records delete 2, update 3 (old: carol, new: bob; operations 3 and 4), insert 4 — not delete +
  insert pairs. One statement: one command id.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

from dstream_mssql_cdc.catalog import Column

from .server import Change, Instance, Server, Table, lsn

OFFSET = timezone(timedelta(hours=2))
T1 = lsn(0x2A, 0x1F0, 3)
T2 = lsn(0x2A, 0x210, 5)
T3 = lsn(0x2A, 0x230, 4)
T4 = lsn(0x2B, 0x10, 2)
T5 = lsn(0x2B, 0x30, 1)
START = lsn(0x2A, 0x100, 1)  # both capture instances' start LSN
TIMES = {
    T1: datetime(2024, 5, 1, 10, 0, 0, 123000, tzinfo=OFFSET),
    T2: datetime(2024, 5, 1, 10, 0, 1, 127000, tzinfo=OFFSET),
    T3: datetime(2024, 5, 1, 10, 0, 2, 130000, tzinfo=OFFSET),
    T4: datetime(2024, 5, 1, 10, 0, 3, 133000, tzinfo=OFFSET),
    T5: datetime(2024, 5, 1, 10, 0, 4, 137000, tzinfo=OFFSET),
}
REF = "C5A8F1E2-3B4D-4E6F-8A9B-0C1D2E3F4A5B"

ORDERS_COLUMNS = [
    Column("id", "int", None, 10, 0, 1),
    Column("customer", "nvarchar", 50, None, None, 2),
    Column("amount", "decimal", None, 18, 2, 3),
    Column("note", "nvarchar", -1, None, None, 4),  # nvarchar(max): a large object
]
CUSTOMERS_COLUMNS = [
    Column("id", "int", None, 10, 0, 1),
    Column("name", "nvarchar", 50, None, None, 2),
    Column("photo", "varbinary", -1, None, None, 3),
    Column("joined", "date", None, None, None, 4),
    Column("ref", "uniqueidentifier", None, None, None, 5),
]
ALL_ORDERS = b"\x0f"  # inserts and deletes have every bit set
ALL_CUSTOMERS = b"\x1f"


def order(i: int, customer: str, amount: str, note: str | None = None) -> dict[str, Any]:
    return {"id": i, "customer": customer, "amount": Decimal(amount), "note": note}


def customer(i: int, name: str, photo: bytes | None = b"\x89PNG") -> dict[str, Any]:
    return {"id": i, "name": name, "photo": photo, "joined": date(2020, 2, 29), "ref": REF}


def seq(block: int, slot: int, vlf: int = 0x2A) -> int:
    return lsn(vlf, block, slot)


def orders_changes() -> list[Change]:
    return [
        Change(T1, seq(0x1E8, 2), 2, ALL_ORDERS, 1, order(1, "alice", "9.99")),
        Change(T2, seq(0x208, 2), 3, b"\x04", 2, order(1, "alice", "9.99")),
        Change(T2, seq(0x208, 2), 4, b"\x04", 2, order(1, "alice", "12.50")),
        Change(T3, seq(0x220, 2), 2, ALL_ORDERS, 1, order(2, "bob", "1.00", "first")),
        Change(T3, seq(0x220, 3), 2, ALL_ORDERS, 1, order(3, "carol", "100000000000000.01")),
        Change(T3, seq(0x228, 2), 1, ALL_ORDERS, 2, order(1, "alice", "12.50")),
        # T5: Split/Sort/Collapse (module docstring): D(2), U(3) as operations 3 + 4, I(4), in key order.
        Change(T5, seq(0x28, 2, 0x2B), 1, ALL_ORDERS, 1, order(2, "bob", "1.00", "first")),
        Change(T5, seq(0x28, 3, 0x2B), 3, ALL_ORDERS, 1, order(3, "carol", "100000000000000.01")),
        Change(T5, seq(0x28, 3, 0x2B), 4, ALL_ORDERS, 1, order(3, "bob", "1.00", "first")),
        Change(T5, seq(0x28, 4, 0x2B), 2, ALL_ORDERS, 1, order(4, "carol", "100000000000000.01")),
    ]


def customers_changes() -> list[Change]:
    return [
        Change(T2, seq(0x200, 2), 2, ALL_CUSTOMERS, 1, customer(7, "Zoë")),
        # varbinary(max) unchanged: NULL in the before-image (bit 3 clear), there in the after-image.
        Change(T4, seq(0x8, 2, 0x2B), 3, b"\x02", 1, customer(7, "Zoë", None)),
        Change(T4, seq(0x8, 2, 0x2B), 4, b"\x02", 1, customer(7, "Zoe")),
    ]


def shop(**settings: Any) -> Server:
    """Orders and Customers with CDC, the whole workload captured."""
    orders = Table(
        "dbo",
        "Orders",
        101,
        key=("id",),
        rows=[order(3, "bob", "1.00", "first"), order(4, "carol", "100000000000000.01")],
    )
    customers = Table("dbo", "Customers", 202, key=("id",), rows=[customer(7, "Zoe")])
    settings.setdefault("snapshot_isolation", True)  # as `dstream init` leaves the database
    return Server(
        [
            Instance("dbo_Orders", orders, START, ORDERS_COLUMNS, orders_changes()),
            Instance("dbo_Customers", customers, START, CUSTOMERS_COLUMNS, customers_changes()),
        ],
        max_lsn=T5,
        times=dict(TIMES),
        **settings,
    )


# (table, operation, id) of the workload in commit order, as direct mode reads it.
EXPECTED = [
    ("dbo.Orders", "Insert", 1),
    ("dbo.Customers", "Insert", 7),
    ("dbo.Orders", "Update", 1),
    ("dbo.Orders", "Insert", 2),
    ("dbo.Orders", "Insert", 3),
    ("dbo.Orders", "Delete", 1),
    ("dbo.Customers", "Update", 7),
    ("dbo.Orders", "Delete", 2),
    ("dbo.Orders", "Update", 3),
    ("dbo.Orders", "Insert", 4),
]

# A datetimeoffset as the ODBC driver hands it (SQL_SS_TIMESTAMPOFFSET_STRUCT, 20 bytes):
# 2024-05-01 10:00:00.1234567 +02:00 → year, month, day, hour, minute, second (int16 each),
# fraction in nanoseconds (uint32), offset hours and minutes (int16 each), little-endian.
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
    "instance_gone": (
        "42S02",
        "[42S02] [FreeTDS][SQL Server]Invalid object name 'cdc.fn_cdc_get_all_changes_dbo_Orders'. (208) "
        "(SQLExecDirectW)",
    ),
    "permission": (
        "42000",
        "[42000] [FreeTDS][SQL Server]The SELECT permission was denied on the object 'fn_cdc_get_all_changes_"
        "dbo_Orders', database 'shop', schema 'cdc'. (229) (SQLExecDirectW)",
    ),
    "snapshot_off": (
        "HY000",
        "[HY000] [FreeTDS][SQL Server]Snapshot isolation transaction failed accessing database 'shop' because "
        "snapshot isolation is not allowed in this database. Use ALTER DATABASE to allow snapshot isolation. "
        "(3952) (SQLExecDirectW)",
    ),
    # 3966/3967 as quoted on DBA.SE "What happens when there's no tempdb space for version store operations"
    "version_store_rollback": (
        "HY000",
        "[HY000] [FreeTDS][SQL Server]Transaction is rolled back when accessing version store. It was earlier marked "
        "as victim when the version store was shrunk due to insufficient space in tempdb. This transaction was "
        "marked as a victim earlier because it may need the row version(s) that have already been removed to make "
        "space in tempdb. Retry the transaction (3966) (SQLFetch)",
    ),
    "version_store_full": (
        "HY000",
        "[HY000] [FreeTDS][SQL Server]Insufficient space in tempdb to hold row versions. Need to shrink the version "
        "store to free up some space in tempdb. (3967) (SQLFetch)",
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
