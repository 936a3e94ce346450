"""Hypothesis strategies for the built-in types: elements, values, ops, histories and states.

States are always *reachable*: they come from replaying a random history of ops and merges over
a few replicas (with skewed clocks), never from filling fields at random, so they satisfy every
invariant a real system would (escrow rights, dots inside contexts, ...).

``related_states(T, n)`` draws ``n`` states of **one** system (replicas of the same history), which
is what merge laws are about; ``states(T)`` draws one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hypothesis import strategies as st

from crdtcoord._wire import INT_MIN, UINT_MAX
from crdtcoord.testing.ops import (
    Acquire,
    Add,
    Assign,
    Clear,
    Decrement,
    Disable,
    Enable,
    Env,
    Force,
    Increment,
    MapRemove,
    MapUpdate,
    Op,
    Release,
    Remove,
    Renew,
    Step,
    Transfer,
    run_history,
)
from crdtcoord.types import (
    ALL_TYPES,
    BoundedCounter,
    CRDTBase,
    EWFlag,
    GCounter,
    GSet,
    Lease,
    LWWRegister,
    MVRegister,
    ORMap,
    ORSet,
    PNCounter,
)

__all__ = [
    "REPLICAS",
    "elements",
    "histories",
    "ops",
    "related_states",
    "replica_ids",
    "states",
    "values",
]

#: Few replicas, so that concurrency and collisions are common.
REPLICAS: tuple[str, ...] = ("a", "b", "c")


def replica_ids(replicas: Sequence[str] = REPLICAS) -> st.SearchStrategy[str]:
    return st.sampled_from(list(replicas))


def elements(*, rich: bool = False) -> st.SearchStrategy[Any]:
    """Set elements / map keys. Default: a small pool so adds and removes collide; ``rich``
    covers the whole element domain (every type, 64-bit extremes, nested tuples)."""
    if not rich:
        return st.one_of(st.sampled_from(["x", "y", "z"]), st.integers(-2, 3))
    scalars = st.one_of(
        st.none(),
        st.integers(INT_MIN, UINT_MAX),
        st.text(max_size=8),
        st.binary(max_size=8),
    )
    return st.recursive(
        scalars, lambda inner: st.tuples(inner, inner) | st.tuples(inner), max_leaves=6
    )


def values(*, rich: bool = False) -> st.SearchStrategy[Any]:
    """Register values (JSON-like: lists and str-keyed dicts, finite floats, bytes)."""
    if not rich:
        return st.one_of(st.integers(0, 3), st.sampled_from(["v", "w"]), st.booleans())
    scalars = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(INT_MIN, UINT_MAX),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(max_size=8),
        st.binary(max_size=8),
    )
    return st.recursive(
        scalars,
        lambda inner: (
            st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
        ),
        max_leaves=8,
    )


_HOLDERS = st.sampled_from(["h1", "h2", "h3"])
_TTL = st.sampled_from([50, 200, 1000])

# Nested types exercised inside ORMap (every type a map accepts; maps nested once).
_NESTED: tuple[type[CRDTBase], ...] = tuple(
    t for t in ALL_TYPES if t.ALLOWED_IN_MAP and t is not ORMap
)


def ops(
    kind: type[CRDTBase], *, replicas: Sequence[str] = REPLICAS, depth: int = 0
) -> st.SearchStrategy[Op]:
    """Ops of one type (including ones the type will refuse, such as overdrawn decrements)."""
    small = st.integers(0, 5)
    if kind is GCounter:
        return st.builds(Increment, small)
    if kind is PNCounter:
        return st.one_of(st.builds(Increment, small), st.builds(Decrement, small))
    if kind is BoundedCounter:
        return st.one_of(
            st.builds(Increment, small),
            st.builds(Decrement, small),
            st.builds(Transfer, st.sampled_from(list(replicas)), small),
        )
    if kind is GSet:
        return st.builds(Add, elements())
    if kind is ORSet:
        return st.one_of(
            st.builds(Add, elements()),
            st.builds(Remove, elements()),
            st.just(Clear()),
        )
    if kind is LWWRegister or kind is MVRegister:
        return st.builds(Assign, values())
    if kind is EWFlag:
        return st.sampled_from([Enable(), Disable()])
    if kind is Lease:
        return st.one_of(
            st.builds(Acquire, _HOLDERS, _TTL),
            st.builds(Renew, _HOLDERS, _TTL),
            st.builds(Release, _HOLDERS),
            st.builds(Force, _HOLDERS | st.none(), _TTL, st.integers(0, 20)),
        )
    if kind is ORMap:
        nested = list(_NESTED) + ([ORMap] if depth < 1 else [])
        keys: st.SearchStrategy[str | int] = st.sampled_from(["k", "l", 0])

        @st.composite
        def update(draw: st.DrawFn) -> Op:
            sub = draw(st.sampled_from(nested))
            return MapUpdate(draw(keys), sub, draw(ops(sub, replicas=replicas, depth=depth + 1)))

        return st.one_of(update(), update(), st.builds(MapRemove, keys))
    raise TypeError(f"no op strategy for {kind.__name__}")


@st.composite
def _steps(
    draw: st.DrawFn, kind: type[CRDTBase], replicas: Sequence[str], max_steps: int
) -> list[Step]:
    n = draw(st.integers(0, max_steps))
    rid = replica_ids(replicas)
    steps: list[Step] = []
    for _ in range(n):
        choice = draw(st.integers(0, 9))
        if choice < 6:
            steps.append(Step("op", draw(rid), draw(ops(kind, replicas=replicas))))
        elif choice < 9:
            steps.append(Step("merge", draw(rid), source=draw(rid)))
        else:
            steps.append(Step("tick", ms=draw(st.sampled_from([1, 10, 100, 500]))))
    return steps


@st.composite
def histories(
    draw: st.DrawFn,
    kind: type[CRDTBase],
    replicas: Sequence[str] = REPLICAS,
    max_steps: int = 25,
) -> tuple[list[Step], dict[str, int]]:
    """A history (list of steps) and per-replica clock skews (ms) to replay it with."""
    skews = {r: draw(st.integers(-300, 300)) for r in replicas}
    return draw(_steps(kind, replicas, max_steps)), skews


@st.composite
def related_states(
    draw: st.DrawFn, kind: type[CRDTBase], n: int = 3, replicas: Sequence[str] = REPLICAS
) -> list[CRDTBase]:
    """``n`` states of one system: final replica states and intermediate snapshots of a history."""
    steps, skews = draw(histories(kind, replicas))
    hist = run_history(kind, replicas, steps, Env(skews), check_refusals=False)
    pool: list[CRDTBase] = list(hist.states.values()) + [d for _, d in hist.deltas]
    pool.append(kind())
    return [draw(st.sampled_from(pool)).copy() for _ in range(n)]


def states(kind: type[CRDTBase], replicas: Sequence[str] = REPLICAS) -> st.SearchStrategy[CRDTBase]:
    """One reachable state of ``kind``."""
    return related_states(kind, 1, replicas).map(lambda xs: xs[0])


def all_types() -> st.SearchStrategy[type[CRDTBase]]:
    return st.sampled_from(list(ALL_TYPES))
