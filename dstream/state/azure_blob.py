"""Azure Blob Storage: shared checkpoints and task leases (the only azure-storage-blob user).

Each task has one blob, ``<prefix><task>.json``, holding its checkpoint. The task lease
is an Azure *blob lease on that same blob*, so fencing is done by the service: a
checkpoint write carries the writer's lease id, and Azure rejects it once another replica
holds the lease. Without a lease, writes are conditional on the blob's ETag, so two
writers cannot silently overwrite each other.
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from typing import TYPE_CHECKING, Any

from azure.core import MatchConditions
from azure.core.exceptions import AzureError, HttpResponseError, ResourceExistsError, ResourceNotFoundError
from azure.storage.blob import BlobClient, BlobLeaseClient, BlobServiceClient

from dstream.errors import LeaseLost, StateError
from dstream.state.base import StoredCheckpoint

if TYPE_CHECKING:
    from collections.abc import Iterator


def _container(connection_string: str, container: str) -> Any:
    try:
        service = BlobServiceClient.from_connection_string(connection_string)
        client = service.get_container_client(container)
        with contextlib.suppress(ResourceExistsError):
            client.create_container()
    except (AzureError, ValueError) as exc:
        raise StateError(f"cannot use Azure Blob container {container!r}: {_reason(exc)}") from None
    return client


def _reason(exc: Exception) -> str:
    code = getattr(exc, "error_code", None)
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return f"{code}: {text}" if code else text


class AzureBlobStore:
    def __init__(self, connection_string: str, container: str, prefix: str) -> None:
        self._container = _container(connection_string, container)
        self.prefix = prefix
        self.location = f"azure blob {container}/{prefix}"

    def _blob(self, task: str) -> BlobClient:
        return self._container.get_blob_client(f"{self.prefix}{task}.json")  # type: ignore[no-any-return]

    def _read(self, task: str) -> tuple[dict[str, Any] | None, str | None]:
        try:
            download = self._blob(task).download_blob()
            body = download.readall()
        except ResourceNotFoundError:
            return None, None
        except AzureError as exc:
            raise StateError(f"cannot read the checkpoint of task {task!r}: {_reason(exc)}") from None
        etag = download.properties.etag
        if not body:
            return None, etag  # created empty, to be leased
        return json.loads(body), etag

    def load(self, task: str) -> StoredCheckpoint | None:
        data, _ = self._read(task)
        if data is None:
            return None
        return StoredCheckpoint(task, data["checkpoint"], data["run_id"], data["updated_at"], data["sequence"])

    def save(self, task: str, checkpoint: Any, run_id: str, fence: Any = None) -> StoredCheckpoint:
        current, etag = self._read(task)
        sequence = int(current["sequence"]) + 1 if current else 1
        stored = StoredCheckpoint(task, checkpoint, run_id, time.time(), sequence)
        body = json.dumps(
            {
                "task": task,
                "checkpoint": checkpoint,
                "run_id": run_id,
                "updated_at": stored.updated_at,
                "sequence": sequence,
            }
        )
        kwargs: dict[str, Any] = {"overwrite": True}
        if isinstance(fence, str):
            kwargs["lease"] = fence  # Azure refuses the write unless this lease is current
        elif etag:
            kwargs.update(etag=etag, match_condition=MatchConditions.IfNotModified)
        try:
            self._blob(task).upload_blob(body.encode(), **kwargs)
        except HttpResponseError as exc:
            if isinstance(fence, str) and exc.status_code in (409, 412):
                raise LeaseLost(
                    f"checkpoint write refused by Azure: another replica holds the lease of task {task}"
                ) from None
            if exc.status_code in (409, 412):
                raise StateError(
                    f"the checkpoint of task {task} was changed by another writer; not overwriting it"
                ) from None
            raise StateError(f"cannot write the checkpoint of task {task!r}: {_reason(exc)}") from None
        except AzureError as exc:
            raise StateError(f"cannot write the checkpoint of task {task!r}: {_reason(exc)}") from None
        return stored

    def reset(self, task: str) -> bool:
        try:
            self._blob(task).delete_blob()
        except ResourceNotFoundError:
            return False
        except HttpResponseError as exc:
            if exc.status_code == 412:
                raise StateError(f"task {task} is running (a replica holds its lease); stop it first") from None
            raise StateError(f"cannot reset task {task!r}: {_reason(exc)}") from None
        return True

    def tasks(self) -> list[StoredCheckpoint]:
        out = []
        for item in self._container.list_blobs(name_starts_with=self.prefix):
            task = item.name[len(self.prefix) :].removesuffix(".json")
            found = self.load(task)
            if found is not None:
                out.append(found)
        return out

    def close(self) -> None:
        return None


class AzureBlobLease:
    """A task lease as an Azure blob lease (15-60 s) on the task's checkpoint blob."""

    def __init__(
        self, connection_string: str, container: str, blob: str, task: str, owner: str, duration: float
    ) -> None:
        self.task = task
        self.owner = owner
        self.duration = duration
        self._blob = _container(connection_string, container).get_blob_client(blob)
        with contextlib.suppress(ResourceExistsError):
            self._blob.upload_blob(b"", overwrite=False)
        self._lease = BlobLeaseClient(self._blob, lease_id=str(uuid.uuid4()))

    def try_acquire(self) -> bool:
        try:
            self._lease.acquire(lease_duration=int(self.duration))
        except HttpResponseError as exc:
            if exc.status_code == 409:
                return False
            raise StateError(f"cannot acquire the lease of task {self.task}: {_reason(exc)}") from None
        with contextlib.suppress(AzureError):
            self._blob.set_blob_metadata({"owner": self.owner.replace("/", "_")}, lease=self._lease)
        return True

    def renew(self) -> None:
        try:
            self._lease.renew()
        except HttpResponseError as exc:
            if exc.status_code in (409, 412):
                raise LeaseLost(f"the lease of task {self.task} was lost ({_reason(exc)})") from None
            raise

    def release(self) -> None:
        with contextlib.suppress(AzureError):
            self._lease.release()

    def holder(self) -> str:
        try:
            return str(self._blob.get_blob_properties().metadata.get("owner", ""))
        except AzureError:
            return ""

    @contextlib.contextmanager
    def fenced(self) -> Iterator[str]:
        yield str(self._lease.id)
