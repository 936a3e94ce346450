"""The wire format: canonical bytes, versions, strict limits, and fuzzing (only CodecError)."""

from __future__ import annotations

import random

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from crdtcoord import (
    BoundedCounter,
    CodecError,
    EWFlag,
    GCounter,
    GSet,
    Lease,
    Limits,
    LWWRegister,
    MVRegister,
    ORMap,
    ORSet,
    PNCounter,
    Timestamp,
    decode,
    digest,
    encode,
)
from crdtcoord.codec import TYPE_TAGS
from crdtcoord.testing import assert_roundtrip, elements, related_states, values
from crdtcoord.types import ALL_TYPES


def _decode_or_codec_error(data: bytes) -> object:
    """Decode; anything but a CodecError (or a valid, re-encodable object) fails the test."""
    try:
        x = decode(data)
    except CodecError as exc:
        assert "internal decoder error" not in str(exc), exc
        return None
    assert_roundtrip(x)
    return x


# ------------------------------------------------------------------ canonical form


@given(st.lists(elements(rich=True), max_size=12, unique_by=lambda e: repr(e)), st.randoms())
def test_sets_encode_canonically_whatever_the_insertion_order(xs: list, rnd: random.Random) -> None:
    a, b = ORSet(), ORSet()
    for e in xs:
        a.add("r", e)
    shuffled = list(xs)
    rnd.shuffle(shuffled)
    for e in shuffled:
        b.add("r", e)
    # Same elements, different dots: equalise dots by merging both ways, then compare bytes.
    a.merge(b)
    b.merge(a)
    assert encode(a) == encode(b) and digest(a) == digest(b)
    assert_roundtrip(a)


@given(values(rich=True))
def test_register_values_roundtrip(v: object) -> None:
    r = LWWRegister()
    r.assign("a", v, Timestamp(1))  # type: ignore[arg-type]
    assert_roundtrip(r)
    m = MVRegister()
    m.assign("a", v)  # type: ignore[arg-type]
    assert_roundtrip(m)


@given(st.lists(elements(rich=True), max_size=6))
def test_map_keys_roundtrip(keys: list) -> None:
    m = ORMap()
    for k in keys:
        m.update("a", k, GCounter, lambda c, ctx: c.increment(ctx.replica))
    assert_roundtrip(m)


def test_envelope_shape_and_tags() -> None:
    raw = msgpack.unpackb(encode(GCounter()), raw=False)
    assert raw == [1, 1, []]
    assert {t.__name__: t.TYPE_TAG for t in ALL_TYPES} == TYPE_TAGS
    assert sorted(TYPE_TAGS.values()) == list(range(1, 11))
    assert len(digest(GCounter())) == 16


# ------------------------------------------------------------------ clear errors


def _pack(obj: object) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


@pytest.mark.parametrize(
    ("obj", "message"),
    [
        ([99, 1, []], "unknown type tag 99"),
        ([1, 7, []], "unsupported version 7 of GCounter"),
        ([1, 1, [["b", 1], ["a", 2]]], "canonical order"),
        ([1, 1, [["a", 1], ["a", 2]]], "canonical order"),
        ([1, 1, [["a", 0]]], "outside"),
        ([1, 1, [["a", -1]]], "outside"),
        ([1, 1, [["", 1]]], "replica id"),
        ([1, 1, [["a", 1.0]]], "expected an int"),
        ([1, 1, {"a": 1}], "expected an array"),
        ([1, 1], "expected 3 items"),
        ([5, 1, [[["a", 1, []]], [["x", [0, 2]]]]], "not in the causal context"),
        ([5, 1, [[["a", 2, []]], [["x", [0, 1]], ["y", [0, 1]]]]], "appears twice"),
        ([5, 1, [[["a", 1, [2]]], []]], "dot cloud not canonical"),
        ([5, 1, [[["a", 2, []]], [["y", [0, 1]], ["x", [0, 2]]]]], "elements"),
        ([5, 1, [[["a", 1, []]], [[1.5, [0, 1]]]]], "not an element type"),
        ([5, 1, [[["a", 1, []]], [[True, [0, 1]]]]], "not an element type"),
        ([6, 1, [1, 0, "a", {1: 2}]], "dict key must be a str"),
        ([10, 1, ["h", 1, 1, [5, 0], [4, 0], "n"]], "expiry precedes"),
        # regressions from the kernel review:
        ([5, 1, [[["a", 1, []]], [["x", [0, 0]]]]], "dot seq 0"),
        ([5, 1, [[["a", 1, []]], [["x", [0, -5]]]]], "dot seq -5"),
        ([3, 1, [0, [], [["a", 5]]]], "negative rights"),
        ([6, 1, [1, 0, "r", {"b": 1, "a": 2}]], "canonical \\(sorted\\) order"),
        ([6, 1, [1, 0, "r", -0.0]], "-0.0 is not canonical"),
        ([9, 1, [[["a", 1, []]], [["k", [[0, 1, 0, [3, 1, [0, [], []]]]]]]]], "cannot be an ORMap"),
    ],
)
def test_malformed_states_get_a_clear_codec_error(obj: object, message: str) -> None:
    with pytest.raises(CodecError, match=message):
        decode(_pack(obj))


def test_duplicate_keys_in_a_value_map_are_rejected() -> None:
    # msgpack map with a duplicated key, written by hand: {"a": 1, "a": 2}
    dup = b"\x82\xa1a\x01\xa1a\x02"
    blob = _pack([6, 1, [1, 0, "r", 0]])[:-1] + dup
    with pytest.raises(CodecError, match="duplicate dict key"):
        decode(blob)


def test_limits_are_enforced() -> None:
    s = ORSet()
    for i in range(100):
        s.add("a", f"element-{i}")
    blob = encode(s)
    with pytest.raises(CodecError, match="exceeds the limit"):
        decode(blob, limits=Limits(max_bytes=len(blob) - 1))
    with pytest.raises(CodecError):
        decode(blob, limits=Limits(max_container=50))
    with pytest.raises(CodecError):
        decode(_pack([4, 1, ["x" * 100]]), limits=Limits(max_str=10))
    deep: object = "x"
    for _ in range(40):
        deep = [deep]
    with pytest.raises(CodecError, match="nests too deeply"):
        decode(_pack([4, 1, [deep]]))
    with pytest.raises(CodecError):
        decode(b"\x91" * 100_000 + b"\xc0")
    nested: object = [1, 1, []]
    for _ in range(40):
        nested = [9, 1, [[["a", 1, []]], [["k", [[0, 1, 0, nested]]]]]]
    with pytest.raises(CodecError, match="nest too deeply"):
        decode(_pack(nested))


@pytest.mark.parametrize("data", [b"", b"\xc1", b"\x93\x01\x01", b"\x01\x02", "text", None, 3])
def test_garbage_is_a_codec_error(data: object) -> None:
    with pytest.raises(CodecError):
        decode(data)  # type: ignore[arg-type]


def test_expect_checks_the_type() -> None:
    blob = encode(GCounter())
    assert isinstance(decode(blob, expect=GCounter), GCounter)
    with pytest.raises(CodecError, match="expected a ORSet"):
        decode(blob, expect=ORSet)


def test_ext_types_and_timestamps_are_refused() -> None:
    ext = msgpack.packb([4, 1, [msgpack.ExtType(5, b"xx")]])
    with pytest.raises(CodecError):
        decode(ext)


# ------------------------------------------------------------------ fuzzing


def _corpus() -> list[bytes]:
    """One non-trivial state of every type (several replicas, gaps in contexts, nesting)."""
    g = GCounter()
    p = PNCounter()
    bc = BoundedCounter(lower=-5)
    gs = GSet()
    for i, r in enumerate(["alpha", "beta", "gamma", "delta"]):
        g.increment(r, 1000 * i + 7)
        p.increment(r, 2**40 + i)
        p.decrement(r, i)
        bc.increment(r, 10 + i)
        gs.add(r, (r, i, b"\x00\xff", None))
    bc.transfer("alpha", "beta", 4)
    bc.decrement("beta", 12)
    orset, gap = ORSet(), ORSet()
    for i in range(6):
        orset.add("a", f"e{i}")
        gap.merge(orset.add("b", -i)) if i % 2 else orset.add("b", -i)
    orset.remove("a", "e2")
    gap.merge(orset.remove("c", "e4"))
    lww = LWWRegister()
    lww.assign("a", {"cfg": [1, 2.5, "x", None, True], "n": {"deep": b"\x01"}}, Timestamp(99, 3))
    mv1, mv2 = MVRegister(), MVRegister()
    mv1.assign("a", [1, 2])
    mv2.assign("b", {"k": "v"})
    mv1.merge(mv2)
    flag, flag2 = EWFlag(), EWFlag()
    flag.enable("a")
    flag2.enable("b")
    flag.merge(flag2)
    m = ORMap()
    m.update("a", "hits", GCounter, lambda c, ctx: c.increment(ctx.replica, 3))
    m.update("b", ("set", 1), ORSet, lambda s, ctx: s.add(ctx.replica, "x"))
    m.update(
        "a",
        "inner",
        ORMap,
        lambda i, ctx: i.update(ctx, 7, PNCounter, lambda c, cx: c.decrement(cx.replica)),
    )
    m.update("c", "reg", LWWRegister, lambda r, ctx: r.assign(ctx.replica, "v", Timestamp(5)))
    lease = Lease()
    lease.acquire("n1", "holder-1", Timestamp(1000, 2), 500)
    return [encode(x) for x in (g, p, bc, gs, orset, gap, lww, mv1, flag, m, lease)]


@pytest.fixture(scope="module")
def corpus() -> list[bytes]:
    return _corpus()


def test_every_truncation_is_a_codec_error(corpus: list[bytes]) -> None:
    for blob in corpus:
        for cut in range(len(blob)):
            with pytest.raises(CodecError):
                decode(blob[:cut])


def test_mutation_fuzz_only_raises_codec_error(corpus: list[bytes]) -> None:
    """20,000 seeded byte-level mutations of valid states: CodecError or a valid state."""
    rnd = random.Random(20261128)
    accepted = 0
    for i in range(20_000):
        data = bytearray(corpus[i % len(corpus)])
        for _ in range(rnd.randint(1, 4)):
            what = rnd.random()
            pos = rnd.randrange(len(data)) if data else 0
            if what < 0.5 and data:
                data[pos] = rnd.randrange(256)
            elif what < 0.7 and data:
                data[pos] ^= 1 << rnd.randrange(8)
            elif what < 0.85:
                data[pos:pos] = bytes(rnd.randrange(256) for _ in range(rnd.randint(1, 3)))
            elif data:
                del data[pos : pos + rnd.randint(1, 3)]
        if _decode_or_codec_error(bytes(data)) is not None:
            accepted += 1
    assert accepted < 20_000  # most mutations must be caught


@given(st.binary(max_size=200))
def test_random_bytes_only_raise_codec_error(data: bytes) -> None:
    _decode_or_codec_error(data)


_ANY = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=5)
    | st.binary(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=3), inner, max_size=3)
    ),
    max_leaves=20,
)


@given(st.sampled_from([t.TYPE_TAG for t in ALL_TYPES]), st.integers(0, 2), _ANY)
def test_structured_garbage_only_raises_codec_error(
    tag: int, version: int, payload: object
) -> None:
    _decode_or_codec_error(_pack([tag, version, payload]))


@given(related_states(ORMap, 1), st.data())
def test_structure_aware_mutation_of_valid_states(xs: list, data: st.DataObject) -> None:
    """Replace one node of a valid unpacked state with garbage: CodecError or a valid state."""
    tree = msgpack.unpackb(encode(xs[0]), raw=False, strict_map_key=False)
    paths: list[tuple[int, ...]] = []

    def walk(node: object, path: tuple[int, ...]) -> None:
        paths.append(path)
        if isinstance(node, list):
            for i, child in enumerate(node):
                walk(child, (*path, i))

    walk(tree, ())
    path = data.draw(st.sampled_from(paths))
    replacement = data.draw(_ANY)
    if not path:
        tree = replacement
    else:
        node = tree
        for i in path[:-1]:
            node = node[i]
        node[path[-1]] = replacement
    _decode_or_codec_error(_pack(tree))
