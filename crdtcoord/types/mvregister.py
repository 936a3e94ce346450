"""Multi-value register: keeps every concurrently written value until a later write covers them.

A causal dot function ``dot -> value``: ``assign`` writes a fresh dot and covers every dot it has
observed. ``value()`` is the tuple of surviving values (sorted by their canonical bytes, without
duplicates): one value normally, several after concurrent writes, which the application resolves
by writing again. Guarantees: no write is silently dropped in favour of another concurrent one
(unlike LWW); a stale read shows the values some replica had.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Self

from crdtcoord._wire import Reader, Value, check_replica, pack_value, unpack_value
from crdtcoord.types._base import Op, UpdateContext, wire_type
from crdtcoord.types._dotstore import DotStore

__all__ = ["MVRegister"]


@wire_type(tag=7)
class MVRegister(DotStore[bytes]):
    """A multi-value register; values are stored as canonical msgpack bytes."""

    __slots__ = ()
    SUPERSEDES_IN_MAP = True

    @dataclass(frozen=True, slots=True)
    class Assign(Op):
        """Write ``value``, superseding every value the acting replica has observed."""

        value: Value
        FIELDS = ("value",)

        def apply(self, state: MVRegister, ctx: UpdateContext) -> MVRegister:
            return state.assign(ctx.replica, self.value)

    OPS = (Assign,)

    def value(self) -> tuple[Value, ...]:
        blobs = sorted({b for d in self._dots.values() for b in d.values()})
        return tuple(unpack_value(b) for b in blobs)

    def assign(self, replica: str, value: Value) -> MVRegister:
        """Write ``value``, superseding every value this replica has observed."""
        check_replica(replica)
        blob = pack_value(value)
        r, n = self._ctx.next_dot(replica)
        delta = MVRegister()
        delta._add_dot(r, n, blob)
        delta._ctx.add(r, n)
        for dr, d in self._dots.items():
            for dn in d:
                delta._ctx.add(dr, dn)
        self._join(delta)
        return delta

    def copy(self) -> Self:
        c = type(self)()
        c._dots = {r: dict(d) for r, d in self._dots.items()}
        c._ctx = self._ctx.copy()
        return c

    def stats(self) -> dict[str, int]:
        return {"elements": len(self.value()), **self._context_stats()}

    def to_payload(self) -> Any:
        ctx, index = self._wire_context()
        rows = []
        for r in sorted(self._dots, key=index.__getitem__):
            d = self._dots[r]
            for n in sorted(d):
                rows.append([index[r], n, unpack_value(d[n])])
        return [ctx, rows]

    @classmethod
    def from_payload(cls, payload: Any, version: int, reader: Reader, depth: int) -> Self:
        ctx, rows = reader.arr(payload, "MVRegister", 2)
        m = cls()
        table = m._read_context(ctx, reader)
        keys = []
        for row in reader.arr(rows, "values"):
            ridx, seq, raw = reader.arr(row, "value entry", 3)
            r, n = m._read_dot(table, ridx, seq, reader)
            keys.append((ridx, n))
            m._add_dot(r, n, reader.value_blob(raw))
        reader.increasing(keys, "values")
        return m
