"""Semantics of LWWRegister (HLC order, replica tie-break), MVRegister and EWFlag."""

from __future__ import annotations

import pytest

from crdtcoord import (
    HLC,
    EWFlag,
    InvalidArgument,
    LWWRegister,
    MVRegister,
    Timestamp,
    decode,
    encode,
)


def test_lww_later_timestamp_wins_in_any_merge_order() -> None:
    a, b = LWWRegister(), LWWRegister()
    a.assign("a", "old", Timestamp(100, 0))
    b.assign("b", "new", Timestamp(100, 1))
    x, y = a.copy(), b.copy()
    x.merge(b)
    y.merge(a)
    assert x.value() == y.value() == "new"
    assert x.writer == "b"


def test_lww_equal_timestamps_break_ties_by_replica_id() -> None:
    a, b = LWWRegister(), LWWRegister()
    a.assign("node-a", 1, Timestamp(5, 0))
    b.assign("node-b", 2, Timestamp(5, 0))
    a.merge(b)
    assert a.value() == 2 and a.writer == "node-b"
    b.merge(LWWRegister())
    assert b.value() == 2


def test_lww_refuses_an_explicit_stale_timestamp() -> None:
    r = LWWRegister()
    r.assign("a", 1, Timestamp(10, 0))
    before = r.copy()
    with pytest.raises(InvalidArgument, match="not newer"):
        r.assign("a", 2, Timestamp(9, 5))
    assert r == before


def test_lww_values_are_copies_and_normalized() -> None:
    r = LWWRegister()
    v = {"b": [1, 2], "a": (3, -0.0)}
    r.assign("a", v, Timestamp(1))
    v["b"].append(99)
    out = r.value()
    assert out == {"a": [3, 0.0], "b": [1, 2]}
    out["a"].append(1)  # type: ignore[index, union-attr]
    assert r.value() == {"a": [3, 0.0], "b": [1, 2]}
    assert LWWRegister().value() is None


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), {1: "x"}, {1, 2}, object(), 2**64])
def test_lww_rejects_values_outside_the_domain(bad: object) -> None:
    with pytest.raises(InvalidArgument):
        LWWRegister().assign("a", bad, Timestamp(1))  # type: ignore[arg-type]


def test_true_and_one_are_different_values() -> None:
    a, b = LWWRegister(), LWWRegister()
    a.assign("a", True, Timestamp(1))
    b.assign("a", 1, Timestamp(1))
    assert a != b  # equal in Python, different states: equality is by canonical bytes
    x, y = a.copy(), b.copy()
    x.merge(b)
    y.merge(a)
    assert x == y


def test_hlc_keeps_causally_later_write_under_clock_skew() -> None:
    """Node a's clock runs 400 ms ahead. Node b reads a's write and overwrites it 50 ms later
    (real time). With wall-clock timestamps b's write would lose; with HLC it wins."""
    real = [10_000]
    clock_a = HLC(lambda: real[0] + 400)
    clock_b = HLC(lambda: real[0])
    reg_a, reg_b = LWWRegister(), LWWRegister()

    reg_a.assign("a", "from-a", clock_a)
    reg_b.merge(reg_a)  # b observes a's write
    real[0] += 50
    wall_stamp = Timestamp(real[0])  # what a wall-clock LWW would use
    assert wall_stamp < reg_b.timestamp  # type: ignore[operator]
    reg_b.assign("b", "from-b", clock_b)  # the HLC orders it after what b has seen
    reg_a.merge(reg_b)
    assert reg_a.value() == reg_b.value() == "from-b"


def test_mvregister_keeps_concurrent_values_until_overwritten() -> None:
    a, b = MVRegister(), MVRegister()
    a.assign("a", "x")
    b.assign("b", "y")
    a.merge(b)
    assert a.value() == ("x", "y")
    a.assign("a", {"k": [1]})
    b.merge(a)
    assert b.value() == ({"k": [1]},)
    assert b.stats()["dots"] == 1


def test_mvregister_deduplicates_equal_concurrent_values() -> None:
    a, b = MVRegister(), MVRegister()
    a.assign("a", 5)
    b.assign("b", 5)
    a.merge(b)
    assert a.value() == (5,)
    assert a.stats()["dots"] == 2


def test_ewflag_enable_wins_over_concurrent_disable() -> None:
    a, b = EWFlag(), EWFlag()
    b.merge(a.enable("a"))
    b.disable("b")
    a.enable("a")
    a.merge(b)
    assert a.value() is True
    a.disable("a")
    b.merge(a)
    assert a.value() is False and b.value() is False


def test_value_nesting_limit_matches_the_decoder() -> None:
    def deep(n: int) -> object:
        v: object = 1
        for _ in range(n):
            v = [v]
        return v

    ok = LWWRegister()
    ok.assign("a", deep(32), Timestamp(1))  # type: ignore[arg-type]
    assert decode(encode(ok)) == ok
    with pytest.raises(InvalidArgument, match="nests too deeply"):
        LWWRegister().assign("a", deep(33), Timestamp(1))  # type: ignore[arg-type]
