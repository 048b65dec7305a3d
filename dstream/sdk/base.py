"""Base classes for providers.

A provider is a class with a pydantic ``Config`` and one of:

- :class:`InputProvider` — ``read(checkpoint)`` yields :class:`Record` / :class:`Checkpoint`
  (a sync or async generator); optionally ``on_committed(position)``.
- :class:`TransformProvider` — ``transform(envelope)`` returns (or yields) zero or more
  envelopes for each one it receives; the SDK forwards checkpoints, in order.
- :class:`OutputProvider` — ``write(batch)`` receives a list of :class:`Envelope`; the SDK
  acks the checkpoints that followed the batch once it returns.
- :class:`InfrastructureProvider` (mixin) — ``init/plan/status/destroy`` return resources.

Run one with ``MyProvider.main()`` (the package's console script).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict

from dstream.sdk.context import Context

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterable, Iterator

    from dstream.sdk.types import Checkpoint, Envelope, Raw, Record, Resource

__all__ = [
    "Context",
    "EmptyConfig",
    "InfrastructureProvider",
    "InputProvider",
    "OutputProvider",
    "Provider",
    "ProviderConfig",
    "TransformProvider",
    "supported_verbs",
]

Kind = Literal["input", "output", "transform", ""]


class ProviderConfig(BaseModel):
    """Base for provider configs: unknown keys are errors, so typos surface at start."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class EmptyConfig(ProviderConfig):
    pass


C = TypeVar("C", bound=ProviderConfig)


class Provider(Generic[C]):
    """Common base: ``name``, ``version``, ``Config``, and the parsed ``config``."""

    name: ClassVar[str] = "provider"
    version: ClassVar[str] = "0.0.0"
    kind: ClassVar[Kind] = ""  # what `run` does: the stdio host dispatches on it
    Config: ClassVar[type[ProviderConfig]] = EmptyConfig

    def __init__(self, config: C, ctx: Context) -> None:
        self.config = config
        self.ctx = ctx
        self.log = ctx.log

    def close(self) -> None:
        """Release resources; called once when the provider stops (also after errors)."""

    def check(self) -> Iterable[Resource]:
        """``dstream check``: open what the provider works with, using its config, and say what
        answered, changing nothing (raise ``ActionableError`` with the reason when it does not).
        This default says only that the config is valid: the host checked it before."""
        from dstream.protocol import Resource

        yield Resource("config", self.name, state="valid", details={"connection": "not checked by this provider"})

    @classmethod
    def verbs(cls) -> list[str]:
        """The verbs this class implements (its handshake lists them)."""
        return supported_verbs(cls)

    @classmethod
    def wants_commits(cls) -> bool:
        return False

    @classmethod
    def main(cls) -> None:
        """Console-script entry point: speak the wire protocol on stdin/stdout."""
        from dstream.sdk.host import main

        main(cls)


class InputProvider(Provider[C]):
    """Produces envelopes. Override :meth:`read`."""

    kind: ClassVar[Kind] = "input"
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


class TransformProvider(Provider[C]):
    """Turns each envelope into zero or more. Override :meth:`transform`.

    Checkpoint lines never reach ``transform``: the SDK forwards each one unchanged, after
    everything emitted for the envelopes before it, which is what keeps the pipeline's
    end-to-end guarantee. Transforms never see acks.
    """

    kind: ClassVar[Kind] = "transform"

    def transform(
        self, envelope: Envelope
    ) -> Iterable[Envelope | Record | dict[str, Any]] | AsyncIterator[Envelope | Record | dict[str, Any]] | None:
        """Return or yield what replaces ``envelope``: itself (passthrough), new
        :class:`Record` s, several, or nothing (``None``/empty: dropped). May be an ``async``
        generator. ``raise Reject("why")`` dead-letters the envelope."""
        raise NotImplementedError

    def flush(self) -> Iterable[Envelope | Record | dict[str, Any]] | None:
        """Called before each checkpoint is forwarded and at the end of the stream: return
        what a batching transform still holds, so it is emitted before the checkpoint."""
        return None


class OutputProvider(Provider[C]):
    """Consumes envelopes. Override :meth:`write`."""

    kind: ClassVar[Kind] = "output"
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
    # Every SDK provider answers `check` (Provider.check): its config is valid, and what it
    # connects to answers, where the provider checks that.
    verbs = ["run", "check"] if getattr(cls, "kind", "") else []
    # "snapshot": an input's on-demand snapshot signal (`dstream snapshot`, CDC providers).
    for verb in ("init", "plan", "status", "destroy", "snapshot"):
        method = getattr(cls, verb, None)
        if method is not None and method is not getattr(InfrastructureProvider, verb, None):
            verbs.append(verb)
    return verbs
