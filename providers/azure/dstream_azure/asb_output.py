"""asb-output-provider: route envelopes to Azure Service Bus queues (one per table) or a topic.

Each envelope becomes one message whose body is the envelope line as received, with
``TableName``, ``OperationType`` and the envelope's position keys as application
properties and ``subject`` set to the table. Messages go out in order per target, in SDK
message batches, or alone when larger than a batch (servicebus.py); the batch is acked
once every send has completed. Every message id identifies one envelope
(message_ids.py) and the entities ``dstream init`` creates have duplicate detection on,
so the broker drops the copies a replay after a crash sends again and never a different
envelope. With ``session`` each message gets a session id (sessions.py), so consumers get
each table's or row's changes in order; a batch may mix sessions, since the broker keeps
the order of a batch. Entity settings are checked against the broker's limits first
(limits.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, SecretStr, model_validator

from dstream.sdk import ByteSize, Duration, InfrastructureProvider, OutputProvider
from dstream_azure import checks, emulator, lifecycle, limits, pulumi_engine
from dstream_azure.message_ids import MessageIds
from dstream_azure.naming import servicebus_name
from dstream_azure.pulumi_engine import Infrastructure
from dstream_azure.routing import Router, RoutingConfig
from dstream_azure.servicebus import MessagingEntityNotFoundError, ServiceBusClient, TargetSender, build_message
from dstream_azure.servicebus_admin import EntitySettings, QueueAdmin, TopicAdmin, admin_client, broker_limits
from dstream_azure.sessions import SessionIds, SessionMode

if TYPE_CHECKING:
    from collections.abc import Iterator

    from azure.servicebus import ServiceBusMessage

    from dstream.sdk import Envelope, Resource


class QueueMissing(RuntimeError):
    pass


class AsbOutputConfig(RoutingConfig):
    admin_connection_string: SecretStr | None = Field(
        default=None, description="connection string for init/plan/status/destroy (default: connection_string)"
    )
    topic: str | None = Field(default=None, description="send everything to this topic instead of queues")
    subscriptions: list[str] = Field(default_factory=list, description="subscriptions init creates on the topic")
    duplicate_detection_window: Duration | None = Field(
        default=None,
        gt=0,
        description="duplicate detection window of the entities init creates (default: 10m; 5m, its maximum, "
        "on the emulator)",
    )
    max_delivery_count: int = Field(default=10, ge=1, description="deliveries before the broker dead-letters")
    lock_duration: Duration = Field(default=60, gt=0, description="peek-lock duration of created queues/subscriptions")
    message_id: Literal["position", "stream"] = Field(
        default="position",
        description='ids from the envelope\'s position when it has one ("position"), or always from its place '
        'in the stream ("stream")',
    )
    message_id_keys: list[str] | None = Field(
        default=None,
        description="metadata keys that identify an envelope (default: LSN, Seq, SeqVal, Sequence, Offset, …)",
    )
    max_batch_bytes: ByteSize | None = Field(
        default=None, description="cap on an SDK message batch, e.g. 256k (default: the link's)"
    )
    session: SessionMode | list[str] = Field(
        default="none",
        description='message sessions, for ordered consumers: "none", "table", "key" (table and row key), '
        "or a list of metadata/data keys; init then creates session-enabled entities",
    )
    session_fallback: Literal["error", "table"] = Field(
        default="error", description='an envelope without its session key: fail ("error") or use its table\'s session'
    )
    infrastructure: Infrastructure = Field(
        default_factory=Infrastructure,
        description='how init/plan/status/destroy manage entities: engine = "sdk" (default) or "pulumi"',
    )

    @model_validator(mode="after")
    def _one_target(self) -> AsbOutputConfig:
        if self.queue and self.topic:
            raise ValueError("set queue or topic, not both")
        if self.subscriptions and not self.topic:
            raise ValueError("subscriptions are created on a topic: set topic, or drop subscriptions")
        if isinstance(self.session, list) and not (self.session and all(k.strip() for k in self.session)):
            raise ValueError('session as a list names the keys its id is made of, e.g. ["data.customer_id"]')
        self.entity_settings()  # the broker's limits, checked before anything is created
        return self

    @property
    def admin_secret(self) -> SecretStr:
        return self.admin_connection_string or self.connection_string

    def entity_settings(self) -> EntitySettings:
        """The settings init creates entities with, checked against the broker's limits."""
        conn = self.admin_secret.get_secret_value()
        try:
            emulator.plain_http(conn)  # refuses an "emulator" that is not local, before any call
        except emulator.EmulatorError as exc:
            raise ValueError(str(exc)) from None
        broker = broker_limits(conn)
        window = self.duplicate_detection_window or limits.default_window(broker)
        limits.check(
            broker,
            window,
            self.lock_duration,
            self.max_delivery_count,
            subscriptions=bool(self.topic),
            subscription_count=len(self.subscriptions),
        )
        return EntitySettings(
            window, self.max_delivery_count, self.lock_duration, list(self.subscriptions), self.session != "none"
        )


class AsbOutputProvider(OutputProvider[AsbOutputConfig], InfrastructureProvider):
    name = "asb-output-provider"
    version = "0.1.0"
    Config = AsbOutputConfig
    batch_size = 5000

    def __init__(self, config: AsbOutputConfig, ctx: Any) -> None:
        super().__init__(config, ctx)
        self.router = Router(config, servicebus_name, fixed=config.topic or config.queue)
        self.settings = config.entity_settings()
        # ctx.checkpoint is the checkpoint this attempt resumes from: the anchor of stream ids.
        self.ids = MessageIds(ctx.task, ctx.checkpoint, config.message_id_keys, config.message_id == "position")
        self.sessions = SessionIds(config.session, config.session_fallback)
        self._client: ServiceBusClient | None = None
        self._senders: dict[str, TargetSender] = {}

    @property
    def client(self) -> ServiceBusClient:
        if self._client is None:
            self._client = ServiceBusClient.from_connection_string(
                self.config.connection_string.get_secret_value(), **self.config.client_options()
            )
        return self._client

    def _sender(self, target: str) -> TargetSender:
        sender = self._senders.get(target)
        if sender is None:
            limits.check_connections(  # one connection per sender (limits.py)
                broker_limits(self.config.connection_string.get_secret_value()),
                len(self._senders) + 1,
                f"routing to {len(self._senders) + 1} queues",
                "route fewer tables to this namespace (tables/queue), or use a topic",
            )
            if self.config.topic:
                sdk_sender = self.client.get_topic_sender(topic_name=target)
            else:
                sdk_sender = self.client.get_queue_sender(queue_name=target)
            sender = self._senders[target] = TargetSender(sdk_sender, target)
        return sender

    def messages(self, batch: list[Envelope]) -> dict[str, list[ServiceBusMessage]]:
        """Each target's messages, in stream order; ids are taken in stream order too."""
        cfg = self.config
        out: dict[str, list[ServiceBusMessage]] = {}
        for env in batch:
            metadata = env.metadata
            target, table = self.router.route(metadata)
            message_id = self.ids.next(table, metadata, env.raw)
            session = self.sessions.of(table, metadata, env.data) if self.sessions.enabled else None
            out.setdefault(target, []).append(
                build_message(env.raw, table, metadata, message_id, session, cfg.message_id_keys)
            )
        return out

    def write(self, batch: list[Envelope]) -> None:
        for target, messages in self.messages(batch).items():
            try:
                self._sender(target).send(messages, self.config.max_batch_bytes)
            except MessagingEntityNotFoundError:
                self._missing(target)
                # Duplicate detection drops what a partial first attempt already sent.
                self._sender(target).send(messages, self.config.max_batch_bytes)

    def _missing(self, target: str) -> None:
        stale = self._senders.pop(target, None)
        if stale is not None:
            stale.close()
        kind = "topic" if self.config.topic else "queue"
        if not self.config.create_missing or self.ctx.task is None:
            raise QueueMissing(
                f"Service Bus {kind} {target} does not exist: run `dstream init {self.ctx.task or 'TASK'}` "
                "(with its table in tables), or set create_missing = true"
            ) from None
        admin = self._admin()
        try:
            admin.create(target, self.ctx.task)
        finally:
            admin.client.close()
        self.log.info("created Service Bus %s %s (create_missing)", kind, target)

    def close(self) -> None:
        for sender in self._senders.values():
            sender.close()
        if self._client is not None:
            self._client.close()

    # -- lifecycle ---------------------------------------------------------------------

    def _admin(self) -> QueueAdmin:
        client = admin_client(self.config.admin_secret, **self.config.client_options())
        return TopicAdmin(client, self.settings) if self.config.topic else QueueAdmin(client, self.settings)

    def _lifecycle(self, verb: str) -> Iterator[Resource]:
        wanted = self.router.wanted()
        if self.config.infrastructure.engine == "pulumi":
            pulumi_engine.require_cli()  # fail before anything else, with the reason
            return pulumi_engine.run(
                verb, self.config.infrastructure, wanted, self.ctx.task, self.settings, topic=bool(self.config.topic)
            )
        steps = {"init": lifecycle.init, "plan": lifecycle.plan, "status": lifecycle.status}
        return self._with_admin(verb, steps.get(verb, lifecycle.destroy), wanted)

    def _with_admin(self, verb: str, step: Any, wanted: dict[str, list[str]]) -> Iterator[Resource]:
        admin = self._admin()
        try:
            if verb == "init":
                admin.check_namespace(self.config.admin_secret.get_secret_value())
            yield from step(admin, wanted, self.ctx.task)
        finally:
            admin.client.close()

    def init(self) -> Iterator[Resource]:
        return self._lifecycle("init")

    def plan(self) -> Iterator[Resource]:
        return self._lifecycle("plan")

    def status(self) -> Iterator[Resource]:
        return self._lifecycle("status")

    def check(self) -> Iterator[Resource]:
        """``dstream check``: the namespace answers these credentials; each queue or topic as
        ``plan`` sees it (nothing is created or changed)."""
        with checks.answered("the Service Bus namespace"):
            yield from self._lifecycle("plan")

    def destroy(self) -> Iterator[Resource]:
        return self._lifecycle("destroy")


main = AsbOutputProvider.main
