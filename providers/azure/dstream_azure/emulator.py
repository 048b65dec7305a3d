"""The Service Bus emulator, recognised the way the azure-servicebus SDK recognises it.

The SDK (``azure/servicebus/_base_handler.py``, ``_parse_conn_str``, since 7.14.0) splits the
connection string on ``;`` and ``=``, matches the key ``UseDevelopmentEmulator``
case-insensitively and honours it only when its value is exactly ``true`` (lowercase); it
then speaks AMQP without TLS. Matching it exactly here means dstream and the SDK never
disagree about whether an endpoint is the emulator.

The administration client still builds ``https://`` URLs for the emulator (7.14 and 7.15),
while the emulator serves its management API (port 5300, from emulator 2.0.0) over plain
HTTP; the emulator's own Python sample overrides the client's base URL for that. We rewrite
the scheme in the transport instead, and only for hosts where the emulator lives: loopback,
the names its documentation uses (``servicebus-emulator``, ``sb-emulator``,
``host.docker.internal``), single-label Docker network aliases, ``.local``/``.internal``
names and private or link-local addresses (the README's "same local network" case). Any
other host with ``UseDevelopmentEmulator=true`` is refused rather than sent management
calls in the clear.
"""

from __future__ import annotations

import ipaddress
from typing import Any
from urllib.parse import urlsplit

from azure.core.pipeline.transport import RequestsTransport

# The emulator's management API version: the one its samples use (the JS sample's default,
# "2021-05"); the SDK's own default moved to "2024-05" in 7.15.
EMULATOR_API_VERSION = "2021-05"
EMULATOR_HOSTS = frozenset({"localhost", "servicebus-emulator", "sb-emulator", "host.docker.internal"})
LOCAL_SUFFIXES = (".local", ".internal", ".localhost")


class EmulatorError(ValueError):
    """A connection string that says "emulator" for a host the emulator cannot be on."""


def settings(connection_string: str) -> dict[str, str]:
    """``key → value`` with lowercased keys, split as the SDK splits it (values untouched)."""
    out: dict[str, str] = {}
    for part in connection_string.strip().rstrip(";").split(";"):
        key, sep, value = part.partition("=")
        if sep:
            out[key.strip().lower()] = value
    return out


def is_emulator(connection_string: str) -> bool:
    """``UseDevelopmentEmulator=true``, exactly as the SDK honours it (``True`` does not count)."""
    return settings(connection_string).get("usedevelopmentemulator") == "true"


def endpoint_host(connection_string: str) -> str:
    return urlsplit(settings(connection_string).get("endpoint", "").strip()).hostname or ""


def local_host(host: str) -> bool:
    """A host the emulator can run on: this machine, a container next to it, the local network."""
    name = host.strip("[]").lower()
    if name in EMULATOR_HOSTS or name.endswith(LOCAL_SUFFIXES):
        return True
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return bool(name) and "." not in name  # a Docker network alias, e.g. "emulator"
    return address.is_loopback or address.is_private or address.is_link_local


def plain_http(connection_string: str) -> bool:
    """Whether the management API of this connection string is the emulator's plain-HTTP one."""
    if not is_emulator(connection_string):
        return False
    host = endpoint_host(connection_string)
    if not local_host(host):
        raise EmulatorError(
            f"the connection string says UseDevelopmentEmulator=true for {host or 'an empty endpoint'}, "
            "which is not a local or container host: the emulator's management API is plain HTTP, so "
            "dstream does not send it off the local network. Use the emulator's local address, or "
            "drop UseDevelopmentEmulator for a real namespace"
        )
    return True


class EmulatorTransport(RequestsTransport):  # type: ignore[misc]
    """Plain HTTP for the emulator's management port (see the module docstring)."""

    def send(self, request: Any, **kwargs: Any) -> Any:
        if request.url.startswith("https://"):
            request.url = "http://" + request.url[len("https://") :]
        return super().send(request, **kwargs)
