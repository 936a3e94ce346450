"""Ops as data: every type's ops apply exactly their delta, validate their arguments, round-trip
through the codec, and decoding refuses anything else with CodecError."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from crdtcoord import (
    HLC,
    CodecError,
    GCounter,
    InvalidArgument,
    Lease,
    LWWRegister,
    ORMap,
    ORSet,
    PNCounter,
    UpdateContext,
    decode_op,
    encode,
    encode_op,
)
from crdtcoord.testing import Env, apply_op, assert_delta_mutator, related_states
from crdtcoord.testing.strategies import REPLICAS, ops
from crdtcoord.types import ALL_TYPES, CRDTBase


@pytest.mark.parametrize("kind", ALL_TYPES, ids=lambda t: t.__name__)
@given(data=st.data())
def test_ops_round_trip_through_the_codec(kind: type[CRDTBase], data: st.DataObject) -> None:
    op = data.draw(ops(kind))
    blob = encode_op(op)
    back = decode_op(blob)
    assert back == op and type(back) is type(op)
    assert encode_op(back) == blob  # canonical


@pytest.mark.parametrize("kind", ALL_TYPES, ids=lambda t: t.__name__)
@given(data=st.data())
def test_an_op_applies_exactly_its_delta(kind: type[CRDTBase], data: st.DataObject) -> None:
    x, other = data.draw(related_states(kind, 2))
    op = data.draw(ops(kind))
    assert_delta_mutator(x, op, data.draw(st.sampled_from(REPLICAS)), Env(), other)


def test_ops_are_checked_when_built() -> None:
    with pytest.raises(InvalidArgument):
        GCounter.Increment(-1)
    with pytest.raises(InvalidArgument):
        ORSet.Add(1.5)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument):
        Lease.Acquire("", 10)
    with pytest.raises(InvalidArgument):
        Lease.Acquire("h", 0)
    with pytest.raises(InvalidArgument, match="ORMap can hold"):
        ORMap.Update("k", Lease.Acquire("h", 10))
    assert LWWRegister.Assign((1, 2)).value == [1, 2]  # normalized like stored values


def test_an_op_of_another_type_is_refused() -> None:
    c = PNCounter()
    with pytest.raises(InvalidArgument, match="not an op of PNCounter"):
        c.apply(GCounter.Increment(1), "a")
    assert c.is_bottom()


def test_time_dependent_ops_need_a_clock() -> None:
    r = LWWRegister()
    with pytest.raises(InvalidArgument, match="needs a clock"):
        r.apply(LWWRegister.Assign(1), "a")
    assert r.is_bottom()
    r.apply(LWWRegister.Assign(1), UpdateContext("a", HLC(lambda: 5)))
    assert r.value() == 1


def test_lease_ops_stamp_after_the_grant_they_see() -> None:
    """A lease op's time is after the record it saw, even from a replica whose clock lags."""
    ahead = UpdateContext("a", HLC(lambda: 10_000))
    behind = UpdateContext("b", HLC(lambda: 9_800))  # within the max offset
    lease = Lease()
    lease.apply(Lease.Acquire("h1", 100), ahead)
    lease.apply(Lease.Release("h1"), behind)
    info = lease.value()
    assert info is not None and info.holder is None and info.granted_at.wall >= 10_000


def test_ormap_refuses_a_callback_that_returns_part_of_its_change() -> None:
    """Regression (issue: a replica showed {x, y} but shipped {y} and later lost x)."""
    m = ORMap()
    m.update("rA", "k", ORSet, lambda s, ctx: s.add(ctx.replica, "w"))
    before = encode(m)
    with pytest.raises(InvalidArgument, match="beyond the delta it returned"):
        m.update(
            "rA", "k", ORSet, lambda s, ctx: (s.add(ctx.replica, "x"), s.add(ctx.replica, "y"))[1]
        )
    assert encode(m) == before and m.value() == {"k": frozenset({"w"})}

    def both(s: ORSet, ctx: UpdateContext) -> ORSet:
        d = s.add(ctx.replica, "x")
        d.merge(s.add(ctx.replica, "y"))
        return d

    delta = m.update("rA", "k", ORSet, both)
    peer = ORMap()
    peer.merge(delta)
    assert m.value() == {"k": frozenset({"w", "x", "y"})}
    assert m.copy().value() == m.value() and peer.value()["k"] >= {"x", "y"}


def test_ormap_ops_nest() -> None:
    m = ORMap()
    ctx = UpdateContext("a", HLC(lambda: 7))
    m.apply(ORMap.Update("cfg", ORMap.Update("owner", LWWRegister.Assign("svc"))), ctx)
    m.apply(ORMap.Update("hits", GCounter.Increment(2)), ctx)
    assert m.value() == {"cfg": {"owner": "svc"}, "hits": 2}
    m.apply(ORMap.Remove("hits"), ctx)
    assert m.value() == {"cfg": {"owner": "svc"}}


def _wire(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


@pytest.mark.parametrize(
    "wire",
    [
        [1, 1, [-1]],  # negative increment
        [1, 1, []],  # missing argument
        [1, 1, [1, 2]],  # extra argument
        [1, 9, [1]],  # no such op code
        [77, 1, [1]],  # no such type
        [5, 1, [1.5]],  # float element
        [9, 1, ["k", [10, 1, ["h", 5]]]],  # a lease op nested in a map
        [10, 1, ["", 5]],  # empty holder
        [10, 1, ["h", 0]],  # ttl 0
        [6, 1, [{"b": 1, "a": 2}]],  # value dict not in canonical order
        [1, 1, [True]],  # bool is not an amount
    ],
)
def test_bad_op_bytes_are_refused(wire: Any) -> None:
    with pytest.raises(CodecError):
        decode_op(_wire(wire))


@given(st.binary(max_size=64))
def test_random_bytes_never_decode_to_anything_but_an_op_or_codec_error(blob: bytes) -> None:
    try:
        op = decode_op(blob)
    except CodecError:
        return
    assert decode_op(encode_op(op)) == op


@given(data=st.data())
def test_mutated_op_bytes_raise_only_codec_error(data: st.DataObject) -> None:
    kind = data.draw(st.sampled_from(ALL_TYPES))
    blob = bytearray(encode_op(data.draw(ops(kind))))
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(blob) - 1))
        blob[i] = data.draw(st.integers(0, 255))
    try:
        op = decode_op(bytes(blob))
    except CodecError:
        return
    state = kind()
    apply_op(state, op, "a", Env(), check=True)  # whatever decodes is a valid op
