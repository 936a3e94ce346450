"""Protocol messages: round trips, and bad messages rejected as a whole, changing nothing."""

from __future__ import annotations

import random
from typing import Any

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from crdtcoord import GCounter, Limits, ORMap, ORSet, Timestamp, VersionVector
from crdtcoord.codec import to_wire
from crdtcoord.engine import ALL, Engine, EngineConfig, Kind, ProtocolError, Send
from crdtcoord.engine.messages import (
    PROTOCOL_VERSION,
    Ack,
    AeOk,
    AeRoot,
    AeStep,
    Chunk,
    Delta,
    Entry,
    Leave,
    Message,
    Read,
    ReadReply,
    Want,
    decode_message,
    encode_message,
)
from crdtcoord.engine.tree import TreeItem
from crdtcoord.testing.cluster import ManualCluster

CFG = EngineConfig(cluster_id="prod", ae_enabled=False, gossip_membership=False)
TS = Timestamp(1_700_000_000_000, 3)


def _counter(n: int) -> GCounter:
    c = GCounter()
    c.increment("x/1", n)
    return c


BODIES: dict[Kind, Message] = {
    Kind.DELTA: Delta(
        7, 0, 3, (Entry("k", _counter(2)), Entry("l", ORSet(), VersionVector({"x/1": 2})))
    ),
    Kind.ACK: Ack(7, 0, 3),
    Kind.AE_ROOT: AeRoot("push-pull", b"\x01" * 16),
    Kind.AE_OK: AeOk(),
    Kind.AE_STEP: AeStep(
        9,
        "pull",
        True,
        (
            TreeItem(1, 3, b"\x00" * 16 * 8),
            TreeItem(2, 37, None, (("k", b"\x02" * 8), ("z", b"\x03" * 8))),
        ),
        (Entry("k", _counter(1)),),
        (Want("l"),),
    ),
    Kind.READ: Read(4, "k"),
    Kind.READ_REPLY: ReadReply(4, "k", _counter(5), None),
    Kind.CHUNK: Chunk(11, 0, 2, b"abc"),
    Kind.LEAVE: Leave(ORMap()),
}


@pytest.mark.parametrize("kind", list(Kind), ids=lambda k: k.name)
def test_every_kind_round_trips(kind: Kind) -> None:
    data = encode_message("prod", "node-1", 2, 42, 41, TS, BODIES[kind])
    env = decode_message(data, cluster="prod", limits=Limits())
    assert (env.sender, env.incarnation, env.msg_id, env.reply_to, env.hlc, env.kind) == (
        "node-1",
        2,
        42,
        41,
        TS,
        kind,
    )
    assert env.body == BODIES[kind]
    assert env.size == len(data)
    assert encode_message("prod", "node-1", 2, 42, 41, TS, env.body) == data


def _engine_with_state() -> Engine:
    e = Engine("b", seeds=("a", "b"), config=CFG)
    e.start(0.0)
    e.update("k", GCounter, lambda c, ctx: c.increment(ctx.replica, 3), 0.0)
    e.poll()
    return e


def _raw(
    *, version: int = PROTOCOL_VERSION, cluster: str = "prod", kind: int = 1, body: Any = None
) -> bytes:
    if body is None:
        body = [1, 0, 1, [["k", to_wire(_counter(9)), None]]]
    return msgpack.packb([version, cluster, "a", 1, 5, 0, [1, 0], kind, body], use_bin_type=True)


@pytest.mark.parametrize(
    ("data", "code", "reason"),
    [
        (_raw(cluster="staging"), "wrong_cluster", "cluster 'staging'"),
        (_raw(version=2), "unsupported_version", "protocol version 2"),
        (_raw(kind=99), "unknown_kind", "kind 99"),
        (
            _raw(
                body=[1, 0, 1, [["k", to_wire(_counter(9)), None], ["l", [1, 1, [["x", 0]]], None]]]
            ),
            "malformed",
            "outside",
        ),
        (
            _raw(
                body=[
                    1,
                    0,
                    1,
                    [["k", to_wire(_counter(9)), None], ["k", to_wire(_counter(9)), None]],
                ]
            ),
            "malformed",
            "twice",
        ),
        (_raw(body=[1, 3, 1, []]), "malformed", "empty"),
        (b"\x00garbage", "malformed", "msgpack"),
        (msgpack.packb([1, "prod"]), "malformed", "9 items"),
    ],
)
def test_bad_messages_are_rejected_and_change_nothing(data: bytes, code: str, reason: str) -> None:
    e = _engine_with_state()
    before_digest, before_value, before_keys = e.digest(), e.value("k"), e.keys()
    with pytest.raises(ProtocolError) as info:
        e.receive(data, 1.0)
    assert info.value.code == code and reason in info.value.reason
    assert (e.digest(), e.value("k"), e.keys()) == (before_digest, before_value, before_keys)
    assert e.poll() == []  # no persist, no ack, no event


def test_oversized_and_self_messages_are_rejected() -> None:
    small = EngineConfig(cluster_id="prod", limits=Limits(max_bytes=2048))
    e = Engine("b", config=small)
    with pytest.raises(ProtocolError) as info:
        e.receive(b"\x90" * 4096, 0.0)
    assert info.value.code == "too_large"
    own = msgpack.packb([PROTOCOL_VERSION, "prod", "b", 1, 1, 0, [1, 0], int(Kind.AE_OK), []])
    with pytest.raises(ProtocolError) as info:
        e.receive(own, 0.0)
    assert info.value.code == "self_message"


def _valid_corpus() -> list[bytes]:
    """Every message of a short run in which deltas are lost, so anti-entropy has work to do."""
    c = ManualCluster(
        ["a", "b"], EngineConfig(cluster_id="prod", ae_jitter=0.0, max_message_bytes=4096)
    )
    out: list[bytes] = []

    def pump(lose_deltas: bool) -> None:
        while c.queue:
            m = c.queue[0]
            out.append(m.data)
            if lose_deltas and m.kind == "DELTA":
                c.drop(0)
            else:
                c.deliver(0)

    for i in range(300):
        c.update("a", "s", ORSet, lambda s, ctx, i=i: s.add(ctx.replica, f"element-{i}"))
        c.update("b", f"c{i % 7}", GCounter, lambda g, ctx: g.increment(ctx.replica, 2))
    c.tick(0.01)
    pump(lose_deltas=True)
    for _ in range(4):
        c.tick(1.0)
        pump(lose_deltas=False)
    c.read("a", "c1", consistency=ALL)
    pump(lose_deltas=False)
    c.hosts["b"].leave(c.now)
    pump(lose_deltas=False)
    return out


@pytest.fixture(scope="module")
def corpus() -> list[bytes]:
    return _valid_corpus()


def test_corpus_covers_the_protocol(corpus: list[bytes]) -> None:
    kinds = {decode_message(d, cluster="prod", limits=Limits()).kind for d in corpus}
    assert set(Kind) - {Kind.AE_OK} <= kinds


def _receive_or_reject(e: Engine, data: bytes) -> bool:
    before = e.digest()
    try:
        e.receive(data, 5.0)
    except ProtocolError:
        assert e.digest() == before
        assert not [x for x in e.poll() if not isinstance(x, Send)]
        return False
    e.poll()
    return True


def test_mutated_messages_only_raise_protocol_error(corpus: list[bytes]) -> None:
    rnd = random.Random(3)
    e = Engine("c", seeds=("a", "b", "c"), config=EngineConfig(cluster_id="prod"))
    e.start(0.0)
    e.poll()
    rejected = 0
    for i in range(6000):
        data = bytearray(corpus[i % len(corpus)])
        for _ in range(rnd.randint(1, 3)):
            pos = rnd.randrange(len(data))
            if rnd.random() < 0.7:
                data[pos] = rnd.randrange(256)
            else:
                del data[pos : pos + rnd.randint(1, 4)]
        if not _receive_or_reject(e, bytes(data)):
            rejected += 1
    assert rejected > 3000


@given(st.binary(max_size=300))
def test_random_bytes_only_raise_protocol_error(data: bytes) -> None:
    e = _engine_with_state()
    _receive_or_reject(e, data)
