"""The driver host (runs an engine's effects in order against a storage) and the Storage
Protocol with its in-memory implementation. Pure core: no I/O, no asyncio, no wall clock."""

from crdtcoord.host.host import EventSink, Host, SendFn
from crdtcoord.host.storage import MemoryStorage, Snapshot, Storage, StorageError

__all__ = ["EventSink", "Host", "MemoryStorage", "SendFn", "Snapshot", "Storage", "StorageError"]
