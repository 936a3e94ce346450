"""Every public mutator, given arguments of any type, either works or raises a CrdtError subclass
and leaves the state exactly as it was (never AttributeError, TypeError, KeyError...)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crdtcoord import (
    HLC,
    BoundedCounter,
    ClockSkewError,
    CrdtError,
    EWFlag,
    GCounter,
    GSet,
    Lease,
    LWWRegister,
    MVRegister,
    ORMap,
    ORSet,
    PNCounter,
    Timestamp,
    UpdateContext,
    encode,
)
from crdtcoord.types import CRDTBase

GARBAGE = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True),
    st.text(max_size=5),
    st.binary(max_size=5),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=2), st.integers(), max_size=2),
    st.tuples(st.integers()),
    st.just(object()),
    st.just(Timestamp(5)),
    st.just(HLC(lambda: 5)),
    st.just(UpdateContext("a")),
    st.just(GCounter),
    st.just(ORSet()),
    st.just(GCounter.Increment(1)),
)
# Plausible values mixed in, so that a bad argument is often the only bad one.
ARG = st.one_of(GARBAGE, st.sampled_from(["a", "b", "h1", 1, 3, 100, Timestamp(10)]))


def _seeded(kind: Callable[[], CRDTBase]) -> CRDTBase:
    x = kind()
    ctx = UpdateContext("a", HLC(lambda: 1_000))
    if isinstance(x, GCounter | PNCounter | BoundedCounter):
        x.increment("a", 5)
    elif isinstance(x, ORSet | GSet):
        x.add("a", 1)
    elif isinstance(x, Lease):
        x.acquire("a", "h1", Timestamp(1_000), 100)
    elif isinstance(x, ORMap):
        x.apply(ORMap.Update("k", GCounter.Increment(1)), ctx)
    return x


MUTATORS: list[tuple[Callable[[], CRDTBase], str, int]] = [
    (GCounter, "increment", 2),
    (PNCounter, "increment", 2),
    (PNCounter, "decrement", 2),
    (BoundedCounter, "increment", 2),
    (BoundedCounter, "decrement", 2),
    (BoundedCounter, "transfer", 3),
    (GSet, "add", 2),
    (ORSet, "add", 2),
    (ORSet, "remove", 2),
    (ORSet, "clear", 1),
    (LWWRegister, "assign", 3),
    (MVRegister, "assign", 2),
    (EWFlag, "enable", 1),
    (EWFlag, "disable", 1),
    (ORMap, "update", 4),
    (ORMap, "remove", 2),
    (Lease, "acquire", 4),
    (Lease, "renew", 4),
    (Lease, "release", 3),
    (Lease, "force", 4),
]
for _kind in (GCounter, PNCounter, BoundedCounter, GSet, ORSet, LWWRegister, MVRegister, EWFlag):
    MUTATORS += [(_kind, "apply", 2), (_kind, "merge", 1)]
MUTATORS += [(ORMap, "apply", 2), (ORMap, "merge", 1), (Lease, "apply", 2), (Lease, "merge", 1)]


@pytest.mark.parametrize(
    "kind,name,arity", MUTATORS, ids=[f"{k.__name__}.{n}" for k, n, _ in MUTATORS]
)
@given(data=st.data())
def test_wrongly_typed_arguments_raise_crdt_errors(
    kind: Callable[[], CRDTBase], name: str, arity: int, data: st.DataObject
) -> None:
    state = _seeded(kind)
    before = encode(state)
    args: list[Any] = [data.draw(ARG) for _ in range(arity)]
    if name == "update" and callable(args[3]):
        args[3] = lambda v, ctx: v  # the callback's own exceptions are the caller's
    try:
        getattr(state, name)(*args)
    except (CrdtError, ClockSkewError):  # (a strict HLC drawn far behind the state's time)
        assert encode(state) == before, f"{name}{tuple(args)!r} was refused but changed the state"
