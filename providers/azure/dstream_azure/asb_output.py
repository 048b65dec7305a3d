"""asb-output-provider: route envelopes to Azure Service Bus queues (one per table) or a topic.

Each envelope becomes one message whose body is the envelope line as received, with
``TableName``, ``OperationType`` and the envelope's position keys as application
properties and ``subject`` set to the table. Messages go out in SDK message batches
(as many as fit the entity's size limit), in order per queue; the batch is acked once
every send has completed. Message ids are derived from the envelope's position, and
the queues ``dstream init`` creates have duplicate detection on, so the broker drops the
copies a replay after a crash sends again.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, SecretStr, model_validator

from dstream.sdk import InfrastructureProvider, OutputProvider
from dstream_azure import lifecycle, pulumi_engine
from dstream_azure.naming import servicebus_name
from dstream_azure.pulumi_engine import Infrastructure
from dstream_azure.routing import Duration, Router, RoutingConfig
from dstream_azure.servicebus import (
    EntitySettings,
    MessagingEntityNotFoundError,
    QueueAdmin,
    ServiceBusClient,
    TopicAdmin,
    admin_client,
    build_message,
    send_batched,
)

if TYPE_CHECKING:
    from collections.abc import Iterator

    from dstream.sdk import Envelope, Resource


class QueueMissing(RuntimeError):
    pass


class AsbOutputConfig(RoutingConfig):
    admin_connection_string: SecretStr | None = Field(
        default=None, description="connection string for init/plan/status/destroy (default: connection_string)"
    )
    topic: str | None = Field(default=None, description="send everything to this topic instead of queues")
    subscriptions: list[str] = Field(default_factory=list, description="subscriptions init creates on the topic")
    duplicate_detection_window: Duration = Field(
        default=600, gt=0, description="duplicate detection window of the queues init creates (seconds or 10m)"
    )
    max_delivery_count: int = Field(default=10, ge=1, description="deliveries before the broker dead-letters")
    lock_duration: Duration = Field(default=60, gt=0, le=300, description="peek-lock duration of created queues")
    message_id: Literal["position", "content"] = Field(
        default="position", description='message ids from the envelope position ("position") or its content'
    )
    message_id_keys: list[str] | None = Field(
        default=None, description="metadata keys that make up an envelope's position (default: LSN, Seq, …)"
    )
    max_batch_bytes: int | None = Field(default=None, gt=0, description="SDK batch size limit (default: the entity's)")
    infrastructure: Infrastructure = Field(
        default_factory=Infrastructure,
        description='how init/plan/status/destroy manage entities: engine = "sdk" (default) or "pulumi"',
    )

    @model_validator(mode="after")
    def _one_target(self) -> AsbOutputConfig:
        if self.queue and self.topic:
            raise ValueError("set queue or topic, not both")
        return self


class AsbOutputProvider(OutputProvider[AsbOutputConfig], InfrastructureProvider):
    name = "asb-output-provider"
    version = "0.1.0"
    Config = AsbOutputConfig
    batch_size = 5000

    def __init__(self, config: AsbOutputConfig, ctx: Any) -> None:
        super().__init__(config, ctx)
        self.router = Router(config, servicebus_name, fixed=config.topic or config.queue)
        self.settings = EntitySettings(
            config.duplicate_detection_window, config.max_delivery_count, config.lock_duration, config.subscriptions
        )
        self._client: ServiceBusClient | None = None
        self._senders: dict[str, Any] = {}

    @property
    def client(self) -> ServiceBusClient:
        if self._client is None:
            self._client = ServiceBusClient.from_connection_string(
                self.config.connection_string.get_secret_value(), **self.config.client_options()
            )
        return self._client

    def _sender(self, target: str) -> Any:
        sender = self._senders.get(target)
        if sender is None:
            if self.config.topic:
                sender = self.client.get_topic_sender(topic_name=target)
            else:
                sender = self.client.get_queue_sender(queue_name=target)
            self._senders[target] = sender
        return sender

    def write(self, batch: list[Envelope]) -> None:
        cfg = self.config
        for target, items in self.router.group(batch).items():
            messages = [
                build_message(env.raw, table, env.metadata, cfg.message_id_keys, cfg.message_id) for env, table in items
            ]
            try:
                send_batched(self._sender(target), messages, cfg.max_batch_bytes)
            except MessagingEntityNotFoundError:
                self._missing(target)
                # Duplicate detection drops what a partial first attempt already sent.
                send_batched(self._sender(target), messages, cfg.max_batch_bytes)

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
        cfg = self.config
        client = admin_client(cfg.admin_connection_string or cfg.connection_string, **cfg.client_options())
        return TopicAdmin(client, self.settings) if self.config.topic else QueueAdmin(client, self.settings)

    def _lifecycle(self, verb: str) -> Iterator[Resource]:
        wanted = self.router.wanted()
        if self.config.infrastructure.engine == "pulumi":
            pulumi_engine.require_cli()  # fail before anything else, with the reason
            return pulumi_engine.run(verb, self.config.infrastructure, wanted, self.ctx.task, self.settings)
        steps = {"init": lifecycle.init, "plan": lifecycle.plan, "status": lifecycle.status}
        return self._with_admin(steps.get(verb, lifecycle.destroy), wanted)

    def _with_admin(self, step: Any, wanted: dict[str, list[str]]) -> Iterator[Resource]:
        admin = self._admin()
        try:
            yield from step(admin, wanted, self.ctx.task)
        finally:
            admin.client.close()

    def init(self) -> Iterator[Resource]:
        return self._lifecycle("init")

    def plan(self) -> Iterator[Resource]:
        return self._lifecycle("plan")

    def status(self) -> Iterator[Resource]:
        return self._lifecycle("status")

    def destroy(self) -> Iterator[Resource]:
        return self._lifecycle("destroy")


main = AsbOutputProvider.main
