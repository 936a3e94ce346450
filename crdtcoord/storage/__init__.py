"""Durable storage for nodes: :class:`SqliteStorage` (the Storage Protocol itself, and the
in-memory storage, are in :mod:`crdtcoord.host`)."""

from crdtcoord.host.storage import MemoryStorage, Snapshot, Storage, StorageError
from crdtcoord.storage.sqlite import SCHEMA, SqliteStorage

__all__ = ["SCHEMA", "MemoryStorage", "Snapshot", "SqliteStorage", "Storage", "StorageError"]
