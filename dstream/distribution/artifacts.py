"""Upstream-style provider artifacts: one executable per platform, pulled with oras-py.

Layout (as upstream publishes it): artifactType ``application/vnd.dstream.provider``,
layers titled ``plugin.<os>_<arch>`` (``.exe`` on Windows) plus ``provider.json``. The
executable for this machine is cached by manifest digest under
``$DSTREAM_CACHE`` (default ``$XDG_CACHE_HOME/dstream``, ``~/.cache/dstream``)/``artifacts/<digest>/`` and verified
against its layer digest before every run, so a moved tag can never run stale code.
"""

from __future__ import annotations

import hashlib
import os
import sys
from typing import TYPE_CHECKING, Any

from dstream import log, private
from dstream.distribution.registry import Manifest, RegistryClient, docker_credentials, is_insecure
from dstream.errors import DistributionError
from dstream.paths import cache_dir

if TYPE_CHECKING:
    from pathlib import Path

    from dstream.distribution.reference import Reference

_log = log.get("artifacts")


def this_platform() -> tuple[str, str]:
    """(os, arch) in Go/OCI terms."""
    machine = os.uname().machine.lower()
    arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)
    return ("linux" if sys.platform.startswith("linux") else sys.platform), arch


def _layer_for_platform(manifest: Manifest) -> tuple[str, dict[str, object]]:
    os_name, arch = this_platform()
    wanted = {f"plugin.{os_name}_{arch}", f"plugin.{os_name}_{arch}.exe"}
    titles = []
    for layer in manifest.layers():
        title = str((layer.get("annotations") or {}).get("org.opencontainers.image.title", ""))
        titles.append(title)
        if title in wanted:
            return title, layer
    offered = ", ".join(t for t in titles if t.startswith("plugin.")) or "none"
    raise DistributionError(f"the artifact has no executable for {os_name}/{arch} (it offers: {offered})")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1024 * 1024), b""):
            digest.update(chunk)
    return "sha256:" + digest.hexdigest()


def _oras_client(ref: Reference) -> Any:
    """An oras-py client that authenticates the way the registry asks.

    oras' auth API (``client.auth``), not ``client.login``: login takes no ``insecure``
    argument (a TypeError in 0.2.25-0.2.43) and writes the credentials back to the docker
    config. Basic-auth registries (htpasswd) get oras' ``basic`` backend, whose header is
    sent as is; token registries its ``token`` backend, with the user and password for the
    token request, or the bearer token our registry client already obtained (identity tokens).
    """
    import oras.client

    host = ref.api_host
    registry = RegistryClient()
    scheme = registry.auth_scheme(ref)
    client = oras.client.OrasClient(
        hostname=host, insecure=is_insecure(host), auth_backend="basic" if scheme == "basic" else "token"
    )
    if not scheme:
        return client
    creds = docker_credentials(host)
    if creds is not None and creds.username:
        client.auth.set_basic_auth(creds.username, creds.password)
    elif creds is not None and scheme == "bearer":
        registry.manifest(ref)  # exchanges the identity token for a bearer token
        token = registry.bearer_token(ref)
        if token:
            client.auth.set_token_auth(token)
    elif scheme == "basic":
        raise DistributionError(f"registry {ref.registry} needs a login: run `docker login {ref.registry}`")
    return client


def fetch_executable(ref: Reference, manifest: Manifest) -> Path:
    """The local path of this platform's executable, downloading it when not cached."""
    title, layer = _layer_for_platform(manifest)
    digest = str(layer["digest"])
    target = cache_dir() / "artifacts" / manifest.digest.replace(":", "-") / "plugin"
    if target.exists() and _sha256(target) == digest:
        return target
    _log.info("pulling %s (%s) from %s", title, digest[:19], ref.registry)
    client = _oras_client(ref)
    private.make_dirs(target.parent)  # 0700: the cache is the user's own
    partial = target.with_suffix(".part")
    partial.unlink(missing_ok=True)  # oras opens it with open(): never through a planted symlink
    try:
        client.download_blob(f"{ref.api_host}/{ref.repository}@{manifest.digest}", digest, str(partial))
    except Exception as exc:  # noqa: BLE001 - oras/requests raise many kinds; say which artifact failed
        partial.unlink(missing_ok=True)
        raise DistributionError(f"cannot download {title} of {ref}: {exc}") from None
    if _sha256(partial) != digest:
        partial.unlink(missing_ok=True)
        raise DistributionError(f"{title} of {ref} does not match its digest {digest}")
    partial.chmod(0o755)
    partial.replace(target)
    return target
