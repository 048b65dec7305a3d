"""init / plan / status / destroy for queues, topics and containers, shared by every service.

Ownership is recorded on the resource itself, so there is no state file to lose: Storage
queues and containers get metadata ``dstream_managed_by=dstream`` and
``dstream_task=<task>``; Service Bus entities get the same two keys as JSON in their
``user_metadata`` (or, where the broker drops it, a record in a ledger on the broker:
ledger.py). ``destroy`` deletes exactly the resources marked with this task's name
(including ones whose table was since removed from the config) and never one that dstream
did not create for this task, even when the config names it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from dstream.sdk import Resource

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

MANAGED_BY = "dstream"
MANAGED_KEY = "dstream_managed_by"
TASK_KEY = "dstream_task"


class LifecycleError(RuntimeError):
    pass


def owner_from_metadata(metadata: dict[str, str] | None) -> str | None:
    """The dstream task recorded on a resource, or None when dstream did not create it."""
    if not metadata or metadata.get(MANAGED_KEY) != MANAGED_BY:
        return None
    return metadata.get(TASK_KEY) or None


def ownership_metadata(task: str) -> dict[str, str]:
    return {MANAGED_KEY: MANAGED_BY, TASK_KEY: task}


@dataclass
class Existing:
    name: str
    owner: str | None  # the dstream task that created it; None: not created by dstream
    # Shown in plan/init rows, e.g. {"warning": "duplicate detection is off ..."}.
    details: dict[str, Any] = field(default_factory=dict)


class Admin(Protocol):
    """What a service offers the lifecycle: list with owners, create marked, delete, describe."""

    resource_type: str

    def existing(self) -> dict[str, Existing]: ...

    def create(self, name: str, task: str) -> bool:
        """Create ``name`` marked as owned by ``task``; False when it already existed."""
        ...

    def delete(self, name: str) -> None: ...

    def describe(self, name: str) -> dict[str, Any]: ...


def _key(admin: Admin) -> Callable[[str], str]:
    """How the service compares names (Service Bus names are case-insensitive)."""
    fold: Callable[[str], str] | None = getattr(admin, "fold", None)
    return fold or (lambda name: name)


def _existing(admin: Admin) -> dict[str, Existing]:
    key = _key(admin)
    return {key(name): found for name, found in admin.existing().items()}


def _require_task(task: str | None) -> str:
    if not task:
        raise LifecycleError(
            'the orchestrator did not say which task this is (no "task" in the command envelope), '
            "so ownership cannot be recorded; run it through `dstream init|destroy TASK`"
        )
    return task


def _ownership(existing: Existing, task: str | None) -> str:
    if existing.owner is None:
        return "not created by dstream"
    if existing.owner == task:
        return "this task"
    return f"task {existing.owner}"


def _details(tables: list[str], extra: dict[str, Any] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if tables:
        out["tables"] = ",".join(tables)
    out.update(extra or {})
    return out


def plan(admin: Admin, wanted: dict[str, list[str]], task: str | None) -> Iterator[Resource]:
    key = _key(admin)
    existing = _existing(admin)
    wanted_keys = {key(name) for name in wanted}
    for name in sorted(wanted):
        found = existing.get(key(name))
        if found is None:
            yield Resource(admin.resource_type, name, "create", "absent", _details(wanted[name]))
        else:
            details = _details(wanted[name], {"managed_by": _ownership(found, task), **found.details})
            yield Resource(admin.resource_type, name, "none", "present", details)
    for found in sorted(existing.values(), key=lambda e: e.name):
        if task and found.owner == task and key(found.name) not in wanted_keys:
            note = "no longer in the config; dstream destroy removes it"
            yield Resource(
                admin.resource_type, found.name, "none", "present", {"managed_by": "this task", "note": note}
            )


def init(admin: Admin, wanted: dict[str, list[str]], task: str | None) -> Iterator[Resource]:
    owner = _require_task(task)
    key = _key(admin)
    existing = _existing(admin)
    for name in sorted(wanted):
        found = existing.get(key(name))
        if found is None and admin.create(name, owner):
            yield Resource(
                admin.resource_type, name, "create", "present", _details(wanted[name], {"managed_by": owner})
            )
            continue
        found = found or _existing(admin).get(key(name)) or Existing(name, None)
        details = _details(wanted[name], {"managed_by": _ownership(found, owner), **found.details})
        yield Resource(admin.resource_type, name, "none", "present", details)


def status(admin: Admin, wanted: dict[str, list[str]], task: str | None) -> Iterator[Resource]:
    key = _key(admin)
    existing = _existing(admin)
    rows = {key(name): (name, wanted[name]) for name in wanted}
    for k, item in existing.items():
        if task and item.owner == task and k not in rows:
            rows[k] = (item.name, [])
    for k in sorted(rows, key=lambda k: rows[k][0]):
        name, tables = rows[k]
        found = existing.get(k)
        if found is None:
            yield Resource(admin.resource_type, name, "none", "absent", _details(tables))
            continue
        extra = {"managed_by": _ownership(found, task), **admin.describe(found.name)}
        yield Resource(admin.resource_type, name, "none", "present", _details(tables, extra))


def destroy(admin: Admin, wanted: dict[str, list[str]], task: str | None) -> Iterator[Resource]:
    owner = _require_task(task)
    key = _key(admin)
    existing = _existing(admin)
    rows = {key(name): (name, wanted[name]) for name in wanted}
    for k, item in existing.items():
        if item.owner == owner and k not in rows:
            rows[k] = (item.name, [])
    for k in sorted(rows, key=lambda k: rows[k][0]):
        name, tables = rows[k]
        found = existing.get(k)
        if found is not None and found.owner == owner:
            admin.delete(found.name)
            yield Resource(admin.resource_type, name, "delete", "absent", _details(tables))
        elif found is None:
            yield Resource(admin.resource_type, name, "none", "absent", _details(tables))
        else:
            why = f"kept: {_ownership(found, owner)}"
            yield Resource(admin.resource_type, name, "none", "present", _details(tables, {"note": why}))
