"""Files only their owner may read: state, logs, dead letters (raw data), run records, leases.

Folders dstream creates are 0700 and files 0600 (less if the umask says so); a file is
opened with ``O_NOFOLLOW``, so a symlink planted where it will be (a shared project
folder) cannot redirect dstream's writes onto another file. A task name becomes one safe
file name, whatever it holds.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from typing import IO, TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path

_CREATE = os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
_SAFE = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*")
_MAX_NAME = 200  # bytes, leaving room for a suffix within the usual 255


def make_dirs(folder: Path) -> Path:
    """``mkdir -p`` where every folder created is 0700 (existing ones are left as they are)."""
    missing = []
    for part in (folder, *folder.parents):
        if part.exists():
            break
        missing.append(part)
    for part in reversed(missing):
        part.mkdir(mode=0o700, exist_ok=True)
    return folder


def _open(path: Path, flags: int) -> int:
    make_dirs(path.parent)
    try:
        return os.open(path, flags | _CREATE, 0o600)
    except OSError as exc:
        if exc.errno == 40:  # ELOOP: the name is a symlink
            raise OSError(exc.errno, f"{path} is a symbolic link; dstream does not follow it") from None
        raise


def open_append(path: Path) -> IO[bytes]:
    """Open (or create, 0600) ``path`` for appending, never through a symlink."""
    return os.fdopen(_open(path, os.O_WRONLY | os.O_APPEND), "ab")


def create(path: Path) -> None:
    """Create ``path`` (0600) if it is missing, refusing a symlink: before a library opens it."""
    os.close(_open(path, os.O_RDWR))


def write_atomically(path: Path, text: str, mode: int = 0o600) -> None:
    """Replace ``path`` with ``text`` through a fresh temporary file beside it (a unique name,
    created exclusively: two writers never share one, and no symlink is followed), so a
    reader sees the old file or the new one, never half of one. The one atomic-write helper;
    ``mode`` 0o644 for a file meant to be shared (``dstream.lock``)."""
    make_dirs(path.parent)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")  # 0600
    tmp = type(path)(name)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
        if mode != 0o600:
            tmp.chmod(mode)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def file_name(name: str) -> str:
    """``name`` as one file name that stays in its folder: kept when it is already made of
    ``[A-Za-z0-9_.-]`` (not starting with a dot), else escaped and given a short hash so
    that two names never share a file."""
    if _SAFE.fullmatch(name) and len(name) <= _MAX_NAME:
        return name
    cleaned = re.sub(r"[^A-Za-z0-9_.-]", "_", name).lstrip(".")[: _MAX_NAME - 13]
    return f"{cleaned}-{hashlib.sha256(name.encode()).hexdigest()[:12]}"
