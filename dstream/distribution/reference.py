"""OCI references: ``[registry[:port]/]repository[:tag][@sha256:digest]``.

Unlike upstream dstream, references with a registry port and with a digest parse.
The first path component is a registry when it contains ``.`` or ``:`` or is
``localhost``; otherwise the registry is Docker Hub, as with ``docker pull``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from dstream.distribution.digests import is_digest
from dstream.errors import DistributionError

DOCKER_HUB = "docker.io"
# Where the registry API of a bare name (``org/img``) lives, as for ``docker pull``.  Only a
# user's own references reach it: this repository's scripts and tests name 127.0.0.1:5000.
DOCKER_HUB_API = "registry-1.docker.io"
_COMPONENT = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$")
_TAG = re.compile(r"^[\w][\w.-]{0,127}$")
# A registry host as distribution/distribution's reference/regexp.go defines it
# (domainNameComponent, ipv6address, optionalPort): DNS labels or a bracketed IPv6 address,
# and a port. Anything else (``@``, ``#``, quotes) could redirect the URL built from it or
# break out of the lock file.
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
_HOST = re.compile(rf"(?:{_LABEL}(?:\.{_LABEL})*|\[[0-9A-Fa-f:]+\])(?::[0-9]{{1,5}})?")


@dataclass(frozen=True)
class Reference:
    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @property
    def name(self) -> str:
        """``registry/repository``: what docker calls the repository of a pull."""
        return f"{self.registry}/{self.repository}"

    @property
    def docker_name(self) -> str:
        """The repository as the docker CLI writes it (Docker Hub without its host)."""
        if self.registry == DOCKER_HUB:
            return self.repository.removeprefix("library/")
        return self.name

    @property
    def api_host(self) -> str:
        """The host serving the registry API (Docker Hub's API is not at ``docker.io``)."""
        return DOCKER_HUB_API if self.registry == DOCKER_HUB else self.registry

    @property
    def reference(self) -> str:
        """The tag or digest to ask the registry for."""
        return self.digest or self.tag or "latest"

    def pinned(self, digest: str) -> str:
        return f"{self.docker_name}@{digest}"

    def __str__(self) -> str:
        out = self.docker_name
        if self.tag:
            out += f":{self.tag}"
        if self.digest:
            out += f"@{self.digest}"
        return out


def parse(text: str) -> Reference:
    original = text
    text = text.strip()
    if not text or any(c.isspace() for c in text):
        raise DistributionError(f"invalid provider_ref {original!r}: empty or contains spaces")
    digest = None
    if "@" in text:
        text, digest = text.split("@", 1)
        if not is_digest(digest):
            raise DistributionError(f"invalid digest in provider_ref {original!r}: expected sha256:<64 hex digits>")
    parts = text.split("/")
    registry = DOCKER_HUB
    if len(parts) > 1 and ("." in parts[0] or ":" in parts[0] or parts[0] == "localhost"):
        registry = parts.pop(0)
        if not _HOST.fullmatch(registry):
            raise DistributionError(f"invalid registry {registry!r} in provider_ref {original!r}")
    tag = None
    if ":" in parts[-1]:
        parts[-1], tag = parts[-1].rsplit(":", 1)
        if not _TAG.match(tag):
            raise DistributionError(f"invalid tag {tag!r} in provider_ref {original!r}")
    if registry == DOCKER_HUB and len(parts) == 1:
        parts.insert(0, "library")
    for component in parts:
        if not _COMPONENT.match(component):
            raise DistributionError(
                f"invalid provider_ref {original!r}: {component!r} is not a valid repository name "
                f"(lowercase letters, digits and . _ - separators)"
            )
    if tag is None and digest is None:
        tag = "latest"
    return Reference(registry=registry, repository="/".join(parts), tag=tag, digest=digest)
