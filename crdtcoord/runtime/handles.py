"""Typed handles on a node's keys: ``node.counter("hits")``, ``node.set("workers")``, …

A handle names a key and its type. Its mutators are coroutines that take a consistency level
and an optional op id:

* at ``LOCAL`` (the default) the update is applied in memory at once and the coroutine returns
  without suspending; it is durable within one batching window (``delta_delay``), before any
  message about it leaves the node;
* at a higher level the coroutine returns once that many replicas (this one included) made it
  durable, or raises :class:`~crdtcoord.ConsistencyTimeout` — an *indefinite* outcome: the
  update is applied and keeps propagating;
* with an ``op_id`` a retry of the same operation is applied once, across restarts too.

``value()`` reads the local state without waiting (it can be stale, see ``docs/types.md`` for what
each type's stale read can show); ``await read(consistency=...)`` joins the replies of that many
replicas first.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from crdtcoord._exceptions import InvalidArgument
from crdtcoord.engine import LOCAL, MAJORITY, Consistency
from crdtcoord.types import (
    BoundedCounter,
    CRDTBase,
    EWFlag,
    GCounter,
    LWWRegister,
    Op,
    ORMap,
    ORSet,
    PNCounter,
)

if TYPE_CHECKING:
    from crdtcoord.runtime.node import Node

__all__ = [
    "BoundedCounterHandle",
    "CounterHandle",
    "FlagHandle",
    "Handle",
    "MapHandle",
    "PNCounterHandle",
    "RegisterHandle",
    "SetHandle",
]


#: ops are immutable values: the commonest one is built once
_INC_ONE = GCounter.Increment(1)
_PN_INC_ONE = PNCounter.Increment(1)


class Handle:
    """A key of one type on one node."""

    KIND: ClassVar[type[CRDTBase]] = CRDTBase
    EMPTY: ClassVar[Any] = None

    def __init__(self, node: Node, key: str) -> None:
        self.node = node
        self.key = key

    def _factory(self) -> CRDTBase:
        return self.KIND()

    def value(self) -> Any:
        """The local value, without waiting (the type's empty value if the key is absent)."""
        v = self.node.value(self.key)
        return self.EMPTY if v is None else v

    async def read(self, consistency: Consistency = MAJORITY, timeout: float | None = None) -> Any:
        """The join of the local state and the replies of ``consistency`` replicas."""
        v = await self.node.read(self.key, consistency=consistency, timeout=timeout)
        return self.EMPTY if v is None else v

    async def apply(
        self,
        op: Op,
        *,
        consistency: Consistency = LOCAL,
        op_id: str | None = None,
        timeout: float | None = None,
    ) -> None:
        """Apply an op of this type (see the type's ``OPS``)."""
        await self.node.apply(
            self.key, op, self._factory, consistency=consistency, op_id=op_id, timeout=timeout
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.key!r}, {self.value()!r})"


class CounterHandle(Handle):
    """A grow-only counter."""

    KIND = GCounter
    EMPTY = 0

    async def inc(
        self,
        n: int = 1,
        *,
        consistency: Consistency = LOCAL,
        op_id: str | None = None,
        timeout: float | None = None,
    ) -> None:
        if consistency is LOCAL and op_id is None:  # the hot path, without the generic layers
            op = _INC_ONE if n == 1 and type(n) is int else GCounter.Increment(n)
            self.node.apply_local(self.key, GCounter, op)
            return
        await self.apply(
            GCounter.Increment(n), consistency=consistency, op_id=op_id, timeout=timeout
        )


class PNCounterHandle(Handle):
    """An increment/decrement counter."""

    KIND = PNCounter
    EMPTY = 0

    async def inc(
        self,
        n: int = 1,
        *,
        consistency: Consistency = LOCAL,
        op_id: str | None = None,
        timeout: float | None = None,
    ) -> None:
        op = _PN_INC_ONE if n == 1 and type(n) is int else PNCounter.Increment(n)
        if consistency is LOCAL and op_id is None:
            self.node.apply_local(self.key, PNCounter, op)
            return
        await self.apply(op, consistency=consistency, op_id=op_id, timeout=timeout)

    async def dec(
        self,
        n: int = 1,
        *,
        consistency: Consistency = LOCAL,
        op_id: str | None = None,
        timeout: float | None = None,
    ) -> None:
        await self.apply(
            PNCounter.Decrement(n), consistency=consistency, op_id=op_id, timeout=timeout
        )


class BoundedCounterHandle(Handle):
    """An escrow counter that never goes below ``lower``: a node spends only its own rights
    (``InsufficientRights`` otherwise, changing nothing)."""

    KIND = BoundedCounter
    EMPTY = None

    def __init__(self, node: Node, key: str, lower: int = 0) -> None:
        super().__init__(node, key)
        self.lower = lower

    def _factory(self) -> CRDTBase:
        return BoundedCounter(self.lower)

    def value(self) -> Any:
        v = self.node.value(self.key)
        return self.lower if v is None else v

    def rights(self) -> int:
        """What this node may spend now, as far as it knows."""
        s = self.node.state(self.key)
        return s.rights(self.node.actor) if isinstance(s, BoundedCounter) else 0

    async def inc(self, n: int = 1, **kw: Any) -> None:
        await self.apply(BoundedCounter.Increment(n), **kw)

    async def dec(self, n: int = 1, **kw: Any) -> None:
        await self.apply(BoundedCounter.Decrement(n), **kw)

    async def transfer(self, to: str, n: int, **kw: Any) -> None:
        """Give ``n`` of this node's rights to node ``to`` (which must have been heard from:
        rights belong to a node's current incarnation)."""
        await self.apply(BoundedCounter.Transfer(self.node.actor_of(to), n), **kw)


class SetHandle(Handle):
    """An add-wins observed-remove set."""

    KIND = ORSet
    EMPTY = frozenset()

    async def add(self, element: Any, **kw: Any) -> None:
        await self.apply(ORSet.Add(element), **kw)

    async def remove(self, element: Any, **kw: Any) -> None:
        await self.apply(ORSet.Remove(element), **kw)

    async def clear(self, **kw: Any) -> None:
        await self.apply(ORSet.Clear(), **kw)

    def __contains__(self, element: object) -> bool:
        return element in self.value()


class RegisterHandle(Handle):
    """A last-writer-wins register (ordered by hybrid logical clock)."""

    KIND = LWWRegister
    EMPTY = None

    async def set(self, value: Any, **kw: Any) -> None:
        await self.apply(LWWRegister.Assign(value), **kw)


class FlagHandle(Handle):
    """An enable-wins flag."""

    KIND = EWFlag
    EMPTY = False

    async def enable(self, **kw: Any) -> None:
        await self.apply(EWFlag.Enable(), **kw)

    async def disable(self, **kw: Any) -> None:
        await self.apply(EWFlag.Disable(), **kw)


class MapHandle(Handle):
    """An observed-remove map of nested CRDTs: ``await m.update("owner",
    LWWRegister.Assign("svc"))``."""

    KIND = ORMap

    def value(self) -> Any:
        v = self.node.value(self.key)
        return {} if v is None else v

    async def update(self, key: Any, op: Op, **kw: Any) -> None:
        if not isinstance(op, Op):
            raise InvalidArgument(f"MapHandle.update takes an op, got {type(op).__name__}")
        await self.apply(ORMap.Update(key, op), **kw)

    async def remove(self, key: Any, **kw: Any) -> None:
        await self.apply(ORMap.Remove(key), **kw)
