"""Hypothesis strategies for the built-in types: elements, values, ops, histories and states.

States are always *reachable*: they come from replaying a random history of ops and merges over
a few replicas (with skewed clocks), never from filling fields at random, so they satisfy every
invariant a real system would (escrow rights, dots inside contexts, ...).

``related_states(T, n)`` draws ``n`` states of **one** system (replicas of the same history), which
is what merge laws are about; ``states(T)`` draws one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

from hypothesis import strategies as st

from crdtcoord._wire import INT_MIN, UINT_MAX
from crdtcoord.testing.ops import Env, Step, run_history
from crdtcoord.types import ALL_TYPES, CRDTBase, Op, ORMap

__all__ = [
    "REPLICAS",
    "elements",
    "field_strategy",
    "histories",
    "ops",
    "register_op_strategy",
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
_KEYS: st.SearchStrategy[str | int] = st.sampled_from(["k", "l", 0])

# Nested types exercised inside ORMap (every built-in type a map accepts; maps nested once).
_NESTED: tuple[type[CRDTBase], ...] = tuple(t for t in ALL_TYPES if t.ALLOWED_IN_MAP)

OpStrategy = Callable[[Sequence[str], int], st.SearchStrategy[Op]]
_CUSTOM: dict[type[Op], OpStrategy] = {}


def register_op_strategy(op: type[Op], strategy: OpStrategy) -> None:
    """Use ``strategy(replicas, depth)`` to generate ``op`` instead of deriving it from the op's
    field kinds (for ops whose arguments need a domain the kinds cannot express)."""
    _CUSTOM[op] = strategy


def field_strategy(kind: str, replicas: Sequence[str], depth: int = 0) -> st.SearchStrategy[Any]:
    """Values for one op field of the given kind (see ``crdtcoord.types.FIELD_KINDS``): small
    pools, so that ops of different replicas collide (same elements, same holders)."""
    if kind == "amount":
        return st.integers(0, 5)
    if kind == "int":
        return st.integers(-5, 5)
    if kind == "ttl":
        return _TTL
    if kind == "element":
        return elements()
    if kind == "key":
        return _KEYS
    if kind == "value":
        return values()
    if kind == "replica":
        return st.sampled_from(list(replicas))
    if kind == "holder":
        return _HOLDERS
    if kind == "holder?":
        return _HOLDERS | st.none()
    if kind == "op":
        nested = [t for t in _NESTED if t is not ORMap or depth < 1]
        return st.sampled_from(nested).flatmap(lambda t: ops(t, replicas=replicas, depth=depth + 1))
    raise ValueError(f"unknown op field kind {kind!r}")


def _op_strategy(op: type[Op], replicas: Sequence[str], depth: int) -> st.SearchStrategy[Op]:
    custom = _CUSTOM.get(op)
    if custom is not None:
        return custom(replicas, depth)
    kinds = op.FIELDS
    n = len(dataclasses.fields(op))  # type: ignore[arg-type]
    args = [
        field_strategy(kinds[i] if i < len(kinds) else "value", replicas, depth) for i in range(n)
    ]
    return st.builds(op, *args)


def ops(
    kind: type[CRDTBase], *, replicas: Sequence[str] = REPLICAS, depth: int = 0
) -> st.SearchStrategy[Op]:
    """Ops of one type, derived from its declared ``OPS`` (including ops the state will refuse,
    such as overdrawn decrements). Works for any registered type, yours included."""
    declared = kind.OPS
    if not declared:
        raise TypeError(
            f"{kind.__name__} declares no OPS: list its op dataclasses in {kind.__name__}.OPS"
        )
    return st.one_of([_op_strategy(o, replicas, depth) for o in declared])


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
