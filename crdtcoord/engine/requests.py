"""The requests part: writes and reads waiting for their consistency level, and the window of
operation ids already applied (idempotent retries).

Handles are unique per process start (they start at a random point drawn from the process id),
so a READ_REPLY or an acknowledgement meant for an earlier process never completes a request of
this one. The op-id window is persisted with the deltas (every :class:`Persist` of an update with
an op id carries it) and restored on restart, so a retry is applied once across restarts.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field

from crdtcoord.engine.core import Core
from crdtcoord.engine.effects import ConsistencyTimeout, OpFailed, ReadDone, WriteDone
from crdtcoord.types import CRDTBase

__all__ = ["OpIds", "Requests"]


@dataclass(slots=True)
class _Pending:
    handle: int
    kind: str  # "write" | "read"
    key: str
    required: int
    deadline: float
    seq: int = 0  # writes: the delta-buffer entry that must be acknowledged
    answered: set[str] = field(default_factory=set)


class OpIds:
    """The bounded window of operation ids applied (oldest forgotten first)."""

    def __init__(self, window: int, restored: Iterable[str] = ()) -> None:
        self._window = window
        self._ids: OrderedDict[str, None] = OrderedDict()
        for op_id in restored:
            self.add(op_id)

    def __contains__(self, op_id: object) -> bool:
        return op_id in self._ids

    def add(self, op_id: str) -> None:
        self._ids[op_id] = None
        while len(self._ids) > self._window:
            self._ids.popitem(last=False)

    def __len__(self) -> int:
        return len(self._ids)

    def ids(self) -> list[str]:
        return list(self._ids)


class Requests:
    """Pending writes and reads with a consistency level above LOCAL."""

    def __init__(self, core: Core) -> None:
        self._core = core
        self._ops: dict[int, _Pending] = {}

    def __len__(self) -> int:
        return len(self._ops)

    def write(self, key: str, required: int, deadline: float, seq: int) -> int:
        """Wait until ``required - 1`` peers acknowledged buffer entry ``seq``."""
        h = self._core.next_handle()
        self._ops[h] = _Pending(h, "write", key, required, deadline, seq)
        return h

    def read(self, key: str, required: int, deadline: float) -> int:
        h = self._core.next_handle()
        self._ops[h] = _Pending(h, "read", key, required, deadline)
        return h

    def acked(self, peer: str, acked: int, floor: int) -> None:
        """``peer`` acknowledged the delta stream up to ``acked``; acknowledgements prove nothing
        about entries at or below ``floor`` (they were handed to a repair)."""
        for op in list(self._ops.values()):
            if op.kind == "write" and acked >= op.seq > floor and peer not in op.answered:
                op.answered.add(peer)
                if len(op.answered) + 1 >= op.required:
                    del self._ops[op.handle]
                    by = (self._core.node_id, *sorted(op.answered))
                    self._core.emit(WriteDone(op.handle, op.key, by))

    def expects_reply(self, handle: int, key: str, peer: str) -> bool:
        op = self._ops.get(handle)
        return op is not None and op.kind == "read" and op.key == key and peer not in op.answered

    def replied(self, handle: int, peer: str, state: CRDTBase | None) -> None:
        """A READ_REPLY was joined into the store; ``state`` is the local state afterwards."""
        op = self._ops[handle]
        op.answered.add(peer)
        if len(op.answered) + 1 >= op.required:
            del self._ops[handle]
            by = (self._core.node_id, *sorted(op.answered))
            self._core.emit(ReadDone(handle, op.key, state, by))

    def forget(self, peer: str) -> None:
        """``peer`` restarted without its state: what it acknowledged or replied is gone."""
        for op in self._ops.values():
            op.answered.discard(peer)

    def next_deadline(self) -> float | None:
        return min((op.deadline for op in self._ops.values()), default=None)

    def tick(self, now: float) -> None:
        for op in [op for op in self._ops.values() if now >= op.deadline]:
            del self._ops[op.handle]
            err = ConsistencyTimeout(
                op.kind, op.key, op.required, 1 + len(op.answered), tuple(sorted(op.answered))
            )
            self._core.emit(OpFailed(op.handle, op.key, err))
