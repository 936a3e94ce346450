"""The Storage Protocol (what a node's durable state must offer) and :class:`MemoryStorage`.

A storage holds one node's durable state: its identity (node id and incarnation), the state of
every key, the version vectors of critical keys, and the window of operation ids applied. The
host writes the :class:`~crdtcoord.engine.Persist` effects of one poll in **one** ``write`` call
(one transaction, group commit) before it executes any send of that poll, and a restart builds
the engine from :meth:`Storage.open` alone.

``open`` returning None means there is no state: a new data directory, or one that was lost.
The host then gives the node a new incarnation (see :class:`~crdtcoord.host.Host`).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from crdtcoord._exceptions import CrdtcoordError
from crdtcoord.clocks.vv import VersionVector
from crdtcoord.engine.effects import Persist
from crdtcoord.types import CRDTBase

__all__ = ["MemoryStorage", "Snapshot", "Storage", "StorageError"]


class StorageError(CrdtcoordError):
    """The storage cannot be used: another node's data, a newer schema, a failed write."""


@dataclass
class Snapshot:
    """What a node restarts from. ``meta`` holds driver counters (e.g. a commit sequence)."""

    node_id: str
    incarnation: int
    states: dict[str, CRDTBase] = field(default_factory=dict)
    versions: dict[str, VersionVector] = field(default_factory=dict)
    op_ids: list[str] = field(default_factory=list)
    meta: dict[str, int] = field(default_factory=dict)


@runtime_checkable
class Storage(Protocol):
    """Durable state of one node (see the module documentation)."""

    def open(self, node_id: str) -> Snapshot | None:
        """Load the stored state (fresh objects the caller owns), or None if there is none.
        Raises :class:`StorageError` if it belongs to another node id."""
        ...

    def create(self, node_id: str, incarnation: int) -> None:
        """Start a new, empty state for ``node_id`` under ``incarnation``."""
        ...

    def write(self, batch: Sequence[Persist], meta: dict[str, int] | None = None) -> None:
        """Apply ``batch`` (join each delta into its key, or replace it; keep version vectors and
        op ids) and ``meta`` atomically, durably as the storage promises, before returning."""
        ...

    def close(self) -> None: ...


class MemoryStorage:
    """Storage in memory: survives the *engine* (a simulated crash), not the process.

    Deltas are joined into stored copies, so what a restart sees is exactly what the
    :class:`Persist` effects said — nothing read from the engine's memory. ``op_window`` bounds
    the remembered op ids (oldest first out).
    """

    def __init__(self, op_window: int = 10_000) -> None:
        self._node: str | None = None
        self._incarnation = 0
        self._states: dict[str, CRDTBase] = {}
        self._versions: dict[str, VersionVector] = {}
        self._op_ids: OrderedDict[str, None] = OrderedDict()
        self._meta: dict[str, int] = {}
        self._window = op_window
        #: number of write() calls (transactions) so far
        self.writes = 0

    def open(self, node_id: str) -> Snapshot | None:
        if self._node is None:
            return None
        if self._node != node_id:
            raise StorageError(f"this storage holds node {self._node!r}, not {node_id!r}")
        return Snapshot(
            node_id,
            self._incarnation,
            {k: v.copy() for k, v in self._states.items()},
            {k: v.copy() for k, v in self._versions.items()},
            list(self._op_ids),
            dict(self._meta),
        )

    def create(self, node_id: str, incarnation: int) -> None:
        self._node = node_id
        self._incarnation = incarnation
        self._states.clear()
        self._versions.clear()
        self._op_ids.clear()
        self._meta.clear()

    def write(self, batch: Sequence[Persist], meta: dict[str, int] | None = None) -> None:
        if self._node is None:
            raise StorageError("write before create")
        for p in batch:
            if p.delete:
                self._states.pop(p.key, None)
                self._versions.pop(p.key, None)
                continue
            cur = self._states.get(p.key)
            if cur is None or p.replace:
                self._states[p.key] = p.delta.copy()
            else:
                cur.merge(p.delta)
            if p.vv is not None:
                self._versions[p.key] = p.vv.copy()
            if p.op_id is not None:
                self._op_ids[p.op_id] = None
                while len(self._op_ids) > self._window:
                    self._op_ids.popitem(last=False)
        if meta:
            self._meta.update(meta)
        self.writes += 1

    def close(self) -> None:
        pass

    def wipe(self) -> None:
        """Lose everything (a lost disk): the next open returns None."""
        self.__init__(self._window)  # type: ignore[misc]
