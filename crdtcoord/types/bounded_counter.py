"""Bounded counter: an escrow counter whose value never goes below a lower bound.

Balegas, Serra, Preguiça et al., "Extending Eventually Consistent Cloud Databases for Enforcing
Numeric Invariants", SRDS 2015 (Antidote's ``antidote_crdt_counter_b``).

State: a rights matrix ``R[i][j]`` (``R[i][i]`` = increments made at ``i``, ``R[i][j]`` = rights
``i`` transferred to ``j``) and ``U[i]`` (decrements executed at ``i``); everything merges by
pointwise max. The value is ``lower + sum(R[i][i]) - sum(U[i])`` and the amount above the bound is
split into per-replica **rights**::

    rights(i) = R[i][i] + sum_j R[j][i] - sum_j R[i][j] - U[i]        (j != i)

Only replica ``i`` can lower ``rights(i)`` (by decrementing or transferring), and it checks its own
rights first, so in **every merged state the value is at least ``lower``** — with no coordination
at all. A stale view of other replicas' transfers only under-estimates ``rights(i)``, never
over-estimates it. A decrement beyond the local rights raises :class:`InsufficientRights` and
changes nothing; the remedy is a ``transfer`` from a replica with spare rights (or an escalation).

**Deltas.** An increment's delta is the one entry it raised (it can only add rights). A decrement's
or a transfer's delta is the whole state — small, O(replicas²) — because spending is only safe
together with the rights that justified it: a lone "decremented" entry delivered before the
increment it spent would show a value below the bound. With full-state spend deltas, every join of
states and deltas, in any delivery order, respects the bound.

Under partition each side can spend exactly the rights it holds. Replica ids must never be reused
after a replica loses its state (it would forget what it spent); the storage layer gives a
recovered node a new incarnation id for this reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Self

from crdtcoord._exceptions import InsufficientRights, InvalidArgument
from crdtcoord._wire import INT_MAX, INT_MIN, Reader, check_amount, check_replica
from crdtcoord.types._base import CRDTBase, Op, UpdateContext, wire_type

__all__ = ["BoundedCounter"]


@wire_type(tag=3)
class BoundedCounter(CRDTBase):
    """An escrow counter with ``value() >= lower`` in every merged state."""

    __slots__ = ("_in", "_lower", "_out", "_r", "_u")
    #: Escrow rights belong to replicas, and a map key can be removed and re-created: keep
    #: bounded counters at top-level keys.
    ALLOWED_IN_MAP = False

    @dataclass(frozen=True, slots=True)
    class Increment(Op):
        """Add ``n``: the acting replica gains ``n`` rights."""

        n: int = 1
        FIELDS = ("amount",)

        def apply(self, state: BoundedCounter, ctx: UpdateContext) -> BoundedCounter:
            return state.increment(ctx.replica, self.n)

    @dataclass(frozen=True, slots=True)
    class Decrement(Op):
        """Spend ``n`` of the acting replica's rights (refused if short)."""

        n: int = 1
        FIELDS = ("amount",)

        def apply(self, state: BoundedCounter, ctx: UpdateContext) -> BoundedCounter:
            return state.decrement(ctx.replica, self.n)

    @dataclass(frozen=True, slots=True)
    class Transfer(Op):
        """Move ``n`` of the acting replica's rights to replica ``to``."""

        to: str
        n: int
        FIELDS = ("replica", "amount")

        def apply(self, state: BoundedCounter, ctx: UpdateContext) -> BoundedCounter:
            return state.transfer(ctx.replica, self.to, self.n)

    OPS = (Increment, Decrement, Transfer)

    def __init__(self, lower: int = 0) -> None:
        if type(lower) is not int or not INT_MIN <= lower <= INT_MAX:
            raise InvalidArgument("lower bound must be a 64-bit int")
        self._lower = lower
        self._r: dict[tuple[str, str], int] = {}
        self._u: dict[str, int] = {}
        # Derived sums, kept so that rights() is O(1): transfers out of / into each replica.
        self._out: dict[str, int] = {}
        self._in: dict[str, int] = {}

    @property
    def lower(self) -> int:
        return self._lower

    def compat_key(self) -> tuple[Any, ...]:
        return (self._lower,)

    @classmethod
    def _bottom_like(cls, other: Self) -> Self:
        return cls(other._lower)

    # ------------------------------------------------------------------ queries

    def value(self) -> int:
        inc = sum(n for (i, j), n in self._r.items() if i == j)
        return self._lower + inc - sum(self._u.values())

    def __int__(self) -> int:
        return self.value()

    def rights(self, replica: str) -> int:
        """How much ``replica`` may decrement or transfer right now, as far as this state knows."""
        r = self._r
        return (
            r.get((replica, replica), 0)
            + self._in.get(replica, 0)
            - self._out.get(replica, 0)
            - self._u.get(replica, 0)
        )

    def rights_map(self) -> dict[str, int]:
        """Rights of every replica mentioned in the state."""
        names = {i for i, _ in self._r} | {j for _, j in self._r} | set(self._u)
        return {n: self.rights(n) for n in sorted(names)}

    # ------------------------------------------------------------------ mutators

    def increment(self, replica: str, n: int = 1) -> BoundedCounter:
        """Add ``n`` to the value; ``replica`` gains ``n`` rights."""
        check_replica(replica)
        check_amount(n)
        return self._apply_r(replica, replica, n)

    def decrement(self, replica: str, n: int = 1) -> BoundedCounter:
        """Subtract ``n`` from ``replica``'s own rights; :class:`InsufficientRights` if short."""
        check_replica(replica)
        check_amount(n)
        have = self.rights(replica)
        if n > have:
            raise InsufficientRights(replica, n, max(have, 0))
        new = self._u.get(replica, 0) + n
        if new > INT_MAX:
            raise InvalidArgument("decrement total would exceed 2**63-1")
        if new:
            self._u[replica] = new
        return self.copy()

    def transfer(self, replica: str, to: str, n: int) -> BoundedCounter:
        """Move ``n`` of ``replica``'s rights to ``to`` (the value does not change)."""
        check_replica(replica)
        check_replica(to)
        check_amount(n)
        if to == replica:
            raise InvalidArgument("cannot transfer rights to oneself")
        have = self.rights(replica)
        if n > have:
            raise InsufficientRights(replica, n, max(have, 0))
        self._apply_r(replica, to, n)
        return self.copy()

    def _apply_r(self, i: str, j: str, n: int) -> BoundedCounter:
        new = self._r.get((i, j), 0) + n
        if new > INT_MAX:
            raise InvalidArgument("counter entry would exceed 2**63-1")
        delta = BoundedCounter(self._lower)
        if new:
            delta._set_r(i, j, new)
        self.merge(delta)
        return delta

    def _set_r(self, i: str, j: str, n: int) -> None:
        old = self._r.get((i, j), 0)
        self._r[(i, j)] = n
        if i != j:
            self._out[i] = self._out.get(i, 0) + n - old
            self._in[j] = self._in.get(j, 0) + n - old

    # ------------------------------------------------------------------ lattice

    def merge(self, other: BoundedCounter) -> bool:
        self._check_mergeable(other)
        changed = False
        r = self._r
        for (i, j), n in other._r.items():
            if n > r.get((i, j), 0):
                self._set_r(i, j, n)
                changed = True
        u = self._u
        for i, n in other._u.items():
            if n > u.get(i, 0):
                u[i] = n
                changed = True
        return changed

    def copy(self) -> Self:
        c = type(self)(self._lower)
        c._r = dict(self._r)
        c._u = dict(self._u)
        c._out = dict(self._out)
        c._in = dict(self._in)
        return c

    def __eq__(self, other: object) -> bool:
        return (
            type(other) is type(self)
            and self._lower == other._lower
            and self._r == other._r
            and self._u == other._u
        )

    def stats(self) -> dict[str, int]:
        return {
            "elements": 1,
            "metadata": len(self._r) + len(self._u),
            "transfers": sum(1 for i, j in self._r if i != j),
            "replicas": len(self.rights_map()),
        }

    # ------------------------------------------------------------------ wire

    def to_payload(self) -> Any:
        rows = [[i, j, self._r[(i, j)]] for i, j in sorted(self._r)]
        return [self._lower, rows, [[i, self._u[i]] for i in sorted(self._u)]]

    @classmethod
    def from_payload(cls, payload: Any, version: int, reader: Reader, depth: int) -> Self:
        lower, rows, decs = reader.arr(payload, "BoundedCounter", 3)
        c = cls(reader.integer(lower, "lower bound", INT_MIN, INT_MAX))
        keys: list[tuple[str, str]] = []
        for row in reader.arr(rows, "rights"):
            i, j, n = reader.arr(row, "rights entry", 3)
            key = (reader.replica(i), reader.replica(j))
            c._set_r(key[0], key[1], reader.integer(n, "rights count", 1, INT_MAX))
            keys.append(key)
        reader.increasing(keys, "rights")
        drows = reader.arr(decs, "decrements")
        for row in drows:
            i, n = reader.arr(row, "decrement entry", 2)
            c._u[reader.replica(i)] = reader.integer(n, "decrement count", 1, INT_MAX)
        reader.increasing((row[0] for row in drows), "decrements")
        # Spend deltas are whole states and increment deltas only add rights, so no state or
        # delta a correct replica sends has a replica with negative rights.
        for name, have in c.rights_map().items():
            if have < 0:
                reader.fail(f"replica {name!r} has negative rights ({have}): invariant broken")
        return c

    def __repr__(self) -> str:
        return f"BoundedCounter(value={self.value()}, lower={self._lower})"
