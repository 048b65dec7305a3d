"""Registry logins, and where they may be sent.

Logins are the ones ``docker login`` stored: ``$DOCKER_CONFIG/config.json`` (``~/.docker``)
``auths`` or the credential helpers it names. What a login earns (a Basic header, a bearer
token) is kept per (scheme, host, scope): it is never sent to another registry, even one that
serves the same repository path (a port is part of the host).

Plain HTTP carries credentials only to loopback hosts and to hosts the user declared insecure
in ``$DSTREAM_INSECURE_REGISTRIES`` (with a warning), as Docker's ``insecure-registries``. A
token service (the ``realm`` of a ``Bearer`` challenge) must be https under the same rule:
a registry, or a proxy rewriting its 401, cannot send the login to an ``http://`` realm.
"""

from __future__ import annotations

import base64
import ipaddress
import os
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import requests

from dstream import log
from dstream.distribution.reference import DOCKER_HUB_API
from dstream.errors import DistributionError

if TYPE_CHECKING:
    from collections.abc import Callable

TIMEOUT = 30
_log = log.get("registry")
_warned: set[str] = set()


def declared_insecure() -> set[str]:
    """The hosts in ``$DSTREAM_INSECURE_REGISTRIES`` (comma-separated ``host[:port]``)."""
    return {h.strip() for h in os.environ.get("DSTREAM_INSECURE_REGISTRIES", "").split(",") if h.strip()}


def is_loopback(host: str) -> bool:
    """Whether ``host`` (``name[:port]``, ``[v6]:port``) is this machine."""
    name = host[1:].split("]", maxsplit=1)[0] if host.startswith("[") else host.rsplit(":", 1)[0]
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def is_insecure(host: str) -> bool:
    """Whether the registry at ``host`` is spoken to over plain HTTP."""
    return host in declared_insecure() or is_loopback(host)


def _warn_cleartext(host: str) -> None:
    if not is_loopback(host) and host not in _warned:
        _warned.add(host)
        _log.warning("sending registry credentials to %s over plain HTTP (it is in DSTREAM_INSECURE_REGISTRIES)", host)


def _realm_host(realm: str, registry: str) -> str:
    """The ``host[:port]`` of a token realm, refused unless credentials may travel there."""
    parts = urlsplit(realm)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise DistributionError(f"registry {registry} named a token service {realm!r} that is not an http(s) URL")
    host = parts.netloc.rsplit("@", 1)[-1]
    if parts.scheme == "http" and not is_loopback(host) and not {host, parts.hostname} & declared_insecure():
        raise DistributionError(
            f"registry {registry} asks for a token from {realm}, over plain HTTP: refused, the login would "
            f"travel in clear text (add {host} to DSTREAM_INSECURE_REGISTRIES only if you accept that)"
        )
    return host if parts.scheme == "http" else ""


@dataclass(frozen=True)
class Credentials:
    """A registry login: a user and password, or an identity (refresh) token."""

    username: str = ""
    password: str = ""
    identity_token: str = ""

    def __repr__(self) -> str:  # never print the secret parts
        return f"Credentials(username={self.username!r})"


def docker_credentials(host: str) -> Credentials | None:
    """What ``docker login`` stored for ``host``: the docker config's ``auths`` or, as the
    docker CLI does, its credential helpers (``credsStore``, ``credHelpers``), through
    docker-py (:func:`dstream.runtime.docker.registry_credentials`)."""
    from dstream.runtime.docker import registry_credentials

    found = registry_credentials(None if host == DOCKER_HUB_API else host)
    if found is None:
        return None
    if "identity_token" in found:
        return Credentials(identity_token=found["identity_token"])
    return Credentials(found["username"], found["password"])


class Authorizations:
    """``Authorization`` values per (scheme, host, scope), earned by answering challenges."""

    def __init__(self, session: requests.Session, reason: Callable[[Exception], str]) -> None:
        self._session = session
        self._reason = reason
        self._values: dict[tuple[str, str, str], str] = {}

    def get(self, scheme: str, host: str, scope: str) -> str | None:
        return self._values.get((scheme, host, scope))

    def answer(self, scheme: str, host: str, scope: str, challenge: str) -> str:
        """The ``Authorization`` value for a 401's ``WWW-Authenticate`` challenge (kept for reuse)."""
        value = self._answer(scheme, host, scope, challenge)
        self._values[(scheme, host, scope)] = value
        return value

    def _answer(self, scheme: str, host: str, scope: str, challenge: str) -> str:
        creds = docker_credentials(host)
        if challenge.lower().startswith("basic"):
            if creds is None or not creds.username:
                raise DistributionError(f"registry {host} needs a login: run `docker login {host}`")
            if scheme == "http":
                _warn_cleartext(host)
            return "Basic " + base64.b64encode(f"{creds.username}:{creds.password}".encode()).decode()
        params = dict(re.findall(r'(\w+)="([^"]*)"', challenge))
        realm = params.pop("realm", None)
        if not realm:
            raise DistributionError(f"registry {host} refused access and sent no usable auth challenge")
        cleartext = _realm_host(realm, host)
        params.setdefault("scope", scope)
        if creds is not None and cleartext:
            _warn_cleartext(cleartext)
        try:
            if creds is not None and creds.identity_token:
                # The OAuth2 refresh-token grant of the distribution token spec (docs/spec/auth/oauth.md).
                form = {"grant_type": "refresh_token", "refresh_token": creds.identity_token, "client_id": "dstream"}
                reply = self._session.post(realm, data={**params, **form}, timeout=TIMEOUT)
            else:
                auth = (creds.username, creds.password) if creds is not None else None
                reply = self._session.get(realm, params=params, auth=auth, timeout=TIMEOUT)
        except requests.RequestException as exc:
            raise DistributionError(f"cannot get a token from {realm}: {self._reason(exc)}") from None
        if reply.status_code != 200:
            raise DistributionError(f"registry {host} refused a token ({reply.status_code}); try `docker login {host}`")
        try:
            data = reply.json()
            token = data.get("token") or data.get("access_token")
        except (ValueError, AttributeError):
            token = None
        if not isinstance(token, str) or not token:
            raise DistributionError(f"the token service {realm} of registry {host} answered without a token")
        return "Bearer " + token
