"""The SQL the provider runs to read changes and snapshots, built from the capture
instance's columns. Pure: every identifier is bracket-quoted (``quote_name``), every value
a parameter; the only literals spliced in are column ordinals the server gave us (ints) and
an incremental snapshot's ``where`` condition (SQL the task's author or a DBA wrote).

Columns are listed explicitly (never ``*``), and the types pyodbc cannot read as they
come are converted in SQL (FreeTDS reports ``sql_variant`` as SQL_SS_VARIANT, which
pyodbc cannot fetch, and CLR types arrive as opaque bytes):

- ``sql_variant`` → its value as text (binary as ``0x…`` hex, date/time types ISO 8601,
  float with 17 significant digits, money with its 4 decimals (CAST and CONVERT, "money and
  smallmoney styles": style 2), the rest as ``CONVERT(nvarchar(max), …)``);
- ``hierarchyid`` → its path text (``/1/3/``, ``ToString()``);
- ``geometry`` / ``geography`` → extended WKT, ``SRID=4326;POINT (1 2)``, with Z and M
  (``AsTextZM()``: STAsText "will not contain any Z (elevation) or M (measure) values");
- ``xml`` → its text.

Change queries (Microsoft: cdc.fn_cdc_get_all_changes_<capture_instance>, cdc.<capture_instance>_CT):

- function mode: ``cdc.fn_cdc_get_all_changes_<instance>(@from, @to, N'all update old')``, the
  documented query function (the only way in for a least-privileged login), ordered by
  ``__$start_lsn, __$seqval, __$operation`` (Debezium's GET_ALL_CHANGES_FOR_TABLE_FROM_FUNCTION_ORDER_BY);
  it does not return ``__$command_id``, so that column is NULL here;
- direct mode: the change table itself, ordered by ``__$start_lsn, __$command_id,
  __$seqval, __$operation`` (its clustered key: Debezium's GET_ALL_CHANGES_FOR_TABLE_FROM_DIRECT_ORDER_BY,
  DBZ-8858) — the order Microsoft documents for changes inside a transaction.

Both read one bounded LSN window ``[@from, @to]`` whole, direct mode in one statement whose
rows are streamed, function mode in pages of ``batch_size`` rows (:func:`function_pages`):
windows end at a transaction boundary, so a transaction is never split between windows.
``window_end`` finds how far a window may reach: the LSN of the n-th change from ``@from``
(``TOP (n)`` ordered by ``__$start_lsn`` alone, the leading column of the change table's
clustered index, so it reads n index entries and sorts nothing).

For each large-object column the query adds ``sys.fn_cdc_is_bit_set(<ordinal>,
__$update_mask)`` (ordinals from ``sys.fn_cdc_get_column_ordinal``), Microsoft's documented
way to tell "changed" in a row: a NULL large value in an image whose bit is clear was not
recorded (changes.py marks it unavailable).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dstream_mssql_cdc.names import quote_name

if TYPE_CHECKING:
    from collections.abc import Sequence

    from dstream_mssql_cdc.catalog import CaptureInstance, Column

META_COLUMNS = ("__$start_lsn", "__$seqval", "__$operation", "__$update_mask", "__$command_id")
FUNCTION_ORDER = "__$start_lsn, __$seqval, __$operation"
DIRECT_ORDER = "__$start_lsn, __$command_id, __$seqval, __$operation"


def value(column: Column) -> str:
    """The select-list expression of a column: itself, or converted in SQL (module docstring)."""
    c = quote_name(column.name)
    kind = column.type
    if kind == "sql_variant":
        base = f"SQL_VARIANT_PROPERTY({c}, 'BaseType')"
        return (
            f"CASE WHEN {c} IS NULL THEN NULL"
            f" WHEN {base} IN ('binary', 'varbinary') THEN CONVERT(nvarchar(max), CONVERT(varbinary(8000), {c}), 1)"
            f" WHEN {base} = 'datetimeoffset' THEN CONVERT(nvarchar(max), CONVERT(datetimeoffset(7), {c}), 127)"
            f" WHEN {base} IN ('datetime', 'datetime2', 'smalldatetime') THEN"
            f" CONVERT(nvarchar(max), CONVERT(datetime2(7), {c}), 126)"
            f" WHEN {base} = 'date' THEN CONVERT(nvarchar(max), CONVERT(date, {c}), 23)"
            f" WHEN {base} = 'time' THEN CONVERT(nvarchar(max), CONVERT(time(7), {c}))"
            f" WHEN {base} IN ('float', 'real') THEN CONVERT(nvarchar(max), CONVERT(float, {c}), 3)"
            f" WHEN {base} IN ('money', 'smallmoney') THEN CONVERT(nvarchar(max), CONVERT(money, {c}), 2)"
            f" ELSE CONVERT(nvarchar(max), {c}) END"
        )
    if kind == "hierarchyid":
        return f"{c}.ToString()"
    if kind in ("geometry", "geography"):
        return f"CASE WHEN {c} IS NULL THEN NULL ELSE CONCAT(N'SRID=', {c}.STSrid, N';', {c}.AsTextZM()) END"
    if kind == "xml":
        return f"CONVERT(nvarchar(max), {c})"
    return c


def select_list(columns: Sequence[Column]) -> str:
    return ", ".join(f"{value(c)} AS {quote_name(c.name)}" for c in columns)


def changed_flags(columns: Sequence[Column]) -> str:
    """``sys.fn_cdc_is_bit_set(ordinal, __$update_mask)`` of each large-object column ('' when none)."""
    flags = [
        f"sys.fn_cdc_is_bit_set({int(c.ordinal)}, __$update_mask) AS {quote_name('__$dstream_changed_' + c.name)}"
        for c in columns
        if c.lob
    ]
    return "".join(", " + flag for flag in flags)


def changes_query(instance: CaptureInstance, columns: Sequence[Column], direct: bool) -> str:
    """All rows of one window, ``?`` = (@from, @to): metadata columns (META_COLUMNS), the
    large-object columns' changed flags, then the data columns."""
    data = select_list(columns)
    flags = changed_flags(columns)
    if direct:
        return (
            f"SELECT __$start_lsn, __$seqval, __$operation, __$update_mask, __$command_id{flags}, {data}"  # noqa: S608
            f" FROM {instance.change_table}"
            " WHERE __$start_lsn >= ? AND __$start_lsn <= ? AND __$operation IN (1, 2, 3, 4)"
            f" ORDER BY {DIRECT_ORDER}"
        )
    return (
        f"SELECT __$start_lsn, __$seqval, __$operation, __$update_mask, CAST(NULL AS int) AS __$command_id{flags},"  # noqa: S608
        f" {data} FROM {instance.function}(?, ?, N'all update old') ORDER BY {FUNCTION_ORDER}"
    )


PAGE_AFTER = " WHERE __$start_lsn > ? OR (__$start_lsn = ? AND (__$seqval > ? OR (__$seqval = ? AND __$operation > ?)))"


def function_pages(instance: CaptureInstance, columns: Sequence[Column]) -> tuple[str, str]:
    """Function mode, bounded: the first page and the page after a row, each ``TOP (?)`` rows
    in ``FUNCTION_ORDER``; ``?`` = (n, @from, @to) and, after a row, its (start_lsn, start_lsn,
    seqval, seqval, operation). That order is not the change table's clustered key (Debezium
    b5de0fd0, DBZ-8858: only an ORDER BY with ``__$command_id`` "allows for the usage of the
    clustered index"), so each statement sorts; a page bounds what one statement must hand out
    and hold to n rows instead of the whole window (a transaction larger than ``batch_size``
    included), the way Debezium's function mode pages by ``streaming.fetch.size`` after
    (seqval, operation). The page still reads the rest of the window to choose its n rows."""
    head = (
        f"SELECT TOP (?) __$start_lsn, __$seqval, __$operation, __$update_mask, CAST(NULL AS int) AS __$command_id"  # noqa: S608
        f"{changed_flags(columns)}, {select_list(columns)} FROM {instance.function}(?, ?, N'all update old')"
    )
    order = f" ORDER BY {FUNCTION_ORDER}"
    return head + order, head + PAGE_AFTER + order


def window_end_query(instance: CaptureInstance, direct: bool) -> str:
    """How many changes (at most n) follow @from up to @to, and the LSN of the last of
    them (the n-th, when there are that many): ``?`` = (n, @from, @to)."""
    if direct:
        source = (
            f"SELECT TOP (?) __$start_lsn AS l FROM {instance.change_table}"  # noqa: S608
            " WHERE __$start_lsn >= ? AND __$start_lsn <= ? AND __$operation IN (1, 2, 4) ORDER BY __$start_lsn"
        )
    else:
        source = f"SELECT TOP (?) __$start_lsn AS l FROM {instance.function}(?, ?, N'all') ORDER BY __$start_lsn"  # noqa: S608
    return f"SELECT COUNT(*), MAX(w.l) FROM ({source}) AS w"  # noqa: S608


# -- snapshots ---------------------------------------------------------------------------------

SOURCE = "[__$dstream_source]"  # the snapshot's table alias (ORDER BY names the column through it)

# How each key type becomes text and back exactly: CONVERT with a round-trip style.
_TEXT_STYLE = {
    "float": 3,
    "real": 3,
    "money": 2,
    "smallmoney": 2,
    "datetime": 121,
    "datetime2": 121,
    "smalldatetime": 120,
    "date": 23,
    "binary": 1,
    "varbinary": 1,
}
RESUMABLE_KEY_TYPES = frozenset(
    {"bigint", "int", "smallint", "tinyint", "bit", "decimal", "numeric", "char", "varchar", "nchar", "nvarchar"}
    | {"uniqueidentifier", "time", "datetimeoffset", "hierarchyid"}
    | set(_TEXT_STYLE)
)


def key_text(column: Column) -> str:
    """A key column as text the keyset bound turns back into the same value (:func:`key_bound`)."""
    c = quote_name(column.name)
    if column.type == "hierarchyid":
        return f"{c}.ToString()"
    style = _TEXT_STYLE.get(column.type)
    return f"CONVERT(nvarchar(4000), {c}, {style})" if style is not None else f"CONVERT(nvarchar(4000), {c})"


def key_bound(column: Column) -> str:
    """The parameter ``?`` (a :func:`key_text`) as a value of the column's type."""
    if column.type == "hierarchyid":
        return "hierarchyid::Parse(?)"
    style = _TEXT_STYLE.get(column.type)
    suffix = f", {style}" if style is not None else ""
    return f"CONVERT({column.sql_type}, ?{suffix})"


def keyset(keys: Sequence[Column]) -> str:
    """``(k1, k2, …) > (?, ?, …)`` spelled out (T-SQL has no row comparison); the
    parameters are the bound texts, each repeated as the disjunction needs."""
    terms = []
    for i, column in enumerate(keys):
        equal = [f"{quote_name(k.name)} = {key_bound(k)}" for k in keys[:i]]
        terms.append("(" + " AND ".join([*equal, f"{quote_name(column.name)} > {key_bound(column)}"]) + ")")
    return " OR ".join(terms)


def keyset_params(after: Sequence[str]) -> list[str]:
    """The parameters of :func:`keyset` for the bound ``after``."""
    params: list[str] = []
    for i in range(len(after)):
        params += list(after[: i + 1])
    return params


def snapshot_query(
    table: str, columns: Sequence[Column], keys: Sequence[Column], resume: bool, where: str | None = None
) -> str:
    """Keyed: ``TOP (?)`` rows after a key (``resume``), key texts first, in key order;
    ``where``: a condition of an incremental snapshot's (a DBA's SQL, ANDed in parentheses).
    Keyless (``keys`` empty): every row, in one statement."""
    data = select_list(columns)
    if not keys:
        return f"SELECT {data} FROM {table}"  # noqa: S608
    head = ", ".join(f"{key_text(k)} AS {quote_name('__$dstream_key_' + str(i))}" for i, k in enumerate(keys))
    # Qualified: an unqualified ORDER BY name binds to a select-list alias first (SELECT - ORDER BY
    # Clause), and converted columns (hierarchyid → text) are aliased to their own names, so
    # ``ORDER BY [h]`` would sort the text while the keyset compares hierarchy order.
    order = ", ".join(f"{SOURCE}.{quote_name(k.name)}" for k in keys)
    terms = ([keyset(keys)] if resume else []) + ([where] if where else [])
    if len(terms) > 1:
        terms = [f"({t})" for t in terms]
    condition = f" WHERE {' AND '.join(terms)}" if terms else ""
    return f"SELECT TOP (?) {head}, {data} FROM {table} AS {SOURCE}{condition} ORDER BY {order}"  # noqa: S608
