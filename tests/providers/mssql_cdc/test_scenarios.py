"""Debezium's SQL Server integration scenarios (scenarios.py), each run against the recorded
server and, with DSTREAM_TEST_MSSQL=1 (.github/workflows/mssql.yml), against a real SQL Server
2022: the same statements, the same expected envelopes. A scenario that fails only on the real
server is a place where the recorded server disagrees with SQL Server: fix the fake (and cite
the evidence), then the provider if needed (providers/mssql-cdc/README.md, "Tests")."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import TYPE_CHECKING, Any, ClassVar

import pytest

from dstream.sdk.testing import run_provider
from tests.waiting import wait_until

from .conftest import SKIP_REASON, STARTUP
from .live import LiveInput
from .scenarios import NOT_PORTED, SCENARIOS, START, Scenario, Simulation, batches
from .server import RecordedProvider

if TYPE_CHECKING:
    from .conftest import Database

CONN = "DRIVER={FreeTDS};SERVER=db;PORT=1433;DATABASE=shop;UID=dstream;PWD=hunter22;TDS_Version=7.4"
FAST = {"poll_interval": "1ms", "max_poll_interval": "2ms"}
TICK = "dstream_tick"  # a captured table outside every scenario: the capture job has run once the run starts

Normal = tuple[str, str, dict[str, Any], dict[str, Any] | None]


def _plain(value: Any) -> Any:
    return float(value) if isinstance(value, Decimal | float) and not isinstance(value, bool) else value


def _clean(values: dict[str, Any] | None, unchecked: tuple[str, ...]) -> dict[str, Any] | None:
    if values is None:
        return None
    return {k: _plain(v) for k, v in values.items() if k not in unchecked}


def expected(scenario: Scenario) -> list[Normal]:
    return [
        (e.table, e.op, _clean(dict(e.data), ()) or {}, _clean(dict(e.before), ()) if e.before is not None else None)
        for e in scenario.expected
    ]


def normal(envelopes: list[dict[str, Any]], scenario: Scenario) -> list[Normal]:
    """Envelopes in expected()'s terms (the before-image only where the scenario gives one)."""
    wants_before = [e.before is not None for e in scenario.expected]
    out: list[Normal] = []
    for i, m in enumerate(envelopes):
        meta = m["metadata"]
        before = meta.get("Before") if i < len(wants_before) and wants_before[i] else None
        out.append(
            (
                meta["TableName"],
                meta["OperationType"],
                _clean(m["data"], scenario.unchecked) or {},
                _clean(before, scenario.unchecked),
            )
        )
    return out


def config(scenario: Scenario, connection_string: str) -> dict[str, Any]:
    listed = scenario.listed or tuple(f"dbo.{t.name}" for t in scenario.tables)
    # Debezium's default isolation (repeatable_read) needs no database option; read_committed is ours
    settings = {"snapshot_isolation": "read_committed", **scenario.config}
    return {"connection_string": connection_string, "tables": list(listed), **settings}


def rows_of(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [m for m in messages if "data" in m and m["metadata"]["OperationType"] != "SchemaChange"]


def checkpoint_after(messages: list[dict[str, Any]], count: int) -> tuple[int, Any]:
    """The first checkpoint at or after the ``count``-th row, and how many rows it covers."""
    rows = 0
    for m in messages:
        is_row = "data" in m and m["metadata"]["OperationType"] != "SchemaChange"
        rows += is_row
        if "checkpoint" in m and rows >= count:
            return rows, m["checkpoint"]
    raise AssertionError(f"no checkpoint after {count} rows")


def last_checkpoint(messages: list[dict[str, Any]]) -> tuple[int, Any]:
    rows, found = 0, (0, None)
    for m in messages:
        rows += "data" in m and m["metadata"]["OperationType"] != "SchemaChange"
        if "checkpoint" in m:
            found = (rows, m["checkpoint"])
    return found


def debezium_events(envelopes: list[dict[str, Any]]) -> int:
    """Change events as Debezium counts them without tombstones: an update whose key changed is a
    delete and a create (RelationalChangeRecordEmitter), anything else one; snapshot reads not counted."""
    count = 0
    for m in envelopes:
        meta = m["metadata"]
        if meta["OperationType"] == "Read":
            continue
        before = meta.get("Before") or {}
        moved = meta["OperationType"] == "Update" and any(
            before.get(k) != v for k, v in (meta.get("Key") or {}).items()
        )
        count += 2 if moved else 1
    return count


def replayed(envelopes: list[dict[str, Any]]) -> set[Any]:
    """The keys of the last table the envelopes touch, replayed by key (upsert, delete)."""
    table = envelopes[-1]["metadata"]["TableName"] if envelopes else None
    keys: set[Any] = set()
    for m in envelopes:
        meta = m["metadata"]
        if meta["TableName"] != table:
            continue
        key = (meta.get("Key") or {}).get("id")
        if meta["OperationType"] == "Delete":
            keys.discard(key)
            continue
        before = (meta.get("Before") or {}).get("id")
        if before is not None and before != key:
            keys.discard(before)
        keys.add(key)
    return keys


# -- the recorded server --------------------------------------------------------------------


class EveryRow(RecordedProvider):
    checkpoint_every: ClassVar[int | None] = 1


def simulated(scenario: Scenario, upfront: bool) -> Simulation:
    """The recorded server of a scenario; ``upfront``: every statement already captured (a resumed run)."""
    sim = Simulation(scenario)
    sim.server.max_lsn = START  # the capture job has run since CDC was enabled
    sim.preload(scenario.preload)
    sim.apply(scenario.before)
    if upfront:
        sim.apply(scenario.during)
        sim.apply(scenario.stopped)
        return sim
    applied = False

    def during(server: Any) -> None:  # once the snapshot is over (or at the first poll without one)
        nonlocal applied
        if not applied and (server.snapshots_done or not scenario.ready):
            applied = True
            sim.apply(scenario.during)

    sim.server.script = dict.fromkeys(range(2, 40), during)
    return sim


def run_recorded(scenario: Scenario) -> list[dict[str, Any]]:
    settings = {**config(scenario, CONN), **FAST}
    cls = type("Scenario", (EveryRow,), {"server": simulated(scenario, upfront=False).server})
    first = run_provider(cls, settings, task="scenario")
    assert first.exit_code == 0, first.error
    rows = rows_of(first.messages)
    if scenario.restart_after is None:
        return rows
    covered, checkpoint = (
        last_checkpoint(first.messages)
        if scenario.stopped
        else checkpoint_after(first.messages, scenario.restart_after)
    )
    cls = type("Resumed", (EveryRow,), {"server": simulated(scenario, upfront=True).server})
    second = run_provider(cls, settings, checkpoint=checkpoint, task="scenario")
    assert second.exit_code == 0, second.error
    return rows[:covered] + rows_of(second.messages)


# -- the real server ------------------------------------------------------------------------


def _enable(database: Database, table: str, captured: tuple[str, ...] | None, index: str | None) -> None:
    if not database.value("SELECT is_cdc_enabled FROM sys.databases WHERE database_id = DB_ID()"):
        database.execute("EXEC sys.sp_cdc_enable_db")
    database.execute(
        "EXEC sys.sp_cdc_enable_table @source_schema = N'dbo', @source_name = ?, @role_name = NULL,"
        " @captured_column_list = ?, @index_name = ?",
        table,
        ", ".join(captured) if captured is not None else None,
        index,
    )


def _captured(database: Database, counts: dict[str, int]) -> bool:
    return all(database.captured(name) >= n for name, n in counts.items())


def run_real(scenario: Scenario, database: Database) -> list[dict[str, Any]]:
    tables = {t.name: t for t in scenario.tables}
    sim = Simulation(scenario)  # how many change-table rows each step leaves (what the capture job must harvest)
    if scenario.snapshot_isolation:
        database.execute(f"ALTER DATABASE [{database.name}] SET ALLOW_SNAPSHOT_ISOLATION ON")
    for t in scenario.tables:
        database.execute(t.create())
    for step in scenario.preload:
        for sql in batches(step, tables):
            database.execute(sql)
    database.execute(f"CREATE TABLE dbo.{TICK} (id int PRIMARY KEY)")
    _enable(database, TICK, None, None)
    for t in scenario.tables:
        _enable(database, t.name, t.captured, t.index)

    def run(steps: tuple[Any, ...]) -> None:
        sim.apply(steps)
        for step in steps:
            for sql in batches(step, tables):
                database.execute(sql)
        wait_until(lambda: _captured(database, sim.counts()), "the capture job", timeout=300)

    database.execute(f"INSERT INTO dbo.{TICK} VALUES (1)")  # noqa: S608 - a constant name
    wait_until(lambda: _captured(database, {f"dbo_{TICK}": 1}), "the capture job", timeout=300)
    run(scenario.before)
    settings = {**config(scenario, database.connection_string), "poll_interval": "100ms", "max_poll_interval": "1s"}
    total = len(scenario.expected)
    live = LiveInput(settings, task="scenario")
    try:
        live.wait(lambda r: len(r.rows) >= scenario.ready, "the snapshot", 300)
        run(scenario.during)
        live.wait(lambda r: len(r.rows) >= (scenario.restart_after or total), "the changes", 300)
    finally:
        assert live.stop() == 0
    if scenario.restart_after is None:
        return live.rows
    covered, checkpoint = last_checkpoint(live.messages)
    run(scenario.stopped)
    again = LiveInput(settings, checkpoint, task="scenario")
    try:
        again.wait(lambda r: covered + len(r.rows) >= total, "the changes after the restart", 300)
    finally:
        assert again.stop() == 0
    return rows_of(live.messages)[:covered] + again.rows


# -- the tests ------------------------------------------------------------------------------

RUNNABLE = list(SCENARIOS)


def _params() -> list[Any]:
    params = []
    for s in RUNNABLE:
        params.append(pytest.param(s, "recorded", id=f"recorded-{s.name}", marks=pytest.mark.unit))
        params.append(
            pytest.param(
                s,
                "real",
                id=f"real-{s.name}",
                marks=[pytest.mark.mssql, pytest.mark.timeout(int(STARTUP) + 900)],
            )
        )
    return params


@pytest.mark.unit
def test_at_least_25_scenarios_are_ported_each_named_after_a_debezium_test() -> None:
    names = [s.name for s in SCENARIOS]
    assert len(set(names)) == len(names) >= 25
    assert all("." in n and n.split(".")[0].endswith("IT") for n in [*names, *NOT_PORTED])


@pytest.mark.parametrize(("scenario", "server"), _params())
def test_a_debezium_scenario(scenario: Scenario, server: str, request: pytest.FixtureRequest) -> None:
    if server == "recorded":
        if scenario.recorded_skip:
            pytest.skip(scenario.recorded_skip)
        got = run_recorded(scenario)
    else:
        got = run_real(scenario, request.getfixturevalue("database"))
    if scenario.debezium_events is not None:
        # the envelopes after the expected ones (the snapshot and the inserts) are the updates Debezium counted
        events = debezium_events(got[len(scenario.expected) :])
        assert events == scenario.debezium_events, json.dumps(normal(got, scenario), default=str)
        assert replayed(got) == set(scenario.final)
        assert normal(got, scenario)[: len(scenario.expected)] == expected(scenario)
        return
    want = expected(scenario)
    assert normal(got, scenario) == want, json.dumps(
        {"scenario": scenario.name, "note": scenario.note, "got": normal(got, scenario)[: len(want) + 5]}, default=str
    )


@pytest.mark.unit
@pytest.mark.parametrize("name", sorted(NOT_PORTED))
def test_a_debezium_scenario_not_ported(name: str) -> None:
    pytest.skip(f"{name}: {NOT_PORTED[name]}")


@pytest.mark.unit
def test_real_server_scenarios_skip_here_with_the_reason() -> None:
    assert "DSTREAM_TEST_MSSQL=1" in SKIP_REASON
