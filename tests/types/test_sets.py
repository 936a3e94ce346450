"""Semantics of GSet and the add-wins, tombstone-free ORSet (including its O(delta) merge)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crdtcoord import GSet, InvalidArgument, ORSet, decode, encode
from crdtcoord.clocks.dots import DotContext
from crdtcoord.testing import elements


def test_gset_is_a_union() -> None:
    a, b = GSet(), GSet()
    a.add("a", "x")
    b.add("b", ("y", 1))
    a.merge(b)
    assert a.value() == frozenset({"x", ("y", 1)})
    assert list(a) == ["x", ("y", 1)]


@pytest.mark.parametrize("bad", [True, 1.5, [1], {"a": 1}, {1}, ("ok", 2.0)])
def test_elements_outside_the_domain_are_refused(bad: object) -> None:
    s = ORSet()
    with pytest.raises(InvalidArgument):
        s.add("a", bad)  # type: ignore[arg-type]
    assert s.is_bottom()


def test_orset_concurrent_add_beats_remove() -> None:
    a, b = ORSet(), ORSet()
    b.merge(a.add("a", "x"))
    b.remove("b", "x")  # b removes the add it saw...
    a.add("a", "x")  # ...while a re-adds concurrently
    a.merge(b)
    b.merge(a)
    assert a.value() == b.value() == frozenset({"x"})


def test_orset_remove_takes_only_observed_adds() -> None:
    a, b, c = ORSet(), ORSet(), ORSet()
    c.merge(a.add("a", "x"))
    c.remove("c", "x")
    b.add("b", "x")  # c never saw this add
    for s in (a, b):
        c.merge(s)
    assert "x" in c
    c.remove("c", "x")
    a.merge(c)
    b.merge(c)
    assert "x" not in a and "x" not in b


def test_orset_remove_delta_before_add_delta_stays_removed() -> None:
    """Out-of-order delivery: the context in the remove delta suppresses the late add."""
    origin, late = ORSet(), ORSet()
    add = origin.add("a", "x")
    rem = origin.remove("a", "x")
    late.merge(rem)
    late.merge(add)
    assert "x" not in late
    assert late == origin


def test_orset_is_tombstone_free() -> None:
    s = ORSet()
    for i in range(2000):
        s.add("a", i)
        s.add("b", -i)
    for i in range(2000):
        s.remove("c", i)
        s.remove("c", -i)
    st_ = s.stats()
    assert s.value() == frozenset()
    assert st_["dots"] == 0
    assert st_["context_vv"] == 2 and st_["context_cloud"] == 0  # one integer per replica
    assert len(encode(s)) < 40


def test_orset_readd_supersedes_older_dots() -> None:
    s = ORSet()
    for _ in range(100):
        s.add("a", "x")
    assert s.stats()["dots"] == 1


def test_orset_clear_only_clears_what_it_saw() -> None:
    a, b = ORSet(), ORSet()
    for e in ("x", "y"):
        b.merge(a.add("a", e))
    a.add("a", "z")
    b.clear("b")
    a.merge(b)
    assert a.value() == frozenset({"z"})


@given(
    st.lists(st.tuples(st.booleans(), elements()), max_size=40), st.randoms(use_true_random=False)
)
def test_orset_delta_shuffle_equals_sequential(script: list, rnd: object) -> None:
    """Deltas of one replica delivered in any order, with duplicates, give the same state."""
    origin = ORSet()
    deltas = [origin.add("a", e) if add else origin.remove("a", e) for add, e in script]
    shuffled = deltas + deltas[: len(deltas) // 2]
    rnd.shuffle(shuffled)  # type: ignore[attr-defined]
    replica = ORSet()
    for d in shuffled:
        replica.merge(d)
    assert replica == origin


class _Counting(DotContext):
    """A DotContext that counts membership tests: a proxy for the work a join does."""

    calls = 0

    def contains(self, replica: str, seq: int) -> bool:
        _Counting.calls += 1
        return super().contains(replica, seq)


@pytest.mark.parametrize("op", ["add", "remove", "readd"])
def test_orset_delta_merge_work_does_not_depend_on_set_size(op: str) -> None:
    """Merging a one-element delta touches the same number of dots at 1k and at 50k elements."""
    work = []
    for n in (1_000, 50_000):
        origin = ORSet()
        for i in range(n):
            origin.add("a", i)
        replica = decode(encode(origin))
        ctx = _Counting()
        ctx.vv, ctx.cloud = replica._ctx.vv, replica._ctx.cloud
        replica._ctx = ctx
        if op == "add":
            delta = origin.add("b", "new")
        elif op == "remove":
            delta = origin.remove("b", n // 2)
        else:
            delta = origin.add("b", n // 3)
        removed_before = replica.stats()["dots"]
        _Counting.calls = 0
        replica.merge(delta)
        work.append((_Counting.calls, removed_before - replica.stats()["dots"]))
        assert replica == origin
    assert work[0] == work[1]
