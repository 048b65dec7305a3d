"""Checkpoint stores: where a task's last acknowledged checkpoint lives between runs."""

from dstream.state.base import CheckpointStore, StoredCheckpoint, open_store

__all__ = ["CheckpointStore", "StoredCheckpoint", "open_store"]
