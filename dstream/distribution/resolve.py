"""provider_ref → a runtime and a spec (placeholder until the Docker runtime lands)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dstream.errors import RuntimeFailure

if TYPE_CHECKING:
    from dstream.config.models import Document
    from dstream.runtime.base import ProviderSpec, Runtime


async def resolve_for_run(document: Document, spec: ProviderSpec, options: Any) -> tuple[Runtime, ProviderSpec]:
    raise RuntimeFailure(
        f"{spec.role} provider_ref {spec.block.provider_ref!r}: OCI provider references are not yet "
        f"supported by this runtime; use provider_path for now"
    )
