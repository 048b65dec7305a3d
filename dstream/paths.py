"""Per-user directories, found by platformdirs (the XDG base directories on Linux).

Every cache or state file dstream keeps for a user lives under one of these two, so
``XDG_CACHE_HOME`` and ``XDG_STATE_HOME`` are honoured everywhere; ``$DSTREAM_CACHE``
moves the cache as a whole (CI caches, read-only homes).

What dstream reads back from the cache (parse trees, provider executables) is only as
trustworthy as the folder: :func:`private_cache` refuses a folder that belongs to another
user or that group or others may write to.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from dstream import private

APP = "dstream"


class UnsafeFolder(Exception):
    """A cache folder that another user could write to."""


def cache_dir() -> Path:
    """Re-creatable files: the parse-tree cache, ORAS executables (``$DSTREAM_CACHE`` first)."""
    configured = os.environ.get("DSTREAM_CACHE")
    if configured:
        return Path(configured).expanduser()
    import platformdirs

    return platformdirs.user_cache_path(APP)


def state_dir() -> Path:
    """Files that describe this user's runs (records of background runs)."""
    import platformdirs

    return platformdirs.user_state_path(APP)


def private_cache(name: str) -> Path:
    """``cache_dir()/name``, created (0700) when missing; UnsafeFolder when it, or the cache
    folder itself, belongs to another user or is group- or world-writable (OSError when it
    cannot be created)."""
    root = cache_dir()
    folder = root / name
    private.make_dirs(root)  # every folder created 0700, not only the last
    folder.mkdir(exist_ok=True, mode=0o700)
    _check_private(root, root.stat())
    _check_private(folder, folder.lstat())
    return folder


def _check_private(folder: Path, info: os.stat_result) -> None:
    if not hasattr(os, "geteuid"):  # no POSIX owners to check (Windows)
        return
    if not stat.S_ISDIR(info.st_mode):
        raise UnsafeFolder(f"{folder} is not a folder (a symbolic link?); remove it")
    if info.st_uid != os.geteuid():
        raise UnsafeFolder(
            f"{folder} belongs to uid {info.st_uid}, not to you (uid {os.geteuid()}); "
            f"set DSTREAM_CACHE to a folder of your own"
        )
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise UnsafeFolder(
            f"{folder} is writable by other users (mode {stat.S_IMODE(info.st_mode):o}); "
            f"run `chmod go-w {folder}` or set DSTREAM_CACHE to a folder of your own"
        )
