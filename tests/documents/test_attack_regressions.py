"""Regressions from the fault-injection review of documents (each failed before its fix)."""

from __future__ import annotations

from typing import Any

import pytest
from pycrdt import Doc, Map, Text, XmlFragment

from crdtcoord import Document, InvalidUpdate, Simulation
from crdtcoord.documents.sync import (
    MAX_ROOM_AWARENESS,
    SYNC_STEP1,
    SYNC_STEP2,
    SYNC_UPDATE,
    ProtocolViolation,
    Room,
    decode_frame,
    encode_awareness,
    encode_sync,
)


def live(actor: str = "n1/1") -> Document:
    d = Document()
    d.adopt(actor, "doc")
    return d


def three_updates() -> list[bytes]:
    src: Doc = Doc(client_id=42)
    t = src.get("t", type=Text)
    out = []
    for s in ("hello", "A", "BC"):
        sv = src.get_state()
        t.insert(len(str(t)), s)
        out.append(src.get_update(sv))
    return out


def test_the_same_pending_data_in_two_byte_forms_does_not_start_an_exchange_storm() -> None:
    """u2 and u3 reach one node apart (u1 never): the pending set travels merged, so replicas
    held it in different byte forms and their digests never agreed (thousands of messages per
    second). The digest now covers what pending updates hold, not their bytes."""
    sim = Simulation(3, seed=1)
    a, b, _c = sim.names
    sim.update(a, "doc", Document, Document.InsertText("t", 0, "x"))
    sim.run_for(0.5)
    _u1, u2, u3 = three_updates()
    sim.update(b, "doc", Document, Document.Apply(u2))
    sim.update(b, "doc", Document, Document.Apply(u3))
    assert sim.quiesce(timeout=20)
    sent = sim.stats.messages_sent
    sim.run_for(5.0)
    assert sim.stats.messages_sent - sent < 100  # (in-sync rounds only; was 8k-72k)


def test_a_shared_type_a_client_nests_anywhere_keeps_the_document_readable() -> None:
    src: Doc = Doc(client_id=5)
    src.get("m", type=Map)["frag"] = XmlFragment()
    src.get("t", type=Text).insert(0, "hello")
    d = live()
    d.apply_update(src.get_update())
    assert d.value() == {"m": {"frag": ""}, "t": "hello"}  # (pycrdt's to_py raised)


def test_a_refused_delta_teaches_no_root_kinds() -> None:
    d = live()
    d.apply(Document.InsertText("t", 0, "hello"), "n1")
    before = (d.value(), d.content_digest())
    from tests.documents.hostile import half_applying_update

    bad = Document.from_update(half_applying_update(), roots={"zzz": "map", "t": "xml"})
    with pytest.raises(InvalidUpdate):
        d.merge(bad)
    assert (d.value(), d.content_digest()) == before
    d.apply(Document.InsertText("t", 5, "!"), "n1")  # ('t' is still a text)


def test_deeply_nested_json_content_is_refused_not_a_crash() -> None:
    """JSON content nested 50,000 deep raised RecursionError (a 500 / a 1006 close)."""
    from crdtcoord.documents._v1 import write_var_uint as v

    nested = ("[" * 50000 + "]" * 50000).encode()
    # one client, one struct: an item of JSON content at the root array "a", no delete set
    update = (
        b"\x01\x01" + v(3) + v(0) + b"\x02" + v(1) + v(1) + b"a" + v(1) + v(len(nested))
        + nested + b"\x00"
    )  # fmt: skip
    with pytest.raises(InvalidUpdate, match="JSON"):
        live().apply_update(update)
    deep = "[" * 20000 + "]" * 20000  # (within the 64 KB a state may take)
    with pytest.raises(ProtocolViolation, match="JSON"):
        decode_frame(encode_awareness([(1, 1, deep)]))


class Host:
    """A room host over one Document, without a node."""

    def __init__(self, doc: Document | None) -> None:
        self.doc = doc

    def peek(self) -> Document | None:
        return self.doc

    def apply_client_update(self, update: bytes) -> None:
        assert self.doc is not None
        self.doc.apply(Document.Apply(update), "n1")


def test_a_direct_edit_reaches_clients_only_once_committed() -> None:
    """A node-side edit was queued for clients at once and sent with the next commit of
    anything else, before it was written: a crash then made the node reuse its clock."""
    doc = live()
    doc.apply(Document.InsertText("t", 0, "hello"), "n1")
    room = Room(Host(doc))
    sent: list[bytes] = []
    room.open(sent.append)
    sent.clear()
    text = doc.root("t", "text")
    text += "!"  # a direct edit, not committed yet
    room.committed()  # (a peer's change committed meanwhile)
    assert not [f for f in map(decode_frame, sent) if f.sub == SYNC_UPDATE]
    doc.take_local()  # committed (and, in a node, written before the next committed())
    room.committed()
    assert [f for f in map(decode_frame, sent) if f.sub == SYNC_UPDATE]


def test_step2_sends_pending_updates_apart() -> None:
    doc = live()
    _u1, u2, _u3 = three_updates()
    doc.apply_update(u2)  # pending
    room = Room(Host(doc))
    sent: list[bytes] = []
    s = room.open(sent.append)
    sent.clear()
    s.receive(encode_sync(SYNC_STEP1, b"\x00"))
    frames = [decode_frame(f) for f in sent]
    assert frames[0].sub == SYNC_STEP2 and frames[1].sub == SYNC_UPDATE
    assert frames[1].payload == doc.pending_updates()[0]


def test_awareness_is_owned_by_its_connection_and_bounded_per_room() -> None:
    room = Room(Host(live()))
    got: dict[str, list[Any]] = {"a": [], "b": []}
    a = room.open(got["a"].append)
    b = room.open(got["b"].append)
    a.receive(encode_awareness([(7, 1, '{"user": "a"}')]))
    b.receive(encode_awareness([(7, 2, "null")]))  # b may not remove a's presence
    assert room.awareness == {7: (1, '{"user": "a"}')}
    many = [(1000 + i, 1, "{}") for i in range(1000)]
    with pytest.raises(ProtocolViolation, match="too many awareness"):
        for k in range(0, MAX_ROOM_AWARENESS + 1000, 1000):
            b.receive(encode_awareness([(c + k, 1, t) for c, _, t in many]))
