"""Checkpoint stores (SQLite default, Azure Blob shared) and task leases (file, Azure Blob).

This module picks the store and the lease a task file asks for; the backends live in
their own modules and import only :mod:`dstream.state.base` and :mod:`dstream.state.lease`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from dstream import private
from dstream.errors import DStreamError
from dstream.state.base import CheckpointStore, StoredCheckpoint, default_state_path
from dstream.state.lease import FileLease, Lease, LeaseGuard, new_owner

if TYPE_CHECKING:
    from dstream.config.models import Document, Task

__all__ = ["CheckpointStore", "Lease", "LeaseGuard", "StoredCheckpoint", "open_lease", "open_store"]


def open_store(document: Document) -> CheckpointStore:
    settings = document.state
    if settings.backend == "azure_blob":
        from dstream.state.azure_blob import AzureBlobStore

        assert settings.connection_string is not None
        return AzureBlobStore(settings.connection_string, settings.container, settings.prefix)
    from dstream.state.sqlite import SqliteStore

    return SqliteStore(default_state_path(document))


def open_lease(document: Document, task: Task, run_id: str) -> Lease | None:
    settings = task.lease
    if settings is None:
        return None
    owner = new_owner(run_id)
    if settings.backend == "file":
        if settings.path:
            base = Path(settings.path).expanduser()
            folder = base if base.is_absolute() else document.base_dir / base
        else:
            folder = default_state_path(document).parent / "leases"
        return FileLease(folder / f"{private.file_name(task.name)}.json", task.name, owner, settings.duration)
    from dstream.state.azure_blob import AzureBlobLease

    connection = settings.connection_string or document.state.connection_string
    container = settings.container or (document.state.container if document.state.backend == "azure_blob" else None)
    if not connection:
        raise DStreamError(
            f'task {task.name}: lease backend "azure_blob" needs connection_string (in the lease or the state block)'
        )
    prefix = document.state.prefix if document.state.backend == "azure_blob" else "leases/"
    return AzureBlobLease(
        connection, container or "dstream-state", f"{prefix}{task.name}.json", task.name, owner, settings.duration
    )
