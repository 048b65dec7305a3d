"""Upstream-style provider artifacts: one executable per platform, pulled from the registry.

Layout (as upstream publishes it): artifactType ``application/vnd.dstream.provider``,
layers titled ``plugin.<os>_<arch>`` (``.exe`` on Windows) plus ``provider.json``. The
executable for this machine is cached by manifest digest under ``$DSTREAM_CACHE`` (default
``$XDG_CACHE_HOME/dstream``, ``~/.cache/dstream``)``/artifacts/<digest>/plugin`` and verified
against its layer digest before every run, so a moved tag can never run stale code.

The download is ours, not oras-py's ``download_blob``: that one streams any length into a
path it opens with ``open(path, "wb")`` (following a planted symlink) before any check. Here
the blob streams into a new private file in the cache, stops past the layer's declared size,
and is renamed into place only after its size and digest match.
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from dstream import log
from dstream.distribution import digests
from dstream.distribution.registry import Manifest, RegistryClient
from dstream.errors import ContentMismatch, DistributionError
from dstream.paths import UnsafeFolder, cache_dir, private_cache

if TYPE_CHECKING:
    from dstream.distribution.reference import Reference

_log = log.get("artifacts")
# An upper bound on what a manifest may declare for one executable (Go binaries are tens of MiB).
MAX_EXECUTABLE = 1024 * 1024 * 1024


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


def _declared_size(layer: dict[str, object], title: str, ref: Reference) -> int:
    size = layer.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= MAX_EXECUTABLE:
        raise DistributionError(
            f"{title} of {ref}: the manifest declares size {size!r} (expected 0 to {MAX_EXECUTABLE} bytes); refused"
        )
    return size


def artifact_cache() -> Path:
    """``<cache>/artifacts``, refused when another user could write to it (or to the cache)."""
    try:
        return private_cache("artifacts")
    except UnsafeFolder as exc:
        raise DistributionError(f"refusing the executable cache: {exc}") from None
    except OSError as exc:
        raise DistributionError(f"cannot create the executable cache under {cache_dir()}: {exc}") from None


def fetch_executable(ref: Reference, manifest: Manifest) -> Path:
    """The local path of this platform's executable, downloading it when not cached."""
    title, layer = _layer_for_platform(manifest)
    what = f"{title} of {ref}"
    digest = digests.checked(layer.get("digest"), f"{what}: the layer digest")
    size = _declared_size(layer, title, ref)
    folder = artifact_cache() / digests.checked(manifest.digest, f"the manifest digest of {ref}").replace(":", "-")
    target = folder / "plugin"
    if target.is_file() and _sha256(target) == digest:
        return target
    _log.info("pulling %s (%s) from %s", title, digest[:19], ref.registry)
    folder.mkdir(mode=0o700, exist_ok=True)
    # A temporary file of our own (O_EXCL: never a planted symlink) beside the target, renamed
    # over it only once its size and digest are right: nothing unverified is ever at `target`.
    fd, name = tempfile.mkstemp(dir=folder, prefix=".plugin-", suffix=".part")
    partial = Path(name)
    try:
        hasher = hashlib.sha256()
        with os.fdopen(fd, "wb") as out, RegistryClient().blob_stream(ref, digest, size) as chunks:
            for chunk in chunks:
                hasher.update(chunk)
                out.write(chunk)
            written = out.tell()
        got = "sha256:" + hasher.hexdigest()
        if written != size or got != digest:
            raise ContentMismatch(
                f"{what}: the registry sent {written} bytes hashing to {got}, but the manifest names "
                f"{digest} ({size} bytes); refused"
            )
        partial.chmod(0o755)
        partial.replace(target)
    except OSError as exc:
        raise DistributionError(f"cannot write {what} into {folder}: {exc.strerror or exc}") from None
    finally:
        partial.unlink(missing_ok=True)
    return target
