"""Azure Storage queues (azure-storage-queue): clients, message sizing, lifecycle admin.

The only module that imports ``azure.storage.queue``.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any, Literal
from xml.sax.saxutils import escape

import requests
from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError
from azure.core.pipeline.transport import RequestsTransport
from azure.storage.queue import (
    QueueClient,
    QueueMessage,
    QueueServiceClient,
    TextBase64DecodePolicy,
    TextBase64EncodePolicy,
)
from requests.adapters import HTTPAdapter

from dstream_azure.lifecycle import Existing, owner_from_metadata, ownership_metadata

if TYPE_CHECKING:
    from pydantic import SecretStr

__all__ = ["MAX_MESSAGE_BYTES", "QueueClient", "QueueMessage", "StorageQueueAdmin", "encoded_size", "service_client"]

MAX_MESSAGE_BYTES = 64 * 1024  # the service's limit, after encoding
Encoding = Literal["text", "base64"]


def transport(connections: int) -> RequestsTransport:
    """An HTTP transport that keeps ``connections`` connections open (requests keeps 10)."""
    session = requests.Session()
    adapter = HTTPAdapter(pool_connections=4, pool_maxsize=max(10, connections))
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return RequestsTransport(session=session, session_owner=True)


def service_client(connection_string: SecretStr, connections: int = 10, **options: Any) -> QueueServiceClient:
    return QueueServiceClient.from_connection_string(
        connection_string.get_secret_value(), transport=transport(connections), **options
    )


def queue_client(service: QueueServiceClient, name: str, encoding: Encoding) -> QueueClient:
    if encoding == "base64":
        return service.get_queue_client(
            name, message_encode_policy=TextBase64EncodePolicy(), message_decode_policy=TextBase64DecodePolicy()
        )
    return service.get_queue_client(name)


def encoded_size(text: str, encoding: Encoding) -> int:
    """Bytes the service counts for ``text``: XML-escaped UTF-8, or base64 of UTF-8."""
    if encoding == "base64":
        return -(-len(text.encode()) // 3) * 4  # base64's length, without encoding
    return len(escape(text).encode())


class StorageQueueAdmin:
    """Lifecycle of Storage queues; ownership in queue metadata."""

    resource_type = "storage_queue"

    def __init__(self, service: QueueServiceClient) -> None:
        self.service = service

    def existing(self) -> dict[str, Existing]:
        return {
            q.name: Existing(q.name, owner_from_metadata(q.metadata))
            for q in self.service.list_queues(include_metadata=True)
        }

    def create(self, name: str, task: str) -> bool:
        try:
            self.service.create_queue(name, metadata=ownership_metadata(task))
        except ResourceExistsError:
            return False
        return True

    def delete(self, name: str) -> None:
        with contextlib.suppress(ResourceNotFoundError):
            self.service.delete_queue(name)

    def describe(self, name: str) -> dict[str, Any]:
        props = self.service.get_queue_client(name).get_queue_properties()
        return {"messages": props.approximate_message_count}
