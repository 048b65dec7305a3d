"""What a Service Bus broker accepts for the entities ``dstream init`` creates.

Checked before anything is created, so a setting the broker would refuse (or, worse,
silently clamp) fails at once with the limit that was hit and where it comes from:

- **The emulator** (``UseDevelopmentEmulator=true``): its ``Config-schema.json``
  (Azure/azure-service-bus-emulator-installer, ``ServiceBus-Emulator/Schema``) allows
  ``DuplicateDetectionHistoryTimeWindow`` from PT5S to PT5M, ``LockDuration`` from PT5S to
  PT5M on queues and from PT1M to PT5M on subscriptions, ``MaxDeliveryCount`` from 1 to 10.
- **Azure Service Bus, Standard and Premium**: the duplicate detection window is 20 seconds
  to 7 days, the lock duration at most 5 minutes (Microsoft's
  ``QueueProperties.DuplicateDetectionHistoryTimeWindow`` / ``LockDuration`` reference).
- **Basic** has no duplicate detection (nor topics, nor sessions): :func:`check_sku` refuses
  it, since message ids could not absorb replays there.
- **The emulator's quotas** (MicrosoftDocs ``service-bus-messaging/overview-emulator.md``,
  "Usage quotas"): 10 concurrent connections to the namespace, 50 subscriptions per topic,
  50 entities, messages of 256 KB. The SDK's sync client opens one connection per sender
  and per receiver (azure-servicebus 7.15.0 ``_servicebus_client.py:174``,
  ``_connection_sharing = False``), so a routing output opens one per target queue and a
  session input one per held session plus one accepting: :func:`check_connections` refuses
  what would go over before the broker does.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "AZURE",
    "EMULATOR",
    "BrokerLimits",
    "LimitError",
    "check",
    "check_connections",
    "check_sku",
    "default_window",
    "human",
]


class LimitError(ValueError):
    """A setting outside what the broker accepts."""


@dataclass(frozen=True)
class BrokerLimits:
    name: str
    source: str
    duplicate_window: tuple[float, float]
    queue_lock: tuple[float, float]
    subscription_lock: tuple[float, float]
    max_delivery_count: tuple[int, int]
    default_duplicate_window: float
    connections: int | None = None  # concurrent connections to the namespace (None: not checked)
    subscriptions_per_topic: int | None = None
    quota_source: str = ""


EMULATOR = BrokerLimits(
    name="the Service Bus emulator",
    source="its Config-schema.json",
    duplicate_window=(5, 300),
    queue_lock=(5, 300),
    subscription_lock=(60, 300),
    max_delivery_count=(1, 10),
    default_duplicate_window=300,
    connections=10,
    subscriptions_per_topic=50,
    quota_source="its documented usage quotas",
)
AZURE = BrokerLimits(
    name="Azure Service Bus (Standard and Premium)",
    source="Microsoft's Service Bus entity reference",
    duplicate_window=(20, 7 * 86400),
    queue_lock=(0, 300),  # the reference states the maximum only
    subscription_lock=(0, 300),
    max_delivery_count=(1, 2_147_483_647),
    default_duplicate_window=600,
)


def human(seconds: float) -> str:
    """``300`` → ``5m``, ``90`` → ``1m30s``, ``604800`` → ``7d``."""
    left = int(seconds)
    if left != seconds or left == 0:
        return f"{seconds:g}s"
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if left >= size:
            parts.append(f"{left // size}{unit}")
            left %= size
    return "".join(parts)


def _check(setting: str, entity_setting: str, value: float, bounds: tuple[float, float], limits: BrokerLimits) -> None:
    low, high = bounds
    if low <= value <= high:
        return
    fix = f"at most {human(high)}" if value > high else f"at least {human(low)}"
    accepted = f"{human(low)} to {human(high)}" if low else f"up to {human(high)}"
    raise LimitError(
        f"{setting} = {human(value)} is outside what {limits.name} accepts for {entity_setting} "
        f"({accepted}, {limits.source}): set it to {fix}"
    )


def default_window(limits: BrokerLimits) -> float:
    return limits.default_duplicate_window


def check(
    limits: BrokerLimits,
    duplicate_window: float,
    lock_duration: float,
    max_delivery_count: int,
    subscriptions: bool,
    subscription_count: int = 0,
) -> None:
    """Raise :class:`LimitError` naming the first setting ``limits`` does not accept."""
    most = limits.subscriptions_per_topic
    if most is not None and subscription_count > most:
        raise LimitError(
            f"subscriptions lists {subscription_count} subscriptions; {limits.name} takes at most {most} per topic "
            f"({limits.quota_source})"
        )
    _check(
        "duplicate_detection_window",
        "DuplicateDetectionHistoryTimeWindow",
        duplicate_window,
        limits.duplicate_window,
        limits,
    )
    _check("lock_duration", "a queue's LockDuration", lock_duration, limits.queue_lock, limits)
    if subscriptions:
        _check("lock_duration", "a subscription's LockDuration", lock_duration, limits.subscription_lock, limits)
    low, high = limits.max_delivery_count
    if not low <= max_delivery_count <= high:
        raise LimitError(
            f"max_delivery_count = {max_delivery_count} is outside what {limits.name} accepts for "
            f"MaxDeliveryCount ({low} to {high}, {limits.source})"
        )


def check_connections(limits: BrokerLimits, count: int, what: str, fix: str) -> None:
    """Refuse ``count`` connections (``what`` opens them) over the namespace's connection quota."""
    most = limits.connections
    if most is not None and count > most:
        raise LimitError(
            f"{what} needs {count} connections; {limits.name} takes at most {most} to the namespace "
            f"({limits.quota_source}, counting every other client): {fix}"
        )


def check_sku(sku: str | None) -> None:
    """Refuse the Basic tier, which has no duplicate detection (ids could not absorb replays)."""
    if sku is not None and str(sku).lower() == "basic":
        raise LimitError(
            "this Service Bus namespace is on the Basic tier, which has no duplicate detection, topics "
            "or sessions: a replay after a crash would duplicate messages. Use a Standard or Premium namespace"
        )
