"""The dot kernel shared by the causal types (ORSet, EWFlag, MVRegister, ORMap) — internal.

A causal CRDT state is a dot store plus a causal context, ``(s, c)``: ``s`` maps live dots to a
payload (an element, a value, a key and nested value...), ``c`` is every dot ever seen. The join
(Almeida, Shoker, Baquero, "Delta State Replicated Data Types", 2018) keeps a dot when both sides
hold it, or when one side holds it and the other has not seen it; a dot one side has seen but no
longer holds was removed, and stays removed. No tombstones are kept: the context is enough.

Cost of ``a.join(b)``: O(dots in ``b`` + dots of ``a`` that ``b``'s context covers). For a delta,
that is the size of the delta, whatever the size of ``a``.
"""

from __future__ import annotations

from typing import Any, Generic, Self, TypeVar

from crdtcoord._wire import INT_MAX, Reader
from crdtcoord.clocks.dots import DotContext
from crdtcoord.types._base import CRDTBase

__all__ = ["DotStore"]

P = TypeVar("P")


class DotStore(CRDTBase, Generic[P]):
    """Dots ``replica -> seq -> payload`` plus a :class:`DotContext`; subclasses index payloads."""

    __slots__ = ("_ctx", "_dots")

    def __init__(self) -> None:
        self._dots: dict[str, dict[int, P]] = {}
        self._ctx = DotContext()

    # ------------------------------------------------------------- hooks for subclasses

    def _on_add(self, replica: str, seq: int, payload: P) -> None:
        """A dot became live."""

    def _on_remove(self, replica: str, seq: int, payload: P) -> None:
        """A live dot was removed."""

    def _import(self, payload: P) -> P:
        """Payload to store for a dot imported from another state (copy if mutable)."""
        return payload

    def _payload_order(self, payload: P) -> Any:
        """Total order used only when two states disagree on one dot (never in valid histories)."""
        return payload

    def _join_common(self, replica: str, seq: int, mine: P, theirs: P) -> bool:
        """Both sides hold the dot. Valid histories give it one payload; forged ones are resolved
        deterministically (the larger payload wins) so that merge stays a join."""
        if mine is theirs or mine == theirs:
            return False
        if self._payload_order(theirs) > self._payload_order(mine):
            self._remove_dot(replica, seq)
            self._add_dot(replica, seq, self._import(theirs))
            return True
        return False

    # ------------------------------------------------------------- kernel

    def _add_dot(self, replica: str, seq: int, payload: P) -> None:
        d = self._dots.get(replica)
        if d is None:
            d = self._dots[replica] = {}
        d[seq] = payload
        self._on_add(replica, seq, payload)

    def _remove_dot(self, replica: str, seq: int) -> None:
        d = self._dots[replica]
        payload = d.pop(seq)
        if not d:
            del self._dots[replica]
        self._on_remove(replica, seq, payload)

    def _join(self, other: DotStore[P]) -> bool:
        changed = False
        sd = self._dots
        ctx = self._ctx
        for r, theirs in other._dots.items():
            for n, v in theirs.items():
                mine = sd.get(r)
                if mine is not None and n in mine:
                    if self._join_common(r, n, mine[n], v):
                        changed = True
                elif not ctx.contains(r, n):
                    self._add_dot(r, n, self._import(v))
                    changed = True
        octx = other._ctx
        odots = other._dots
        for r, hi in octx.vv.items():
            mine = sd.get(r)
            if not mine:
                continue
            theirs = odots.get(r) or {}
            if len(mine) <= hi:
                gone = [n for n in mine if n <= hi and n not in theirs]
            else:
                gone = [n for n in range(1, hi + 1) if n in mine and n not in theirs]
            for n in gone:
                self._remove_dot(r, n)
                changed = True
        for r, cloud in octx.cloud.items():
            mine = sd.get(r)
            if not mine:
                continue
            theirs = odots.get(r) or {}
            for n in [n for n in cloud if n in mine and n not in theirs]:
                self._remove_dot(r, n)
                changed = True
        if ctx.merge(octx):
            changed = True
        return changed

    def merge(self, other: Self) -> bool:
        self._check_mergeable(other)
        return self._join(other)

    def _prime(self, replica: str, upto: int) -> None:
        """Treat ``replica``'s dots up to ``upto`` as seen: an enclosing ORMap shares its
        per-replica sequence space with its nested values this way, so a value re-created
        after a remove never reuses a dot (see ORMap)."""
        self._ctx.advance(replica, upto)

    def max_seq(self, replica: str) -> int:
        return self._ctx.max_seq(replica)

    def dot_count(self) -> int:
        return sum(len(d) for d in self._dots.values())

    def _context_stats(self) -> dict[str, int]:
        dots = self.dot_count()
        vv = len(self._ctx.vv)
        cloud = self._ctx.cloud_size()
        return {
            "dots": dots,
            "context_vv": vv,
            "context_cloud": cloud,
            "metadata": dots + vv + cloud,
        }

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and self._dots == other._dots and self._ctx == other._ctx

    # ------------------------------------------------------------- wire helpers

    def _wire_context(self) -> tuple[list[list[Any]], dict[str, int]]:
        table = self._ctx.replicas()
        return self._ctx.to_wire(table), {r: i for i, r in enumerate(table)}

    def _read_context(self, x: Any, reader: Reader) -> list[str]:
        self._ctx, table = DotContext.from_wire(x, reader)
        return table

    def _read_dot(self, table: list[str], ridx: Any, seq: Any, reader: Reader) -> tuple[str, int]:
        i = reader.integer(ridx, "dot replica index", 0, len(table) - 1)
        n = reader.integer(seq, "dot seq", 1, INT_MAX)
        r = table[i]
        if not self._ctx.contains(r, n):
            reader.fail(f"dot ({r!r}, {n}) is not in the causal context")
        d = self._dots.get(r)
        if d is not None and n in d:
            reader.fail(f"dot ({r!r}, {n}) appears twice")
        return r, n
