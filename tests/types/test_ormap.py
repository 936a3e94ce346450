"""Semantics of ORMap: nested CRDTs, observed-remove with reset, update-wins, type conflicts."""

from __future__ import annotations

import pytest

from crdtcoord import (
    GCounter,
    IncompatibleMerge,
    InvalidArgument,
    LWWRegister,
    ORMap,
    ORSet,
    PNCounter,
    Timestamp,
    decode,
    encode,
)


def inc(replica: str, n: int = 1):
    return lambda c: c.increment(replica, n)


def test_nested_counters_merge() -> None:
    a, b = ORMap(), ORMap()
    a.update("a", "hits", GCounter, inc("a", 3))
    b.update("b", "hits", GCounter, inc("b", 4))
    a.merge(b)
    assert a.value() == {"hits": 7}
    b.merge(a)
    assert b == a


def test_update_deltas_are_small_and_equivalent() -> None:
    a, b = ORMap(), ORMap()
    for i in range(50):
        b.merge(a.update("a", "set", ORSet, lambda s, i=i: s.add("a", i)))
    d = a.update("a", "hits", GCounter, inc("a"))
    assert len(encode(d)) < 60
    b.merge(d)
    assert b == a


def test_remove_then_readd_starts_fresh() -> None:
    """No resurrection: a key re-created after an observed remove does not bring old contents
    back, even when a stale replica still holds them."""
    a, stale = ORMap(), ORMap()
    stale.merge(a.update("a", "k", GCounter, inc("a", 10)))
    stale.merge(a.update("b", "k", GCounter, inc("b", 5)))
    a.remove("a", "k")
    a.update("a", "k", GCounter, inc("a", 1))
    a.merge(stale)
    assert a.value() == {"k": 1}
    stale.merge(a)
    assert stale.value() == {"k": 1}


def test_concurrent_update_survives_remove() -> None:
    a, b = ORMap(), ORMap()
    b.merge(a.update("a", "k", PNCounter, inc("a", 2)))
    a.remove("a", "k")
    b.update("b", "k", PNCounter, inc("b", 1))  # concurrent with the remove
    a.merge(b)
    b.merge(a)
    assert a == b
    assert a.value() == {"k": 1}  # update-wins; the removed contribution of a is gone


def test_lww_values_supersede_in_one_dot() -> None:
    m = ORMap()
    for i, r in enumerate("abcab"):
        m.update(r, "cfg", LWWRegister, lambda v, r=r, i=i: v.assign(r, i, Timestamp(100 + i)))
    assert m.value() == {"cfg": 4}
    assert m.stats()["dots"] == 1


def test_type_conflict_resolves_deterministically() -> None:
    a, b = ORMap(), ORMap()
    a.update("a", "k", GCounter, inc("a"))
    b.update("b", "k", ORSet, lambda s: s.add("b", "x"))
    x, y = a.copy(), b.copy()
    x.merge(b)
    y.merge(a)
    assert x == y
    assert x.value() == {"k": frozenset({"x"})}  # ORSet has the larger wire tag
    before = x.copy()
    with pytest.raises(IncompatibleMerge):
        x.update("a", "k", GCounter, inc("a"))
    assert x == before


def test_failing_update_changes_nothing() -> None:
    m = ORMap()
    m.update("a", "k", GCounter, inc("a", 2))
    before = m.copy()

    def boom(c: GCounter) -> GCounter:
        c.increment("a", 5)
        raise RuntimeError("application error")

    with pytest.raises(RuntimeError):
        m.update("a", "k", GCounter, boom)
    assert m == before and m.value() == {"k": 2}
    with pytest.raises(InvalidArgument):
        m.update("a", "k", GCounter, lambda c: None)  # type: ignore[arg-type, return-value]
    assert m == before and m.value() == {"k": 2}


def test_nested_maps_and_get_returns_a_copy() -> None:
    m = ORMap()
    m.update(
        "a",
        "outer",
        ORMap,
        lambda inner: inner.update("a", ("x", 1), GCounter, inc("a", 2)),
    )
    assert m.value() == {"outer": {("x", 1): 2}}
    got = m.get("outer")
    assert isinstance(got, ORMap)
    got.update("a", "other", GCounter, inc("a"))
    assert m.value() == {"outer": {("x", 1): 2}}
    assert decode(encode(m)) == m
