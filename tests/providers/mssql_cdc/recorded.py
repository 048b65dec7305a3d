"""Recorded answers for the provider's thin SQL layer (db.Session), for unit tests of the
logic around it. No SQL is interpreted: ``select`` applies a window's documented bounds
(``@from_lsn <= __$start_lsn <= @to_lsn``), the query's keyset, order and ``TOP`` to the
recorded rows of the window's capture instance; everything else is a scripted value.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from dstream_mssql_cdc import MssqlCdcInputProvider
from dstream_mssql_cdc.changes import Layout, ResultSet
from dstream_mssql_cdc.errors import ConnectionLost
from dstream_mssql_cdc.infra import DatabaseInfo, SourceTable

if TYPE_CHECKING:
    from dstream_mssql_cdc.config import MssqlCdcConfig
    from dstream_mssql_cdc.stream import ServerState, Window

    from dstream.sdk import Context

Recording = dict[str, tuple[tuple[str, ...], list[tuple[Any, ...]]]]


def select(recorded: Recording, window: Window) -> ResultSet:
    columns, rows = recorded[window.instance.name]
    layout = Layout.of(columns)
    parsed = sorted(zip(layout.parse(rows), rows, strict=True), key=lambda pair: pair[0].key)
    chosen = [
        raw
        for row, raw in parsed
        if window.start <= row.start_lsn <= window.end and (window.after is None or row.key > window.after)
    ]
    return ResultSet(columns, chosen[: window.limit])


@dataclass
class Script:
    """What the server says, poll by poll; the run is stopped once ``states`` are used up."""

    states: list[ServerState]
    recorded: Recording
    tables: dict[str, SourceTable] = field(default_factory=dict)
    database: DatabaseInfo = field(default_factory=lambda: DatabaseInfo("shop", True, "16.0"))
    fail_changes_at: set[int] = field(default_factory=set)  # poll numbers (from 1) whose queries fail once
    extra_polls: int = 2  # polls of the last state before stopping
    polls: int = 0
    windows: list[Window] = field(default_factory=list)
    connects: int = 0
    ctx: Context | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)


class RecordedSession:
    def __init__(self, script: Script) -> None:
        self.script = script
        self.connected = False

    def connect(self) -> None:
        self.script.connects += 1
        self.connected = True

    def close(self) -> None:
        self.connected = False

    def database(self) -> DatabaseInfo:
        return self.script.database

    def state(self) -> ServerState:
        script = self.script
        script.polls += 1
        if script.polls > len(script.states) + script.extra_polls and script.ctx is not None:
            script.ctx.stopping.set()
        return script.states[min(script.polls, len(script.states)) - 1]

    def log_end(self) -> int | None:
        return None

    def table(self, schema: str | None, name: str) -> SourceTable | None:
        return self.script.tables.get(f"{schema or 'dbo'}.{name}".lower())

    def changes(self, window: Window) -> ResultSet:
        script = self.script
        with script.lock:
            if script.polls in script.fail_changes_at:
                script.fail_changes_at.discard(script.polls)
                self.connected = False
                raise ConnectionLost("lost the connection to SQL Server at db,1433/shop: Communication link failure")
            script.windows.append(window)
        return select(script.recorded, window)

    def retention_minutes(self) -> int | None:
        return 4320

    def lag_seconds(self, lsn: int) -> float | None:
        return 0.0


class RecordedProvider(MssqlCdcInputProvider):
    """The provider with its sessions answered by a :class:`Script` (set ``script`` first)."""

    script: ClassVar[Script]

    def __init__(self, config: MssqlCdcConfig, ctx: Context) -> None:
        self.script.ctx = ctx
        super().__init__(config, ctx)

    def _session(self) -> Any:
        return RecordedSession(self.script)


def provider_for(script: Script) -> type[RecordedProvider]:
    return type("Recorded", (RecordedProvider,), {"script": script})
