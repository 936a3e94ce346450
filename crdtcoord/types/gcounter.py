"""Grow-only counter (G-Counter): one monotone entry per replica, value is their sum.

Guarantees: increments are never lost and never double-counted once merged; a stale read shows a
value some replica had (a lower bound of the current total); under partition every side keeps
counting and the sides add up exactly on heal. It cannot decrement (see :class:`PNCounter`).
Metadata is one integer per replica that ever incremented.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Self

from crdtcoord._exceptions import InvalidArgument
from crdtcoord._wire import INT_MAX, Reader, check_amount, check_replica
from crdtcoord.types._base import CRDTBase, Op, UpdateContext, wire_type

__all__ = ["GCounter"]


def _read_entries(payload: Any, reader: Reader, what: str) -> dict[str, int]:
    rows = reader.arr(payload, what)
    out: dict[str, int] = {}
    for row in rows:
        r, n = reader.arr(row, f"{what} entry", 2)
        out[reader.replica(r)] = reader.integer(n, f"{what} count", 1, INT_MAX)
    reader.increasing((row[0] for row in rows), what)
    return out


def _entries_wire(c: dict[str, int]) -> list[list[Any]]:
    return [[r, c[r]] for r in sorted(c)]


_new = object.__new__


def _bump(c: dict[str, int], replica: str, n: int, what: str) -> int:
    new = c.get(replica, 0) + n
    if new > INT_MAX:
        raise InvalidArgument(f"{what} of replica {replica!r} would exceed 2**63-1")
    return new


def _join_max(mine: dict[str, int], theirs: dict[str, int]) -> int:
    """Pointwise max in place; returns how much the sum grew (0 when nothing changed)."""
    grew = 0
    for r, n in theirs.items():
        cur = mine.get(r, 0)
        if n > cur:
            mine[r] = n
            grew += n - cur
    return grew


@wire_type(tag=1)
class GCounter(CRDTBase):
    """A grow-only counter. ``increment(replica, n)`` returns the delta ``{replica: total}``."""

    __slots__ = ("_c", "_total")
    CHAIN_ACTOR_IN_MAP = True

    @dataclass(frozen=True, slots=True)
    class Increment(Op):
        """Add ``n >= 0``."""

        n: int = 1
        FIELDS = ("amount",)

        def apply(self, state: GCounter, ctx: UpdateContext) -> GCounter:
            return state._add(ctx.replica, self.n)  # (both already validated)

        EXTENDS = True

        def extend(self, state: GCounter, ctx: UpdateContext, delta: GCounter) -> None:
            # (delta is {replica: count} or empty: the join with this op's is {replica: new})
            replica = ctx.replica
            c = state._c
            new = c.get(replica, 0) + self.n
            if new > INT_MAX:
                raise InvalidArgument(f"count of replica {replica!r} would exceed 2**63-1")
            if new:
                c[replica] = new
                state._total += self.n
                delta._c[replica] = new
                delta._total = new

    OPS = (Increment,)

    def __init__(self) -> None:
        self._c: dict[str, int] = {}
        self._total = 0

    def value(self) -> int:
        return self._total

    def __int__(self) -> int:
        return self._total

    def entries(self) -> dict[str, int]:
        """Per-replica counts (a copy)."""
        return dict(self._c)

    def increment(self, replica: str, n: int = 1) -> GCounter:
        """Add ``n >= 0`` on behalf of ``replica``; returns the delta."""
        check_replica(replica)
        check_amount(n)
        return self._add(replica, n)

    def _add(self, replica: str, n: int) -> GCounter:
        """:meth:`increment` with arguments already validated (an op's): the hot path."""
        c = self._c
        new = c.get(replica, 0) + n
        if new > INT_MAX:
            raise InvalidArgument(f"count of replica {replica!r} would exceed 2**63-1")
        delta = _new(GCounter)  # (built without __init__: the delta is this one entry)
        if new:
            c[replica] = new
            self._total += n
            delta._c = {replica: new}
            delta._total = new
        else:
            delta._c = {}
            delta._total = 0
        return delta

    @classmethod
    def join_all(cls, states: list[Self]) -> Self:
        out = cls()
        c = out._c
        for s in states:
            if type(s) is not cls:
                s._check_mergeable(out)
            for r, n in s._c.items():
                if n > c.get(r, 0):
                    c[r] = n
        out._total = sum(c.values())
        return out

    def merge(self, other: GCounter) -> bool:
        self._check_mergeable(other)
        grew = _join_max(self._c, other._c)
        self._total += grew
        return grew > 0

    def copy(self) -> Self:
        c = type(self)()
        c._c = dict(self._c)
        c._total = self._total
        return c

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and self._c == other._c

    def stats(self) -> dict[str, int]:
        return {"elements": 1, "metadata": len(self._c), "replicas": len(self._c)}

    def to_payload(self) -> Any:
        return _entries_wire(self._c)

    @classmethod
    def from_payload(cls, payload: Any, version: int, reader: Reader, depth: int) -> Self:
        c = cls()
        c._c = _read_entries(payload, reader, "counts")
        c._total = sum(c._c.values())
        return c
