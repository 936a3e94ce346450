"""Semantics of GCounter, PNCounter and the escrow BoundedCounter."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crdtcoord import (
    BoundedCounter,
    GCounter,
    IncompatibleMerge,
    InsufficientRights,
    InvalidArgument,
    PNCounter,
)
from crdtcoord.testing import Env, run_history
from crdtcoord.testing.strategies import histories


def test_gcounter_counts_every_replica_once() -> None:
    a, b = GCounter(), GCounter()
    a.increment("a", 3)
    b.increment("b", 4)
    b.increment("b")
    a.merge(b)
    a.merge(b)  # duplicate delivery changes nothing
    assert a.value() == 8
    assert a.entries() == {"a": 3, "b": 5}


def test_gcounter_delta_is_the_replica_total() -> None:
    c = GCounter()
    c.increment("a", 2)
    d = c.increment("a", 5)
    assert d.entries() == {"a": 7}
    fresh = GCounter()
    fresh.merge(d)  # a delta carries the whole entry: a late replica catches up at once
    assert fresh.value() == 7


@pytest.mark.parametrize("bad", [-1, 2**63, 1.5, "3", True])
def test_gcounter_rejects_bad_amounts_and_changes_nothing(bad: object) -> None:
    c = GCounter()
    c.increment("a", 1)
    before = c.copy()
    with pytest.raises(InvalidArgument):
        c.increment("a", bad)  # type: ignore[arg-type]
    assert c == before


@pytest.mark.parametrize("bad", ["", 7, None, "x" * 256])
def test_replica_ids_are_validated(bad: object) -> None:
    with pytest.raises(InvalidArgument):
        GCounter().increment(bad)  # type: ignore[arg-type]


def test_counter_overflow_is_refused() -> None:
    c = GCounter()
    c.increment("a", 2**63 - 1)
    with pytest.raises(InvalidArgument):
        c.increment("a", 1)
    assert c.value() == 2**63 - 1


def test_merging_different_types_is_a_type_error() -> None:
    with pytest.raises(IncompatibleMerge):
        GCounter().merge(PNCounter())  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        BoundedCounter(0).merge(BoundedCounter(5))


def test_pncounter_goes_both_ways_and_can_go_negative() -> None:
    a, b = PNCounter(), PNCounter()
    a.increment("a", 5)
    b.decrement("b", 7)
    a.merge(b)
    assert a.value() == -2
    d = a.decrement("a", 1)
    b.merge(d)
    assert b.value() == -8  # b never saw a's increment: a stale read


def test_bounded_counter_antidote_examples() -> None:
    """The unit tests of Antidote's counter_b, plus the 'changes nothing' rule."""
    c = BoundedCounter()
    c.increment("r1", 10)
    c.transfer("r1", "r2", 6)
    assert (c.rights("r1"), c.rights("r2"), c.value()) == (4, 6, 10)

    d = BoundedCounter()
    d.increment("r1", 10)
    d.decrement("r1", 6)
    assert d.value() == 4
    before = d.copy()
    with pytest.raises(InsufficientRights) as info:
        d.decrement("r1", 6)
    assert (info.value.requested, info.value.available) == (6, 4)
    assert d == before


def test_bounded_counter_rights_follow_transfers_across_replicas() -> None:
    r1, r2 = BoundedCounter(), BoundedCounter()
    r1.increment("r1", 5)
    with pytest.raises(InsufficientRights):
        r2.decrement("r2", 1)  # r2 has no rights yet
    r2.merge(r1.transfer("r1", "r2", 3))  # only the transfer delta travels
    r2.decrement("r2", 3)
    with pytest.raises(InsufficientRights):
        r2.decrement("r2", 1)
    r1.merge(r2)
    assert r1.value() == 2
    assert r1.rights_map() == {"r1": 2, "r2": 0}


def test_bounded_counter_with_a_nonzero_lower_bound() -> None:
    c = BoundedCounter(lower=-10)
    assert c.value() == -10
    c.increment("a", 3)
    c.decrement("a", 3)
    assert c.value() == -10
    with pytest.raises(InsufficientRights):
        c.decrement("a", 1)
    with pytest.raises(InvalidArgument):
        c.transfer("a", "a", 0)


@given(histories(BoundedCounter, max_steps=40), st.data())
def test_bounded_counter_never_below_its_bound_in_any_merged_state(
    hist: tuple, data: st.DataObject
) -> None:
    """Escrow invariant: every join of replica states and deltas, in any combination (so in any
    delivery order, with any losses), stays >= lower."""
    steps, skews = hist
    h = run_history(lambda: BoundedCounter(lower=0), ["a", "b", "c"], steps, Env(skews))
    pool = list(h.states.values()) + [d for _, d in h.deltas]
    for state in h.states.values():
        assert state.value() >= 0
        assert all(v >= 0 for v in state.rights_map().values())
    for k in (1, 2, 3):
        for combo in itertools.islice(itertools.combinations(pool, k), 80):
            merged = BoundedCounter()
            for x in combo:
                merged.merge(x)
            assert merged.value() >= 0, combo
    total = BoundedCounter()
    for s in h.states.values():
        total.merge(s)
    assert total.value() >= 0
    assert sum(total.rights_map().values()) == total.value()
