"""The sans-I/O replica: a store of CRDTs replicated by delta propagation and digest anti-entropy.

The engine never does I/O and never reads a clock. Its inputs are local updates and reads, received
messages (bytes) and the current time ``now`` (seconds of the node's clock); its outputs are the
effects returned by :meth:`Engine.poll` — messages to send, persistence effects ordered before the
sends that depend on them, and events — and :meth:`Engine.next_deadline`, the time it next needs a
:meth:`Engine.tick`. The deterministic simulator and the asyncio runtime are two drivers of this one
class, so what an experiment measures is what production runs.

Two paths move data (see ``docs/protocol.md``):

* **Delta propagation** — local deltas are batched per key for ``delta_delay`` and pushed; peers
  acknowledge per-peer sequence numbers, buffers are dropped once every peer has them, a peer
  that falls behind the buffer gets an anti-entropy repair instead. Receivers forward what
  inflated their state, never back to where it came from.
* **Digest anti-entropy** — every ``ae_interval`` (with jitter) one push-pull exchange with one
  random peer compares a Merkle tree of the key space (the root, then 16-way branches descended
  only where they differ, then per-key digests) and ships only what differs. In sync, that is
  one small message pair.

Correctness never depends on delivery: every payload is a state or a delta joined by a merge.
"""

from __future__ import annotations

import random
import secrets
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import islice
from typing import Any, TypeVar

from crdtcoord._exceptions import IncompatibleMerge, InvalidArgument
from crdtcoord._wire import Value, check_replica
from crdtcoord.clocks.hlc import HLC, Timestamp
from crdtcoord.clocks.vv import Causality, VersionVector
from crdtcoord.codec import digest as state_digest
from crdtcoord.codec import encode
from crdtcoord.engine.config import LOCAL, Consistency, EngineConfig
from crdtcoord.engine.effects import (
    Changed,
    ConsistencyTimeout,
    Effect,
    Escalation,
    OpFailed,
    PeerRepair,
    Persist,
    ReadDone,
    Send,
    WriteDone,
)
from crdtcoord.engine.merkle import DigestIndex, key_hash
from crdtcoord.engine.messages import (
    FANOUT,
    LEAF_MAX,
    LEVEL_BITS,
    MAX_KEY_BYTES,
    MAX_LEVEL,
    SHORT_DIGEST,
    Entry,
    Envelope,
    Kind,
    ProtocolError,
    decode_message,
    encode_message,
)
from crdtcoord.types import CRDTBase, Lease, LWWRegister, ORMap, UpdateContext

__all__ = ["MEMBERS_KEY", "Engine", "UpdateContext"]

C = TypeVar("C", bound=CRDTBase)

#: Reserved key holding the gossiped membership (node id -> {"inc": incarnation, "status": ...}).
MEMBERS_KEY = "$members"
_REASSEMBLY_TTL = 30.0


@dataclass(slots=True)
class _Peer:
    """Per-peer delta-stream state (volatile: lost on restart, which only costs a repair)."""

    acked: int = 0
    sent: int = 0
    last_send: float = 0.0
    #: ranges up to here were handed to an anti-entropy repair, never acknowledged: acks from
    #: this peer do not prove it holds writes with sequence numbers <= floor
    floor: int = 0


@dataclass(slots=True)
class _LogEntry:
    seq: int
    deltas: dict[str, tuple[CRDTBase, frozenset[str]]]  # key -> (delta, origins)


@dataclass(slots=True)
class _Op:
    op_id: int
    kind: str  # "write" | "read"
    key: str
    required: int
    deadline: float
    seq: int = 0
    answered: set[str] = field(default_factory=set)


@dataclass(slots=True)
class _Reassembly:
    total: int
    parts: dict[int, bytes]
    size: int
    expires: float


def _rank(v: CRDTBase) -> tuple[Any, ...]:
    return (v.TYPE_TAG, v.compat_key())


def _item_size(item: list[Any]) -> int:
    """Rough wire size of a tree item (for the per-step byte budget)."""
    if item[2] == "b":
        return 140
    return 16 + sum(12 + len(k) for k, _ in item[3])


def _join_ranked(cur: CRDTBase, new: CRDTBase) -> CRDTBase:
    """Join ``new`` into ``cur`` (in place when the types agree) and return the result. Two types
    at one key (concurrent creations) resolve to the larger type rank, as in the store."""
    rc, rn = _rank(cur), _rank(new)
    if rc == rn:
        cur.merge(new)
        return cur
    return new.copy() if rn > rc else cur


#: Envelope clock bounds: a wall clock beyond year ~10,900 or a counter beyond 2**31 is refused
#: (they could only come from a broken or hostile peer, and would overflow this node's clock).
_MAX_WALL_MS = 2**48
_MAX_LOGICAL = 2**31
_MAX_TRANSFERS_PER_SENDER = 2


class Engine:
    """One replica. See the module documentation; the public methods are the whole interface."""

    def __init__(
        self,
        node_id: str,
        *,
        incarnation: int = 1,
        seeds: Sequence[str] = (),
        config: EngineConfig | None = None,
        rng: random.Random | None = None,
        store: Mapping[str, CRDTBase] | None = None,
        versions: Mapping[str, VersionVector] | None = None,
        critical: Callable[[str, CRDTBase], bool] | None = None,
        stream_id: int | None = None,
    ) -> None:
        check_replica(node_id)
        if "/" in node_id or len(node_id.encode()) > 200:
            raise InvalidArgument("node id must not contain '/' and must be at most 200 bytes")
        if type(incarnation) is not int or incarnation < 0:
            raise InvalidArgument("incarnation must be a non-negative int")
        self.node_id = node_id
        self.incarnation = incarnation
        #: The replica id this node uses in CRDT dots: a new incarnation never reuses dots.
        self.actor = f"{node_id}/{incarnation}"
        self.config = config or EngineConfig()
        self._rng = rng if rng is not None else random.Random(f"{node_id}/{incarnation}")
        self._seeds: tuple[str, ...] = seeds if isinstance(seeds, tuple) else tuple(seeds)
        self._self_in_seeds = node_id in self._seeds
        self._extra: list[str] = []  # members learned by gossip that are not seeds
        self._seed_set: frozenset[str] | None = None
        self._critical = critical
        self._now = 0.0
        self._clock_set = False
        self._hlc = HLC(self._physical_ms, max_offset=self.config.max_clock_offset_ms, strict=False)
        self._store: dict[str, CRDTBase] = {}
        self._vv: dict[str, VersionVector] = {}
        self._index = DigestIndex(self._key_digest)
        self._effects: list[Effect] = []
        self._msg_id = 0
        self._pending: dict[str, tuple[CRDTBase, set[str]]] = {}
        self._pending_since: float | None = None
        self._log: deque[_LogEntry] = deque()
        self._seq = 0
        self._peers: dict[str, _Peer] = {}
        self._rr = 0
        self._next_ae: float | None = None
        #: peers owed an anti-entropy repair -> when to (re)try; cleared when the peer answers
        self._repair: dict[str, float] = {}
        self._ops: dict[int, _Op] = {}
        self._op_seq = 0
        self._applied: OrderedDict[str, int] = OrderedDict()
        self._subs: dict[int, tuple[str | None, str | None]] = {}
        self._sub_seq = 0
        self._reasm: dict[tuple[str, int], _Reassembly] = {}
        self._reasm_bytes = 0
        self._incarnations: dict[str, int] = {}
        self._started = False
        # Identifies this process's delta stream (sequence numbers restart with the process):
        # acks for another stream must not count. OS randomness by default; a simulator passes
        # its own (deterministic, distinct per restart).
        self._stream = secrets.randbits(62) if stream_id is None else stream_id & ((1 << 62) - 1)
        self._xfer = 0
        # Bytes a CHUNK envelope of this node can take around its fragment (largest ids, clock,
        # bin header): fragments are sized so that every CHUNK fits max_message_bytes.
        big = 2**63 - 1
        self._chunk_overhead = 16 + len(
            encode_message(
                self.config.cluster_id,
                node_id,
                self.incarnation,
                big,
                big,
                Timestamp(big, big),
                Kind.CHUNK,
                (big, 1 << 20, 1 << 20, b""),
            )
        )
        #: Counters for metrics and experiments (messages/bytes by kind, rounds, repairs...).
        self.metrics: dict[str, int] = {}
        for k, v in (store or {}).items():
            self._check_key(k, internal=True)
            self._store[k] = v.copy()
            self._index.touch(k)
        for k, vv in (versions or {}).items():
            self._vv[k] = vv.copy()
        if MEMBERS_KEY in self._store:
            self._refresh_members()

    # ================================================================ clock & plumbing

    def _physical_ms(self) -> int:
        return int(self._now * 1000)

    def _advance(self, now: float) -> None:
        # The first reading sets the clock whatever its value (a skewed node may start below 0);
        # after that it only moves forward.
        if now > self._now or not self._clock_set:
            self._now = now
            self._clock_set = True

    def _count(self, name: str, n: int = 1) -> None:
        self.metrics[name] = self.metrics.get(name, 0) + n

    def _key_digest(self, key: str) -> bytes:
        return state_digest(self._store[key])

    @staticmethod
    def _check_key(key: object, *, internal: bool = False) -> str:
        if type(key) is not str or not key:
            raise InvalidArgument("keys are non-empty str")
        assert isinstance(key, str)
        try:
            size = len(key.encode("utf-8"))
        except UnicodeEncodeError:
            raise InvalidArgument(f"key is not valid unicode: {key!r}") from None
        if size > MAX_KEY_BYTES:
            raise InvalidArgument(f"keys are at most {MAX_KEY_BYTES} bytes")
        if key.startswith("$") and not internal:
            raise InvalidArgument("keys starting with '$' are reserved for the engine")
        return key

    def poll(self) -> list[Effect]:
        """Everything the driver must do or know, in order (persist before dependent sends)."""
        out, self._effects = self._effects, []
        return out

    # ================================================================ membership

    def peers(self) -> list[str]:
        """Known peers (seeds and gossiped members), without this node."""
        out = [p for p in self._seeds if p != self.node_id]
        out.extend(self._extra)
        return out

    def peer_count(self) -> int:
        return len(self._seeds) - (1 if self._self_in_seeds else 0) + len(self._extra)

    def member_count(self) -> int:
        """Cluster size used by consistency levels: known peers plus this node."""
        return self.peer_count() + 1

    def _random_peer(self) -> str | None:
        total = len(self._seeds) + len(self._extra)
        if self.peer_count() <= 0:
            return None
        while True:
            i = self._rng.randrange(total)
            p = self._seeds[i] if i < len(self._seeds) else self._extra[i - len(self._seeds)]
            if p != self.node_id:
                return p

    def _peer_at(self, i: int) -> str:
        if i < len(self._seeds):
            return self._seeds[i]
        return self._extra[i - len(self._seeds)]

    def _announce(self) -> None:
        """Write this node's membership entry (incarnation, status) into ``$members``."""
        entry: dict[str, Value] = {"inc": self.incarnation, "status": "up"}
        self._apply_local(
            MEMBERS_KEY,
            ORMap,
            lambda m, ctx: m.apply(ORMap.Update(self.node_id, LWWRegister.Assign(entry)), ctx),
        )

    def _refresh_members(self) -> None:
        m = self._store.get(MEMBERS_KEY)
        if not isinstance(m, ORMap):
            return
        if self._seed_set is None:
            self._seed_set = frozenset(self._seeds)
        extra = []
        for node, info in m.value().items():
            if not isinstance(node, str) or node == self.node_id or node in self._seed_set:
                continue
            if isinstance(info, dict) and info.get("status") == "up":
                extra.append(node)
        self._extra = sorted(extra)

    def members(self) -> dict[str, Any]:
        """The gossiped membership table (node id -> entry), this node included."""
        m = self._store.get(MEMBERS_KEY)
        return m.value() if isinstance(m, ORMap) else {}  # type: ignore[return-value]

    # ================================================================ local API

    def start(self, now: float) -> None:
        """Begin: schedule anti-entropy and announce membership (tick() calls it if needed)."""
        if self._started:
            return
        self._started = True
        self._advance(now)
        if self.config.ae_enabled:
            self._next_ae = now + self._ae_gap()
        if self.config.gossip_membership:
            self._announce()

    def _ae_gap(self) -> float:
        c = self.config
        return c.ae_interval * (1.0 + c.ae_jitter * (2.0 * self._rng.random() - 1.0))

    def update(
        self,
        key: str,
        factory: type[C] | Callable[[], C],
        fn: Callable[[C, UpdateContext], CRDTBase],
        now: float,
        *,
        consistency: Consistency = LOCAL,
        timeout: float | None = None,
        op_id: str | None = None,
    ) -> int:
        """Apply a local update and return an operation handle.

        ``fn(state, ctx)`` applies the type's mutators with ``ctx.replica`` as the replica id and
        returns their delta. With a ``consistency`` above LOCAL, a :class:`WriteDone` or
        :class:`OpFailed` event with this handle follows. ``op_id`` makes retries idempotent: an
        id seen before is not applied again (the first handle is returned).
        """
        self._advance(now)
        self._check_key(key)
        if op_id is not None:
            first = self._applied.get(op_id)
            if first is not None:
                self._count("deduplicated_ops")
                return first
        handle = self._next_op()
        required = consistency.required(self.member_count())
        self._apply_local(key, factory, fn, force_push=required > 1)
        if op_id is not None:
            self._applied[op_id] = handle
            while len(self._applied) > self.config.dedupe_window:
                self._applied.popitem(last=False)
        if required > 1:
            self._flush()
            op = _Op(handle, "write", key, required, now + (timeout or self.config.op_timeout))
            op.seq = self._seq
            self._ops[handle] = op
            self._push(self.peers())
        elif consistency is not LOCAL and consistency.kind != "local":
            self._effects.append(WriteDone(handle, key, (self.node_id,)))
        return handle

    def _next_op(self) -> int:
        self._op_seq += 1
        return self._op_seq

    def _apply_local(
        self,
        key: str,
        factory: Callable[[], Any],
        fn: Callable[[Any, UpdateContext], CRDTBase],
        *,
        force_push: bool = False,
    ) -> None:
        state = self._store.get(key)
        proto = factory()
        if not isinstance(proto, CRDTBase):
            raise InvalidArgument(f"factory must build a CRDT, got {type(proto).__name__}")
        created = state is None
        if state is None:
            state = proto
        elif _rank(state) != _rank(proto):
            raise IncompatibleMerge(
                f"key {key!r} holds a {type(state).__name__}, not a {type(proto).__name__}"
            )
        try:
            delta = fn(state, UpdateContext(self.actor, self._hlc))
        except BaseException:
            if not created:
                # fn may have applied a mutation before failing: keep it consistent and durable;
                # anti-entropy will replicate it (its delta was never returned to us).
                self._index.touch(key)
                self._effects.append(Persist(key, state.copy()))
            raise
        if type(delta) is not type(state):
            if not created:
                self._index.touch(key)
                self._effects.append(Persist(key, state.copy()))
            raise InvalidArgument(
                "update functions must return the delta of their mutation "
                f"(a {type(state).__name__})"
            )
        if created:
            self._store[key] = state
        self._index.touch(key)
        vv = None
        if self._is_critical(key, state):
            vv = self._vv.setdefault(key, VersionVector())
            vv.increment(self.actor)
        self._effects.append(Persist(key, delta, vv=vv.copy() if vv is not None else None))
        self._enqueue_delta(key, delta, self.node_id, force=force_push)
        self._changed(key, None)
        if key == MEMBERS_KEY:
            self._refresh_members()

    def read(
        self,
        key: str,
        now: float,
        *,
        consistency: Consistency = LOCAL,
        timeout: float | None = None,
    ) -> int:
        """Read ``key`` at a consistency level; the answer is a :class:`ReadDone` event (the
        join of the replies, also merged locally as read repair) or :class:`OpFailed`."""
        self._advance(now)
        self._check_key(key, internal=True)
        handle = self._next_op()
        required = consistency.required(self.member_count())
        if required <= 1:
            self._effects.append(ReadDone(handle, key, self.get(key), (self.node_id,)))
            return handle
        self._ops[handle] = _Op(
            handle, "read", key, required, now + (timeout or self.config.op_timeout)
        )
        for p in self.peers():
            self._send(p, Kind.READ, (handle, key))
        return handle

    def get(self, key: str) -> CRDTBase | None:
        """A copy of the local state of ``key`` (None if absent)."""
        s = self._store.get(key)
        return None if s is None else s.copy()

    def value(self, key: str) -> Any:
        """The local value of ``key`` (None if absent)."""
        s = self._store.get(key)
        return None if s is None else s.value()

    def keys(self, prefix: str = "") -> list[str]:
        """Keys in the local store (without reserved ``$`` keys unless asked), sorted."""
        return sorted(
            k for k in self._store if k.startswith(prefix) and (prefix or not k.startswith("$"))
        )

    def __contains__(self, key: object) -> bool:
        return key in self._store

    def __len__(self) -> int:
        return len(self._store)

    def digest(self) -> bytes:
        """Root digest of the whole store: equal on two replicas iff (w.h.p.) they are in sync."""
        return self._index.root()

    def key_digest(self, key: str) -> bytes | None:
        return self._index.digest(key)

    def durable_state(self) -> dict[str, CRDTBase]:
        """Copies of every stored state: what a restart without data loss starts from."""
        return {k: v.copy() for k, v in self._store.items()}

    def durable_versions(self) -> dict[str, VersionVector]:
        """Copies of the version vectors of critical keys (persisted with the states)."""
        return {k: v.copy() for k, v in self._vv.items()}

    def subscribe(self, *, key: str | None = None, prefix: str | None = None) -> int:
        """Get :class:`Changed` events for one key or every key with a prefix (or all keys)."""
        if key is not None and prefix is not None:
            raise InvalidArgument("subscribe to a key or a prefix, not both")
        self._sub_seq += 1
        self._subs[self._sub_seq] = (key, prefix)
        return self._sub_seq

    def unsubscribe(self, sub: int) -> None:
        self._subs.pop(sub, None)

    def _changed(self, key: str, origin: str | None) -> None:
        if not self._subs:
            return
        hits = tuple(
            s
            for s, (k, p) in self._subs.items()
            if (k is None and p is None) or k == key or (p is not None and key.startswith(p))
        )
        if hits:
            self._effects.append(Changed(key, origin, hits))

    def _is_critical(self, key: str, state: CRDTBase) -> bool:
        if self._critical is not None:
            return self._critical(key, state)
        return isinstance(state, Lease)

    # ================================================================ sending

    def _encode(self, kind: Kind, body: tuple[Any, ...], reply_to: int = 0) -> bytes:
        self._msg_id += 1
        return encode_message(
            self.config.cluster_id,
            self.node_id,
            self.incarnation,
            self._msg_id,
            reply_to,
            self._hlc.now(),
            kind,
            body,
        )

    def _send(self, peer: str, kind: Kind, body: tuple[Any, ...], reply_to: int = 0) -> None:
        self._emit(peer, self._encode(kind, body, reply_to), kind)

    def _emit(self, peer: str, data: bytes, kind: Kind) -> None:
        limit = self.config.max_message_bytes
        if len(data) <= limit:
            self._effects.append(Send(peer, data, kind))
            self._count(f"sent_{kind.name}")
            self._count("bytes_sent", len(data))
            return
        size = limit - self._chunk_overhead
        parts = [data[i : i + size] for i in range(0, len(data), size)]
        self._xfer += 1
        xfer = (self._stream ^ self._xfer) & ((1 << 62) - 1)  # distinct across restarts
        for i, part in enumerate(parts):
            self._send(peer, Kind.CHUNK, (xfer, i, len(parts), part))

    # ================================================================ delta propagation

    def _enqueue_delta(
        self, key: str, delta: CRDTBase, origin: str, *, force: bool = False
    ) -> None:
        if not (self.config.push_deltas or force):
            return
        cur = self._pending.get(key)
        if cur is None:
            self._pending[key] = (delta.copy(), {origin})
        else:
            joined = _join_ranked(cur[0], delta)
            self._pending[key] = (joined, cur[1] | {origin})
        if self._pending_since is None:
            self._pending_since = self._now

    def _flush(self) -> None:
        """Turn the pending deltas into one delta-buffer entry with the next sequence number."""
        if not self._pending:
            return
        self._seq += 1
        entry = {k: (d, frozenset(o)) for k, (d, o) in self._pending.items()}
        self._log.append(_LogEntry(self._seq, entry))
        self._pending = {}
        self._pending_since = None
        overflow = len(self._log) - self.config.delta_buffer
        for _ in range(max(0, overflow)):
            self._log.popleft()

    def _delta_targets(self) -> list[str]:
        fanout = self.config.delta_fanout
        n = self.peer_count()
        if fanout is None or fanout >= n:
            return self.peers()
        total = len(self._seeds) + len(self._extra)
        out: list[str] = []
        while len(out) < fanout:
            p = self._peer_at(self._rr % total)
            self._rr += 1
            if p != self.node_id and p not in out:
                out.append(p)
        return out

    def _push(self, targets: Iterable[str]) -> None:
        """Send each target what it has not been sent yet from the delta buffer."""
        if not self._log:
            return
        first = self._log[0].seq
        for p in targets:
            st = self._peers.get(p)
            if st is None:
                st = self._peers[p] = _Peer()
            if st.sent >= self._seq:
                continue
            if st.acked < first - 1:
                # This peer missed deltas we no longer hold: repair it by anti-entropy instead.
                self._mark_behind(p, st)
                continue
            lo = max(st.sent, first - 1)
            joined: dict[str, CRDTBase] = {}
            for e in islice(self._log, lo - first + 1, None):
                for key, (delta, origins) in e.deltas.items():
                    if origins == {p}:
                        continue  # never back to where it came from
                    cur = joined.get(key)
                    joined[key] = delta.copy() if cur is None else _join_ranked(cur, delta)
            if not joined:
                # Nothing in (sent, seq] is for this peer. It counts as acknowledged only if
                # everything before it was: an unacknowledged range must never be skipped.
                if st.acked >= st.sent:
                    st.acked = self._seq
                st.sent = self._seq
                continue
            entries: list[Entry] = [(k, d, self._vv.get(k)) for k, d in joined.items()]
            data = self._encode(Kind.DELTA, (self._stream, lo, self._seq, entries))
            if len(data) > self.config.max_round_bytes:
                # Too much backlog for one message: a budgeted repair streams it instead.
                self._mark_behind(p, st)
                continue
            self._emit(p, data, Kind.DELTA)
            st.sent = self._seq
            st.last_send = self._now
            self._count("delta_messages")
        self._gc_log()

    def _gc_log(self) -> None:
        if not self._log:
            return
        peers = self.peers()
        if not peers:
            self._log.clear()
            return
        floor = min((self._peers[p].acked if p in self._peers else 0) for p in peers)
        while self._log and self._log[0].seq <= floor:
            self._log.popleft()

    def _mark_behind(self, peer: str, st: _Peer) -> None:
        st.floor = self._seq
        st.acked = st.sent = self._seq
        self._schedule_repair(peer)

    def _schedule_repair(self, peer: str) -> None:
        if peer not in self._repair:
            self._repair[peer] = self._now
            self._effects.append(PeerRepair(peer))
            self._count("repairs_scheduled")

    # ================================================================ receiving

    def receive(self, data: bytes, now: float) -> None:
        """Take one message. A bad message raises :class:`ProtocolError` and changes nothing."""
        self._advance(now)
        try:
            env = decode_message(data, cluster=self.config.cluster_id, limits=self.config.limits)
            self._accept(env)
        except ProtocolError:
            self._count("rejected")
            raise

    def _accept(self, env: Envelope) -> None:
        """Checks every message (a reassembled one too) passes before it is acted on."""
        if env.sender == self.node_id:
            raise ProtocolError("self_message", "message claims to come from this node")
        known = self._incarnations.get(env.sender, -1)
        if env.incarnation < known:
            raise ProtocolError(
                "stale_incarnation",
                f"{env.sender} incarnation {env.incarnation} < known {known}",
            )
        if env.hlc.wall > _MAX_WALL_MS or env.hlc.logical > _MAX_LOGICAL:
            raise ProtocolError("malformed", f"clock timestamp out of range: {env.hlc}")
        if env.kind is Kind.CHUNK:
            self._check_chunk(env)
        # --- accepted: from here on the message takes effect
        if known >= 0 and env.incarnation > known:
            self._new_incarnation(env.sender)
        self._incarnations[env.sender] = env.incarnation
        ahead = env.hlc.wall - self._physical_ms()
        if ahead > self.config.max_clock_offset_ms:
            # A clock this far ahead is not merged: one broken peer must not drag every replica's
            # timestamps into the future (counted instead; the data itself is still merged).
            self._count("clock_skew_flagged")
        else:
            self._hlc.update(env.hlc)
        self._count(f"received_{env.kind.name}")
        self._count("bytes_received", env.size)
        self._dispatch(env)

    def _new_incarnation(self, peer: str) -> None:
        """A peer came back under a new incarnation: it lost its state. Whatever it acknowledged
        is gone; restart its delta stream and repair it."""
        st = self._peers.get(peer)
        if st is not None:
            self._mark_behind(peer, st)
        for op in self._ops.values():
            op.answered.discard(peer)

    def _dispatch(self, env: Envelope) -> None:
        k, b, p = env.kind, env.body, env.sender
        if k is Kind.DELTA:
            stream, lo, hi, entries = b
            self._merge_entries(entries, p, forward=self.config.forward_deltas)
            self._send(p, Kind.ACK, (stream, lo, hi), env.msg_id)
        elif k is Kind.ACK:
            self._on_ack(p, *b)
        elif k is Kind.AE_ROOT:
            self._on_ae_root(env)
        elif k is Kind.AE_OK:
            self._count("ae_in_sync")
            self._repair.pop(p, None)
        elif k is Kind.AE_STEP:
            self._on_ae_step(env)
        elif k is Kind.READ:
            op, key = b
            s = self._store.get(key)
            self._send(p, Kind.READ_REPLY, (op, key, s, self._vv.get(key)), env.msg_id)
        elif k is Kind.READ_REPLY:
            self._on_read_reply(p, b)
        elif k is Kind.CHUNK:
            self._on_chunk(env)

    def _merge_entries(self, entries: list[Entry], origin: str, *, forward: bool) -> int:
        """Join received states/deltas; returns how many keys they inflated."""
        inflated = 0
        for key, incoming, vv in entries:
            if key.startswith("$") and (key != MEMBERS_KEY or not isinstance(incoming, ORMap)):
                self._count("entries_ignored")
                continue  # unknown reserved keys, or a membership that is not a map: never stored
            local = self._store.get(key)
            grew = False
            replaced = False
            if local is None:
                self._store[key] = incoming.copy()
                grew = replaced = True
            elif _rank(local) != _rank(incoming):
                # Concurrent creation with two types: the larger type rank wins everywhere.
                if _rank(incoming) > _rank(local):
                    self._store[key] = incoming.copy()
                    grew = replaced = True
            else:
                before = local.copy() if vv is not None and key in self._vv else None
                grew = local.merge(incoming)
                if before is not None and vv is not None:
                    self._check_escalation(key, before, incoming, vv, origin)
            if vv is not None:
                self._vv.setdefault(key, VersionVector()).merge(vv)
            if grew:
                inflated += 1
                self._index.touch(key)
                mine = self._vv.get(key)
                self._effects.append(
                    Persist(
                        key,
                        incoming,
                        vv=mine.copy() if mine is not None else None,
                        replace=replaced and local is not None,
                    )
                )
                self._changed(key, origin)
                if forward:
                    self._enqueue_delta(key, incoming, origin)
                if key == MEMBERS_KEY:
                    self._refresh_members()
        self._count("entries_received", len(entries))
        self._count("entries_inflating", inflated)
        return inflated

    def _check_escalation(
        self, key: str, local: CRDTBase, remote: CRDTBase, remote_vv: VersionVector, peer: str
    ) -> None:
        mine = self._vv.get(key)
        if mine is None or mine.compare(remote_vv) is not Causality.CONCURRENT:
            return
        conflicts = getattr(type(local), "conflicts", None)
        if conflicts is not None and conflicts(local, remote):
            self._effects.append(Escalation(key, local, remote.copy(), peer))
            self._count("escalations")

    def _on_ack(self, peer: str, stream: int, lo: int, hi: int) -> None:
        st = self._peers.get(peer)
        if st is None or stream != self._stream:
            return  # an ack for another (pre-restart) delta stream of ours
        if lo > st.acked:
            # An earlier range was lost: acknowledging this one would skip the gap. The
            # retransmission timer resends from st.acked.
            self._count("acks_out_of_order")
            return
        if hi > st.acked:
            st.acked = min(hi, self._seq)
        for op in list(self._ops.values()):
            if op.kind == "write" and st.acked >= op.seq > st.floor and peer not in op.answered:
                op.answered.add(peer)
                if len(op.answered) + 1 >= op.required:
                    del self._ops[op.op_id]
                    acked = (self.node_id, *sorted(op.answered))
                    self._effects.append(WriteDone(op.op_id, op.key, acked))
        self._gc_log()

    def _on_read_reply(self, peer: str, body: tuple[Any, ...]) -> None:
        op_id, key, state, vv = body
        op = self._ops.get(op_id)
        if op is None or op.kind != "read" or op.key != key or peer in op.answered:
            return
        if state is not None:
            self._merge_entries([(key, state, vv)], peer, forward=False)
        op.answered.add(peer)
        if len(op.answered) + 1 >= op.required:
            del self._ops[op_id]
            self._effects.append(
                ReadDone(op_id, key, self.get(key), (self.node_id, *sorted(op.answered)))
            )

    def _check_chunk(self, env: Envelope) -> None:
        """Refuse a fragment before it is stored if it breaks the reassembly budget."""
        xfer, index, total, frag = env.body
        r = self._reasm.get((env.sender, xfer))
        if r is not None and r.total != total:
            raise ProtocolError("malformed", "chunk count changed within one transfer")
        if r is None and total * len(frag) > 2 * self.config.limits.max_bytes and index < total - 1:
            raise ProtocolError("too_large", f"a transfer of {total} fragments is over the limit")
        if self._reasm_bytes + len(frag) > self.config.limits.max_bytes:
            raise ProtocolError("too_large", "reassembly buffer full")

    def _on_chunk(self, env: Envelope) -> None:
        xfer, index, total, frag = env.body
        slot = (env.sender, xfer)
        r = self._reasm.get(slot)
        if r is None:
            mine = [s for s in self._reasm if s[0] == env.sender]
            if len(mine) >= _MAX_TRANSFERS_PER_SENDER:  # one sender cannot hog the buffer
                oldest = min(mine, key=lambda s: self._reasm[s].expires)
                self._reasm_bytes -= self._reasm.pop(oldest).size
            r = self._reasm[slot] = _Reassembly(total, {}, 0, self._now + _REASSEMBLY_TTL)
        if index in r.parts:
            return
        r.parts[index] = frag
        r.size += len(frag)
        self._reasm_bytes += len(frag)
        if len(r.parts) < r.total:
            return
        del self._reasm[slot]
        self._reasm_bytes -= r.size
        inner = b"".join(r.parts[i] for i in range(r.total))
        env2 = decode_message(inner, cluster=self.config.cluster_id, limits=self.config.limits)
        if env2.sender != env.sender or env2.kind is Kind.CHUNK:
            raise ProtocolError(
                "malformed", "a chunked message must be one non-chunk message of its sender"
            )
        self._accept(env2)

    # ================================================================ anti-entropy

    def _start_ae(self, peer: str, mode: str | None = None) -> None:
        self._count("ae_rounds")
        root = self._index.root()
        self._send(peer, Kind.AE_ROOT, (mode or self.config.ae_mode, root))

    def _on_ae_root(self, env: Envelope) -> None:
        mode, root = env.body
        if root == self._index.root():
            self._send(env.sender, Kind.AE_OK, (), env.msg_id)
            self._count("ae_in_sync")
            return
        items = [self._tree_item(0, 0)]
        self._send(env.sender, Kind.AE_STEP, (env.msg_id, mode, False, items, [], []), env.msg_id)

    def _tree_item(self, level: int, prefix: int) -> list[Any]:
        """This side's view of one tree node: its keys if few (a leaf), else its 16 children."""
        idx = self._index
        if level >= MAX_LEVEL or idx.count(level, prefix) <= LEAF_MAX:
            return [level, prefix, "l", [[k, d] for k, d in idx.keys_under(level, prefix)]]
        hashes = idx.children(level, prefix)
        return [level, prefix, "b", hashes]

    def _on_ae_step(self, env: Envelope) -> None:
        xid, mode, from_initiator, items, entries, want = env.body
        peer = env.sender
        # Who may ship to whom: the initiator pushes in "push"/"push-pull", pulls in
        # "pull"/"push-pull". The sender of this message is the initiator iff from_initiator.
        i_am_initiator = not from_initiator
        pushes, pulls = mode != "pull", mode != "push"
        i_ship = pushes if i_am_initiator else pulls
        they_ship = pulls if i_am_initiator else pushes
        self._merge_entries(entries, peer, forward=False)
        ship: list[str] = [k for k in want if k in self._store] if i_ship else []
        my_want: list[str] = []
        reply_items: list[list[Any]] = []
        idx = self._index
        w = SHORT_DIGEST
        budget = self.config.max_round_bytes
        for level, prefix, tag, payload in items:
            if tag == "b":
                mine = idx.children(level, prefix)
                for c in range(FANOUT):
                    if budget <= 0:
                        break  # the rest of the tree waits for the next exchange
                    if mine[c * w : (c + 1) * w] != payload[c * w : (c + 1) * w]:
                        item = self._tree_item(level + 1, (prefix << LEVEL_BITS) + c)
                        budget -= _item_size(item)
                        reply_items.append(item)
            else:
                theirs = dict(payload)
                ours = dict(idx.keys_under(level, prefix))
                if i_ship:
                    ship.extend(k for k, d in ours.items() if theirs.get(k) != d)
                if they_ship:
                    my_want.extend(
                        k for k, d in payload if ours.get(k) != d and self._owns(level, prefix, k)
                    )
        shipped, _more = self._entries_within_budget(ship)
        self._count("ae_keys_shipped", len(shipped))
        if reply_items or shipped or my_want:
            self._send(
                peer,
                Kind.AE_STEP,
                (xid, mode, i_am_initiator, reply_items, shipped, my_want),
                env.msg_id,
            )
        elif not from_initiator:
            # An exchange we started ended on our side with nothing left to send either way: a
            # repair owed to this peer is done.
            self._count("ae_exchanges_done")
            self._repair.pop(peer, None)
        else:
            self._count("ae_exchanges_done")

    @staticmethod
    def _owns(level: int, prefix: int, key: str) -> bool:
        """Does ``key`` hash under node (level, prefix)? (A peer's leaf list is checked.)"""
        return level == 0 or key_hash(key) >> (64 - LEVEL_BITS * level) == prefix

    def _entries_within_budget(self, keys: list[str]) -> tuple[list[Entry], bool]:
        budget = self.config.max_round_bytes
        used = 0
        out: list[Entry] = []
        for k in keys:
            s = self._store.get(k)
            if s is None:
                continue
            size = len(encode(s)) + len(k) + 16
            if out and used + size > budget:
                return out, True
            used += size
            out.append((k, s, self._vv.get(k)))
        return out, False

    # ================================================================ time

    def tick(self, now: float) -> None:
        """Do whatever is due at ``now``: flush and push deltas, retransmit, anti-entropy,
        repairs, timeouts."""
        self._advance(now)
        if not self._started:
            self.start(now)
        c = self.config
        if (
            self._pending
            and self._pending_since is not None
            and now >= self._pending_since + c.delta_delay
        ):
            self._flush()
            self._push(self._delta_targets())
        if self._log:
            due = [
                p
                for p, st in self._peers.items()
                if st.acked < st.sent and now >= st.last_send + c.retransmit_after
            ]
            for p in due:
                st = self._peers[p]
                st.sent = st.acked
                self._count("retransmits")
            if due:
                self._push(due)
        if self._repair:
            retry = min(c.ae_interval, max(1.0, 4 * c.retransmit_after))
            for p, at in list(self._repair.items()):
                if now >= at:
                    self._repair[p] = now + retry
                    self._start_ae(p, "push-pull")  # a repair must push what the peer lacks
        if self._next_ae is not None and now >= self._next_ae:
            while self._next_ae <= now:
                self._next_ae += self._ae_gap()
            peer = self._random_peer()
            if peer is not None:
                self._start_ae(peer)
        for op in [op for op in self._ops.values() if now >= op.deadline]:
            del self._ops[op.op_id]
            err = ConsistencyTimeout(
                op.kind, op.key, op.required, 1 + len(op.answered), tuple(sorted(op.answered))
            )
            self._effects.append(OpFailed(op.op_id, op.key, err))
        for slot in [s for s, r in self._reasm.items() if now >= r.expires]:
            self._reasm_bytes -= self._reasm.pop(slot).size

    def next_deadline(self) -> float | None:
        """When :meth:`tick` next has work to do (None: only when a message or update arrives)."""
        if not self._started:
            return self._now
        c = self.config
        ds: list[float] = []
        if self._next_ae is not None:
            ds.append(self._next_ae)
        if self._pending_since is not None:
            ds.append(self._pending_since + c.delta_delay)
        ds.extend(self._repair.values())
        if self._log:
            ds.extend(
                st.last_send + c.retransmit_after
                for st in self._peers.values()
                if st.acked < st.sent
            )
        ds.extend(op.deadline for op in self._ops.values())
        ds.extend(r.expires for r in self._reasm.values())
        return min(ds) if ds else None

    def __repr__(self) -> str:
        return f"Engine({self.actor!r}, keys={len(self._store)}, peers={self.peer_count()})"
