"""Ownership of Service Bus entities where ``user_metadata`` does not survive.

On Azure, dstream records who created a queue or topic in the entity's ``user_metadata``.
The emulator's entity schema (``Config-schema.json``) has no such property, so the
emulator may accept and drop it. When a read-back after creation shows it was dropped,
ownership goes to a ledger kept on the broker itself, so there is still no local state to
lose: a topic named ``dstream-ownership`` with one subscription per owned entity, whose
rule ``owner`` is a correlation filter whose properties are the record
(``dstream_managed_by``, ``dstream_task``, ``dstream_kind``, ``dstream_entity``). Nothing is
ever sent to that topic. Subscription names are a hash of kind and (case-folded) entity
name, as subscription names are at most 50 characters.
"""

from __future__ import annotations

import contextlib
import hashlib
from typing import Any

from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError
from azure.servicebus.management import CorrelationRuleFilter

from dstream_azure.lifecycle import MANAGED_BY, MANAGED_KEY, TASK_KEY

LEDGER_TOPIC = "dstream-ownership"
RULE = "owner"
KIND_KEY = "dstream_kind"
ENTITY_KEY = "dstream_entity"


def record_name(kind: str, name: str) -> str:
    return "o-" + hashlib.sha256(f"{kind}:{name.lower()}".encode()).hexdigest()[:40]


class Ledger:
    """The ownership records of one namespace (read once per lifecycle call)."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self._owners: dict[tuple[str, str], str] | None = None

    def owners(self) -> dict[tuple[str, str], str]:
        """``(kind, folded entity name) → task`` for every record."""
        if self._owners is None:
            self._owners = {}
            try:
                subscriptions = [s.name for s in self.client.list_subscriptions(LEDGER_TOPIC)]
            except ResourceNotFoundError:
                return self._owners
            for sub in subscriptions:
                for rule in self.client.list_rules(LEDGER_TOPIC, sub):
                    props = getattr(rule.filter, "properties", None) or {}
                    if rule.name != RULE or props.get(MANAGED_KEY) != MANAGED_BY:
                        continue
                    kind, entity, task = props.get(KIND_KEY), props.get(ENTITY_KEY), props.get(TASK_KEY)
                    if kind and entity and task:
                        self._owners[(str(kind), str(entity).lower())] = str(task)
        return self._owners

    def owner(self, kind: str, name: str) -> str | None:
        return self.owners().get((kind, name.lower()))

    def record(self, kind: str, name: str, task: str) -> None:
        with contextlib.suppress(ResourceExistsError):
            self.client.create_topic(LEDGER_TOPIC)
        sub = record_name(kind, name)
        with contextlib.suppress(ResourceExistsError):
            self.client.create_subscription(LEDGER_TOPIC, sub)
        properties: dict[str, Any] = {MANAGED_KEY: MANAGED_BY, TASK_KEY: task, KIND_KEY: kind, ENTITY_KEY: name}
        with contextlib.suppress(ResourceNotFoundError):
            self.client.delete_rule(LEDGER_TOPIC, sub, RULE)
        self.client.create_rule(LEDGER_TOPIC, sub, RULE, filter=CorrelationRuleFilter(properties=properties))
        if self._owners is not None:
            self._owners[(kind, name.lower())] = task

    def forget(self, kind: str, name: str) -> None:
        with contextlib.suppress(ResourceNotFoundError):
            self.client.delete_subscription(LEDGER_TOPIC, record_name(kind, name))
        if self._owners is not None:
            self._owners.pop((kind, name.lower()), None)
