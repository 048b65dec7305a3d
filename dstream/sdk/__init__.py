"""The dstream provider SDK: write a provider as a small Python class.

Example::

    from dstream.sdk import InputProvider, ProviderConfig, Record

    class Config(ProviderConfig):
        max_count: int = 10

    class Counter(InputProvider[Config]):
        name = "counter-input-provider"
        Config = Config

        def read(self, checkpoint):
            start = checkpoint["value"] if checkpoint else 0
            for n in range(start + 1, self.config.max_count + 1):
                yield Record({"value": n}, position={"value": n})

    main = Counter.main   # the console script

Test without Docker with :mod:`dstream.sdk.testing`.
"""

from dstream.sdk.base import (
    Context,
    EmptyConfig,
    InfrastructureProvider,
    InputProvider,
    OutputProvider,
    Provider,
    ProviderConfig,
    TransformProvider,
)
from dstream.sdk.errors import ActionableError
from dstream.sdk.types import Checkpoint, Envelope, Raw, Record, Reject, Resource
from dstream.sdk.units import ByteSize, Duration, DurationMs

__all__ = [
    "ActionableError",
    "ByteSize",
    "Checkpoint",
    "Context",
    "Duration",
    "DurationMs",
    "EmptyConfig",
    "Envelope",
    "InfrastructureProvider",
    "InputProvider",
    "OutputProvider",
    "Provider",
    "ProviderConfig",
    "Raw",
    "Record",
    "Reject",
    "Resource",
    "TransformProvider",
]
