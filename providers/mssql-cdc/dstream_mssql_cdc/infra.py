"""``dstream init|plan|status|destroy``: CDC on the database and on the tables.

- init (``enable_cdc = true``): ``sys.sp_cdc_enable_db`` when CDC is off on the database,
  ``sys.sp_cdc_enable_table`` for each listed table without a capture instance, and a
  record of what this task enabled. Without ``enable_cdc``, init checks and fails, saying
  what is missing and how to enable it.
- plan: the rows init would print, changing nothing.
- status: the database (CDC on or off, max LSN, seconds since the newest capture, the
  cleanup retention, whether the capture job runs) and each capture instance (its table,
  start LSN, creation time, owner).
- destroy: ``sys.sp_cdc_disable_table`` for the capture instances this task enabled, and
  ``sys.sp_cdc_disable_db`` if this task enabled CDC on the database and no other capture
  instance is left. Everything else is left as it is.

Ownership is recorded in extended properties named ``dstream:cdc:<capture instance>`` on
the source table (``{"task": ..., "change_table_id": ...}``: the change table's object id
tells a later instance of the same name, made by someone else, from ours) and
``dstream:cdc:database`` on the database. They go away with the table and are dropped by
destroy. The planning functions here are pure; :class:`Infrastructure` carries them out.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

from dstream.sdk import Resource
from dstream_mssql_cdc.catalog import PROPERTY_PREFIX, DatabaseInfo, SourceTable, Tag
from dstream_mssql_cdc.errors import CdcError
from dstream_mssql_cdc.lsn import decrement_lsn, format_lsn
from dstream_mssql_cdc.names import parse_table_name

if TYPE_CHECKING:
    from collections.abc import Iterator

    from dstream.sdk.cdc import Position
    from dstream_mssql_cdc.catalog import CaptureInstance
    from dstream_mssql_cdc.db import Session

DATABASE_PROPERTY = PROPERTY_PREFIX + "database"
DATABASE = "cdc_database"
INSTANCE = "capture_instance"
TABLE = "table"
ISOLATION = "snapshot_isolation"


@dataclass(frozen=True)
class TableState:
    """A configured table: whether it exists, and its capture instances."""

    name: str
    source: SourceTable | None
    instances: tuple[CaptureInstance, ...] = ()


@dataclass
class Step:
    """A result row and what to do for it (None: nothing)."""

    resource: Resource
    op: str | None = None  # enable_db | allow_snapshot | enable_table | disable_table | disable_db | drop_tag
    table: SourceTable | None = None
    instance: str | None = None
    tag: Tag | None = None


@dataclass
class Plan:
    steps: list[Step] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def instance_tag(instance: str) -> str:
    return PROPERTY_PREFIX + instance


def owner(instance: CaptureInstance, tags: list[Tag]) -> str | None:
    """The task that enabled ``instance``, when a tag of ours says so and still matches it."""
    for tag in tags:
        if (
            tag.object_id == instance.object_id
            and tag.name == instance_tag(instance.name)
            and tag.value.get("change_table_id") == instance.change_table_id
        ):
            task = tag.value.get("task")
            return str(task) if task else None
    return None


def database_owner(tags: list[Tag]) -> str | None:
    for tag in tags:
        if tag.object_id == 0 and tag.name == DATABASE_PROPERTY:
            task = tag.value.get("task")
            return str(task) if task else None
    return None


def _instance_details(instance: CaptureInstance, tags: list[Tag]) -> dict[str, Any]:
    details: dict[str, Any] = {"table": instance.qualified, "owner": owner(instance, tags)}
    if instance.min_lsn:
        details["start_lsn"] = format_lsn(instance.min_lsn)
    if instance.create_date is not None:
        details["created"] = instance.create_date.isoformat(timespec="seconds")
    return details


def plan_enable(
    db: DatabaseInfo, tables: list[TableState], tags: list[Tag], enable: bool, task: str, snapshots: bool = False
) -> Plan:
    """What init does (and plan shows): enable CDC where it is off, when allowed to, and
    snapshot isolation when the snapshot needs it (``snapshots``)."""
    plan = Plan()
    if db.cdc_enabled:
        details = {"owner": database_owner(tags)}
        plan.steps.append(Step(Resource(DATABASE, db.name, "none", "enabled", details)))
    elif enable:
        plan.steps.append(Step(Resource(DATABASE, db.name, "create", "disabled", {"to": "enabled"}), "enable_db"))
    else:
        plan.steps.append(Step(Resource(DATABASE, db.name, "none", "disabled")))
        plan.problems.append(
            f"CDC is not enabled on database {db.name}: set enable_cdc = true (then `dstream init {task}` runs "
            f"sys.sp_cdc_enable_db, which needs sysadmin), or EXEC sys.sp_cdc_enable_db"
        )
    if snapshots:
        if db.snapshot_isolation:
            plan.steps.append(Step(Resource(ISOLATION, db.name, "none", "on")))
        elif enable:
            plan.steps.append(Step(Resource(ISOLATION, db.name, "update", "off", {"to": "on"}), "allow_snapshot"))
        else:
            plan.steps.append(Step(Resource(ISOLATION, db.name, "none", "off")))
            plan.problems.append(
                f"snapshot isolation is off on database {db.name}, and the initial snapshot reads in a SNAPSHOT "
                f"transaction: set enable_cdc = true (then `dstream init {task}` runs ALTER DATABASE [{db.name}] "
                f"SET ALLOW_SNAPSHOT_ISOLATION ON, which needs db_owner), run that yourself, or set "
                f'snapshot_isolation = "read_committed"'
            )
    for table in tables:
        if table.source is None:
            plan.steps.append(Step(Resource(TABLE, table.name, "none", "absent")))
            plan.problems.append(f"table {table.name} does not exist in database {db.name}")
            continue
        if table.instances:
            for instance in table.instances:
                plan.steps.append(
                    Step(Resource(INSTANCE, instance.name, "none", "present", _instance_details(instance, tags)))
                )
            continue
        name = f"{table.source.schema}_{table.source.name}"  # SQL Server's default instance name
        if enable:
            details = {"table": table.source.qualified, "owner": task}
            plan.steps.append(Step(Resource(INSTANCE, name, "create", "absent", details), "enable_table", table.source))
        else:
            plan.steps.append(Step(Resource(INSTANCE, name, "none", "absent", {"table": table.source.qualified})))
            plan.problems.append(
                f"CDC is not enabled on {table.source.qualified}: set enable_cdc = true (then `dstream init {task}` "
                f"enables it), or EXEC sys.sp_cdc_enable_table @source_schema = N'{table.source.schema}', "
                f"@source_name = N'{table.source.name}', @role_name = NULL"
            )
    return plan


def plan_destroy(
    db: DatabaseInfo, instances: tuple[CaptureInstance, ...], tags: list[Tag], configured: list[str], task: str
) -> Plan:
    """What destroy does: disable what ``task`` enabled, report the rest of the configured tables."""
    plan = Plan()
    disabled: set[str] = set()
    by_name = {i.name: i for i in instances}
    for tag in tags:
        if tag.object_id == 0 or tag.value.get("task") != task or not tag.name.startswith(PROPERTY_PREFIX):
            continue
        name = tag.name[len(PROPERTY_PREFIX) :]
        instance = by_name.get(name)
        table = SourceTable(tag.object_id, tag.schema, tag.table)
        if instance is not None and instance.object_id == tag.object_id and owner(instance, tags) == task:
            details = {"table": instance.qualified, "owner": task}
            plan.steps.append(
                Step(Resource(INSTANCE, name, "delete", "absent", details), "disable_table", table, name, tag)
            )
            disabled.add(name)
        else:
            note = "already disabled" if instance is None else "recreated by someone else: left alone"
            state = "absent" if instance is None else "present"
            plan.steps.append(
                Step(
                    Resource(INSTANCE, name, "none", state, {"table": table.qualified, "note": note}),
                    "drop_tag",
                    tag=tag,
                )
            )
    remaining = [i for i in instances if i.name not in disabled]
    wanted = {_key(name) for name in configured}
    for instance in remaining:
        if (instance.schema.lower(), instance.table.lower()) in wanted or (None, instance.table.lower()) in wanted:
            details = _instance_details(instance, tags) | {"note": "not enabled by this task: left alone"}
            plan.steps.append(Step(Resource(INSTANCE, instance.name, "none", "present", details)))
    db_tag = next((t for t in tags if t.object_id == 0 and t.name == DATABASE_PROPERTY), None)
    if db_tag is not None and db_tag.value.get("task") == task:
        if not db.cdc_enabled:
            plan.steps.append(Step(Resource(DATABASE, db.name, "none", "disabled"), "drop_tag", tag=db_tag))
        elif remaining:
            note = f"{len(remaining)} capture instance(s) not enabled by this task remain: CDC stays enabled"
            plan.steps.append(Step(Resource(DATABASE, db.name, "none", "enabled", {"owner": task, "note": note})))
        else:
            plan.steps.append(
                Step(Resource(DATABASE, db.name, "delete", "disabled", {"owner": task}), "disable_db", tag=db_tag)
            )
    else:
        state = "enabled" if db.cdc_enabled else "disabled"
        kept: dict[str, Any] = {"owner": database_owner(tags), "note": "not enabled by this task: left alone"}
        plan.steps.append(Step(Resource(DATABASE, db.name, "none", state, kept)))
    return plan


def _key(name: str) -> tuple[str | None, str]:
    schema, table = parse_table_name(name)
    return (schema.lower() if schema else None, table.lower())


class Infrastructure:
    def __init__(
        self, db: Session, tables: list[str] | None, enable: bool, task: str | None, snapshots: bool = False
    ) -> None:
        self.db = db
        self.tables = tables
        self.enable = enable
        self.task = task
        self.snapshots = snapshots  # the initial snapshot will run in a SNAPSHOT transaction

    def _task(self) -> str:
        if not self.task:
            raise CdcError("no task name was given: ownership of what init enables is recorded under the task's name")
        return self.task

    def _table_states(self, instances: tuple[CaptureInstance, ...]) -> list[TableState]:
        if self.tables is None:  # every CDC-enabled table
            found: dict[int, list[CaptureInstance]] = {}
            for instance in instances:
                found.setdefault(instance.object_id, []).append(instance)
            return [
                TableState(group[0].qualified, SourceTable(oid, group[0].schema, group[0].table), tuple(group))
                for oid, group in sorted(found.items(), key=lambda item: item[1][0].qualified)
            ]
        states = []
        for name in self.tables:
            schema, table = parse_table_name(name)
            source = self.db.table(schema, table)
            mine = tuple(i for i in instances if source is not None and i.object_id == source.object_id)
            states.append(TableState(name, source, mine))
        return states

    def _instances(self, db: DatabaseInfo) -> tuple[CaptureInstance, ...]:
        return self.db.instances() if db.cdc_enabled else ()

    def _plan_enable(self) -> Plan:
        db = self.db.database()
        tags = self.db.tags()
        states = self._table_states(self._instances(db))
        return plan_enable(db, states, tags, self.enable, self.task or "TASK", self.snapshots)

    def plan(self) -> Iterator[Resource]:
        for step in self._plan_enable().steps:
            yield step.resource

    def init(self) -> Iterator[Resource]:
        plan = self._plan_enable()
        if plan.problems:
            for step in plan.steps:
                yield step.resource
            raise CdcError("; ".join(plan.problems))
        for step in plan.steps:
            if step.op == "enable_db":
                task = self._task()
                self.db.enable_database()
                self.db.add_tag(None, DATABASE_PROPERTY, {"task": task})
                yield Resource(DATABASE, step.resource.name, "create", "enabled", {"owner": task})
            elif step.op == "allow_snapshot":
                self.db.allow_snapshot_isolation(step.resource.name)
                yield Resource(ISOLATION, step.resource.name, "update", "on", {"was": "off"})
            elif step.op == "enable_table":
                yield self._enable_table(step)
            else:
                yield step.resource

    def _enable_table(self, step: Step) -> Resource:
        task = self._task()
        table = step.table
        assert table is not None
        before = {i.name for i in self.db.instances() if i.object_id == table.object_id}
        self.db.enable_table(table)
        created = [i for i in self.db.instances() if i.object_id == table.object_id and i.name not in before]
        if not created:
            raise CdcError(
                f"sys.sp_cdc_enable_table reported success but {table.qualified} has no new capture instance"
            )
        instance = created[0]
        self.db.add_tag(table, instance_tag(instance.name), {"task": task, "change_table_id": instance.change_table_id})
        return Resource(INSTANCE, instance.name, "create", "present", {"table": table.qualified, "owner": task})

    def status(self, positions: dict[str, Position] | None = None) -> Iterator[Resource]:
        """The database, and each capture instance with its columns; with the task's
        checkpoint (``positions``), each table's position and lag behind the max LSN."""
        db = self.db.database()
        tags = self.db.tags()
        details: dict[str, Any] = {"owner": database_owner(tags)}
        max_lsn = None
        if db.cdc_enabled:
            max_lsn = self.db.max_lsn()
            details["max_lsn"] = format_lsn(max_lsn) if max_lsn is not None else None
            details["capture_latency_seconds"] = self.db.capture_latency()
            details["retention_minutes"] = self.db.retention_minutes()
            details["capture_job"] = self.db.capture_job()
            details["snapshot_isolation"] = "on" if db.snapshot_isolation else "off"
        yield Resource(DATABASE, db.name, "none", "enabled" if db.cdc_enabled else "disabled", details)
        for table in self._table_states(self._instances(db)):
            if table.source is None:
                yield Resource(TABLE, table.name, "none", "absent")
                continue
            if not table.instances:
                yield Resource(
                    INSTANCE,
                    f"{table.source.schema}_{table.source.name}",
                    "none",
                    "absent",
                    {"table": table.source.qualified},
                )
            for instance in table.instances:
                found = _instance_details(instance, tags)
                columns = self.db.optional(partial(self.db.captured_columns, instance))
                if columns is not None:
                    found["columns"] = [c.describe() for c in columns]
                found["key"] = list(instance.key)
                yield Resource(INSTANCE, instance.name, "none", "present", found)
            if positions is not None:
                yield self._lag(table.source.qualified, positions.get(table.source.qualified), max_lsn)

    def _lag(self, table: str, position: Position | None, max_lsn: int | None) -> Resource:
        """A table's position in the task's checkpoint and how far it is behind the max LSN."""
        if position is None:
            return Resource(TABLE, table, "none", "not started")
        details: dict[str, Any] = {"lsn": format_lsn(position.lsn), "max_lsn": format_lsn(max_lsn or 0)}
        if position.snapshot is not None:
            details["snapshot_rows"] = position.snapshot.rows
            return Resource(TABLE, table, "none", "snapshot", details)
        if position.incremental is not None:  # an incremental snapshot under way (the table streams meanwhile)
            details.update(position.incremental.status(time.time()))
        if max_lsn is None or position.lsn > max_lsn:
            details["lag_seconds"] = 0.0
            return Resource(TABLE, table, "none", "streaming", details)
        passed = self.db.commit_time(decrement_lsn(position.lsn)) if position.lsn > 0 else None
        newest = self.db.commit_time(max_lsn)
        if passed is not None and newest is not None:
            details["lag_seconds"] = max(0.0, (newest - passed).total_seconds())
        else:
            details["lag_seconds"] = None  # the position is not right after a commit (a start LSN)
        return Resource(TABLE, table, "none", "streaming", details)

    def destroy(self) -> Iterator[Resource]:
        db = self.db.database()
        tags = self.db.tags()
        plan = plan_destroy(db, self._instances(db), tags, self.tables or [], self.task or "")
        for step in plan.steps:
            if step.op == "disable_table":
                assert step.table is not None
                assert step.instance is not None
                assert step.tag is not None
                self.db.disable_table(step.table, step.instance)
                self.db.drop_tag(step.tag)
            elif step.op == "disable_db":
                assert step.tag is not None
                self.db.disable_database()
                self.db.drop_tag(step.tag)
            elif step.op == "drop_tag":
                assert step.tag is not None
                self.db.drop_tag(step.tag)
            yield step.resource
