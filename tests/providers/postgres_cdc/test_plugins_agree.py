"""wal2json and pgoutput against the real PostgreSQL: the same changes of tables of every
common type, read through one slot of each plugin, give identical envelopes (data and every
metadata field: the two slots decode the same WAL, so even LSN, TxId and CommitTime agree).

Also what a publication means for a table added to it later (pgoutput): its changes come
from the ALTER PUBLICATION on, not before.
"""

# ruff: noqa: S608 - SQL here names the test's own generated tables; nothing comes from outside

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest
from dstream_postgres_cdc import PostgresCdcInputProvider

from .helpers import LiveInput

if TYPE_CHECKING:
    from .helpers import Db

pytestmark = pytest.mark.postgres

COLUMNS = """id int PRIMARY KEY, i2 int2, i4 int4, i8 int8, num numeric, f4 float4, f8 float8, b bool,
t text, vc varchar(10), ch char(4), by bytea, d date, tm time, ttz timetz, ts timestamp, tstz timestamptz,
iv interval, u uuid, j json, jb jsonb, arr int[], tarr text[], mood {enum}, dom {domain}, ip inet, cash money,
big text"""
ROW = """%(id)s, -32768, 2147483647, -9223372036854775808, %(num)s, %(f4)s, %(f8)s, %(b)s,
E'tab\\there "quoted" \\u00e9', 'short', 'ab', '\\x00ff10', '2024-02-29', '23:59:59.999999', '12:00+05:30',
'2024-01-02 03:04:05.678', '2024-07-01 12:00:00.5+02', '1 year 2 mons -3 days 04:05:06.7', gen_random_uuid(),
'{"a": [1, 2.50, null]}', '{"b": {"c": true}}', '{1,NULL,3}', '{"x y","z"}', 'happy', 7, '192.168.0.1/24',
12.34, %(big)s"""
# Numbers wal2json prints as null (NaN, ±Infinity), one too big for a double, and plain ones.
NUMBERS = [
    {"num": "'NaN'", "f4": "'Infinity'", "f8": "'-Infinity'", "b": "true"},
    {"num": "'1e400'::numeric", "f4": "'NaN'", "f8": "'NaN'", "b": "false"},
    {"num": "'123456789012345678901234567890.123456789'", "f4": "1.5", "f8": "-0.1", "b": "NULL"},
]
TOASTED = "(SELECT string_agg(md5(g::text), '') FROM generate_series(1, 3200) g)"  # 100 KB, incompressible


def _workload(db: Db, tables: list[str]) -> int:
    """Inserts, updates (one leaving the TOASTed column alone, one changing the key), deletes,
    a NULL row, and a truncate of both tables; returns how many envelopes that makes."""
    count = 0
    for table in tables:
        for n, numbers in enumerate(NUMBERS, start=1):
            big = TOASTED if n == 1 else "'small'"
            db.execute(f"INSERT INTO {table} VALUES ({ROW % {'id': n, 'big': big, **numbers}})")
            count += 1
        db.execute(f"INSERT INTO {table} (id) VALUES (4)")  # every other column NULL
        db.execute(f"UPDATE {table} SET t = 'changed', i4 = i4 - 1 WHERE id = 1")  # big: TOASTed, unchanged
        db.execute(f"UPDATE {table} SET id = 10 WHERE id = 2")  # a key update
        db.execute(f"UPDATE {table} SET t = NULL WHERE id = 4")
        db.execute(f"DELETE FROM {table} WHERE id = 3")
        count += 5
    with db.conn.transaction():  # several changes in one transaction: Seq 1..n
        for table in tables:
            db.execute(f"UPDATE {table} SET b = NOT b WHERE id IN (1, 10)")
            count += 2
    db.execute(f"TRUNCATE {', '.join(tables)}")
    return count + len(tables)


@pytest.mark.parametrize("plugin", ["pgoutput"])  # both plugins in one test: not the fixture's
@pytest.mark.parametrize(("numeric_as_string", "timezone"), [(False, "UTC"), (True, "America/New_York")])
def test_wal2json_and_pgoutput_envelopes_are_identical(db: Db, numeric_as_string: bool, timezone: str) -> None:
    enum, domain = db.name("mood"), db.name("posint")
    db.execute(f"CREATE TYPE {enum} AS ENUM ('sad', 'happy')")
    db.execute(f"CREATE DOMAIN {domain} AS int CHECK (VALUE > 0)")
    live: list[LiveInput] = []
    try:
        columns = COLUMNS.format(enum=enum, domain=domain)
        default, full = db.create_table("dflt", columns), db.create_table("full", columns)
        db.execute(f"ALTER TABLE {full} REPLICA IDENTITY FULL")
        configs = {}
        for plugin in ("wal2json", "pgoutput"):
            configs[plugin] = cfg = {
                "dsn": db.dsn,
                "tables": [default, full],
                "slot_name": db.name(plugin),
                "plugin": plugin,
                "numeric_as_string": numeric_as_string,
                "timezone": timezone,
                "poll_interval": 0.05,
                "max_poll_interval": 0.2,
            }
            init = LiveInput(PostgresCdcInputProvider, cfg, command="init")
            assert init.wait_exit() == 0, init.messages
        expected = _workload(db, [default, full])
        live = [LiveInput(PostgresCdcInputProvider, configs[p]) for p in ("wal2json", "pgoutput")]
        for reader in live:
            reader.wait(lambda lv: len(lv.data) >= expected, f"{expected} envelopes")
        for reader in live:
            assert reader.stop() == 0
    finally:
        for reader in live:
            if reader.exit_code is None:
                reader.stop()
        db.execute(f"DROP TABLE IF EXISTS {db.name('dflt')}, {db.name('full')}")
        db.execute(f"DROP DOMAIN IF EXISTS {domain}")
        db.execute(f"DROP TYPE IF EXISTS {enum}")
    wal2json, pgoutput = ([{"data": m["data"], "metadata": m["metadata"]} for m in r.data] for r in live)
    assert len(wal2json) == expected
    for one, other in zip(wal2json, pgoutput, strict=True):
        assert one == other
    # The comparison covered what it claims to: the TOASTed value filled in from the old row
    # with FULL, left out with DEFAULT (as wal2json does), and the special numbers.
    updates = {m["metadata"]["TableName"]: m for m in pgoutput if m["data"].get("t") == "changed"}
    assert len(updates[f"public.{full}"]["data"]["big"]) == 3200 * 32
    assert "big" not in updates[f"public.{default}"]["data"]
    first = next(m["data"] for m in pgoutput if m["data"].get("id") in (1, "1"))
    assert (first["num"], first["f4"], first["f8"]) == (None, None, None)
    # Past what a double or a 64-bit integer holds: its exact text (JSON encoders refuse the int).
    huge = next(m["data"]["num"] for m in pgoutput if m["data"].get("id") in (2, "2"))
    assert huge == "1" + "0" * 400
    assert {m["metadata"]["OperationType"] for m in pgoutput} == {"Insert", "Update", "Delete", "Truncate"}


def _read_after(db: Db, tables: list[str]) -> LiveInput:
    cfg = {"dsn": db.dsn, "tables": tables, "slot_name": db.name("slot"), "poll_interval": 0.05}
    init = LiveInput(PostgresCdcInputProvider, {**cfg, "plugin": "pgoutput"}, command="init")
    assert init.wait_exit() == 0, init.messages
    return LiveInput(PostgresCdcInputProvider, cfg)


@pytest.mark.parametrize("plugin", ["pgoutput"])
def test_a_table_added_to_the_publication_streams_from_the_alter_on(db: Db) -> None:
    """PostgreSQL decodes each change with the catalog as it was when the change was written
    (a historic snapshot), publications included: changes of a table made before `dstream init`
    added it to the publication are not sent, those after are. (With wal2json, whose table
    filter is an option of each read, they would be.)"""
    first, added = db.create_table("first"), db.create_table("added")
    db.create_slot(db.name("slot"))  # the publication holds both tables: start with the first only
    db.execute(f"ALTER PUBLICATION {db.name('slot')} SET TABLE {first}")
    db.execute(f"INSERT INTO {added} VALUES (1, 'before')")
    db.execute(f"INSERT INTO {first} VALUES (1, 'marker')")
    live = _read_after(db, [first, added])  # init adds `added` to the publication
    db.execute(f"INSERT INTO {added} VALUES (2, 'after')")
    live.wait(lambda lv: len(lv.data) >= 2, "two changes")
    assert live.stop() == 0
    assert [(m["metadata"]["TableName"], m["data"]["v"]) for m in live.data] == [
        (f"public.{first}", "marker"),
        (f"public.{added}", "after"),
    ]


@pytest.mark.parametrize("plugin", ["pgoutput"])
def test_a_run_without_the_publication_or_with_a_table_missing_from_it_says_run_init(
    db: Db, caplog: pytest.LogCaptureFixture
) -> None:
    table, other = db.create_table("t"), db.create_table("u")
    slot = db.name("slot")
    db.value("SELECT lsn FROM pg_create_logical_replication_slot(%s, 'pgoutput')", (slot,))
    cfg: dict[str, Any] = {"dsn": db.dsn, "tables": [table], "slot_name": slot}
    missing = LiveInput(PostgresCdcInputProvider, cfg, task="pubtask")
    assert missing.wait_exit() == 1
    assert f'publication "{slot}" does not exist on 127.0.0.1:5432/' in caplog.text
    assert "run `dstream init pubtask`" in caplog.text
    db.execute(f"CREATE PUBLICATION {slot} FOR TABLE {table}")
    lacking = LiveInput(PostgresCdcInputProvider, {**cfg, "tables": [table, other]}, task="pubtask")
    assert lacking.wait_exit() == 1
    assert f"does not publish public.{other} (were tables added since `dstream init`?)" in caplog.text


def test_a_slot_of_the_other_plugin_is_one_actionable_line(db: Db, caplog: pytest.LogCaptureFixture) -> None:
    """An existing task keeps its slot's plugin when the config names none; naming the other
    one is refused in one line that says how to go on."""
    table = db.create_table("t")
    db.create_slot(db.name("slot"))
    other = "wal2json" if db.plugin == "pgoutput" else "pgoutput"
    cfg: dict[str, Any] = {"dsn": db.dsn, "tables": [table], "slot_name": db.name("slot")}
    refused = LiveInput(PostgresCdcInputProvider, {**cfg, "plugin": other})
    assert refused.wait_exit() == 1
    assert f"uses the output plugin '{db.plugin}', not {other}: set plugin = \"{db.plugin}\"" in caplog.text
    kept = LiveInput(PostgresCdcInputProvider, cfg)  # no plugin named: the slot's
    db.execute(f"INSERT INTO {table} VALUES (1, 'a')")
    kept.wait(lambda lv: len(lv.data) == 1, "the change")
    assert kept.stop() == 0


class _OldServer:
    """What Infrastructure asks of a PostgreSQL 13 (no pgoutput `messages` option)."""

    def __init__(self, version: int) -> None:
        from dstream_postgres_cdc.config import Target

        self.version = version
        self.target = Target("db:5432/app", "u", "slot", "orders", "pgoutput")

    def server_version(self) -> int:
        return self.version


@pytest.mark.parametrize("plugin", ["pgoutput"])
def test_incremental_snapshots_with_pgoutput_need_postgresql_14(plugin: str) -> None:
    from dstream_postgres_cdc.errors import CdcError
    from dstream_postgres_cdc.infra import Infrastructure

    def infra(version: int, plugin: str) -> Infrastructure:
        return Infrastructure(_OldServer(version), "slot", "slot_reader", [], plugin, False)  # type: ignore[arg-type]

    with pytest.raises(CdcError) as refused:
        infra(130011, "pgoutput").check_messages('snapshot = "incremental"')
    assert str(refused.value) == (
        'snapshot = "incremental" needs logical decoding messages, which pgoutput sends from PostgreSQL 14 on '
        '(db:5432/app runs an older one): set plugin = "wal2json", or snapshot = "initial"'
    )
    infra(140000, "pgoutput").check_messages("`dstream snapshot`")  # 14: fine
    infra(130011, "wal2json").check_messages("`dstream snapshot`")  # wal2json has always sent them


@pytest.mark.parametrize("plugin", ["pgoutput"])
def test_init_sets_the_publications_tables_when_tables_change(db: Db) -> None:
    a, b = db.create_table("a"), db.create_table("b")
    cfg: dict[str, Any] = {"dsn": db.dsn, "slot_name": db.name("slot"), "plugin": "pgoutput"}

    def init(tables: list[str], command: str = "init") -> list[tuple[str, str, Any]]:
        verb = LiveInput(PostgresCdcInputProvider, {**cfg, "tables": tables}, command=command)
        assert verb.wait_exit() == 0, verb.messages
        return [(r["action"], r["state"], r.get("details")) for r in verb.resources if r["type"] == "publication"]

    def published() -> list[str]:
        rows = db.execute("SELECT tablename::text FROM pg_publication_tables WHERE pubname = %s", (db.name("slot"),))
        return sorted(t for (t,) in rows)

    assert init([a]) == [("create", "present", {"tables": [f"public.{a}"]})]
    assert published() == [a]
    assert init([a, b], "plan") == [
        ("update", "present", {"tables": [f"public.{a}", f"public.{b}"], "was": [f"public.{a}"]})
    ]
    assert published() == [a]  # plan changes nothing
    assert init([a, b])[0][0] == "update"
    assert published() == [a, b]
    assert init([b])[0][:2] == ("update", "present")
    assert published() == [b]
    assert init([b]) == [("none", "present", {"tables": [f"public.{b}"]})]
