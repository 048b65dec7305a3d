"""Base classes for providers.

A provider is a class with a pydantic ``Config`` and one of:

- :class:`InputProvider` — ``read(checkpoint)`` yields :class:`Record` / :class:`Checkpoint`
  (a sync or async generator); optionally ``on_committed(position)``.
- :class:`OutputProvider` — ``write(batch)`` receives a list of :class:`Envelope`; the SDK
  acks the checkpoints that followed the batch once it returns.
- :class:`InfrastructureProvider` (mixin) — ``init/plan/status/destroy`` return resources.

Run one with ``MyProvider.main()`` (the package's console script).
"""

from __future__ import annotations

import logging
import queue
import threading
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

from pydantic import BaseModel, ConfigDict

from dstream import protocol

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterable, Iterator

    from dstream.sdk.types import Checkpoint, Envelope, Raw, Record, Resource


class ProviderConfig(BaseModel):
    """Base for provider configs: unknown keys are errors, so typos surface at start."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class EmptyConfig(ProviderConfig):
    pass


C = TypeVar("C", bound=ProviderConfig)


class Context:
    """What the host gives a running provider: stop signal, logger, commit queue."""

    def __init__(self, name: str) -> None:
        self.task: str | None = None  # the dstream task running this provider, when told
        self.command = "run"  # the verb: run, init, plan, status or destroy
        # The task's last persisted checkpoint, the one its input resumes from (None on a first
        # run). Every stage gets it, so an output can derive ids that are the same on a replay.
        self.checkpoint: Any = None
        self.stopping = threading.Event()
        self.log = logging.getLogger(name)
        self._committed: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._before_sleep: list[Any] = []
        self._on_committed: Any = None
        self._stdout: Any = None
        self._gauges = False  # the orchestrator accepts {"gauge": …} lines

    def write_stdout(self, data: bytes) -> None:
        """Print user-facing bytes on stdout, in order with the protocol lines.

        For outputs like the console provider: the orchestrator passes such lines through
        to its own stdout. Never print to ``sys.stdout`` directly from a provider.
        """
        self._stdout(data)

    def gauge(self, name: str, value: float, **labels: str) -> None:
        """Report a provider metric, e.g. ``ctx.gauge("lag_seconds", 1.5, table="dbo.Orders")``.

        dstream exports it as the Prometheus gauge ``dstream_provider_<name>`` with the
        task, the stage and these labels, and shows it in ``dstream run``'s status. Under
        an orchestrator that does not accept gauges (upstream's) this does nothing, since
        such a line would be relayed as data there.
        """
        if self._gauges:
            self._stdout(protocol.gauge(name, float(value), {k: str(v) for k, v in labels.items()}))

    def sleep(self, seconds: float) -> bool:
        """Wait up to ``seconds``; False when the provider should stop instead.

        Buffered output is flushed and pending commits are delivered first, so a provider
        that waits through ``ctx.sleep`` keeps latency low and releases source resources.
        """
        for hook in self._before_sleep:
            hook()
        self.deliver_commits()
        return not self.stopping.wait(seconds) if seconds > 0 else not self.stopping.is_set()

    @property
    def should_stop(self) -> bool:
        return self.stopping.is_set()

    def deliver_commits(self) -> None:
        if self._on_committed is None or self._committed.empty():
            return
        while True:
            try:
                position = self._committed.get_nowait()
            except queue.Empty:
                return
            self._on_committed(position)


class Provider(Generic[C]):
    """Common base: ``name``, ``version``, ``Config``, and the parsed ``config``."""

    name: ClassVar[str] = "provider"
    version: ClassVar[str] = "0.0.0"
    Config: ClassVar[type[ProviderConfig]] = EmptyConfig

    def __init__(self, config: C, ctx: Context) -> None:
        self.config = config
        self.ctx = ctx
        self.log = ctx.log

    def close(self) -> None:
        """Release resources; called once when the provider stops (also after errors)."""

    @classmethod
    def main(cls) -> None:
        """Console-script entry point: speak the wire protocol on stdin/stdout."""
        from dstream.sdk.host import main

        main(cls)


class InputProvider(Provider[C]):
    """Produces envelopes. Override :meth:`read`."""

    checkpoint_every: int | None = 1000
    checkpoint_interval: float | None = 1.0

    def read(
        self, checkpoint: Any | None
    ) -> Iterator[Record | Raw | Checkpoint] | AsyncIterator[Record | Raw | Checkpoint]:
        """Yield records (and explicit checkpoints), resuming after ``checkpoint`` when given."""
        raise NotImplementedError

    def on_committed(self, position: Any) -> None:
        """``position`` and everything before it is durable downstream: release it at the source.

        Override to get the ``commit`` feature (the orchestrator then keeps stdin open and
        sends ``{"committed": …}`` lines). Called on the provider's own thread, between
        records and inside ``ctx.sleep``.
        """
        raise NotImplementedError

    @classmethod
    def wants_commits(cls) -> bool:
        return cls.on_committed is not InputProvider.on_committed


class OutputProvider(Provider[C]):
    """Consumes envelopes. Override :meth:`write`."""

    batch_size: int = 1000

    def write(self, batch: list[Envelope]) -> None:
        """Durably write ``batch``; when this returns, the following checkpoint is acked."""
        raise NotImplementedError


class InfrastructureProvider:
    """Mixin for providers that own infrastructure. Override the verbs you support."""

    def init(self) -> Iterable[Resource]:
        raise NotImplementedError

    def plan(self) -> Iterable[Resource]:
        raise NotImplementedError

    def status(self) -> Iterable[Resource]:
        raise NotImplementedError

    def destroy(self) -> Iterable[Resource]:
        raise NotImplementedError


def supported_verbs(cls: type) -> list[str]:
    verbs = ["run"] if issubclass(cls, InputProvider | OutputProvider) else []
    for verb in ("init", "plan", "status", "destroy"):
        method = getattr(cls, verb, None)
        if method is not None and method is not getattr(InfrastructureProvider, verb):
            verbs.append(verb)
    return verbs
