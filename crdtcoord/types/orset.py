"""Observed-remove set, add-wins and tombstone-free (the optimized AW-OR-Set).

Each add creates a fresh dot for the element and covers the element's older dots; a remove
covers the dots it has *observed*. So an add concurrent with a remove survives (add-wins), and a
remove only takes away adds it has seen. Removed elements leave nothing behind but their dots in
the causal context, which compacts to one integer per replica when delivery has no gaps — the
set is tombstone-free (Bieniusa et al. 2012; Almeida et al. 2018, "Delta State Replicated Data
Types", AWORSet; riak_dt_orswot).

Guarantees: a stale read shows a set some replica had; under partition both sides add and remove
freely and on heal every add not observed by a remove is present. Merging a delta (one add or
remove) into a set of any size costs O(size of the delta).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Self

from crdtcoord._wire import INT_MAX, Element, Reader, check_element, check_replica, element_key
from crdtcoord.types._base import Op, UpdateContext, wire_type
from crdtcoord.types._dotstore import DotStore

__all__ = ["ORSet"]


@wire_type(tag=5)
class ORSet(DotStore[Element]):
    """An add-wins observed-remove set; ``add``/``remove``/``clear`` return their delta."""

    __slots__ = ("_elems",)

    @dataclass(frozen=True, slots=True)
    class Add(Op):
        """Add ``element`` with a fresh dot (supersedes its older dots)."""

        element: Element
        FIELDS = ("element",)

        def apply(self, state: ORSet, ctx: UpdateContext) -> ORSet:
            return state.add(ctx.replica, self.element)

    @dataclass(frozen=True, slots=True)
    class Remove(Op):
        """Remove ``element`` as observed by the acting replica."""

        element: Element
        FIELDS = ("element",)

        def apply(self, state: ORSet, ctx: UpdateContext) -> ORSet:
            return state.remove(ctx.replica, self.element)

    @dataclass(frozen=True, slots=True)
    class Clear(Op):
        """Remove every element observed by the acting replica."""

        def apply(self, state: ORSet, ctx: UpdateContext) -> ORSet:
            return state.clear(ctx.replica)

    OPS = (Add, Remove, Clear)

    def __init__(self) -> None:
        super().__init__()
        self._elems: dict[Element, set[tuple[str, int]]] = {}

    def _on_add(self, replica: str, seq: int, payload: Element) -> None:
        s = self._elems.get(payload)
        if s is None:
            self._elems[payload] = {(replica, seq)}
        else:
            s.add((replica, seq))

    def _on_remove(self, replica: str, seq: int, payload: Element) -> None:
        s = self._elems[payload]
        s.discard((replica, seq))
        if not s:
            del self._elems[payload]

    def _payload_order(self, payload: Element) -> Any:
        return element_key(payload)

    # ------------------------------------------------------------------ queries

    def value(self) -> frozenset[Element]:
        return frozenset(self._elems)

    def __contains__(self, e: object) -> bool:
        return e in self._elems

    def __len__(self) -> int:
        return len(self._elems)

    def __iter__(self) -> Iterator[Element]:
        return iter(sorted(self._elems, key=element_key))

    # ------------------------------------------------------------------ mutators

    def add(self, replica: str, element: Element) -> ORSet:
        """Add ``element`` with a fresh dot of ``replica``; supersedes the element's older dots."""
        check_replica(replica)
        e = check_element(element)
        r, n = self._ctx.next_dot(replica)
        delta = ORSet()
        delta._add_dot(r, n, e)
        dctx = delta._ctx
        dctx.add(r, n)
        for dr, dn in self._elems.get(e, ()):
            dctx.add(dr, dn)
        self._join(delta)
        return delta

    def remove(self, replica: str, element: Element) -> ORSet:
        """Remove ``element`` as observed here; a no-op delta if it is absent."""
        check_replica(replica)
        e = check_element(element)
        delta = ORSet()
        for dr, dn in self._elems.get(e, ()):
            delta._ctx.add(dr, dn)
        self._join(delta)
        return delta

    def clear(self, replica: str) -> ORSet:
        """Remove every element observed here (concurrent adds elsewhere survive)."""
        check_replica(replica)
        delta = ORSet()
        for r, seqs in self._dots.items():
            for n in seqs:
                delta._ctx.add(r, n)
        self._join(delta)
        return delta

    # ------------------------------------------------------------------ lattice plumbing

    def copy(self) -> Self:
        c = type(self)()
        c._dots = {r: dict(d) for r, d in self._dots.items()}
        c._ctx = self._ctx.copy()
        c._elems = {e: set(s) for e, s in self._elems.items()}
        return c

    def stats(self) -> dict[str, int]:
        return {"elements": len(self._elems), **self._context_stats()}

    def to_payload(self) -> Any:
        ctx, index = self._wire_context()
        entries = []
        single = len(index) == 1
        for e in sorted(self._elems, key=element_key):
            dots = self._elems[e]
            if single or len(dots) == 1:
                flat: list[int] = []
                for r, n in sorted(dots):
                    flat += (index[r], n)
            else:
                flat = []
                for r, n in sorted(dots, key=lambda d: (index[d[0]], d[1])):
                    flat += (index[r], n)
            entries.append([e, flat])
        return [ctx, entries]

    @classmethod
    def from_payload(cls, payload: Any, version: int, reader: Reader, depth: int) -> Self:
        ctx, entries = reader.arr(payload, "ORSet", 2)
        s = cls()
        table = s._read_context(ctx, reader)
        nrep = len(table)
        vv, cloud = s._ctx.vv, s._ctx.cloud
        sdots, elems = s._dots, s._elems
        prev_key: tuple[Any, ...] | None = None
        for entry in reader.arr(entries, "entries"):
            if type(entry) is not list or len(entry) != 2:
                reader.fail("entry: expected [element, dots]")
            raw, flat = entry
            e = raw if type(raw) is str else reader.element(raw)
            key = element_key(e)
            if prev_key is not None and not prev_key < key:
                reader.fail("elements: not in canonical order or duplicated")
            prev_key = key
            if type(flat) is not list or not flat or len(flat) % 2:
                reader.fail("element dots must be non-empty (replica index, seq) pairs")
            mine: set[tuple[str, int]] = set()
            prev = (-1, 0)
            for k in range(0, len(flat), 2):
                ridx, n = flat[k], flat[k + 1]
                if type(ridx) is not int or type(n) is not int or not 0 <= ridx < nrep:
                    reader.fail("dot: expected (replica index, seq) integers")
                if not 1 <= n <= INT_MAX:
                    reader.fail(f"dot seq {n} outside [1, 2**63-1]")
                if not prev < (ridx, n):
                    reader.fail("element dots not in canonical order")
                prev = (ridx, n)
                r = table[ridx]
                if n > vv.get(r, 0) and n not in cloud.get(r, ()):
                    reader.fail(f"dot ({r!r}, {n}) is not in the causal context")
                d = sdots.get(r)
                if d is None:
                    d = sdots[r] = {}
                elif n in d:
                    reader.fail(f"dot ({r!r}, {n}) appears twice")
                d[n] = e
                mine.add((r, n))
            elems[e] = mine
        return s
