"""Enable-wins flag: a boolean where a concurrent enable beats a disable.

A causal dot set: ``enable`` adds a fresh dot (covering the older ones), ``disable`` covers the
dots it has observed. Value is True while any dot survives. Guarantees: a stale read shows a
value some replica had; after a partition the flag is True if any side enabled it without having
observed a later disable of that enable.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Self

from crdtcoord._wire import Reader, check_replica
from crdtcoord.types._base import Op, UpdateContext, wire_type
from crdtcoord.types._dotstore import DotStore

__all__ = ["EWFlag"]


@wire_type(tag=8)
class EWFlag(DotStore[None]):
    """An enable-wins flag; ``enable``/``disable`` return their delta."""

    __slots__ = ()
    SUPERSEDES_IN_MAP = True

    @dataclass(frozen=True, slots=True)
    class Enable(Op):
        """Enable the flag (a fresh dot; wins over a concurrent disable)."""

        def apply(self, state: EWFlag, ctx: UpdateContext) -> EWFlag:
            return state.enable(ctx.replica)

    @dataclass(frozen=True, slots=True)
    class Disable(Op):
        """Disable the flag as observed by the acting replica."""

        def apply(self, state: EWFlag, ctx: UpdateContext) -> EWFlag:
            return state.disable(ctx.replica)

    OPS = (Enable, Disable)

    def value(self) -> bool:
        return bool(self._dots)

    def __bool__(self) -> bool:
        return bool(self._dots)

    def _observed(self) -> list[tuple[str, int]]:
        return [(r, n) for r, d in self._dots.items() for n in d]

    def enable(self, replica: str) -> EWFlag:
        check_replica(replica)
        r, n = self._ctx.next_dot(replica)
        delta = EWFlag()
        delta._add_dot(r, n, None)
        delta._ctx.add(r, n)
        for dr, dn in self._observed():
            delta._ctx.add(dr, dn)
        self._join(delta)
        return delta

    def disable(self, replica: str) -> EWFlag:
        check_replica(replica)
        delta = EWFlag()
        for dr, dn in self._observed():
            delta._ctx.add(dr, dn)
        self._join(delta)
        return delta

    def copy(self) -> Self:
        c = type(self)()
        c._dots = {r: dict(d) for r, d in self._dots.items()}
        c._ctx = self._ctx.copy()
        return c

    def stats(self) -> dict[str, int]:
        return {"elements": 1, **self._context_stats()}

    def to_payload(self) -> Any:
        ctx, index = self._wire_context()
        flat: list[int] = []
        for r, n in sorted(self._observed(), key=lambda d: (index[d[0]], d[1])):
            flat.append(index[r])
            flat.append(n)
        return [ctx, flat]

    @classmethod
    def from_payload(cls, payload: Any, version: int, reader: Reader, depth: int) -> Self:
        ctx, flat = reader.arr(payload, "EWFlag", 2)
        f = cls()
        table = f._read_context(ctx, reader)
        flat = reader.arr(flat, "dots")
        if len(flat) % 2:
            reader.fail("dots must be (replica index, seq) pairs")
        pairs = [(flat[k], flat[k + 1]) for k in range(0, len(flat), 2)]
        for ridx, seq in pairs:
            r, n = f._read_dot(table, ridx, seq, reader)
            f._add_dot(r, n, None)
        reader.increasing(pairs, "dots")
        return f
