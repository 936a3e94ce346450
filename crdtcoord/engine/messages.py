"""The replication protocol's messages: envelope, kinds, strict encoding and decoding.

Every message is one msgpack array (see ``docs/protocol.md`` for the full specification)::

    [protocol_version, cluster_id, sender, incarnation, msg_id, reply_to, [wall, logical],
     kind, body]

``[wall, logical]`` is the sender's hybrid-clock timestamp at send time, so every receiver's clock
stays causally ahead of everything it has seen.

Decoding is strict (the same limits and rules as the CRDT codec): a message is fully validated,
including every CRDT state it carries, before the engine acts on any of it, so a bad message is
rejected as a whole with a :class:`ProtocolError` and changes nothing.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from crdtcoord._exceptions import CodecError, CrdtcoordError
from crdtcoord._wire import INT_MAX, Limits, Reader, pack, unpack
from crdtcoord.clocks.hlc import Timestamp
from crdtcoord.clocks.vv import VersionVector
from crdtcoord.codec import from_wire, to_wire
from crdtcoord.types import CRDTBase

__all__ = [
    "FANOUT",
    "LEAF_MAX",
    "MAX_LEVEL",
    "PROTOCOL_VERSION",
    "Envelope",
    "Kind",
    "ProtocolError",
    "decode_message",
    "encode_message",
]

PROTOCOL_VERSION = 1
#: The digest tree (protocol constants, both sides must agree): every level splits a node on the
#: next LEVEL_BITS bits of the 64-bit key hash into FANOUT children, down to MAX_LEVEL.
LEVEL_BITS = 4
FANOUT = 1 << LEVEL_BITS
MAX_LEVEL = 8
#: A side lists a node's keys instead of its children once the node holds at most this many.
LEAF_MAX = 12
#: Bytes of a node hash / key digest on the wire during anti-entropy.
SHORT_DIGEST = 8
#: Bytes of the root digest.
ROOT_DIGEST = 16
MAX_KEY_BYTES = 1024


class Kind(enum.IntEnum):
    """Message kinds (wire codes never change meaning)."""

    DELTA = 1
    ACK = 2
    AE_ROOT = 3
    AE_OK = 4
    AE_STEP = 5
    READ = 6
    READ_REPLY = 7
    CHUNK = 8


class ProtocolError(CrdtcoordError):
    """A message was rejected as a whole; ``code`` is a stable machine-readable reason.

    Codes: ``malformed``, ``unsupported_version``, ``wrong_cluster``, ``self_message``,
    ``too_large``, ``stale_incarnation``, ``unknown_kind``.
    """

    def __init__(self, code: str, reason: str) -> None:
        self.code = code
        self.reason = reason
        super().__init__(f"{code}: {reason}")


# A replicated entry inside a message: (key, state or delta, the key's version vector or None).
Entry = tuple[str, CRDTBase, VersionVector | None]


@dataclass(frozen=True, slots=True)
class Envelope:
    """A decoded message. ``body`` is kind-specific and already validated (see ``_BODY``)."""

    cluster: str
    sender: str
    incarnation: int
    msg_id: int
    reply_to: int
    hlc: Timestamp
    kind: Kind
    body: tuple[Any, ...]
    size: int = 0


# ----------------------------------------------------------------------------- encoding


def _entries(entries: list[Entry]) -> list[list[Any]]:
    return [[k, to_wire(v), vv.to_wire() if vv is not None else None] for k, v, vv in entries]


def encode_message(
    cluster: str,
    sender: str,
    incarnation: int,
    msg_id: int,
    reply_to: int,
    hlc: Timestamp,
    kind: Kind,
    body: tuple[Any, ...],
) -> bytes:
    """Encode a message; ``body`` holds Python values (CRDTs and entry lists as in ``_BODY``)."""
    if kind is Kind.DELTA:
        stream, lo, hi, entries = body
        wire: Any = [stream, lo, hi, _entries(entries)]
    elif kind is Kind.AE_STEP:
        xid, mode, from_initiator, items, entries, want = body
        wire = [xid, mode, from_initiator, items, _entries(entries), list(want)]
    elif kind is Kind.READ_REPLY:
        op, key, state, vv = body
        wire = [
            op,
            key,
            to_wire(state) if state is not None else None,
            vv.to_wire() if vv else None,
        ]
    else:
        wire = list(body)
    return pack(
        [
            PROTOCOL_VERSION,
            cluster,
            sender,
            incarnation,
            msg_id,
            reply_to,
            [hlc.wall, hlc.logical],
            int(kind),
            wire,
        ]
    )


# ----------------------------------------------------------------------------- decoding


def _key(r: Reader, x: Any) -> str:
    k = r.string(x, "key")
    if not k or len(k.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES:
        r.fail(f"key must be 1..{MAX_KEY_BYTES} bytes")
    return k


def _read_entries(r: Reader, x: Any, limits: Limits) -> list[Entry]:
    out: list[Entry] = []
    seen: set[str] = set()
    for row in r.arr(x, "entries"):
        k, env, vv = r.arr(row, "entry", 3)
        key = _key(r, k)
        if key in seen:
            r.fail(f"key {key!r} appears twice")
        seen.add(key)
        state = from_wire(env, limits=limits)
        out.append((key, state, None if vv is None else VersionVector.from_wire(vv, r)))
    return out


def _body(kind: Kind, x: Any, r: Reader, limits: Limits) -> tuple[Any, ...]:
    if kind is Kind.DELTA:
        stream, lo, hi, entries = r.arr(x, "DELTA", 4)
        stream, lo, hi = r.integer(stream, "stream"), r.integer(lo, "lo"), r.integer(hi, "hi")
        if hi <= lo:
            r.fail("DELTA range is empty")
        return (stream, lo, hi, _read_entries(r, entries, limits))
    if kind is Kind.ACK:
        stream, lo, hi = r.arr(x, "ACK", 3)
        stream, lo, hi = r.integer(stream, "stream"), r.integer(lo, "lo"), r.integer(hi, "hi")
        if hi <= lo:
            r.fail("ACK range is empty")
        return (stream, lo, hi)
    if kind is Kind.AE_ROOT:
        mode, root = r.arr(x, "AE_ROOT", 2)
        return (_mode(r, mode), r.binary(root, "root", ROOT_DIGEST))
    if kind is Kind.AE_OK:
        r.arr(x, "AE_OK", 0)
        return ()
    if kind is Kind.AE_STEP:
        xid, mode, from_initiator, items, entries, want = r.arr(x, "AE_STEP", 6)
        nodes: list[tuple[int, int, str, Any]] = []
        for item in r.arr(items, "items"):
            level, prefix, tag, payload = r.arr(item, "item", 4)
            level = r.integer(level, "level", 0, MAX_LEVEL)
            prefix = r.integer(prefix, "prefix", 0, (1 << (LEVEL_BITS * level)) - 1)
            if tag == "b":
                if level >= MAX_LEVEL:
                    r.fail("a node at the deepest level has no children")
                nodes.append(
                    (level, prefix, "b", r.binary(payload, "child hashes", FANOUT * SHORT_DIGEST))
                )
            elif tag == "l":
                pairs = []
                for kd in r.arr(payload, "leaf keys"):
                    k, d = r.arr(kd, "key digest", 2)
                    pairs.append((_key(r, k), r.binary(d, "digest", SHORT_DIGEST)))
                r.increasing((k for k, _ in pairs), "leaf keys")
                nodes.append((level, prefix, "l", pairs))
            else:
                r.fail(f"unknown tree item tag {tag!r}")
        # Items name distinct, non-overlapping nodes in increasing order: a peer cannot make us
        # answer one node twice (amplification) or a node and its ancestor.
        r.increasing(((lvl, pfx) for lvl, pfx, _, _ in nodes), "tree items")
        named = {(lvl, pfx) for lvl, pfx, _, _ in nodes}
        for lvl, pfx, _, _ in nodes:
            for up in range(lvl):
                if (up, pfx >> (LEVEL_BITS * (lvl - up))) in named:
                    r.fail("tree items overlap (a node and its ancestor)")
        return (
            r.integer(xid, "xid"),
            _mode(r, mode),
            r.boolean(from_initiator, "from_initiator"),
            nodes,
            _read_entries(r, entries, limits),
            [_key(r, k) for k in r.arr(want, "want")],
        )
    if kind is Kind.READ:
        op, key = r.arr(x, "READ", 2)
        return (r.integer(op, "op"), _key(r, key))
    if kind is Kind.READ_REPLY:
        op, key, env, vv = r.arr(x, "READ_REPLY", 4)
        state = None if env is None else from_wire(env, limits=limits)
        return (
            r.integer(op, "op"),
            _key(r, key),
            state,
            None if vv is None else VersionVector.from_wire(vv, r),
        )
    if kind is Kind.CHUNK:
        xfer, index, total, frag = r.arr(x, "CHUNK", 4)
        total = r.integer(total, "total", 1, 1 << 20)
        return (
            r.integer(xfer, "xfer"),
            r.integer(index, "index", 0, total - 1),
            total,
            r.binary(frag, "fragment"),
        )
    raise AssertionError(kind)  # pragma: no cover


MODES = ("push", "pull", "push-pull")


def _mode(r: Reader, x: Any) -> str:
    m = r.string(x, "mode")
    if m not in MODES:
        r.fail(f"unknown anti-entropy mode {m!r}")
    return m


def decode_message(data: bytes, *, cluster: str, limits: Limits) -> Envelope:
    """Decode and validate one message for ``cluster``; :class:`ProtocolError` otherwise."""
    try:
        raw = unpack(data, limits)
    except CodecError as exc:
        code = "too_large" if "exceeds the limit" in str(exc) else "malformed"
        raise ProtocolError(code, str(exc)) from None
    r = Reader(limits)
    try:
        if type(raw) is not list or len(raw) != 9:
            r.fail("envelope must be an array of 9 items")
        version = r.integer(raw[0], "protocol version", 0, INT_MAX)
        if version != PROTOCOL_VERSION:
            raise ProtocolError(
                "unsupported_version",
                f"protocol version {version} is not supported (this node: {PROTOCOL_VERSION})",
            )
        their_cluster = r.string(raw[1], "cluster id")
        if their_cluster != cluster:
            raise ProtocolError(
                "wrong_cluster", f"message for cluster {their_cluster!r}, this is {cluster!r}"
            )
        sender = r.replica(raw[2], "sender")
        incarnation = r.integer(raw[3], "incarnation", 0)
        msg_id = r.integer(raw[4], "msg_id")
        reply_to = r.integer(raw[5], "reply_to")
        hlc = Timestamp(*r.timestamp_parts(raw[6], "hlc"))
        kind_code = r.integer(raw[7], "kind", 0, 255)
        try:
            kind = Kind(kind_code)
        except ValueError:
            raise ProtocolError("unknown_kind", f"unknown message kind {kind_code}") from None
        body = _body(kind, raw[8], r, limits)
    except CodecError as exc:
        raise ProtocolError("malformed", str(exc)) from None
    except ProtocolError:
        raise
    except Exception as exc:  # the contract is ProtocolError, always
        raise ProtocolError("malformed", f"{type(exc).__name__}: {exc}") from None
    return Envelope(
        their_cluster, sender, incarnation, msg_id, reply_to, hlc, kind, body, len(data)
    )
