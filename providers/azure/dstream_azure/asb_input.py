"""asb-input-provider: peek-lock receive from a Service Bus queue or subscription.

Messages are received in peek-lock mode and **completed only when dstream commits** a
checkpoint covering them (they are durable downstream); locks are renewed while held.
On a graceful stop, what is still held after ``commit_wait`` (locks renewed meanwhile) is
*released* (the AMQP outcome that returns a message without counting a delivery), so it
is redelivered at once and restarts do not push it towards the dead-letter queue;
abandoning, or letting the lock expire, would count a delivery each time. Only if the
release is not possible is it abandoned. If the input dies, the locks expire and the
broker redelivers, counting deliveries (past the entity's max delivery count it
dead-letters them). A message whose body is not JSON is dead-lettered with the reason.
Bodies that are envelopes (written by asb-output-provider) are replayed unchanged; other
JSON becomes the ``data`` of an envelope whose metadata holds the application properties.

**Sessions** (``sessions = "next"`` or a list of session ids): a session-enabled entity is
read through a pool of up to ``max_sessions`` session receivers (asb_sessions.py), each
session in its enqueue order. Checkpoints stay ``{"run", "seq"}`` in receive order across
sessions, so a commit completes exactly what was emitted before it, whichever sessions the
messages came from. Session locks are renewed on a timer (asb_locks.py); a session whose
lock is lost is dropped and the messages of it still held are forgotten (never settled
through its closed receiver): the broker delivers them again. On stop, held messages are
released and every session is let go.
"""

from __future__ import annotations

import contextlib
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import TYPE_CHECKING, Any, Literal

from azure.core.exceptions import ResourceNotFoundError
from pydantic import Field, SecretStr, model_validator

from dstream.sdk import Duration, InfrastructureProvider, Resource
from dstream_azure import checks, limits
from dstream_azure.asb_locks import MessageLockKeeper
from dstream_azure.asb_sessions import ACCEPT_WAIT, Item, SessionPool
from dstream_azure.inputs import Held, QueueInput, QueueInputConfig, to_envelope_lines
from dstream_azure.servicebus import (
    MessageAlreadySettled,
    MessageLockLostError,
    MessagingEntityNotFoundError,
    ServiceBusClient,
    ServiceBusError,
    ServiceBusReceiveMode,
    body_bytes,
    decoded_properties,
    lock_remaining,
    release_message,
)
from dstream_azure.servicebus_admin import admin_client, broker_limits

if TYPE_CHECKING:
    from collections.abc import Iterator

# ValueError: the SDK's answer on a receiver that was closed (_base_handler.py:362-365); the session
# pool never lets a settle reach one, this is the last line of defence.
SETTLE_ERRORS = (MessageLockLostError, MessageAlreadySettled, ServiceBusError, ValueError)
SESSION_REQUIRED = "requires sessions"


class AsbInputConfig(QueueInputConfig):
    admin_connection_string: SecretStr | None = Field(
        default=None, description="connection string for status (default: connection_string)"
    )
    queue: str | None = Field(default=None, description="the queue to read")
    topic: str | None = Field(default=None, description="the topic to read (with subscription)")
    subscription: str | None = Field(default=None, description="the subscription of topic to read")
    max_batch: int = Field(default=100, ge=1, le=5000, description="messages per receive call")
    max_wait: Duration = Field(default=1.0, gt=0, description="seconds a receive call waits for messages")
    prefetch_count: int = Field(default=0, ge=0, description="messages the SDK prefetches (0: off)")
    sessions: Literal["none", "next"] | list[str] = Field(
        default="none",
        description='a session-enabled entity: "next" (accept the next available sessions) or a list of '
        'session ids; "none" (default) for an entity without sessions',
    )
    max_sessions: int = Field(default=8, ge=1, le=100, description="sessions held (read in turn) at once")
    session_idle: Duration = Field(
        default=2.0, gt=0, description="let a session go after this long without a message (none of it held)"
    )
    session_accept_wait: Duration = Field(
        default=ACCEPT_WAIT,
        gt=0,
        description="seconds accepting a session may take, connecting included (SDK 7.15 bounds both by it)",
    )

    @model_validator(mode="after")
    def _one_source(self) -> AsbInputConfig:
        if bool(self.queue) == bool(self.topic and self.subscription):
            raise ValueError("set queue, or topic and subscription")
        if isinstance(self.sessions, list) and not self.sessions:
            raise ValueError('sessions as a list names the session ids to read; "next" takes any')
        if self.sessions != "none":  # a receiver (connection) per held session, and one accepting
            try:
                limits.check_connections(
                    broker_limits(self.connection_string.get_secret_value()),
                    self.max_sessions + 1,
                    f"max_sessions = {self.max_sessions}",
                    "lower max_sessions",
                )
            except limits.LimitError as exc:
                raise ValueError(str(exc)) from None
        return self


class AsbInputProvider(QueueInput[AsbInputConfig, Item], InfrastructureProvider):
    name = "asb-input-provider"
    version = "0.1.0"
    Config = AsbInputConfig

    def __init__(self, config: AsbInputConfig, ctx: Any) -> None:
        super().__init__(config, ctx)
        self.receive_batch = config.max_batch
        self._client: ServiceBusClient | None = None
        self._receiver: Any = None
        self._receiver_lock = threading.RLock()  # the non-session receiver: one call at a time
        self._pool: SessionPool | None = None
        self._settler: ThreadPoolExecutor | None = None
        self._settling: list[Future[None]] = []
        self.message_locks = MessageLockKeeper(lambda: self._receiver, self._receiver_lock, self.log)
        self.timer = True  # False in tests, which drive the keepers' ticks from their own clock

    @property
    def source(self) -> str:
        cfg = self.config
        return f"Service Bus queue {cfg.queue}" if cfg.queue else f"Service Bus {cfg.topic}/{cfg.subscription}"

    @property
    def client(self) -> ServiceBusClient:
        if self._client is None:
            cfg = self.config
            self._client = ServiceBusClient.from_connection_string(
                cfg.connection_string.get_secret_value(), **cfg.client_options()
            )
        return self._client

    def _open(self, **session: Any) -> Any:
        cfg = self.config
        options: dict[str, Any] = {
            "receive_mode": ServiceBusReceiveMode.PEEK_LOCK,
            "prefetch_count": cfg.prefetch_count,
            **session,
        }
        if cfg.queue:
            return self.client.get_queue_receiver(queue_name=cfg.queue, **options)
        assert cfg.topic is not None
        assert cfg.subscription is not None
        return self.client.get_subscription_receiver(
            topic_name=cfg.topic, subscription_name=cfg.subscription, **options
        )

    @property
    def receiver(self) -> Any:
        if self._receiver is None:
            self._receiver = self._open()
        return self._receiver

    @property
    def pool(self) -> SessionPool:
        if self._pool is None:
            cfg = self.config
            configured = cfg.sessions if isinstance(cfg.sessions, list) else None
            self._pool = SessionPool(
                lambda session_id: self._open(session_id=session_id, max_wait_time=cfg.session_accept_wait),
                configured,
                cfg.max_sessions,
                cfg.session_idle,
                cfg.max_wait,
                self.log,
                accept_wait=cfg.session_accept_wait,
                source=self.source,
            )
        return self._pool

    def receive(self, max_count: int) -> list[Item]:
        try:
            if self.config.sessions != "none":
                items = self.pool.receive(max_count)
                self._forget_dropped()
                return items
            with self._receiver_lock:
                messages = self.receiver.receive_messages(
                    max_message_count=max_count, max_wait_time=self.config.max_wait
                )
            for message in messages:  # renewed on a timer while held (asb_locks.py)
                self.message_locks.hold(message)
            if messages and self.timer:
                self.message_locks.start()
        except MessagingEntityNotFoundError:
            raise RuntimeError(
                f"{self.source} does not exist (create it with `dstream init` on the task that writes it)"
            ) from None
        except ServiceBusError as exc:
            if SESSION_REQUIRED in str(exc).lower():
                raise RuntimeError(
                    f'{self.source} is session-enabled: set sessions = "next" (or the session ids to read)'
                ) from None
            raise
        return [Item(m, self.receiver) for m in messages]

    def _lock_end(self, item: Item) -> Any:
        if item.session is not None:
            return item.receiver.session.locked_until_utc
        return item.message.locked_until_utc

    def decode(self, item: Item) -> tuple[bytes, float, float]:
        message = item.message
        remaining = lock_remaining(self._lock_end(item))
        metadata = {"MessageId": message.message_id, **decoded_properties(message)}
        lines = to_envelope_lines(body_bytes(message), metadata)
        return lines, time.monotonic() + remaining, remaining

    def _forget_dropped(self) -> None:
        """Forget the held messages of sessions that were dropped: they come again, never settle them."""
        dropped = {id(r) for r in self.pool.take_dropped()}
        if dropped:
            gone = self.unsettled.drop(lambda item: id(item.receiver) in dropped)
            self.log.warning("forgot %d message(s) of lost sessions; the broker delivers them again", gone)

    def idle(self) -> bool:
        if self.config.sessions != "none" and not self.pool.sessions:  # nothing to read until the next accept
            return self.ctx.sleep(min(self.config.max_wait, max(0.05, self.pool.next_accept_in())))
        return super().idle()

    def _done(self, item: Item) -> None:
        if item.session is None:
            self.message_locks.let_go(item.message)
        elif self._pool is not None:
            self._pool.done(item)

    @contextlib.contextmanager
    def _calling(self, item: Item) -> Iterator[bool]:
        """Yields whether ``item`` may be settled now (its receiver is open), one call at a time per session."""
        if item.session is None:
            with self._receiver_lock:
                yield True
            return
        session = self.pool.live(item)
        if session is None:  # dropped: the receiver is closed and the broker has the message back
            yield False
            return
        with session.lock:
            yield True

    def settle(self, held: list[Held[Item]]) -> None:
        """Complete ``held`` off the read loop: one job per receiver, receivers in parallel.

        From 7.15 each completion waits for the broker's outcome (CHANGELOG 7.15.0: "confirming
        costs one service round trip per settlement, so settle many messages concurrently").
        One receiver is not thread-safe, so its messages go one at a time, in order, under its
        lock; different sessions' receivers settle at once.
        """
        groups: dict[int, list[Held[Item]]] = {}
        for h in held:
            groups.setdefault(id(h.message.receiver), []).append(h)
        if self._settler is None:
            workers = 1 if self.config.sessions == "none" else min(8, self.config.max_sessions)
            self._settler = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="asb-settle")
        self._settling = [f for f in self._settling if not f.done()]
        self._settling += [self._settler.submit(self._complete, group) for group in groups.values()]

    def _complete(self, group: list[Held[Item]]) -> None:
        lost = 0
        for h in group:
            with self._calling(h.message) as live:
                try:
                    if not live:
                        raise MessageLockLostError(message="its session was dropped")
                    h.message.receiver.complete_message(h.message.message)
                except SETTLE_ERRORS:
                    lost += 1
            self._done(h.message)
        if lost:
            self.log.warning("%d message(s) lost their lock before completion; they will be delivered again", lost)

    def wait_settled(self, timeout: float | None = None) -> bool:
        """Wait for the completions under way; False if some are still running after ``timeout``."""
        _, running = wait(self._settling, timeout=timeout)
        self._settling = list(running)
        return not running

    def release(self, held: list[Held[Item]]) -> None:
        self.wait_settled()  # what was committed is completed first, then the rest is given back
        abandoned = 0
        for h in held:
            item = h.message
            self._done(item)
            with self._calling(item) as live:
                if not live or release_message(item.receiver, item.message, item.link):
                    continue
                abandoned += 1
                try:
                    item.receiver.abandon_message(item.message)
                except SETTLE_ERRORS as exc:
                    self.log.debug("abandon failed (%s); the lock expires instead", type(exc).__name__)
        if abandoned:
            self.log.warning("%d message(s) could not be released and were abandoned (a delivery counted)", abandoned)

    def renew_due(self, now: float | None = None) -> None:
        """Nothing to do in the read loop: locks are renewed on timers (asb_locks.py)."""

    def poison(self, item: Item, reason: str) -> None:
        with self._calling(item) as live:
            if not live:  # its session was dropped: it comes again, and is set aside then
                return
            item.receiver.dead_letter_message(
                item.message, reason="not a dstream envelope", error_description=reason[:1000]
            )
        self._done(item)
        self.log.warning("dead-lettered message %s: %s", item.message.message_id, reason)

    def close_clients(self) -> None:
        self.message_locks.stop()
        self.wait_settled()
        if self._settler is not None:
            self._settler.shutdown(wait=True)
        if self._pool is not None:
            self._pool.close()  # lets every session go
        if self._receiver is not None:
            self._receiver.close()
        if self._client is not None:
            self._client.close()

    def check(self) -> Iterator[Resource]:
        """``dstream check``: the namespace answers these credentials; the queue or subscription
        as ``status`` sees it (nothing is changed)."""
        with checks.answered("the Service Bus namespace"):
            yield from self.status()

    def status(self) -> Iterator[Resource]:
        cfg = self.config
        admin = admin_client(cfg.admin_connection_string or cfg.connection_string, **cfg.client_options())
        try:
            props: Any
            if cfg.queue:
                props = admin.get_queue_runtime_properties(cfg.queue)
                kind, name = "servicebus_queue", cfg.queue
            else:
                assert cfg.topic is not None
                assert cfg.subscription is not None
                props = admin.get_subscription_runtime_properties(cfg.topic, cfg.subscription)
                kind, name = "servicebus_subscription", f"{cfg.topic}/{cfg.subscription}"
            details = {"active": props.active_message_count, "dead_letter": props.dead_letter_message_count}
            yield Resource(kind, name, "none", "present", details)
        except ResourceNotFoundError:
            kind = "servicebus_queue" if cfg.queue else "servicebus_subscription"
            yield Resource(kind, cfg.queue or f"{cfg.topic}/{cfg.subscription}", "none", "absent")
        finally:
            admin.close()


main = AsbInputProvider.main
