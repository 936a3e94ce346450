"""Dots and causal contexts, the metadata of tombstone-free causal CRDTs.

A **dot** ``(replica, seq)`` names one event: the ``seq``-th event created by ``replica``. A
**causal context** is the set of dots a replica has seen. It is stored compactly as a version
vector (every dot up to ``vv[r]`` seen) plus a *dot cloud* of the dots seen out of order; adding
``vv[r] + 1`` pulls any now-contiguous cloud dots into the vector (compaction), so with gap-free
delivery the context is exactly one integer per replica.

The representation is canonical: the same set of dots always has the same ``vv`` and cloud, which
is what makes structural equality and canonical encoding of the CRDTs built on it possible.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, NamedTuple

from crdtcoord._wire import INT_MAX, Reader

__all__ = ["Dot", "DotContext"]


class Dot(NamedTuple):
    """One event: the ``seq``-th (from 1) event created by ``replica``."""

    replica: str
    seq: int


class DotContext:
    """The set of dots seen, as a compact version vector plus a cloud of out-of-order dots."""

    __slots__ = ("cloud", "vv")

    def __init__(self) -> None:
        self.vv: dict[str, int] = {}
        #: replica -> seqs seen beyond ``vv[replica] + 1`` (never empty sets, never <= vv + 1)
        self.cloud: dict[str, set[int]] = {}

    def __contains__(self, dot: tuple[str, int]) -> bool:
        r, n = dot
        if n <= self.vv.get(r, 0):
            return True
        c = self.cloud.get(r)
        return c is not None and n in c

    def contains(self, replica: str, seq: int) -> bool:
        if seq <= self.vv.get(replica, 0):
            return True
        c = self.cloud.get(replica)
        return c is not None and seq in c

    def max_seq(self, replica: str) -> int:
        """Highest seq of ``replica`` in the context (0 if none)."""
        top = self.vv.get(replica, 0)
        c = self.cloud.get(replica)
        if c:
            top = max(top, max(c))
        return top

    def next_dot(self, replica: str) -> Dot:
        """The next fresh dot for ``replica``: one past every dot of it seen so far."""
        return Dot(replica, self.max_seq(replica) + 1)

    def add(self, replica: str, seq: int) -> bool:
        """Add one dot, compacting; True if it was new."""
        top = self.vv.get(replica, 0)
        if seq <= top:
            return False
        c = self.cloud.get(replica)
        if seq == top + 1:
            top = seq
            if c:
                while top + 1 in c:
                    top += 1
                    c.discard(top)
                if not c:
                    del self.cloud[replica]
            self.vv[replica] = top
            return True
        if c is None:
            self.cloud[replica] = {seq}
            return True
        if seq in c:
            return False
        c.add(seq)
        return True

    def advance(self, replica: str, upto: int) -> None:
        """Mark every dot ``(replica, 1..upto)`` as seen (used to share one sequence space)."""
        if upto <= self.vv.get(replica, 0):
            return
        c = self.cloud.get(replica)
        if c:
            c.difference_update([s for s in c if s <= upto])
            while upto + 1 in c:
                upto += 1
                c.discard(upto)
            if not c:
                del self.cloud[replica]
        self.vv[replica] = upto

    def merge(self, other: DotContext) -> bool:
        """Union in place, compacting; True if any dot was new. Costs O(other) plus O(cloud[r])
        for each replica whose vector entry rose."""
        changed = False
        vv = self.vv
        for r, n in other.vv.items():
            if n > vv.get(r, 0):
                changed = True
                self.advance(r, n)
        for r, c in other.cloud.items():
            for s in c:
                if self.add(r, s):
                    changed = True
        return changed

    def __eq__(self, other: object) -> bool:
        return isinstance(other, DotContext) and self.vv == other.vv and self.cloud == other.cloud

    __hash__ = None  # type: ignore[assignment]

    def __bool__(self) -> bool:
        return bool(self.vv) or bool(self.cloud)

    def copy(self) -> DotContext:
        c = DotContext()
        c.vv = dict(self.vv)
        c.cloud = {r: set(s) for r, s in self.cloud.items()}
        return c

    def dots(self) -> Iterator[Dot]:
        """Every dot in the context (O(number of dots), not O(size)): for tests and debugging."""
        for r, top in self.vv.items():
            for s in range(1, top + 1):
                yield Dot(r, s)
        for r, c in self.cloud.items():
            for s in sorted(c):
                yield Dot(r, s)

    def cloud_size(self) -> int:
        return sum(len(c) for c in self.cloud.values())

    def replicas(self) -> list[str]:
        """Every replica mentioned, sorted: the replica table of the wire form."""
        return sorted(self.vv.keys() | self.cloud.keys())

    def to_wire(self, replicas: list[str]) -> list[list[Any]]:
        """``[[replica, vv, [cloud seqs...]], ...]`` in the order of ``replicas`` (sorted)."""
        out: list[list[Any]] = []
        for r in replicas:
            c = self.cloud.get(r)
            out.append([r, self.vv.get(r, 0), sorted(c) if c else []])
        return out

    @classmethod
    def from_wire(cls, x: Any, reader: Reader) -> tuple[DotContext, list[str]]:
        """Decode and check canonical form; returns the context and its replica table."""
        rows = reader.arr(x, "context")
        ctx = cls()
        table: list[str] = []
        for row in rows:
            r, top, cl = reader.arr(row, "context entry", 3)
            r = reader.replica(r)
            top = reader.integer(top, "context counter", 0, INT_MAX)
            seqs = reader.arr(cl, "dot cloud")
            if top == 0 and not seqs:
                reader.fail("context entry with no dots")
            prev = top + 1  # the cloud must start beyond vv + 1 (else it would have compacted)
            for s in seqs:
                s = reader.integer(s, "cloud seq", 1, INT_MAX)
                if s <= prev:
                    reader.fail("dot cloud not canonical (compactable, unsorted or duplicated)")
                prev = s
            if top:
                ctx.vv[r] = top
            if seqs:
                ctx.cloud[r] = set(seqs)
            table.append(r)
        reader.increasing(table, "context replicas")
        return ctx, table

    def __repr__(self) -> str:
        return f"DotContext(vv={self.vv!r}, cloud={self.cloud!r})"
