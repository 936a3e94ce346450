"""Replaying ops: an environment of per-replica hybrid clocks, histories of ops and merges.

Ops are the types' own (``GCounter.Increment(3)``, ``ORSet.Add("x")``...: see
:class:`crdtcoord.types.Op`), so a generated or shrunk history prints as plain data. :class:`Env`
gives each replica an :class:`~crdtcoord.HLC` over a shared virtual physical time with a
per-replica skew, so time-dependent types (LWW registers, leases) are exercised under skew.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from crdtcoord._exceptions import CrdtError
from crdtcoord.clocks.hlc import HLC, Timestamp
from crdtcoord.types import CRDTBase, Op, UpdateContext

__all__ = ["Env", "History", "Op", "Step", "apply_op", "run_history"]


class Env:
    """Virtual physical time (ms) plus one HLC per replica, each with its own clock skew."""

    def __init__(self, skews: dict[str, int] | None = None, start_ms: int = 1_000_000) -> None:
        self.time_ms = start_ms
        self.skews = dict(skews or {})
        self._clocks: dict[str, HLC] = {}

    def clock(self, replica: str) -> HLC:
        hlc = self._clocks.get(replica)
        if hlc is None:
            skew = self.skews.get(replica, 0)
            # Not strict: a test may skew clocks beyond any max offset on purpose.
            hlc = HLC(lambda: max(0, self.time_ms + skew), max_offset=10**9, strict=False)
            self._clocks[replica] = hlc
        return hlc

    def context(self, replica: str) -> UpdateContext:
        """The context an op of ``replica`` runs in (its id and its clock)."""
        return UpdateContext(replica, self.clock(replica))

    def now(self, replica: str) -> Timestamp:
        return self.clock(replica).now()

    def advance(self, ms: int) -> None:
        self.time_ms += ms


def apply_op(
    state: CRDTBase, op: Op, replica: str, env: Env, *, check: bool = True
) -> CRDTBase | None:
    """Apply ``op``; a refused op (a :class:`CrdtError`) returns None, and with ``check`` the
    state is verified to be exactly what it was before (refusals must change nothing)."""
    before = state.copy() if check else None
    try:
        return state.apply(op, env.context(replica))
    except CrdtError:
        if before is not None and state != before:
            raise AssertionError(
                f"{op!r} at {replica!r} was refused but changed the state"
            ) from None
        return None


@dataclass(frozen=True)
class Step:
    """One step of a history: an op at a replica, a merge between replicas, or time passing."""

    kind: str  # "op" | "merge" | "tick"
    replica: str = ""
    op: Op | None = None
    source: str = ""
    ms: int = 0


@dataclass
class History:
    """The outcome of :func:`run_history`: final replica states and every delta produced."""

    states: dict[str, CRDTBase]
    deltas: list[tuple[str, CRDTBase]] = field(default_factory=list)
    env: Env = field(default_factory=Env)


def run_history(
    factory: type[CRDTBase] | Any,
    replicas: Sequence[str],
    steps: Sequence[Step],
    env: Env | None = None,
    *,
    check_refusals: bool = True,
) -> History:
    """Replay ``steps`` over one state per replica; merges copy the source state."""
    env = env or Env()
    states: dict[str, CRDTBase] = {r: factory() for r in replicas}
    hist = History(states, [], env)
    for step in steps:
        if step.kind == "op":
            assert step.op is not None
            delta = apply_op(states[step.replica], step.op, step.replica, env, check=check_refusals)
            if delta is not None:
                hist.deltas.append((step.replica, delta))
        elif step.kind == "merge":
            states[step.replica].merge(states[step.source].copy())
        elif step.kind == "tick":
            env.advance(step.ms)
    return hist
