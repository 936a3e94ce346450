"""The replication protocol's messages: one dataclass per kind, the envelope, strict decoding.

Every message is one msgpack array (``docs/protocol.md`` is the specification)::

    [protocol_version, cluster_id, sender, incarnation, msg_id, reply_to, [wall, logical],
     kind, body]

``[wall, logical]`` is the sender's hybrid-clock timestamp at send time, so every receiver's clock
stays causally ahead of everything it has seen. Each body class owns its wire layout
(``to_wire``/``from_wire``) — the layout lives in exactly one place — and the engine dispatches on
the class with ``match``.

Decoding is strict (the same limits and rules as the CRDT codec): a message is fully validated,
including every CRDT state it carries, before the engine acts on any of it, so a bad message is
rejected as a whole with a :class:`ProtocolError` and changes nothing.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, ClassVar

from crdtcoord._exceptions import CodecError, CrdtcoordError
from crdtcoord._wire import INT_MAX, Limits, Reader, pack, unpack
from crdtcoord.clocks.hlc import Timestamp
from crdtcoord.clocks.vv import VersionVector
from crdtcoord.codec import from_wire, to_wire
from crdtcoord.engine.tree import FANOUT, LEVEL_BITS, MAX_LEVEL, ROOT_DIGEST, SHORT_DIGEST, TreeItem
from crdtcoord.types import CRDTBase
from crdtcoord.types._base import Summary, read_summary

__all__ = [
    "MAX_KEY_BYTES",
    "MODES",
    "PROTOCOL_VERSION",
    "Ack",
    "AeOk",
    "AeRoot",
    "AeStep",
    "Chunk",
    "Delta",
    "Entry",
    "Envelope",
    "Kind",
    "Leave",
    "Message",
    "ProtocolError",
    "Read",
    "ReadReply",
    "Want",
    "decode_message",
    "encode_message",
]

PROTOCOL_VERSION = 1
MAX_KEY_BYTES = 1024
MAX_NODE_ID_BYTES = 200
#: Anti-entropy modes. "repair" is push-pull started by a node that owes its peer data: on a
#: key both hold differently, the initiator ships first (it is presumed newer).
MODES = ("push", "pull", "push-pull", "repair")


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
    LEAVE = 9


class ProtocolError(CrdtcoordError):
    """A message was rejected as a whole; ``code`` is a stable machine-readable reason.

    Codes: ``malformed``, ``unsupported_version``, ``wrong_cluster``, ``self_message``,
    ``too_large``, ``stale_incarnation``, ``future_incarnation``, ``unknown_kind``.
    """

    def __init__(self, code: str, reason: str) -> None:
        self.code = code
        self.reason = reason
        super().__init__(f"{code}: {reason}")


@dataclass(frozen=True, slots=True)
class Entry:
    """A replicated entry: a key, a CRDT state or delta, and the key's version vector (critical
    keys only, else None)."""

    key: str
    state: CRDTBase
    vv: VersionVector | None = None

    def to_wire(self) -> list[Any]:
        return [self.key, to_wire(self.state), self.vv.to_wire() if self.vv is not None else None]


@dataclass(frozen=True, slots=True)
class Want:
    """A key one side asks for, with its own causal summary of it when its type has one (then
    the other side may answer with a delta since that summary instead of its whole state)."""

    key: str
    summary: Summary | None = None

    def to_wire(self) -> list[Any]:
        return [self.key, self.summary.to_wire() if self.summary is not None else None]


def _key(r: Reader, x: Any) -> str:
    k = r.string(x, "key")
    if not k or len(k.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES:
        r.fail(f"key must be 1..{MAX_KEY_BYTES} bytes")
    return k


def _entries(r: Reader, x: Any, limits: Limits) -> tuple[Entry, ...]:
    out: list[Entry] = []
    seen: set[str] = set()
    for row in r.arr(x, "entries"):
        k, env, vv = r.arr(row, "entry", 3)
        key = _key(r, k)
        if key in seen:
            r.fail(f"key {key!r} appears twice")
        seen.add(key)
        state = from_wire(env, limits=limits)
        out.append(Entry(key, state, None if vv is None else VersionVector.from_wire(vv, r)))
    return tuple(out)


def _range(r: Reader, stream: Any, lo: Any, hi: Any, what: str) -> tuple[int, int, int]:
    s, a, b = r.integer(stream, "stream"), r.integer(lo, "lo"), r.integer(hi, "hi")
    if b <= a:
        r.fail(f"{what} range is empty")
    return s, a, b


def _mode(r: Reader, x: Any) -> str:
    m = r.string(x, "mode")
    if m not in MODES:
        r.fail(f"unknown anti-entropy mode {m!r}")
    return m


class Message:
    """Base of the message bodies; ``KIND`` is the wire code."""

    __slots__ = ()
    KIND: ClassVar[Kind]

    def to_wire(self) -> list[Any]:
        raise NotImplementedError

    @classmethod
    def from_wire(cls, x: Any, r: Reader, limits: Limits) -> Message:
        raise NotImplementedError


@dataclass(frozen=True, slots=True)
class Delta(Message):
    """Buffer entries ``(lo, hi]`` of the sender's delta stream ``stream``, joined per key."""

    KIND: ClassVar[Kind] = Kind.DELTA
    stream: int
    lo: int
    hi: int
    entries: tuple[Entry, ...]

    def to_wire(self) -> list[Any]:
        return [self.stream, self.lo, self.hi, [e.to_wire() for e in self.entries]]

    @classmethod
    def from_wire(cls, x: Any, r: Reader, limits: Limits) -> Delta:
        stream, lo, hi, entries = r.arr(x, "DELTA", 4)
        return cls(*_range(r, stream, lo, hi, "DELTA"), _entries(r, entries, limits))


@dataclass(frozen=True, slots=True)
class Ack(Message):
    """The receiver made the DELTA ``(lo, hi]`` of ``stream`` durable."""

    KIND: ClassVar[Kind] = Kind.ACK
    stream: int
    lo: int
    hi: int

    def to_wire(self) -> list[Any]:
        return [self.stream, self.lo, self.hi]

    @classmethod
    def from_wire(cls, x: Any, r: Reader, limits: Limits) -> Ack:
        stream, lo, hi = r.arr(x, "ACK", 3)
        return cls(*_range(r, stream, lo, hi, "ACK"))


@dataclass(frozen=True, slots=True)
class AeRoot(Message):
    """Start an anti-entropy exchange: the initiator's root digest (the exchange id is this
    message's ``msg_id``)."""

    KIND: ClassVar[Kind] = Kind.AE_ROOT
    mode: str
    root: bytes

    def to_wire(self) -> list[Any]:
        return [self.mode, self.root]

    @classmethod
    def from_wire(cls, x: Any, r: Reader, limits: Limits) -> AeRoot:
        mode, root = r.arr(x, "AE_ROOT", 2)
        return cls(_mode(r, mode), r.binary(root, "root", ROOT_DIGEST))


@dataclass(frozen=True, slots=True)
class AeOk(Message):
    """The roots are equal: the exchange named by the envelope's ``reply_to`` is over."""

    KIND: ClassVar[Kind] = Kind.AE_OK

    def to_wire(self) -> list[Any]:
        return []

    @classmethod
    def from_wire(cls, x: Any, r: Reader, limits: Limits) -> AeOk:
        r.arr(x, "AE_OK", 0)
        return cls()


def _item_wire(item: TreeItem) -> list[Any]:
    if item.children is not None:
        return [item.level, item.prefix, "b", item.children]
    return [item.level, item.prefix, "l", [[k, d] for k, d in item.keys]]


def _items(r: Reader, x: Any) -> tuple[TreeItem, ...]:
    nodes: list[TreeItem] = []
    for raw in r.arr(x, "items"):
        level, prefix, tag, payload = r.arr(raw, "item", 4)
        level = r.integer(level, "level", 0, MAX_LEVEL)
        prefix = r.integer(prefix, "prefix", 0, (1 << (LEVEL_BITS * level)) - 1)
        if tag == "b":
            if level >= MAX_LEVEL:
                r.fail("a node at the deepest level has no children")
            nodes.append(
                TreeItem(level, prefix, r.binary(payload, "child hashes", FANOUT * SHORT_DIGEST))
            )
        elif tag == "l":
            pairs = []
            for kd in r.arr(payload, "leaf keys"):
                k, d = r.arr(kd, "key digest", 2)
                pairs.append((_key(r, k), r.binary(d, "digest", SHORT_DIGEST)))
            r.increasing((k for k, _ in pairs), "leaf keys")
            nodes.append(TreeItem(level, prefix, None, tuple(pairs)))
        else:
            r.fail(f"unknown tree item tag {tag!r}")
    # Items name distinct, non-overlapping nodes in increasing order: a peer cannot make us
    # answer one node twice (amplification) or a node and its ancestor.
    r.increasing(((n.level, n.prefix) for n in nodes), "tree items")
    named = {(n.level, n.prefix) for n in nodes}
    for n in nodes:
        for up in range(n.level):
            if (up, n.prefix >> (LEVEL_BITS * (n.level - up))) in named:
                r.fail("tree items overlap (a node and its ancestor)")
    return tuple(nodes)


def _wants(r: Reader, x: Any) -> tuple[Want, ...]:
    out: list[Want] = []
    for row in r.arr(x, "want"):
        k, summary = r.arr(row, "wanted key", 2)
        out.append(Want(_key(r, k), None if summary is None else read_summary(summary, r)))
    r.increasing((w.key for w in out), "want")
    return tuple(out)


@dataclass(frozen=True, slots=True)
class AeStep(Message):
    """One step of a digest descent: tree items to compare, states shipped, keys wanted."""

    KIND: ClassVar[Kind] = Kind.AE_STEP
    xid: int
    mode: str
    from_initiator: bool
    items: tuple[TreeItem, ...]
    entries: tuple[Entry, ...]
    want: tuple[Want, ...]

    def to_wire(self) -> list[Any]:
        return [
            self.xid,
            self.mode,
            self.from_initiator,
            [_item_wire(i) for i in self.items],
            [e.to_wire() for e in self.entries],
            [w.to_wire() for w in self.want],
        ]

    @classmethod
    def from_wire(cls, x: Any, r: Reader, limits: Limits) -> AeStep:
        xid, mode, from_initiator, items, entries, want = r.arr(x, "AE_STEP", 6)
        return cls(
            r.integer(xid, "xid"),
            _mode(r, mode),
            r.boolean(from_initiator, "from_initiator"),
            _items(r, items),
            _entries(r, entries, limits),
            _wants(r, want),
        )


@dataclass(frozen=True, slots=True)
class Read(Message):
    """Ask for a key's state; ``op`` is the reader's handle (unique per process start)."""

    KIND: ClassVar[Kind] = Kind.READ
    op: int
    key: str

    def to_wire(self) -> list[Any]:
        return [self.op, self.key]

    @classmethod
    def from_wire(cls, x: Any, r: Reader, limits: Limits) -> Read:
        op, key = r.arr(x, "READ", 2)
        return cls(r.integer(op, "op"), _key(r, key))


@dataclass(frozen=True, slots=True)
class ReadReply(Message):
    """The answer to a READ: the state (or None) and the version vector of a critical key."""

    KIND: ClassVar[Kind] = Kind.READ_REPLY
    op: int
    key: str
    state: CRDTBase | None
    vv: VersionVector | None

    def to_wire(self) -> list[Any]:
        return [
            self.op,
            self.key,
            to_wire(self.state) if self.state is not None else None,
            self.vv.to_wire() if self.vv else None,
        ]

    @classmethod
    def from_wire(cls, x: Any, r: Reader, limits: Limits) -> ReadReply:
        op, key, env, vv = r.arr(x, "READ_REPLY", 4)
        state = None if env is None else from_wire(env, limits=limits)
        return cls(
            r.integer(op, "op"),
            _key(r, key),
            state,
            None if vv is None else VersionVector.from_wire(vv, r),
        )


@dataclass(frozen=True, slots=True)
class Chunk(Message):
    """One fragment of a message larger than ``max_message_bytes``."""

    KIND: ClassVar[Kind] = Kind.CHUNK
    xfer: int
    index: int
    total: int
    fragment: bytes

    def to_wire(self) -> list[Any]:
        return [self.xfer, self.index, self.total, self.fragment]

    @classmethod
    def from_wire(cls, x: Any, r: Reader, limits: Limits) -> Chunk:
        xfer, index, total, frag = r.arr(x, "CHUNK", 4)
        total = r.integer(total, "total", 1, 1 << 20)
        return cls(
            r.integer(xfer, "xfer"),
            r.integer(index, "index", 0, total - 1),
            total,
            r.binary(frag, "fragment"),
        )


@dataclass(frozen=True, slots=True)
class Leave(Message):
    """The sender is shutting down gracefully. ``members`` is its own ``$members`` entry saying
    ``left`` (a delta of the membership map): the receiver joins it like any replicated state,
    so a LEAVE can be late, duplicated or reordered with the sender's restart announcement and
    the hybrid-clock order still decides (``docs/protocol.md`` §4.5)."""

    KIND: ClassVar[Kind] = Kind.LEAVE
    members: CRDTBase

    def to_wire(self) -> list[Any]:
        return [to_wire(self.members)]

    @classmethod
    def from_wire(cls, x: Any, r: Reader, limits: Limits) -> Leave:
        (members,) = r.arr(x, "LEAVE", 1)
        return cls(from_wire(members, limits=limits))


BODIES: dict[Kind, type[Message]] = {
    m.KIND: m for m in (Delta, Ack, AeRoot, AeOk, AeStep, Read, ReadReply, Chunk, Leave)
}


@dataclass(frozen=True, slots=True)
class Envelope:
    """A decoded message: the header fields and a validated body."""

    cluster: str
    sender: str
    incarnation: int
    msg_id: int
    reply_to: int
    hlc: Timestamp
    body: Message
    size: int = 0

    @property
    def kind(self) -> Kind:
        return self.body.KIND


def encode_message(
    cluster: str,
    sender: str,
    incarnation: int,
    msg_id: int,
    reply_to: int,
    hlc: Timestamp,
    body: Message,
) -> bytes:
    """Encode one message."""
    return pack(
        [
            PROTOCOL_VERSION,
            cluster,
            sender,
            incarnation,
            msg_id,
            reply_to,
            [hlc.wall, hlc.logical],
            int(body.KIND),
            body.to_wire(),
        ]
    )


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
        if "/" in sender or len(sender.encode("utf-8")) > MAX_NODE_ID_BYTES:
            r.fail(f"sender: a node id has at most {MAX_NODE_ID_BYTES} bytes and no '/'")
        incarnation = r.integer(raw[3], "incarnation", 0)
        msg_id = r.integer(raw[4], "msg_id")
        reply_to = r.integer(raw[5], "reply_to")
        hlc = Timestamp(*r.timestamp_parts(raw[6], "hlc"))
        kind_code = r.integer(raw[7], "kind", 0, 255)
        try:
            kind = Kind(kind_code)
        except ValueError:
            raise ProtocolError("unknown_kind", f"unknown message kind {kind_code}") from None
        body = BODIES[kind].from_wire(raw[8], r, limits)
    except CodecError as exc:
        raise ProtocolError("malformed", str(exc)) from None
    except ProtocolError:
        raise
    except Exception as exc:  # the contract is ProtocolError, always
        raise ProtocolError("malformed", f"{type(exc).__name__}: {exc}") from None
    return Envelope(their_cluster, sender, incarnation, msg_id, reply_to, hlc, body, len(data))
