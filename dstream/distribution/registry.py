"""A small client for the OCI distribution API: manifests and blobs, verified.

Loopback registries (and those in ``$DSTREAM_INSECURE_REGISTRIES``) are spoken to over
plain HTTP, as the Docker engine does; others over HTTPS. Logins: :mod:`.auth`.

Nothing a registry says about content is believed: a manifest's digest is the sha256 of the
bytes received (a ``Docker-Content-Digest`` header that disagrees, or content that does not
hash to the digest asked for, is refused); blobs are read with a size limit and checked
against their digest before use. Limits: a manifest 4 MiB (oras-go's
``defaultMaxMetadataBytes``, registry/remote/utils.go), a schema blob (image config,
``provider.json``) 16 MiB, an executable its declared size.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import requests

from dstream.distribution import digests
from dstream.distribution.auth import Authorizations, is_insecure
from dstream.errors import ContentMismatch, DistributionError, RegistryUnreachable

if TYPE_CHECKING:
    from collections.abc import Iterator

    from dstream.distribution.reference import Reference

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
IMAGE_CONFIGS = ("application/vnd.docker.container.image.v1+json", "application/vnd.oci.image.config.v1+json")
DSTREAM_ARTIFACT = "application/vnd.dstream.provider"
_ACCEPT = ", ".join([OCI_INDEX, OCI_MANIFEST, DOCKER_MANIFEST, DOCKER_LIST])
TIMEOUT = 30
MAX_MANIFEST = 4 * 1024 * 1024
MAX_SCHEMA_BLOB = 16 * 1024 * 1024
CHUNK = 1024 * 1024


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


class RegistryClient:
    def __init__(self) -> None:
        self._session = requests.Session()
        self._auth = Authorizations(self._session, _reason)

    def _scheme(self, ref: Reference) -> str:
        return "http" if is_insecure(ref.api_host) else "https"

    @contextlib.contextmanager
    def _get(self, ref: Reference, path: str, headers: dict[str, str]) -> Iterator[requests.Response]:
        """A streamed GET (the body is read by the caller, within its limit), authenticating
        once if the registry asks; the Authorization sent is only ever this registry's."""
        scheme, host = self._scheme(ref), ref.api_host
        url = f"{scheme}://{host}{path}"
        scope = f"repository:{ref.repository}:pull"
        for attempt in range(2):
            request_headers = dict(headers)
            value = self._auth.get(scheme, host, scope)
            if value:
                request_headers["Authorization"] = value
            try:
                response = self._session.get(url, headers=request_headers, timeout=TIMEOUT, stream=True)
            except requests.RequestException as exc:
                raise RegistryUnreachable(f"cannot reach registry {ref.registry}: {_reason(exc)}") from None
            with response:
                if response.status_code != 401 or attempt:
                    yield response
                    return
                challenge = response.headers.get("WWW-Authenticate", "")
            self._auth.answer(scheme, host, scope, challenge)

    def manifest(self, ref: Reference, reference: str | None = None) -> Manifest:
        """The manifest for ``ref`` (its tag or digest, or ``reference``); its digest is the
        sha256 of the bytes received, and must be the one asked for when one was."""
        wanted = reference or ref.reference
        if wanted.startswith("sha256:"):
            digests.checked(wanted, f"the digest asked for {ref}")
        with self._get(ref, f"/v2/{ref.repository}/manifests/{wanted}", {"Accept": _ACCEPT}) as response:
            if response.status_code == 404:
                raise DistributionError(
                    f"{ref.docker_name}:{wanted} was not found in registry {ref.registry} "
                    f"(check the name and tag; was it pushed?)"
                )
            if response.status_code == 401:
                raise DistributionError(f"access to {ref} denied by {ref.registry}; run `docker login {ref.registry}`")
            if response.status_code != 200:
                raise DistributionError(f"registry {ref.registry} answered {response.status_code} for {ref}")
            content = b"".join(read_limited(response, MAX_MANIFEST, f"the manifest of {ref}"))
            header = response.headers.get("Docker-Content-Digest")
            media_type = response.headers.get("Content-Type", "").split(";")[0]
        digest = digests.of(content)
        if wanted.startswith("sha256:") and digest != wanted:
            raise ContentMismatch(
                f"{ref.name}@{wanted}: registry {ref.registry} served a manifest whose content is "
                f"{digest}, not the pinned {wanted}; refused (the registry or a proxy substituted it)"
            )
        if header is not None and not digests.header_matches(header, content):
            raise ContentMismatch(
                f"{ref}: registry {ref.registry} says the manifest is {header[:100]!r} "
                f"(Docker-Content-Digest) but its content is {digest}; refused"
            )
        try:
            body = json.loads(content)
        except ValueError:
            raise DistributionError(f"registry {ref.registry} returned a manifest that is not JSON for {ref}") from None
        if not isinstance(body, dict):
            raise DistributionError(f"registry {ref.registry} returned a manifest that is not a JSON object for {ref}")
        return Manifest(digest=digest, media_type=body.get("mediaType") or media_type, body=body)

    @contextlib.contextmanager
    def blob_stream(self, ref: Reference, digest: str, limit: int) -> Iterator[Iterator[bytes]]:
        """The chunks of blob ``digest``, stopping with an error past ``limit`` bytes. The
        caller checks the digest of what it read before using it."""
        digests.checked(digest, f"a blob digest in the manifest of {ref}")
        with self._get(ref, f"/v2/{ref.repository}/blobs/{digest}", {}) as response:
            if response.status_code != 200:
                raise DistributionError(f"cannot read blob {digest} of {ref} ({response.status_code})")
            yield read_limited(response, limit, f"blob {digest} of {ref}")

    def blob(self, ref: Reference, digest: str, limit: int = MAX_SCHEMA_BLOB) -> bytes:
        """A small blob (an image config, provider.json), verified against its digest."""
        with self.blob_stream(ref, digest, limit) as chunks:
            data = b"".join(chunks)
        if digests.of(data) != digest:
            raise ContentMismatch(f"blob {digest} of {ref} does not match its digest (it is {digests.of(data)})")
        return data


def read_limited(response: requests.Response, limit: int, what: str) -> Iterator[bytes]:
    """The body of ``response`` in chunks; a DistributionError once it passes ``limit`` bytes
    (before reading anything when ``Content-Length`` already says so)."""
    length = response.headers.get("Content-Length", "")
    if length.isdigit() and int(length) > limit and not response.headers.get("Content-Encoding"):
        raise DistributionError(f"{what} is {int(length)} bytes, more than the {limit} allowed; refused")
    total = 0
    try:
        for chunk in response.iter_content(CHUNK):
            total += len(chunk)
            if total > limit:
                raise DistributionError(f"{what} is larger than the {limit} bytes allowed; refused")
            yield chunk
    except requests.RequestException as exc:
        raise DistributionError(f"reading {what} failed: {_reason(exc)}") from None


def _reason(exc: Exception) -> str:
    text = str(exc)
    if "Connection refused" in text:
        return "connection refused"
    if "Name or service not known" in text or "Temporary failure in name resolution" in text:
        return "unknown host"
    return text[:200]
