"""provider_ref → what runs: a pinned image in a container, or an ORAS executable.

1. Resolve the reference to a manifest digest at the registry: the sha256 of the manifest
   bytes received (a ``name@sha256:…`` reference must get exactly those bytes; see
   :mod:`.registry`). Content that does not match is refused, never worked around.
2. Check it against ``dstream.lock``: a different digest stops the run unless
   ``--update-lock``. When the registry cannot be reached, a locked digest whose image
   is already local still runs (offline), with a warning.
3. Tell images from upstream-style executable artifacts by the manifest (config and
   artifact media types), never by name.
4. Images: pull ``repo@digest`` per the pull policy; executables: fetch into the cache.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import TYPE_CHECKING

from dstream import log
from dstream.distribution.artifacts import fetch_executable
from dstream.distribution.lock import LOCK_FILE, LockFile
from dstream.distribution.progress import PullProgress
from dstream.distribution.reference import Reference, parse
from dstream.distribution.registry import Manifest, RegistryClient
from dstream.errors import ContentMismatch, DistributionError, LockMismatchError, RegistryUnreachable
from dstream.runtime.local import LocalRuntime

if TYPE_CHECKING:
    from dstream.config.models import Document
    from dstream.distribution.options import LaunchOptions
    from dstream.runtime.base import ProviderSpec, Runtime
    from dstream.runtime.container import DockerRuntime

_log = log.get("resolve")


@dataclasses.dataclass(frozen=True)
class Resolved:
    ref: Reference
    digest: str
    kind: str
    manifest: Manifest | None


def resolve_digest(text: str, lock: LockFile, update_lock: bool) -> Resolved:
    """The digest ``text`` should run as, enforcing the lock file."""
    ref = parse(text)
    locked = lock.get(text)
    try:
        manifest = RegistryClient().manifest(ref)
    except RegistryUnreachable as exc:
        if locked is not None:
            _log.warning("%s; using the locked digest %s for %s", exc, locked.digest, text)
            return Resolved(ref, locked.digest, locked.kind, None)
        raise
    kind = manifest.kind
    if kind == "unknown":
        raise DistributionError(
            f"{text} ({manifest.digest}) is neither a container image nor a dstream provider artifact "
            f"(artifactType {manifest.body.get('artifactType')!r}, config "
            f"{(manifest.body.get('config') or {}).get('mediaType')!r})"
        )
    if locked is not None and locked.digest != manifest.digest:
        if not update_lock:
            raise LockMismatchError(
                f"{text}: the registry now serves {manifest.digest}, but {lock.path.name} pins "
                f"{locked.digest}. Someone re-tagged it. If the new one is expected, run with "
                f"--update-lock (or `dstream lock`); otherwise pin the old one with name@{locked.digest}."
            )
        _log.warning("%s: updating %s from %s to %s", text, lock.path.name, locked.digest, manifest.digest)
        lock.update(text, manifest.digest, kind)
    return Resolved(ref, manifest.digest, kind, manifest)


def _docker_runtime(options: LaunchOptions) -> DockerRuntime:
    runtime = options.runtimes.get("docker")
    if runtime is None:
        from dstream.runtime.container import DockerRuntime

        runtime = DockerRuntime()
        options.runtimes["docker"] = runtime
    return runtime  # type: ignore[return-value]


async def _ensure_image(runtime: DockerRuntime, resolved: Resolved, pull: str, progress: bool | None) -> str:
    pinned = resolved.ref.pinned(resolved.digest)
    engine = runtime.engine
    present = await asyncio.to_thread(engine.image, pinned) is not None
    if pull == "never" and not present:
        raise DistributionError(f"{pinned} is not in the local engine and --pull never forbids pulling it")
    if pull == "always" or not present:
        with PullProgress(pinned, live=progress) as bars:
            await asyncio.to_thread(engine.pull, resolved.ref.docker_name, resolved.digest, bars.event)
    return pinned


async def _remove_leftovers(runtime: DockerRuntime, task: str) -> None:
    from dstream.runtime.leftovers import find_leftovers

    for left in await asyncio.to_thread(find_leftovers, runtime.engine, task):
        _log.warning(
            "removing container %s left behind by run %s of task %s (its dstream process is gone)",
            left.name,
            left.run_id,
            task,
        )
        await asyncio.to_thread(runtime.engine.remove, left.container_id)


def _shared_lock(document: Document, options: LaunchOptions) -> LockFile:
    """The lock file every stage of a run resolves against: with ``--update-lock`` each
    may write an entry, and separate copies would overwrite each other's."""
    path = document.base_dir / LOCK_FILE
    # No await between the check and the assignment: the event loop cannot interleave them.
    if options.lock is None or options.lock.path != path:
        options.lock = LockFile.load(path)
    return options.lock


async def resolve_for_run(
    document: Document, spec: ProviderSpec, options: LaunchOptions
) -> tuple[Runtime, ProviderSpec]:
    text = spec.block.provider_ref or ""
    lock = _shared_lock(document, options)
    try:
        resolved = await asyncio.to_thread(resolve_digest, text, lock, options.update_lock)
    except DistributionError as exc:
        refused = isinstance(exc, (LockMismatchError, ContentMismatch))  # never run around a refusal
        if refused or lock.get(text) is not None or options.pull == "always":
            raise
        # A local build not pushed anywhere (a provider author's loop): run it as it is.
        runtime = _docker_runtime(options)
        if await asyncio.to_thread(runtime.engine.image, text) is None:
            raise
        _log.warning("%s; using the local image %s (not pinned to a registry digest)", exc, text)
        return runtime, dataclasses.replace(spec, image=text)
    if resolved.kind == "artifact":
        manifest = resolved.manifest
        if manifest is None:
            manifest = await asyncio.to_thread(RegistryClient().manifest, resolved.ref, resolved.digest)
        path = await asyncio.to_thread(fetch_executable, resolved.ref, manifest)
        _log.debug("%s runs as %s", text, path)
        local = options.runtimes.get("local") or LocalRuntime()
        return local, dataclasses.replace(spec, executable=str(path))
    runtime = _docker_runtime(options)
    if not options.leftovers_checked:
        options.leftovers_checked = True
        await _remove_leftovers(runtime, spec.task)
    image = await _ensure_image(runtime, resolved, options.pull, options.progress)
    return runtime, dataclasses.replace(spec, image=image)


def lock_document(document: Document) -> list[tuple[str, str, str]]:
    """``dstream lock``: resolve every provider_ref of the file and write the lock file."""
    lock = LockFile.load(document.base_dir / LOCK_FILE)
    client = RegistryClient()
    rows = []
    refs = sorted({s.block.provider_ref for t in document.tasks.values() for s in t.stages if s.block.provider_ref})
    for text in refs:
        ref = parse(text)
        manifest = client.manifest(ref)
        if manifest.kind == "unknown":
            raise DistributionError(f"{text} is neither a container image nor a dstream provider artifact")
        previous = lock.get(text)
        if previous is None or previous.digest != manifest.digest:
            lock.set(text, manifest.digest, manifest.kind)
        change = "new" if previous is None else ("unchanged" if previous.digest == manifest.digest else "updated")
        rows.append((text, manifest.digest, change))
    lock.save()
    return rows
