"""Before a run emits anything: CDC on, the tables and what this login may read of them,
the query mode, every stored position still readable, and which tables to snapshot.

``sys.fn_cdc_get_min_lsn`` returns 0 both while capture has not started and when the caller
is not authorized (Microsoft's page says so), so a zero is never read as "not yet" alone:
a table CDC captures (``sys.tables.is_tracked_by_cdc``) whose capture instance
``sys.sp_cdc_help_change_data_capture`` does not show this login is an error that names the
login, the table, the missing right and the GRANT (catalog.access_message); a visible
instance without a start LSN is capture not started yet (the run waits for it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from dstream.sdk.cdc import Position, SnapshotPlan, plan_snapshots
from dstream_mssql_cdc.catalog import access_message, gating_message
from dstream_mssql_cdc.errors import CdcError, Denied, Purged
from dstream_mssql_cdc.lsn import format_lsn, increment_lsn
from dstream_mssql_cdc.names import parse_table_name, quote_name
from dstream_mssql_cdc.windows import choose_instance, no_instance_message

if TYPE_CHECKING:
    import logging

    from dstream_mssql_cdc.catalog import CaptureInstance, Login, ServerState
    from dstream_mssql_cdc.config import MssqlCdcConfig, Target
    from dstream_mssql_cdc.db import Session

ORDER_COMMAND = "command_id"  # direct mode: inside a transaction by __$command_id
ORDER_SEQVAL = "seqval"  # function mode: by __$seqval


@dataclass
class Setup:
    direct: bool
    object_ids: dict[str, int] = field(default_factory=dict)  # every captured table
    stored: dict[str, Position] = field(default_factory=dict)  # their positions in the checkpoint
    streaming: dict[str, tuple[int, Position | None]] = field(default_factory=dict)  # not snapshotted now
    plan: SnapshotPlan = field(default_factory=SnapshotPlan)

    def instance_of(self, table: str, state: ServerState) -> CaptureInstance:
        """The instance a snapshot of ``table`` reads the columns of: its newest, as the table is now."""
        instances = state.of_table(self.object_ids[table])
        if not instances:
            raise CdcError(f"{table} has no capture instance any more (CDC was disabled on it)")
        established = [i for i in instances if i.min_lsn > 0]
        return (established or instances)[-1]


def prepare(
    db: Session, config: MssqlCdcConfig, target: Target, stored: dict[str, Position], log: logging.Logger
) -> Setup:
    info = db.database()
    if not info.cdc_enabled:
        raise CdcError(
            f"CDC is not enabled on database {info.name} at {target.server}: set enable_cdc = true and run "
            f"`dstream init {target.task_hint}`, or EXEC sys.sp_cdc_enable_db"
        )
    login = db.login()
    state = db.state()
    tables = _tables(db, config, state, login, info.name, target, log)
    direct = _query_mode(db, config, state, tables, login, log)
    names = list(tables)
    gone = sorted(set(stored) - set(names))
    if gone:
        log.info("no longer capturing %s: their positions leave the checkpoint", ", ".join(gone))
    mine = {name: stored[name] for name in names if name in stored}
    streaming_positions = {name: p for name, p in mine.items() if p.snapshot is None}
    expired = check_positions(streaming_positions, tables, state, target.task_hint)
    if expired and config.snapshot != "when_needed":
        raise Purged("\n".join(expired.values()))
    for name, message in expired.items():
        log.warning('%s; snapshotting the table again (snapshot = "when_needed")', message)
        del mine[name]
    plan = plan_snapshots(config.snapshot, names, mine, expired)
    setup = Setup(direct, tables, mine, plan=plan)
    for name in names:
        if name in plan.tables:
            continue
        position = mine.get(name)
        setup.streaming[name] = (tables[name], position)
        where = f"LSN {format_lsn(position.lsn)}" if position is not None else f"the {config.start} change"
        if position is not None and position.index:
            where += f" (after change {position.index} of that transaction)"
        log.info("streaming %s from %s", name, where)
    if plan:
        log.info(
            "snapshot of %s first%s",
            ", ".join(plan.start) or "nothing new",
            f"; resuming the snapshot of {', '.join(plan.resume)}" if plan.resume else "",
        )
    return setup


def _tables(
    db: Session,
    config: MssqlCdcConfig,
    state: ServerState,
    login: Login,
    database: str,
    target: Target,
    log: logging.Logger,
) -> dict[str, int]:
    """schema.table → object_id of each table to capture, with its access checked."""
    if config.tables is None:
        found = dict(sorted((name, oid) for oid, name in state.tables().items()))
        hidden = [t for t in db.tracked_tables() if t.object_id not in state.tables()]
        for tracked in hidden:
            log.warning("%s", access_message(login, tracked, db.denied_columns(tracked), target.task_hint))
        if not found:
            log.warning(
                "no table of database %s has a CDC capture instance this login may read yet: waiting for tables "
                "to be enabled",
                database,
            )
        return found
    out: dict[str, int] = {}
    missing: list[str] = []
    for name in config.tables:
        schema, table = parse_table_name(name)
        source = db.table(schema, table)
        if source is None:
            missing.append(name)
            continue
        instances = state.of_table(source.object_id)
        if not instances:
            if source.tracked:
                raise Denied(access_message(login, source, db.denied_columns(source), target.task_hint))
            raise CdcError(no_instance_message(source.qualified, target.task_hint))
        for instance in instances:
            if instance.role and not db.is_role_member(instance.role):
                raise Denied(gating_message(login, instance))
        out[source.qualified] = source.object_id
    if missing:
        names = ", ".join(repr(m) for m in missing)
        raise CdcError(
            f"table {names} does not exist in database {database}, or login {login.login!r} may not see it "
            f"(names are schema.table; without a schema the login's default schema applies; a login sees a table "
            f"it has a permission on: GRANT SELECT ON <schema>.<table> TO {quote_name(login.user)})"
        )
    return out


def _query_mode(
    db: Session, config: MssqlCdcConfig, state: ServerState, tables: dict[str, int], login: Login, log: logging.Logger
) -> bool:
    """Direct (the change tables, exact order by __$command_id) or function mode."""
    if config.query_mode == "function":
        return False
    instances = [i for oid in tables.values() for i in state.of_table(oid)]
    unreadable = [i for i in instances if not db.can_select(i.change_table)]
    grants = "; ".join(f"GRANT SELECT ON {i.change_table} TO {quote_name(login.user)}" for i in unreadable)
    if config.query_mode == "direct" and unreadable:
        raise Denied(
            f'query_mode = "direct" reads the change tables, and login {login.login!r} may not read '
            f'{", ".join(i.change_table for i in unreadable)}: {grants}; (or query_mode = "function")'
        )
    if unreadable:
        log.warning(
            "reading changes through cdc.fn_cdc_get_all_changes_* (login %r may not read %s): inside a "
            "transaction they are ordered by __$seqval, which Microsoft documents is not the order of operations "
            "(__$command_id is; the query function does not return it). An update that changes a key column can "
            "then come as its insert before its delete. For the exact order: %s",
            login.login,
            ", ".join(i.change_table for i in unreadable),
            grants,
        )
        return False
    return bool(instances)


def check_positions(
    positions: dict[str, Position], tables: dict[str, int], state: ServerState, task: str
) -> dict[str, str]:
    """Stored positions that cannot be read from: purged by CDC retention, or past the max LSN."""
    problems: dict[str, str] = {}
    for name, position in positions.items():
        if state.max_lsn is not None and position.lsn > increment_lsn(state.max_lsn):
            problems[name] = (
                f"{name}: the checkpoint (LSN {format_lsn(position.lsn)}) is past the database's latest captured "
                f"LSN {format_lsn(state.max_lsn)}: was the database restored, or the task pointed at another "
                f"database? `dstream state reset {task}` starts over"
            )
            continue
        try:
            choose_instance(name, state.of_table(tables[name]), position.lsn, task)
        except Purged as exc:
            problems[name] = str(exc)
    return problems
