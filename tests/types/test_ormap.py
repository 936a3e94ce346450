"""Semantics of ORMap: nested CRDTs, observed-remove with reset, update-wins, type conflicts."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from crdtcoord import (
    BoundedCounter,
    EWFlag,
    GCounter,
    IncompatibleMerge,
    InvalidArgument,
    Lease,
    LWWRegister,
    MVRegister,
    ORMap,
    ORSet,
    PNCounter,
    Timestamp,
    decode,
    encode,
)
from crdtcoord.types import UpdateContext


def inc(n: int = 1) -> Callable[[Any, UpdateContext], Any]:
    return lambda c, ctx: c.increment(ctx.replica, n)


def test_nested_counters_merge() -> None:
    a, b = ORMap(), ORMap()
    a.update("a", "hits", GCounter, inc(3))
    b.update("b", "hits", GCounter, inc(4))
    a.merge(b)
    assert a.value() == {"hits": 7}
    b.merge(a)
    assert b == a


def test_update_deltas_are_small_and_equivalent() -> None:
    a, b = ORMap(), ORMap()
    for i in range(50):
        b.merge(a.update("a", "set", ORSet, lambda s, ctx, i=i: s.add(ctx.replica, i)))
    d = a.update("a", "hits", GCounter, inc())
    assert len(encode(d)) < 60
    b.merge(d)
    assert b == a


def test_remove_then_readd_starts_fresh() -> None:
    """No resurrection: a key re-created after an observed remove does not bring old contents
    back, even when a stale replica still holds them."""
    a, stale = ORMap(), ORMap()
    stale.merge(a.update("a", "k", GCounter, inc(10)))
    stale.merge(a.update("b", "k", GCounter, inc(5)))
    a.remove("a", "k")
    a.update("a", "k", GCounter, inc(1))
    a.merge(stale)
    assert a.value() == {"k": 1}
    stale.merge(a)
    assert stale.value() == {"k": 1}


def test_concurrent_update_survives_remove() -> None:
    a, b = ORMap(), ORMap()
    b.merge(a.update("a", "k", PNCounter, inc(2)))
    a.remove("a", "k")
    b.update("b", "k", PNCounter, inc(1))  # concurrent with the remove
    a.merge(b)
    b.merge(a)
    assert a == b
    assert a.value() == {"k": 1}  # update-wins; the removed contribution of a is gone


def test_lww_values_supersede_in_one_dot() -> None:
    m = ORMap()
    for i, r in enumerate("abcab"):
        m.update(
            r, "cfg", LWWRegister, lambda v, ctx, i=i: v.assign(ctx.replica, i, Timestamp(100 + i))
        )
    assert m.value() == {"cfg": 4}
    assert m.stats()["dots"] == 1


def test_type_conflict_resolves_deterministically() -> None:
    a, b = ORMap(), ORMap()
    a.update("a", "k", GCounter, inc())
    b.update("b", "k", ORSet, lambda s, ctx: s.add(ctx.replica, "x"))
    x, y = a.copy(), b.copy()
    x.merge(b)
    y.merge(a)
    assert x == y
    assert x.value() == {"k": frozenset({"x"})}  # ORSet has the larger wire tag
    before = x.copy()
    with pytest.raises(IncompatibleMerge):
        x.update("a", "k", GCounter, inc())
    assert x == before


def test_failing_update_changes_nothing() -> None:
    m = ORMap()
    m.update("a", "k", GCounter, inc(2))
    before = m.copy()

    def boom(c: GCounter, ctx: UpdateContext) -> GCounter:
        c.increment(ctx.replica, 5)
        raise RuntimeError("application error")

    with pytest.raises(RuntimeError):
        m.update("a", "k", GCounter, boom)
    assert m == before and m.value() == {"k": 2}
    with pytest.raises(InvalidArgument):
        m.update("a", "k", GCounter, lambda c, ctx: None)  # type: ignore[arg-type, return-value]
    assert m == before and m.value() == {"k": 2}


def test_nested_maps_and_get_returns_a_copy() -> None:
    m = ORMap()
    m.update(
        "a",
        "outer",
        ORMap,
        lambda inner, ctx: inner.update(ctx, ("x", 1), GCounter, inc(2)),
    )
    assert m.value() == {"outer": {("x", 1): 2}}
    got = m.get("outer")
    assert isinstance(got, ORMap)
    got.update("a", "other", GCounter, inc())
    assert m.value() == {"outer": {("x", 1): 2}}
    assert decode(encode(m)) == m


def _recreate(factory: Any, first: Any, a_new: Any, b_conc: Any) -> tuple[Any, Any]:
    """A updates k; B sees it; A removes and re-creates k while B updates it concurrently."""
    a = ORMap()
    a.update("A", "k", factory, first)
    b = a.copy()
    a.remove("A", "k")
    a.update("A", "k", factory, a_new)
    b.update("B", "k", factory, b_conc)
    x, y = a.copy(), b.copy()
    x.merge(b)
    y.merge(a)
    assert x == y
    return x.value(), y.value()


def test_recreated_key_never_reuses_nested_dots() -> None:
    """Regression (kernel review #1): a key re-created after a remove used to restart its nested
    dots at (A, 1), so a concurrent replica's context swallowed the new adds/enables/writes."""
    got = _recreate(
        ORSet,
        lambda s, ctx: s.add(ctx.replica, "x"),
        lambda s, ctx: s.add(ctx.replica, "y"),
        lambda s, ctx: s.remove(ctx.replica, "x"),
    )
    assert got[0] == {"k": frozenset({"y"})}
    got = _recreate(
        EWFlag,
        lambda f, ctx: f.enable(ctx.replica),
        lambda f, ctx: f.enable(ctx.replica),
        lambda f, ctx: f.disable(ctx.replica),
    )
    assert got[0] == {"k": True}
    got = _recreate(
        MVRegister,
        lambda r, ctx: r.assign(ctx.replica, "old"),
        lambda r, ctx: r.assign(ctx.replica, "new-A"),
        lambda r, ctx: r.assign(ctx.replica, "new-B"),
    )
    assert got[0] == {"k": ("new-A", "new-B")}


def test_recreated_counter_starts_a_new_chain() -> None:
    got = _recreate(GCounter, inc(10), inc(1), inc(5))
    # A's old 10 is gone (its remove observed it); B's concurrent +5 and A's new +1 remain.
    assert got[0] == {"k": 6}
    m = ORMap()
    m.update("A", "c", GCounter, inc(2))
    m.update("A", "c", GCounter, inc(3))
    assert m.get("c").entries() == {"A~1": 5}  # type: ignore[union-attr]


@pytest.mark.parametrize("kind", [BoundedCounter, Lease])
def test_escrow_and_leases_are_top_level_only(kind: type) -> None:
    m = ORMap()
    with pytest.raises(InvalidArgument, match="top-level key"):
        m.update("a", "k", kind, lambda v, ctx: v)
    assert m.is_bottom()


def test_map_nesting_is_bounded_like_the_decoder() -> None:
    def nested(depth: int) -> ORMap:
        def fn_at(level: int) -> Callable[[Any, UpdateContext], Any]:
            if level == depth:
                return inc(1)
            return lambda m, ctx: m.update(
                ctx, "k", ORMap if level + 1 < depth else GCounter, fn_at(level + 1)
            )

        top = ORMap()
        top.update("a", "k", ORMap if depth > 1 else GCounter, fn_at(1))
        return top

    ok = nested(32)
    assert decode(encode(ok)) == ok
    with pytest.raises(InvalidArgument, match="nest at most"):
        nested(33)
