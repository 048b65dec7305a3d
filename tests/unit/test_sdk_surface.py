"""The SDK's public names, pinned (as httpx pins its own): a provider author imports these
from ``dstream.sdk``, and removing or renaming one breaks their code, so it is a decision,
not a side effect of a refactor."""

from __future__ import annotations

import dstream.sdk


def test_the_sdk_exports_exactly_these_names() -> None:
    assert dstream.sdk.__all__ == [
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
    assert dstream.sdk.__all__ == sorted(dstream.sdk.__all__)
    for name in dstream.sdk.__all__:
        assert getattr(dstream.sdk, name) is not None
