"""A small client for the OCI distribution API: resolve a tag to its manifest digest.

Loopback registries (and those in ``$DSTREAM_INSECURE_REGISTRIES``) are spoken to over
plain HTTP, as the Docker engine does; others over HTTPS. Bearer-token and basic auth
use the credentials ``docker login`` stored: in ``$DOCKER_CONFIG/config.json``
(``~/.docker``) or in the credential helpers it names.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import json
import os
import re
from dataclasses import dataclass
from typing import Any

import requests

from dstream.distribution.reference import DOCKER_HUB_API, Reference
from dstream.errors import DistributionError, RegistryUnreachable

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
IMAGE_CONFIGS = ("application/vnd.docker.container.image.v1+json", "application/vnd.oci.image.config.v1+json")
DSTREAM_ARTIFACT = "application/vnd.dstream.provider"
_ACCEPT = ", ".join([OCI_INDEX, OCI_MANIFEST, DOCKER_MANIFEST, DOCKER_LIST])
TIMEOUT = 30


@dataclass(frozen=True)
class Manifest:
    digest: str
    media_type: str
    body: dict[str, Any]

    @property
    def kind(self) -> str:
        """``"image"``, ``"artifact"`` (an upstream-style executable) or ``"unknown"``."""
        body = self.body
        if body.get("artifactType") == DSTREAM_ARTIFACT:
            return "artifact"
        config_type = (body.get("config") or {}).get("mediaType", "")
        if config_type == DSTREAM_ARTIFACT:
            return "artifact"  # ORAS before 1.0 put the artifact type in the config
        if self.media_type in (OCI_INDEX, DOCKER_LIST) or config_type in IMAGE_CONFIGS:
            return "image"
        titles = [
            (layer.get("annotations") or {}).get("org.opencontainers.image.title", "")
            for layer in body.get("layers") or []
        ]
        if any(t.startswith("plugin.") for t in titles):
            return "artifact"
        return "unknown"

    def layers(self) -> list[dict[str, Any]]:
        return list(self.body.get("layers") or [])


def is_insecure(host: str) -> bool:
    extra = {h.strip() for h in os.environ.get("DSTREAM_INSECURE_REGISTRIES", "").split(",") if h.strip()}
    if host in extra:
        return True
    name = host.rsplit(":", 1)[0] if not host.startswith("[") else host[1:].split("]", maxsplit=1)[0]
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


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


class RegistryClient:
    def __init__(self) -> None:
        self._session = requests.Session()
        self._tokens: dict[str, str] = {}
        self._bearer: dict[str, str] = {}

    def _base(self, ref: Reference) -> str:
        host = ref.api_host
        scheme = "http" if is_insecure(host) else "https"
        return f"{scheme}://{host}"

    def _get(self, ref: Reference, path: str, headers: dict[str, str]) -> requests.Response:
        url = self._base(ref) + path
        host = ref.api_host
        scope = f"repository:{ref.repository}:pull"
        for attempt in range(2):
            request_headers = dict(headers)
            token = self._tokens.get(scope)
            if token:
                request_headers["Authorization"] = token
            try:
                response = self._session.get(url, headers=request_headers, timeout=TIMEOUT)
            except requests.RequestException as exc:
                raise RegistryUnreachable(f"cannot reach registry {ref.registry}: {_reason(exc)}") from None
            if response.status_code != 401 or attempt:
                return response
            self._tokens[scope] = self._authenticate(response, host, scope)
        return response

    def _authenticate(self, response: requests.Response, host: str, scope: str) -> str:
        challenge = response.headers.get("WWW-Authenticate", "")
        creds = docker_credentials(host)
        if challenge.lower().startswith("basic"):
            if creds is None or not creds.username:
                raise DistributionError(f"registry {host} needs a login: run `docker login {host}`")
            return "Basic " + base64.b64encode(f"{creds.username}:{creds.password}".encode()).decode()
        params = dict(re.findall(r'(\w+)="([^"]*)"', challenge))
        realm = params.pop("realm", None)
        if not realm:
            raise DistributionError(f"registry {host} refused access and sent no usable auth challenge")
        params.setdefault("scope", scope)
        try:
            if creds is not None and creds.identity_token:
                # The OAuth2 refresh-token grant of the distribution token spec (docs/spec/auth/oauth.md).
                form = {"grant_type": "refresh_token", "refresh_token": creds.identity_token, "client_id": "dstream"}
                reply = self._session.post(realm, data={**params, **form}, timeout=TIMEOUT)
            else:
                auth = (creds.username, creds.password) if creds is not None else None
                reply = self._session.get(realm, params=params, auth=auth, timeout=TIMEOUT)
        except requests.RequestException as exc:
            raise DistributionError(f"cannot get a token from {realm}: {_reason(exc)}") from None
        if reply.status_code != 200:
            raise DistributionError(f"registry {host} refused a token ({reply.status_code}); try `docker login {host}`")
        data = reply.json()
        token = str(data.get("token") or data.get("access_token"))
        self._bearer[host] = token
        return "Bearer " + token

    def bearer_token(self, ref: Reference) -> str | None:
        """The bearer token this client got for ``ref``'s registry, if it needed one."""
        return self._bearer.get(ref.api_host)

    def auth_scheme(self, ref: Reference) -> str:
        """How the registry asks clients to authenticate: ``"basic"``, ``"bearer"`` or ``""``
        (no auth), from the challenge of its ``/v2/`` endpoint."""
        try:
            response = self._session.get(self._base(ref) + "/v2/", timeout=TIMEOUT)
        except requests.RequestException as exc:
            raise RegistryUnreachable(f"cannot reach registry {ref.registry}: {_reason(exc)}") from None
        if response.status_code != 401:
            return ""
        return response.headers.get("WWW-Authenticate", "").split(" ", 1)[0].lower()

    def manifest(self, ref: Reference, reference: str | None = None) -> Manifest:
        """The manifest for ``ref`` (its tag or digest, or ``reference``) and its digest."""
        wanted = reference or ref.reference
        response = self._get(ref, f"/v2/{ref.repository}/manifests/{wanted}", {"Accept": _ACCEPT})
        if response.status_code == 404:
            raise DistributionError(
                f"{ref.docker_name}:{wanted} was not found in registry {ref.registry} "
                f"(check the name and tag; was it pushed?)"
            )
        if response.status_code == 401:
            raise DistributionError(f"access to {ref} denied by {ref.registry}; run `docker login {ref.registry}`")
        if response.status_code != 200:
            raise DistributionError(f"registry {ref.registry} answered {response.status_code} for {ref}")
        content = response.content
        digest = response.headers.get("Docker-Content-Digest") or "sha256:" + hashlib.sha256(content).hexdigest()
        if wanted.startswith("sha256:") and digest != wanted:
            raise DistributionError(f"registry {ref.registry} returned {digest} for {wanted}")
        media_type = response.headers.get("Content-Type", "").split(";")[0]
        try:
            body = json.loads(content)
        except ValueError:
            raise DistributionError(f"registry {ref.registry} returned a manifest that is not JSON for {ref}") from None
        return Manifest(digest=digest, media_type=body.get("mediaType") or media_type, body=body)

    def blob(self, ref: Reference, digest: str, limit: int = 16 * 1024 * 1024) -> bytes:
        """A small blob (an image config, provider.json), verified against its digest."""
        response = self._get(ref, f"/v2/{ref.repository}/blobs/{digest}", {})
        if response.status_code != 200:
            raise DistributionError(f"cannot read blob {digest} of {ref} ({response.status_code})")
        data = response.content[: limit + 1]
        if len(data) > limit or "sha256:" + hashlib.sha256(data).hexdigest() != digest:
            raise DistributionError(f"blob {digest} of {ref} is too large or does not match its digest")
        return data


def _reason(exc: Exception) -> str:
    text = str(exc)
    if "Connection refused" in text:
        return "connection refused"
    if "Name or service not known" in text or "Temporary failure in name resolution" in text:
        return "unknown host"
    return text[:200]
