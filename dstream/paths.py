"""Per-user directories, found by platformdirs (the XDG base directories on Linux).

Every cache or state file dstream keeps for a user lives under one of these two, so
``XDG_CACHE_HOME`` and ``XDG_STATE_HOME`` are honoured everywhere; ``$DSTREAM_CACHE``
moves the cache as a whole (CI caches, read-only homes).
"""

from __future__ import annotations

import os
from pathlib import Path

APP = "dstream"


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
