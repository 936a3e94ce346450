"""The Document type on its own: the strict v1 reader, validation before the live document is
touched, pending updates, the digest, anti-entropy deltas, client ids and the ops."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pycrdt import Doc, Map, Text

from crdtcoord import CodecError, Document, InvalidArgument, InvalidUpdate, decode, encode
from crdtcoord.documents import parse_state_vector, parse_update
from crdtcoord.documents.document import REMOTE
from tests.documents.hostile import half_applying_updates, sample_doc

#: Made by yjs 13.6.33 (``Y.encodeStateAsUpdateV2`` / ``Y.encodeStateAsUpdate``) for a doc with
#: client id 42, text ``t`` = "héllo" and map ``m`` = {k: 1}.
YJS_V2 = bytes.fromhex("0000012a0000030400280e097468c3a96c6c6f6d6b0105410001010001010102007d0100")
YJS_V1 = bytes.fromhex("01022a00040101740668c3a96c6c6f2801016d016b017d0100")


def live(actor: str = "n1/1", key: str = "doc") -> Document:
    d = Document()
    d.adopt(actor, key)
    return d


def snapshot(d: Document) -> tuple[bytes, bytes, object, bytes]:
    """Everything that must not change when an update is refused."""
    return d.doc.get_state(), d.doc.get_update(), d.value(), d.content_digest()


# ---------------------------------------------------------------- the strict v1 reader


def test_the_reader_accepts_what_pycrdt_and_yjs_write_and_reports_their_clocks() -> None:
    doc = sample_doc()
    p = parse_update(doc.get_update())
    assert p.structs == {doc.client_id: (0, parse_state_vector(doc.get_state())[doc.client_id])}
    assert p.roots == {"t": "text", "m": "map"} or p.roots["m"] == "map"
    y = parse_update(YJS_V1)
    assert y.structs == {42: (0, 6)} and y.roots == {"t": "text", "m": "map"}


@pytest.mark.parametrize(
    ("bad", "why"),
    [
        (YJS_V2, "v2"),
        (YJS_V1 + b"\x00", "after the end"),
        (YJS_V1[:-1], "truncated"),
        (b"", "truncated"),
        (b"\x00", "truncated"),
        (b"\x01\xff\xff\xff\xff\xff\xff\xff\xff\x7f", "beyond 2\\*\\*53"),
        (b"\x01" + b"\xff" * 12 + b"\x01", "too long"),
    ],
)
def test_v2_junk_and_truncated_updates_are_refused_with_a_reason(bad: bytes, why: str) -> None:
    with pytest.raises(CodecError, match=why):
        parse_update(bad)


def test_pycrdt_itself_would_silently_drop_a_v2_update() -> None:
    """Why the reader exists: pycrdt accepts a v2 update as a no-op (reference/pycrdt.md)."""
    d: Doc = Doc()
    d.apply_update(YJS_V2)
    assert d.get_state() == b"\x00"
    with pytest.raises(InvalidUpdate, match="v2"):
        live().apply_update(YJS_V2)


@settings(max_examples=300)
@given(st.data())
def test_mutated_updates_are_refused_or_applied_whole_never_half(data: st.DataObject) -> None:
    """Bit flips, truncations and insertions: the document either refuses the update and is
    exactly as before, or takes it (it may be decodable garbage: v1 has no checksum)."""
    src = sample_doc(data.draw(st.integers(0, 5)))
    u = bytearray(src.get_update())
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(u) - 1))
        u[i] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        u = u[: data.draw(st.integers(0, len(u)))]
    d = live()
    d.apply(Document.SetKey("m", "before", "x"), "n1")
    before = snapshot(d)
    try:
        d.apply_update(bytes(u))
    except InvalidUpdate:
        assert snapshot(d) == before
        # and the document still works afterwards
        d.apply(Document.InsertText("t", 0, "ok"), "n1")
        assert d.value()["t"].startswith("ok")


def test_a_decodable_update_that_does_not_integrate_leaves_the_document_unchanged() -> None:
    """pycrdt half-applies some decodable updates (it raises after changing the doc); the
    shadow document takes the hit instead."""
    found = half_applying_updates(3)
    assert found, "no half-applying mutation found: the test lost its teeth"
    for u in found:
        d = live()
        d.apply(Document.InsertText("t", 0, "mine"), "n1")
        before = snapshot(d)
        with pytest.raises(InvalidUpdate, match="does not integrate"):
            d.apply_update(u)
        assert snapshot(d) == before


# ---------------------------------------------------------------- ops and values


def test_ops_edit_by_characters_and_values_read_back_as_pycrdt_gives_them() -> None:
    d = live()
    d.apply(Document.InsertText("t", 0, "héllo ☕"), "n1")
    d.apply(Document.InsertText("t", 2, "X"), "n1")
    d.apply(Document.DeleteText("t", 0, 1), "n1")
    d.apply(Document.SetKey("m", "n", 3), "n1")
    d.apply(Document.SetKey("m", "gone", "x"), "n1")
    d.apply(Document.DeleteKey("m", "gone"), "n1")
    assert d.value() == {"m": {"n": 3.0}, "t": "éXllo ☕"}


@pytest.mark.parametrize("bad", [2**53, -(2**53), 2**64, [1, 2**60], {"x": {"y": 2**70}}])
def test_ints_beyond_2_53_are_refused_at_the_api(bad: object) -> None:
    with pytest.raises(InvalidArgument, match="2\\*\\*53"):
        Document.SetKey("m", "k", bad)


def test_a_pycrdt_panic_in_an_edit_is_an_invalid_argument_and_the_doc_goes_on() -> None:
    d = live()
    d.apply(Document.SetKey("m", "k", 1), "n1")
    before = snapshot(d)

    def huge(doc: Doc) -> None:
        doc.get("m", type=Map)["big"] = 2**64

    with pytest.raises(InvalidArgument, match="pycrdt refused"):
        d.edit(huge)
    assert snapshot(d) == before
    d.apply(Document.SetKey("m", "k", 2), "n1")
    assert d.value()["m"]["k"] == 2.0


def test_root_kinds_conflict_is_refused() -> None:
    d = live()
    d.root("x", "text")
    with pytest.raises(InvalidArgument, match="is a text"):
        d.root("x", "map")


# ---------------------------------------------------------------- replication semantics


def test_remote_updates_are_applied_under_the_remote_origin_and_not_taken_as_local() -> None:
    a, b = live("a/1"), live("b/1")
    seen: list[object] = []
    text = b.root("t", "text")  # (kept: pycrdt drops the observer with the object)
    sub = text.observe(lambda ev: seen.append(ev.transaction.origin))
    b.merge(a.apply(Document.InsertText("t", 0, "hi"), "a"))
    assert seen == [REMOTE]
    text.unobserve(sub)
    assert not b.has_local() and b.take_local().is_empty_delta()


def test_direct_edits_are_captured_as_local_deltas_for_peers() -> None:
    a, b = live("a/1"), live("b/1")
    hooked: list[int] = []
    a.on_local_edit = lambda: hooked.append(1)
    text = a.root("t", "text")
    text += "typed"
    a.root("m", "map")["k"] = "v"
    assert hooked and a.has_local()
    delta = a.take_local()
    assert b.merge(decode(encode(delta)))
    assert b.value() == a.value() == {"m": {"k": "v"}, "t": "typed"}


def test_updates_before_their_dependencies_stay_pending_are_relayed_and_counted_in_the_digest() -> (
    None
):
    a, b, c = live("a/1"), live("b/1"), live("c/1")
    d1 = a.apply(Document.InsertText("t", 0, "hello"), "a")
    d2 = a.apply(Document.InsertText("t", 5, " world"), "a")
    empty = c.content_digest()
    assert b.merge(d2)  # (its dependency is missing: held as pending)
    assert b.value().get("t", "") == "" and b.content_digest() != empty
    # b relays what it cannot integrate: c gets it from b, the rest from a
    c.merge(b.delta_since(c.causal_summary()))
    assert c.content_digest() == b.content_digest()
    c.merge(d1)
    b.merge(d1)
    assert b.value() == c.value() == a.value() == {"t": "hello world"}
    assert b.content_digest() == c.content_digest() == a.content_digest()


def test_the_digest_tells_apart_replicas_whose_state_vectors_are_equal() -> None:
    a, b = live("a/1"), live("b/1")
    b.merge(a.apply(Document.InsertText("t", 0, "abcdef"), "a"))
    assert a.content_digest() == b.content_digest()
    sv = a.causal_summary()
    a.apply(Document.DeleteText("t", 1, 2), "a")
    assert a.causal_summary() == sv and a.content_digest() != b.content_digest()
    b.merge(a.delta_since(b.causal_summary()))
    assert a.content_digest() == b.content_digest() and b.value() == {"t": "adef"}


def test_one_changed_character_in_a_big_document_ships_a_small_delta() -> None:
    a, b = live("a/1"), live("b/1")
    b.merge(a.apply(Document.InsertText("t", 0, "x" * 1_000_000), "a"))
    a.apply(Document.InsertText("t", 500, "Y"), "a")
    delta = a.delta_since(b.causal_summary())
    assert len(encode(delta)) < 200
    b.merge(delta)
    assert b.content_digest() == a.content_digest()
    # the delta names its sender's state: equal digests now, so nothing goes back
    sender = delta.sender_summary()
    assert sender is not None and sender == (a.causal_summary(), b.content_digest())


def test_a_refused_peer_delta_raises_a_codec_error_and_changes_nothing() -> None:
    d = live()
    d.apply(Document.InsertText("t", 0, "x"), "n1")
    before = snapshot(d)
    bad = encode(Document.from_update(YJS_V1))[:-3] + b"\x00\x00\x00"
    with pytest.raises(CodecError):
        d.merge(decode(bad))
    assert snapshot(d) == before


@settings(max_examples=40)
@given(
    st.lists(
        st.tuples(st.sampled_from("abc"), st.integers(0, 3), st.text("xé☕", max_size=3)),
        max_size=12,
    )
)
def test_merge_is_commutative_associative_and_idempotent(
    script: list[tuple[str, int, str]],
) -> None:
    reps = {r: live(f"{r}/1") for r in "abc"}
    deltas = []
    for r, op, s in script:
        if op == 0:
            deltas.append(reps[r].apply(Document.InsertText("t", len(s), s or "q"), r))
        elif op == 1:
            deltas.append(reps[r].apply(Document.DeleteText("t", 0, 1), r))
        elif op == 2:
            deltas.append(reps[r].apply(Document.SetKey("m", s or "k", len(s)), r))
        else:
            deltas.append(reps[r].apply(Document.DeleteKey("m", s or "k"), r))
    a, b, c = reps["a"], reps["b"], reps["c"]
    ab = a.copy()
    ab.merge(b)
    ba = b.copy()
    ba.merge(a)
    assert ab == ba
    ab_c = ab.copy()
    ab_c.merge(c)
    bc = b.copy()
    bc.merge(c)
    a_bc = a.copy()
    a_bc.merge(bc)
    assert ab_c == a_bc
    again = ab_c.copy()
    assert not again.merge(ab_c) and again == ab_c
    assert again.value() == a_bc.value()


# ---------------------------------------------------------------- client ids


def test_client_ids_come_from_the_actor_and_key_and_a_restored_state_keeps_its_own() -> None:
    a = live("n1/100", "doc")
    b = live("n1/100", "doc")
    assert a.client_id == b.client_id  # (same incarnation, same key)
    assert live("n1/101", "doc").client_id != a.client_id  # a new incarnation: a new id
    assert live("n1/100", "other").client_id != a.client_id
    a.apply(Document.InsertText("t", 0, "mine"), "n1")
    restored = decode(encode(a.copy()))
    assert isinstance(restored, Document)
    restored.adopt("n1/100", "doc", restored=True)
    assert restored.client_id == a.client_id and restored.collisions == 0
    restored.apply(Document.InsertText("t", 4, "!"), "n1")
    assert restored.value() == {"t": "mine!"}


def test_a_remote_writer_using_our_client_id_makes_us_switch_and_nothing_diverges() -> None:
    a = live("n1/1")
    cid = a.client_id
    a.apply(Document.InsertText("t", 0, "a"), "n1")
    impostor: Doc = Doc(client_id=cid)
    impostor.apply_update(a.doc.get_update())
    impostor.get("t", type=Text).insert(1, "Z")
    a.apply_update(impostor.get_update(a.doc.get_state()))
    assert a.collisions == 1 and a.client_id != cid
    a.apply(Document.InsertText("t", 0, "b"), "n1")
    impostor.apply_update(a.doc.get_update(impostor.get_state()))
    assert str(impostor.get("t", type=Text)) == a.value()["t"] == "baZ"


def test_a_state_taken_in_from_a_peer_that_holds_our_id_switches_at_once() -> None:
    other = live("x/1", "doc")
    other.apply(Document.InsertText("t", 0, "x"), "x")
    fresh = other.copy()
    fresh.adopt("x/1", "doc")  # (not restored: structs under the id are someone else's)
    assert fresh.collisions == 1 and fresh.client_id != other.client_id


def test_root_kinds_are_found_through_origins_when_the_naming_item_was_deleted() -> None:
    """A text whose first characters were deleted names its root only on a deleted item; a map
    key set twice names its root only on the first value. The reader follows the origins."""
    src: Doc = Doc(client_id=9)
    text = src.get("t", type=Text)
    text.insert(0, "hello world")
    del text[0:6]
    m = src.get("m", type=Map)
    m["k"] = 1
    m["k"] = 2
    assert parse_update(src.get_update()).roots == {"t": "text", "m": "map"}
    d = live()
    d.apply_update(src.get_update())
    assert d.value() == {"m": {"k": 2.0}, "t": "world"}
