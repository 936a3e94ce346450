"""HLC (monotonicity, skew guard, causality under skew), version vectors, dot contexts."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crdtcoord import (
    HLC,
    Causality,
    ClockSkewError,
    DotContext,
    InvalidArgument,
    Timestamp,
    VersionVector,
)


def test_hlc_is_monotonic_when_the_physical_clock_steps_back() -> None:
    pt = [1000]
    c = HLC(lambda: pt[0])
    a = c.now()
    pt[0] = 500
    b = c.now()
    assert b > a and b.wall == 1000 and b.logical == 1
    pt[0] = 2000
    assert c.now() == Timestamp(2000, 0)


def test_hlc_update_follows_the_paper() -> None:
    pt = [100]
    c = HLC(lambda: pt[0], max_offset=1000)
    assert c.update(Timestamp(300, 4)) == Timestamp(300, 5)  # remote ahead: adopt it, c+1
    assert c.update(Timestamp(300, 9)) == Timestamp(300, 10)  # all equal: max(c)+1
    assert c.update(Timestamp(200, 50)) == Timestamp(300, 11)  # remote behind: local c+1
    pt[0] = 400
    assert c.update(Timestamp(300, 99)) == Timestamp(400, 0)  # physical time moved on


def test_hlc_rejects_or_flags_remote_timestamps_too_far_ahead() -> None:
    c = HLC(lambda: 1000, max_offset=500)
    last = c.now()
    with pytest.raises(ClockSkewError) as info:
        c.update(Timestamp(1501))
    assert info.value.max_offset == 500
    assert c.last == last  # unchanged
    assert c.update(Timestamp(1500)).wall == 1500  # exactly at the bound is fine
    lax = HLC(lambda: 1000, max_offset=500, strict=False)
    lax.update(Timestamp(5000))
    assert lax.skew_events == 1 and lax.max_seen_ahead == 4000


def test_timestamp_validation() -> None:
    with pytest.raises(InvalidArgument):
        Timestamp(-1)
    with pytest.raises(InvalidArgument):
        Timestamp(1, 2**63)
    assert str(Timestamp(5, 2)) == "5.2" and Timestamp(5).plus(10) == Timestamp(15, 0)


@given(
    st.lists(st.integers(-200, 200), min_size=3, max_size=3),
    st.lists(
        st.tuples(st.integers(0, 2), st.integers(0, 2), st.integers(0, 30)), min_size=1, max_size=60
    ),
)
def test_hlc_causality_and_bounds_under_skew(skews: list[int], script: list) -> None:
    """Messages between three skewed nodes: every receive is stamped after its send, every
    local event after the previous one, and l - pt stays below the maximum skew difference."""
    real = [10_000]
    clocks = [HLC(lambda s=s: real[0] + s, max_offset=1000) for s in skews]
    last = [Timestamp(0)] * 3
    for src, dst, gap in script:
        real[0] += gap
        sent = clocks[src].now()
        assert sent > last[src]
        last[src] = sent
        got = clocks[dst].update(sent)
        assert got > sent and got > last[dst]
        last[dst] = got
        for i, c in enumerate(clocks):
            assert c.last.wall - (real[0] + skews[i]) <= max(skews) - min(skews)
    assert max(c.last.logical for c in clocks) <= len(script) * 2


def test_version_vector_order() -> None:
    a = VersionVector({"a": 2, "b": 1})
    b = a.copy()
    b.increment("b")
    assert a.compare(b) is Causality.BEFORE and b.compare(a) is Causality.AFTER
    c = a.copy()
    c.increment("c")
    assert b.compare(c) is Causality.CONCURRENT and b.concurrent(c)
    assert a.compare(a.copy()) is Causality.EQUAL
    assert b.merge(c) and b == VersionVector({"a": 2, "b": 2, "c": 1})
    assert not b.merge(c)
    assert VersionVector({"a": 0}) == VersionVector()
    with pytest.raises(InvalidArgument):
        VersionVector({"a": -1})


@given(
    st.sets(st.tuples(st.sampled_from("abc"), st.integers(1, 12))),
    st.randoms(use_true_random=False),
)
def test_dot_context_is_canonical_and_compacts(dots: set, rnd: object) -> None:
    order = sorted(dots)
    rnd.shuffle(order)  # type: ignore[attr-defined]
    one, two = DotContext(), DotContext()
    for d in sorted(dots):
        one.add(*d)
    for d in order:
        two.add(*d)
    assert one == two
    assert set(one.dots()) == dots
    for r, top in one.vv.items():
        assert all(s > top + 1 for s in one.cloud.get(r, ()))
    half = DotContext()
    for d in order[: len(order) // 2]:
        half.add(*d)
    rest = DotContext()
    for d in order[len(order) // 2 :]:
        rest.add(*d)
    grows = bool(set(rest.dots()) - set(half.dots()))
    assert half.merge(rest) == grows
    assert half == one
    for d in dots:
        assert d in one
    assert one.next_dot("a").seq == max([s for r, s in dots if r == "a"], default=0) + 1
