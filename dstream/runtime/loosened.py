"""What a task file may not loosen (the Docker socket), and what it may loosen only with a
warning (host network, root, a writable root filesystem, read-write mounts outside the
task's folder). ``dstream lint`` and the start of each container print the same warnings.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

from dstream.errors import RuntimeFailure

if TYPE_CHECKING:
    from collections.abc import Iterator

    from dstream.config.models import ContainerSettings, Document

_SOCKETS = ("/var/run/docker.sock", "/run/docker.sock")
_ROOTLESS = re.compile(r"^/run/user(/\d+(/docker\.sock)?)?$")  # rootless engines: /run/user/UID/docker.sock


def docker_sockets() -> set[Path]:
    """Where an engine's socket is on this machine, as given and with symlinks resolved."""
    found = {Path(p) for p in _SOCKETS}
    host = os.environ.get("DOCKER_HOST", "")
    if host.startswith("unix://"):
        found.add(Path(host.removeprefix("unix://")))
    if os.environ.get("XDG_RUNTIME_DIR"):
        found.add(Path(os.environ["XDG_RUNTIME_DIR"]) / "docker.sock")
    found |= set(Path("/run/user").glob("*/docker.sock"))
    return found | {p.resolve() for p in found}


def refuse_socket(source: Path) -> None:
    """Refuse a mount source (symlinks resolved) that is an engine's socket or a folder above one."""
    for candidate in {source, source.resolve()}:
        if _ROOTLESS.match(str(candidate)) or any(
            s == candidate or s.is_relative_to(candidate) for s in docker_sockets()
        ):
            raise RuntimeFailure(
                f"mounting {candidate} would hand a provider the Docker socket (root on the host): not allowed"
            )


def is_root(user: str | None) -> bool:
    return user is not None and user.split(":")[0] in ("0", "root")


def mount_parts(entry: str) -> tuple[str, str, bool] | None:
    """``SOURCE:TARGET[:ro|rw]`` as (source, target, read_only), or None when malformed."""
    parts = entry.split(":")
    if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] not in ("ro", "rw")):
        return None
    return parts[0], parts[1], len(parts) == 3 and parts[2] == "ro"


def warnings(settings: ContainerSettings, base_dir: Path) -> Iterator[str]:
    """Each way ``container { }`` loosens the hardened defaults, as a sentence."""
    if settings.network == "host" or (settings.network or "").startswith("container:"):
        yield f'network = "{settings.network}": the provider shares a network namespace (host services reachable)'
    if is_root(settings.user):
        yield f'user = "{settings.user}": the provider runs as root'
    if settings.read_only is False:
        yield "read_only = false: the provider can write to its image's filesystem"
    folder = base_dir.resolve()
    for entry in settings.mounts:
        parts = mount_parts(entry)
        if parts is None or parts[2]:
            continue
        source = (base_dir / Path(parts[0]).expanduser()).resolve()
        if not source.is_relative_to(folder):
            yield f"mount {entry!r} is read-write outside the task's folder ({folder})"


def document_warnings(document: Document) -> list[str]:
    """``dstream lint``'s notes: every loosened default of every stage, and every loopback
    address given to a provider that runs as an image on the bridge network."""
    from dstream.runtime import reach

    notes = []
    for task in document.tasks.values():
        for role, block, _ in task.stages:
            texts = [*warnings(block.container, document.base_dir), *reach.image_warnings(block)]
            notes += [f"{task.name} {role}: warning: {text}" for text in texts]
    return notes
