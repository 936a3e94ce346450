"""Positive-negative counter: two G-Counters, value = increments - decrements.

Guarantees: every increment and decrement counts exactly once after merging; a stale read can
show any value some replica had, including one below zero if decrements raced; nothing stops
the value from going negative (use :class:`BoundedCounter` for a floor).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Self

from crdtcoord._wire import Reader, check_amount, check_replica
from crdtcoord.types._base import CRDTBase, Op, UpdateContext, wire_type
from crdtcoord.types.gcounter import _bump, _entries_wire, _join_max, _read_entries

__all__ = ["PNCounter"]


@wire_type(tag=2)
class PNCounter(CRDTBase):
    """An increment/decrement counter; mutators return the delta they applied."""

    __slots__ = ("_n", "_p", "_value")
    CHAIN_ACTOR_IN_MAP = True

    @dataclass(frozen=True, slots=True)
    class Increment(Op):
        """Add ``n >= 0``."""

        n: int = 1
        FIELDS = ("amount",)

        def apply(self, state: PNCounter, ctx: UpdateContext) -> PNCounter:
            return state._add(ctx.replica, self.n, True)  # (both already validated)

        EXTENDS = True

        def extend(self, state: PNCounter, ctx: UpdateContext, delta: PNCounter) -> None:
            state._extend(ctx.replica, self.n, True, delta)

    @dataclass(frozen=True, slots=True)
    class Decrement(Op):
        """Subtract ``n >= 0``."""

        n: int = 1
        FIELDS = ("amount",)

        def apply(self, state: PNCounter, ctx: UpdateContext) -> PNCounter:
            return state._add(ctx.replica, self.n, False)  # (both already validated)

        EXTENDS = True

        def extend(self, state: PNCounter, ctx: UpdateContext, delta: PNCounter) -> None:
            state._extend(ctx.replica, self.n, False, delta)

    OPS = (Increment, Decrement)

    def __init__(self) -> None:
        self._p: dict[str, int] = {}
        self._n: dict[str, int] = {}
        self._value = 0

    def value(self) -> int:
        return self._value

    def __int__(self) -> int:
        return self._value

    def increment(self, replica: str, n: int = 1) -> PNCounter:
        """Add ``n >= 0`` on behalf of ``replica``."""
        return self._step(replica, n, positive=True)

    def decrement(self, replica: str, n: int = 1) -> PNCounter:
        """Subtract ``n >= 0`` on behalf of ``replica``."""
        return self._step(replica, n, positive=False)

    def _step(self, replica: str, n: int, *, positive: bool) -> PNCounter:
        check_replica(replica)
        check_amount(n)
        return self._add(replica, n, positive)

    def _extend(self, replica: str, n: int, positive: bool, delta: PNCounter) -> None:
        """:meth:`_add`, folding its delta into ``delta`` (one side's entry of ``replica``)."""
        side = self._p if positive else self._n
        new = _bump(side, replica, n, "increments" if positive else "decrements")
        if new:
            side[replica] = new
            if positive:
                self._value += n
                delta._p[replica] = new
            else:
                self._value -= n
                delta._n[replica] = new
            delta._value = delta._p.get(replica, 0) - delta._n.get(replica, 0)

    def _add(self, replica: str, n: int, positive: bool) -> PNCounter:
        """Increment or decrement with arguments already validated (an op's): the hot path."""
        side = self._p if positive else self._n
        new = _bump(side, replica, n, "increments" if positive else "decrements")
        delta = PNCounter()
        if new:
            side[replica] = new
            if positive:
                self._value += n
                delta._p[replica] = new
                delta._value = new
            else:
                self._value -= n
                delta._n[replica] = new
                delta._value = -new
        return delta

    @classmethod
    def join_all(cls, states: list[Self]) -> Self:
        out = cls()
        pos, neg = out._p, out._n
        for s in states:
            if type(s) is not cls:
                s._check_mergeable(out)
            for r, n in s._p.items():
                if n > pos.get(r, 0):
                    pos[r] = n
            for r, n in s._n.items():
                if n > neg.get(r, 0):
                    neg[r] = n
        out._value = sum(pos.values()) - sum(neg.values())
        return out

    def merge(self, other: PNCounter) -> bool:
        self._check_mergeable(other)
        up = _join_max(self._p, other._p)
        down = _join_max(self._n, other._n)
        self._value += up - down
        return bool(up or down)

    def copy(self) -> Self:
        c = type(self)()
        c._p = dict(self._p)
        c._n = dict(self._n)
        c._value = self._value
        return c

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and self._p == other._p and self._n == other._n

    def stats(self) -> dict[str, int]:
        meta = len(self._p) + len(self._n)
        return {"elements": 1, "metadata": meta, "replicas": len(self._p.keys() | self._n.keys())}

    def to_payload(self) -> Any:
        return [_entries_wire(self._p), _entries_wire(self._n)]

    @classmethod
    def from_payload(cls, payload: Any, version: int, reader: Reader, depth: int) -> Self:
        p, n = reader.arr(payload, "PNCounter", 2)
        c = cls()
        c._p = _read_entries(p, reader, "increments")
        c._n = _read_entries(n, reader, "decrements")
        c._value = sum(c._p.values()) - sum(c._n.values())
        return c
