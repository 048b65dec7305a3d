"""Service Bus entities for ``init``/``plan``/``status``/``destroy`` (the administration API).

Queues and topics are created with duplicate detection on (message ids then absorb
replays, see message_ids.py), the settings of :class:`EntitySettings`, and ownership in
``user_metadata`` as JSON. Where the broker drops ``user_metadata`` (the emulator: its
entity schema has no such property), a read-back after creation notices and ownership
goes to the broker-side ledger (ledger.py). An existing entity that dstream would have
created differently (no duplicate detection; a different session setting) is reported
with a warning in ``plan``/``init``: neither can be changed on an existing entity.
"""

from __future__ import annotations

import contextlib
import json
import logging
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError
from azure.servicebus.management import ServiceBusAdministrationClient

from dstream_azure import emulator, limits
from dstream_azure.ledger import LEDGER_TOPIC, Ledger
from dstream_azure.lifecycle import Existing, owner_from_metadata, ownership_metadata

if TYPE_CHECKING:
    from pydantic import SecretStr

_log = logging.getLogger("dstream_azure.servicebus")
NO_DUPLICATE_DETECTION = (
    "duplicate detection is off on this existing entity (it cannot be turned on in place): "
    "a replay after a crash will leave duplicate messages; recreate it with dstream init"
)


def admin_client(connection_string: SecretStr, **options: Any) -> ServiceBusAdministrationClient:
    """The administration client; plain HTTP and the emulator's API version for the emulator."""
    value = connection_string.get_secret_value()
    if emulator.plain_http(value):
        options.setdefault("transport", emulator.EmulatorTransport())
        options.setdefault("api_version", emulator.EMULATOR_API_VERSION)
    return ServiceBusAdministrationClient.from_connection_string(value, **options)


def broker_limits(connection_string: str) -> limits.BrokerLimits:
    return limits.EMULATOR if emulator.is_emulator(connection_string) else limits.AZURE


def _owner(user_metadata: str | None) -> str | None:
    if not user_metadata:
        return None
    try:
        value = json.loads(user_metadata)
    except ValueError:
        return None
    return owner_from_metadata(value) if isinstance(value, dict) else None


@dataclass
class EntitySettings:
    """How ``init`` creates queues, topics and subscriptions (durations in seconds)."""

    duplicate_window: float = 600
    max_delivery_count: int = 10
    lock_duration: float = 60
    subscriptions: list[str] = field(default_factory=list)
    requires_session: bool = False

    @property
    def window(self) -> timedelta:
        return timedelta(seconds=self.duplicate_window)

    @property
    def lock(self) -> timedelta:
        return timedelta(seconds=self.lock_duration)


class QueueAdmin:
    """Service Bus queues."""

    resource_type = "servicebus_queue"
    kind = "queue"

    def __init__(self, client: ServiceBusAdministrationClient, settings: EntitySettings | None = None) -> None:
        self.client = client
        self.settings = settings or EntitySettings()
        self.ledger = Ledger(client)

    @staticmethod
    def fold(name: str) -> str:
        return name.lower()

    def check_namespace(self, connection_string: str) -> None:
        """Refuse a Basic namespace (no duplicate detection); the emulator has no tier to ask."""
        if emulator.is_emulator(connection_string):
            return
        sku: Any = None
        with contextlib.suppress(Exception):  # the check is advisory: creation reports real errors
            sku = self.client.get_namespace_properties().messaging_sku
        limits.check_sku(sku)

    def _entities(self) -> list[Any]:
        return list(self.client.list_queues())

    def _warnings(self, entity: Any) -> list[str]:
        notes = []
        if not entity.requires_duplicate_detection:
            notes.append(NO_DUPLICATE_DETECTION)
        wanted = self.settings.requires_session
        if bool(getattr(entity, "requires_session", False)) != wanted:
            notes.append(
                f"sessions are {'off' if wanted else 'on'} on this existing entity and "
                f"{'on' if wanted else 'off'} in the config (this cannot be changed in place): "
                "recreate it, or change the session setting"
            )
        return notes

    def existing(self) -> dict[str, Existing]:
        out: dict[str, Existing] = {}
        for entity in self._entities():
            owner = _owner(entity.user_metadata) or self.ledger.owner(self.kind, entity.name)
            details: dict[str, Any] = {}
            notes = self._warnings(entity)
            if notes:
                details["warning"] = "; ".join(notes)
                for note in notes:
                    _log.warning("Service Bus %s %s: %s", self.kind, entity.name, note)
            out[entity.name] = Existing(entity.name, owner, details)
        return out

    def _create(self, name: str, metadata: str) -> None:
        s = self.settings
        self.client.create_queue(
            name,
            requires_duplicate_detection=True,
            duplicate_detection_history_time_window=s.window,
            max_delivery_count=s.max_delivery_count,
            lock_duration=s.lock,
            requires_session=s.requires_session,
            dead_lettering_on_message_expiration=True,
            user_metadata=metadata,
        )

    def _read_back(self, name: str) -> Any:
        return self.client.get_queue(name)

    def create(self, name: str, task: str) -> bool:
        try:
            self._create(name, json.dumps(ownership_metadata(task)))
        except ResourceExistsError:
            return False
        if _owner(self._read_back(name).user_metadata) != task:
            _log.info("the broker dropped %s %s's user_metadata; recording ownership in its ledger", self.kind, name)
            self.ledger.record(self.kind, name, task)
        return True

    def _delete(self, name: str) -> None:
        self.client.delete_queue(name)

    def delete(self, name: str) -> None:
        with contextlib.suppress(ResourceNotFoundError):
            self._delete(name)
        self.ledger.forget(self.kind, name)

    def describe(self, name: str) -> dict[str, Any]:
        props = self.client.get_queue_runtime_properties(name)
        return {
            "active": props.active_message_count,
            "dead_letter": props.dead_letter_message_count,
            "scheduled": props.scheduled_message_count,
        }


class TopicAdmin(QueueAdmin):
    """Service Bus topics, and the configured subscriptions created with them."""

    resource_type = "servicebus_topic"
    kind = "topic"

    def _entities(self) -> list[Any]:
        return [t for t in self.client.list_topics() if t.name.lower() != LEDGER_TOPIC]

    def _warnings(self, entity: Any) -> list[str]:
        notes = [] if entity.requires_duplicate_detection else [NO_DUPLICATE_DETECTION]
        wanted = self.settings.requires_session
        for sub in self.settings.subscriptions:
            try:
                props = self.client.get_subscription(entity.name, sub)
            except ResourceNotFoundError:
                continue
            if bool(props.requires_session) != wanted:
                notes.append(
                    f"subscription {sub} has sessions {'off' if wanted else 'on'} and the config has them "
                    f"{'on' if wanted else 'off'} (this cannot be changed in place): recreate it"
                )
        return notes

    def _create(self, name: str, metadata: str) -> None:
        s = self.settings
        self.client.create_topic(
            name,
            requires_duplicate_detection=True,
            duplicate_detection_history_time_window=s.window,
            user_metadata=metadata,
        )
        for sub in s.subscriptions:
            with contextlib.suppress(ResourceExistsError):
                self.client.create_subscription(
                    name,
                    sub,
                    max_delivery_count=s.max_delivery_count,
                    lock_duration=s.lock,
                    requires_session=s.requires_session,
                    dead_lettering_on_message_expiration=True,
                )

    def _read_back(self, name: str) -> Any:
        return self.client.get_topic(name)

    def _delete(self, name: str) -> None:
        self.client.delete_topic(name)

    def describe(self, name: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for sub in self.client.list_subscriptions_runtime_properties(name):
            out[f"{sub.name}.active"] = sub.active_message_count
            out[f"{sub.name}.dead_letter"] = sub.dead_letter_message_count
        return out
