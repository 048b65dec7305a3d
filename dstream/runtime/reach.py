"""A server named by a loopback address cannot be reached from a container on a bridge
network: there 127.0.0.1 and localhost are the container itself. Said in ``dstream lint``
and when such a container starts, with the fix, instead of letting a provider retry a
connection that can never succeed.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Iterator

    from dstream.config.models import ContainerSettings, ProviderBlock

# A loopback host as connection strings and URLs write it: 127.x.x.x, localhost, [::1].
_LOOPBACK = re.compile(r"(?<![\w.-])(localhost|127(?:\.\d{1,3}){3}|\[::1\])(?![\w-]|\.\w)", re.IGNORECASE)
_SHARED_NETWORKS = ("host",)


def on_bridge(settings: ContainerSettings) -> bool:
    network = settings.network or "bridge"
    return network not in _SHARED_NETWORKS and not network.startswith("container:")


def loopback_settings(config: Any, key: str = "config") -> Iterator[tuple[str, str]]:
    """(setting, loopback host) for every string in ``config`` that names one (values not quoted:
    they may hold secrets)."""
    if isinstance(config, dict):
        for k, v in config.items():
            yield from loopback_settings(v, f"{key}.{k}")
    elif isinstance(config, list):
        for i, v in enumerate(config):
            yield from loopback_settings(v, f"{key}[{i}]")
    elif isinstance(config, str):
        found = _LOOPBACK.search(config)
        if found:
            yield key, found.group(1)


def warnings(settings: ContainerSettings, config: Any) -> Iterator[str]:
    """One sentence per setting that names a loopback host, for a container on a bridge network."""
    if not on_bridge(settings):
        return
    for setting, host in loopback_settings(config):
        yield (
            f"{setting} names {host}, which in a container on the bridge network is the container itself, "
            f'not this machine: for a server on this machine add container {{ network = "host" }}'
        )


def image_warnings(block: ProviderBlock) -> list[str]:
    """``warnings`` for a block that runs as an image (a pulled executable runs on this machine,
    where loopback is this machine): what ``lint`` and ``check`` say before a run finds out."""
    if not block.provider_ref:
        return []
    return [f"(as an image) {text}" for text in warnings(block.container, block.config)]
