"""The sans-I/O replica: a small router over parts that each own one concern.

The engine never does I/O and never reads a clock. Its inputs are local updates and reads,
received messages (bytes) and the current time ``now`` (seconds of a monotonic clock; the hybrid
clock's physical part comes from ``clock_ms``, or from ``now``); its outputs are the effects
returned by :meth:`Engine.poll` — :class:`Persist` before the sends that depend on it, then
:class:`Send` and events — and :meth:`Engine.next_deadline`, when it next needs a tick. The
simulator, the hand-driven test cluster and the asyncio runtime drive it through one
:class:`crdtcoord.host.Host`, so what an experiment measures is what production runs.

Parts (``docs/architecture.md`` has the diagram):

=============== ==========================================================================
``Store``       states, version vectors of critical keys, the digest tree; escalations
``Propagation`` the delta buffer, per-peer streams, acks, retransmission, forwarding
``AntiEntropy`` periodic digest exchanges, repairs, the descent
``Chunking``    reassembly of CHUNK fragments (fragmenting is in ``Core.emit_bytes``)
``Requests``    writes and reads waiting for a consistency level; the op-id window
``Membership``  peers, incarnations, ``$members``, departures
``Feed``        subscriptions (``Changed`` events)
=============== ==========================================================================

Each part owns its state and its own ``next_deadline``/``tick``; the engine routes inputs to
them and wires the few places where one part's outcome is another's input.
"""

from __future__ import annotations

import math
import random
import secrets
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Any, TypeVar

from crdtcoord._exceptions import InvalidArgument
from crdtcoord._wire import Value, check_replica
from crdtcoord.clocks.hlc import HLC
from crdtcoord.clocks.vv import VersionVector
from crdtcoord.codec import digest as state_digest
from crdtcoord.engine.antientropy import AntiEntropy
from crdtcoord.engine.chunking import Chunking
from crdtcoord.engine.config import LOCAL, Consistency, EngineConfig
from crdtcoord.engine.core import Core, Identity
from crdtcoord.engine.effects import Effect, ReadDone, WriteDone
from crdtcoord.engine.feed import Feed
from crdtcoord.engine.membership import MEMBERS_KEY, Membership
from crdtcoord.engine.messages import (
    Ack,
    AeOk,
    AeRoot,
    AeStep,
    Chunk,
    Delta,
    Entry,
    Envelope,
    Leave,
    ProtocolError,
    Read,
    ReadReply,
    decode_message,
)
from crdtcoord.engine.propagation import JOIN_EVERY, PeerStream, Propagation
from crdtcoord.engine.propagation import join_all as _join_all
from crdtcoord.engine.requests import OpIds, Requests
from crdtcoord.engine.store import Critical, Store, Update, check_key
from crdtcoord.engine.store import persist_effect as _persist
from crdtcoord.engine.tree import DigestIndex
from crdtcoord.types import CRDTBase, LWWRegister, Op, ORMap

__all__ = ["Engine"]

C = TypeVar("C", bound=CRDTBase)

#: Envelope clock bounds: a wall clock beyond year ~10,900 or a counter beyond 2**31 is refused
#: (they could only come from a broken or hostile peer, and would overflow this node's clock).
_MAX_WALL_MS = 2**48
_MAX_LOGICAL = 2**31


class _Absent:
    """The type of a key the store does not hold (never a factory: no update takes the hot
    path for it)."""


_ABSENT = _Absent()


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
        op_ids: Iterable[str] = (),
        critical: Critical | None = None,
        process_id: int | None = None,
        clock_ms: Callable[[], int] | None = None,
        advertise: str | None = None,
    ) -> None:
        """``store``/``versions``/``op_ids`` restore a node from its storage (the engine takes
        ownership of the states); ``process_id`` identifies this process start (random by
        default; a simulator passes a seeded one); ``clock_ms`` is the physical clock of the
        HLC in ms (default: ``now`` in ms); ``advertise`` is the address this node gossips in
        ``$members`` so that peers learn how to reach it."""
        check_replica(node_id)
        if "/" in node_id or len(node_id.encode()) > 200:
            raise InvalidArgument("node id must not contain '/' and must be at most 200 bytes")
        if type(incarnation) is not int or incarnation < 0:
            raise InvalidArgument("incarnation must be a non-negative int")
        cfg = config or EngineConfig()
        process = secrets.randbits(62) if process_id is None else process_id & ((1 << 62) - 1)
        ident = Identity(node_id, incarnation, process)
        core = self._core = Core(
            ident, cfg, rng if rng is not None else random.Random(ident.actor), clock_ms
        )
        self._store = Store(core, critical)
        self._feed = Feed(core)
        self._members = Membership(core, tuple(seeds), advertise)
        self._requests = Requests(core)
        self._op_ids = OpIds(cfg.dedupe_window, op_ids)
        self._op_handles: dict[str, int] = {}
        self._chunks = Chunking(core)
        self._propagation = Propagation(
            core, self._store, self._members, repair=self._repair, acked=self._requests.acked
        )
        self._ae = AntiEntropy(
            core,
            self._store,
            random_peer=self._members.random_peer,
            stream_seq=lambda: self._propagation.seq,
            join=lambda entries, peer: self._join(entries, peer, forward=cfg.forward_repairs),
            proven=self._propagation.proven,
            rto=self._propagation.rto_of,
        )
        self._timed = (self._propagation, self._ae, self._requests, self._chunks)
        # the local hot path (see ``update``): the parts' long-lived containers, and per type
        # whether its updates may take it; per class of ``fn``, the type an op belongs to
        self._states = self._store.states
        self._dirty = self._store.index.dirty
        self._local_batch = self._propagation.local_batch
        self._update_ctx = self._store.update_ctx
        self._plain: dict[type, bool] = {}
        #: the current run of an extensible op (see ``update``): (state, the run's delta, poll
        #: count, batch generation) when it began
        self._run: tuple[Any, Any, int, int] = (_ABSENT, None, -1, -1)
        self._run_op: type | None = None  # (the run's op class)
        self._op_kind: dict[type, type | bool | None] = {}
        self._started = False
        self._leaving = False
        self._store.load(store or {}, versions or {})
        if MEMBERS_KEY in self._store:
            self._members.refresh(self._store.state(MEMBERS_KEY))

    # ================================================================ identity, inspection

    @property
    def node_id(self) -> str:
        return self._core.node_id

    @property
    def incarnation(self) -> int:
        return self._core.id.incarnation

    @property
    def actor(self) -> str:
        """The replica id this node uses in CRDT dots (``node/incarnation``)."""
        return self._core.actor

    @property
    def process_id(self) -> int:
        """This process start's random id (delta stream, exchange and handle ids derive from it)."""
        return self._core.id.process

    @property
    def config(self) -> EngineConfig:
        return self._core.config

    @property
    def metrics(self) -> dict[str, int]:
        """Counters (messages and bytes by kind, rounds, repairs...); read-only by convention."""
        return self._core.metrics

    @property
    def now(self) -> float:
        """The latest time this engine was given."""
        return self._core.now

    @property
    def clock(self) -> HLC:
        """The hybrid logical clock (its ``last`` is the latest timestamp issued or merged)."""
        return self._core.hlc

    @property
    def delta_seq(self) -> int:
        """The sequence number of this process's latest delta-buffer entry."""
        return self._propagation.seq

    def backlog(self) -> int:
        """Delta-buffer entries not yet acknowledged by every live peer (a batch still
        waiting for ``delta_delay`` counts as one): zero means nothing is left to send."""
        return self._propagation.backlog()

    def peer_stream(self, peer: str) -> PeerStream | None:
        """A copy of this node's delta stream state towards ``peer`` (None if never used)."""
        st = self._propagation.stream_to(peer)
        return None if st is None else replace(st)

    def repairs(self) -> list[str]:
        """Peers owed an anti-entropy repair."""
        return self._ae.repairs()

    def pending_requests(self) -> int:
        """Writes and reads waiting for their consistency level."""
        return len(self._requests)

    def has_op_id(self, op_id: str) -> bool:
        """Is ``op_id`` in the idempotency window (an update with it would not apply again)?"""
        return op_id in self._op_ids

    def op_ids(self) -> list[str]:
        """The op ids in the idempotency window, oldest first."""
        return self._op_ids.ids()

    def stop_anti_entropy(self) -> None:
        """Start no more periodic exchanges from this node (repairs and answers go on)."""
        self._ae.stop_periodic()

    def recompute_digest(self) -> bytes:
        """The root digest recomputed from scratch (to check the incremental index)."""
        fresh = DigestIndex(lambda k: state_digest(self._store.state(k)))  # type: ignore[arg-type]
        for k in self._store:
            fresh.touch(k)
        return fresh.root()

    # ================================================================ store queries

    def get(self, key: str) -> CRDTBase | None:
        """A copy of the local state of ``key`` (None if absent)."""
        s = self._store.state(key)
        return None if s is None else s.copy()

    def live(self, key: str) -> CRDTBase | None:
        """The live state of ``key`` itself, not a copy (None if absent). For types whose state
        is a live object edited in place, such as a document's pycrdt ``Doc``; mutate it only
        through :meth:`update` (a document commits its own edits that way)."""
        return self._store.state(key)

    def kind(self, key: str) -> type[CRDTBase] | None:
        """The type of ``key``'s state (None if absent), without copying it."""
        s = self._store.state(key)
        return None if s is None else type(s)

    def value(self, key: str) -> Any:
        """The local value of ``key`` (None if absent)."""
        s = self._store.state(key)
        return None if s is None else s.value()

    def version(self, key: str) -> VersionVector | None:
        """A copy of a critical key's version vector."""
        vv = self._store.version(key)
        return None if vv is None else vv.copy()

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
        return self._store.index.root()

    def key_digest(self, key: str) -> bytes | None:
        return self._store.index.digest(key)

    # ================================================================ membership

    def peers(self) -> list[str]:
        """Known live peers (seeds and gossiped members), without this node."""
        return list(self._members.peers())

    def peer_count(self) -> int:
        return len(self._members.peers())

    def member_count(self) -> int:
        """Cluster size used by consistency levels: live peers plus this node."""
        return self._members.member_count()

    def members(self) -> dict[str, Any]:
        """The gossiped membership table (node id -> entry), this node included."""
        m = self._store.state(MEMBERS_KEY)
        return m.value() if m is not None else {}

    def add_peer(self, peer: str) -> None:
        """Add a peer at run time (a transport resolved its address). A new peer is probed by
        anti-entropy at once (it may lack everything this node holds)."""
        check_replica(peer)
        if "/" in peer or len(peer.encode()) > 200:
            raise InvalidArgument("node id must not contain '/' and must be at most 200 bytes")
        if self._members.add_seed(peer) and self._started:
            self._propagation.mark_behind(peer, probe=True)

    def incarnation_of(self, peer: str) -> int | None:
        """The latest incarnation seen from ``peer``."""
        return self._members.incarnation_of(peer)

    # ================================================================ lifecycle

    def start(self, now: float) -> None:
        """Begin: schedule anti-entropy and announce membership (tick() calls it if needed)."""
        if self._started:
            return
        self._started = True
        self._core.advance(now)
        self._ae.start(now)
        if self.config.gossip_membership:
            # "up", to every member known, including those believed to have left (they may be
            # back too, each waiting for the other): the announcement also tells them this node
            # is back if it had left
            self._local(MEMBERS_KEY, self._members.announcement("up"), force=False)
            self._propagation.flush()
            self._propagation.push(self._members.known())

    def leave(self, now: float) -> None:
        """Announce a graceful departure: this node's ``$members`` entry says ``left`` and every
        known member gets it in a LEAVE (they stop counting this node for ``majority``/``all``
        and stop sending it deltas until its next "up" announcement). Call it after the last
        deltas were acknowledged; the driver then stops. Without ``gossip_membership`` there is
        no membership to announce in: pending deltas are pushed and nothing else happens."""
        self._core.advance(now)
        self._leaving = True
        self._propagation.flush()
        if not self.config.gossip_membership:
            self._propagation.push(self._members.peers())
            return
        delta = self._store.update(MEMBERS_KEY, ORMap, self._members.announcement("left"))
        self._changed_locally(MEMBERS_KEY, delta, force=True)
        self._propagation.flush()
        self._propagation.push(self._members.known())
        for p in self._members.known():
            self._core.send(p, Leave(delta))

    def _rejoin(self) -> None:
        """A node that left is used again (an update after :meth:`leave`): it is back, and says
        so to every known member."""
        self._leaving = False
        if self.config.gossip_membership:
            self._local(MEMBERS_KEY, self._members.announcement("up"), force=True)
            self._propagation.flush()
            self._propagation.push(self._members.known())

    def remove_member(self, peer: str, now: float) -> None:
        """Mark ``peer`` as gone in ``$members`` (its entry says ``left``): it no longer counts
        for consistency levels anywhere once this spreads. Meant to follow a consensus decision
        (see :mod:`crdtcoord.coordination.failure`); a node removed by mistake that is alive
        announces itself again."""
        self._core.advance(now)
        if peer == self.node_id:
            raise InvalidArgument("a node cannot remove itself (it leaves)")
        entry: dict[str, Value] = {
            "inc": self._members.incarnation_of(peer) or 0,
            "status": "left",
            "removed_by": self.node_id,
        }
        self._local(MEMBERS_KEY, ORMap.Update(peer, LWWRegister.Assign(entry)), force=True)
        self._propagation.flush()
        self._propagation.push(self._members.peers())

    def recover(self) -> None:
        """After a crash (not a clean shutdown): the previous process may have applied updates
        whose deltas never left. Probe every live peer by anti-entropy (a root comparison
        first, so a peer already in sync costs one small message pair); members that left get
        what they missed when they are back (and the start announcement went to them too)."""
        for p in self._members.peers():
            self._propagation.mark_behind(p, probe=True)

    def poll(self) -> list[Effect]:
        """Everything the driver must do or know, in order (persist before dependent sends)."""
        core = self._core
        effects = core.effects
        out = effects[:]
        effects.clear()  # (the list object stays: parts hold it)
        core.polls += 1
        return out

    # ================================================================ local API

    def update(
        self,
        key: str,
        factory: type[C] | Callable[[], C],
        fn: Callable[[C, Any], CRDTBase] | Update,
        now: float,
        *,
        consistency: Consistency = LOCAL,
        timeout: float | None = None,
        op_id: str | None = None,
    ) -> int:
        """Apply a local update and return an operation handle.

        ``fn`` is an op of the type (``GCounter.Increment(3)``) or ``fn(state, ctx)``, which
        applies the type's mutators with ``ctx.replica`` as the replica id and returns **the
        join of their deltas**. With a ``consistency`` above LOCAL, a :class:`WriteDone` or
        :class:`OpFailed` event with this handle follows. ``op_id`` makes retries idempotent,
        across restarts too: an id already applied is not applied again; the retry waits for
        its consistency level like the original (the key's state is pushed again). A callback
        must not call the engine itself (no ``tick`` or ``receive`` from inside an update).
        """
        core = self._core
        if now != core.now:
            if now > core.now and core.clock_set:
                core.now = now  # (``Core.advance``, inlined)
            else:
                core.advance(now)
        if consistency is LOCAL and op_id is None:
            # The hot path, fused across store, propagation and feed: an existing key of a
            # plain type (no parameters, not critical) updated by one of its ops or a callback.
            # Anything else, errors included, takes the general path below.
            state: Any = self._states.get(key, _ABSENT) if type(key) is str else _ABSENT
            kind = type(state)
            if (
                self._run_op is type(fn)  # (a callback or another op fails here, at once)
                and (run := self._run)[0] is state
                and run[2] == core.polls
                and kind is factory
                and run[3] == self._propagation.batch_gen
            ):
                # A run: the same op class on the same key's state since the last poll and
                # flush. The run's first update emitted the Persist and batched the delta; this
                # one folds into that delta in place (neither was consumed yet), as the
                # driver's coalescing and the batch's join would have joined them.
                fn.extend(state, self._update_ctx, run[1])  # type: ignore[union-attr]
                self._dirty[key] = None
                feed = self._feed
                if feed.active and (feed.seen_gen != core.polls or key not in feed.local_seen):
                    feed.changed(key, None)
                core._handle += 1
                return core._handle
            if kind is factory and not self._leaving and key[0] != "$":
                fkind = self._op_kind.get(type(fn), False)
                if fkind is False:
                    fkind = self._op_kind[type(fn)] = self._fast_kind(fn)
                if fkind is kind or (
                    fkind is None and (self._plain.get(kind) or self._learn_plain(kind))
                ):
                    if fkind is not None:
                        delta = fn.apply(state, self._update_ctx)  # type: ignore[union-attr]
                        if fn.EXTENDS:  # type: ignore[union-attr]
                            self._run_op = type(fn)
                            self._run = (state, delta, core.polls, self._propagation.batch_gen)
                    else:
                        try:
                            delta = fn(state, self._update_ctx)  # type: ignore[operator]
                        except BaseException:
                            self._store.repersist(key, state)
                            raise
                        if type(delta) is not kind:
                            self._store.refuse_delta(key, state, persist=True)
                    self._dirty[key] = None
                    core.effects.append(_persist((key, delta, None, False, None, False)))
                    deltas = self._local_batch.get(key)
                    if deltas is None:
                        self._propagation.enqueue(key, delta, core.node_id)
                    else:  # (``Propagation.enqueue``, inlined)
                        deltas.append(delta)
                        if len(deltas) >= JOIN_EVERY:
                            deltas[:] = [_join_all(deltas)]
                            self._propagation.batch_gen += 1  # (a run's delta is joined away)
                    feed = self._feed
                    if feed.active and (feed.seen_gen != core.polls or key not in feed.local_seen):
                        feed.changed(key, None)  # (not for a key already reported this poll)
                    core._handle += 1
                    return core._handle
        if type(consistency) is not Consistency:
            consistency = Consistency.parse(consistency)
        if isinstance(fn, type):
            name = fn.__qualname__
            raise InvalidArgument(f"pass an op or a function, not the class {name}: {name}(...)")
        if type(key) is not str or key not in self._store.states or key[0] == "$":
            check_key(key)  # (a key already in the store was checked when it was created)
        if op_id is not None:
            _check_op_id(op_id)
            if op_id in self._op_ids:
                core.count("deduplicated_ops")
                return self._confirm(op_id, key, consistency, timeout)
        if self._leaving:
            self._rejoin()
        if consistency is LOCAL and op_id is None:
            # the common path, inlined: apply, batch the delta, report, a handle
            delta = self._store.update(key, factory, fn, None)
            self._propagation.enqueue(key, delta, core.node_id)
            if self._feed.active:
                self._feed.changed(key, None)
            core._handle += 1
            return core._handle
        required = 1 if consistency is LOCAL else consistency.required(self.member_count())
        delta = self._store.update(key, factory, fn, op_id)
        if op_id is not None:
            self._op_ids.add(op_id)
        self._changed_locally(key, delta, force=required > 1)
        handle = self._level(key, required, consistency, timeout)
        if op_id is not None:
            self._op_handles[op_id] = handle
            while len(self._op_handles) > self.config.dedupe_window:
                del self._op_handles[next(iter(self._op_handles))]
        return handle

    def _fast_kind(self, fn: object) -> type | bool | None:
        """For the update hot path, by the class of ``fn``: the type its ops belong to when
        that type may take the hot path, None for a callback, True for anything else (the
        general path explains or refuses it)."""
        if isinstance(fn, type):
            return True
        if isinstance(fn, Op):
            kind: type[CRDTBase] | None = getattr(type(fn), "TYPE", None)
            return kind if kind is not None and self._learn_plain(kind) else True
        return None if callable(fn) else True

    def _learn_plain(self, kind: type[CRDTBase]) -> bool:
        plain = self._plain[kind] = self._store.plain(kind)
        return plain

    def _confirm(
        self, op_id: str, key: str, consistency: Consistency, timeout: float | None
    ) -> int:
        """A retry of an applied op: same handle while the original is known, else wait for
        the level again with the key's whole state."""
        first = self._op_handles.get(op_id)
        required = consistency.required(self.member_count())
        if first is not None and consistency is LOCAL:
            return first
        state = self._store.state(key)
        if state is not None and required > 1:
            self._propagation.enqueue(key, state.copy(), self.node_id, force=True)
        return self._level(key, required, consistency, timeout)

    def _level(
        self, key: str, required: int, consistency: Consistency, timeout: float | None
    ) -> int:
        core = self._core
        _check_timeout(timeout)
        if required > 1:
            seq = self._propagation.flush()
            handle = self._requests.write(
                key, required, core.now + (timeout or self.config.op_timeout), seq
            )
            self._propagation.push(self._members.peers())
            return handle
        handle = core.next_handle()
        if consistency.kind != "local":
            core.emit(WriteDone(handle, key, (self.node_id,)))
        return handle

    def _local(self, key: str, op: Update, *, force: bool) -> None:
        delta = self._store.update(key, _factory(op), op)
        self._changed_locally(key, delta, force=force)

    def _changed_locally(self, key: str, delta: CRDTBase, *, force: bool) -> None:
        self._propagation.enqueue(key, delta, self.node_id, force=force)
        self._feed.changed(key, None)
        if key == MEMBERS_KEY:
            self._members.refresh(self._store.state(key))

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
        core = self._core
        core.advance(now)
        check_key(key, internal=True)
        consistency = Consistency.parse(consistency)
        _check_timeout(timeout)
        required = consistency.required(self.member_count())
        if required <= 1:
            handle = core.next_handle()
            core.emit(ReadDone(handle, key, self.get(key), (self.node_id,)))
            return handle
        handle = self._requests.read(key, required, now + (timeout or self.config.op_timeout))
        for p in self._members.peers():
            core.send(p, Read(handle, key))
        return handle

    def subscribe(self, *, key: str | None = None, prefix: str | None = None) -> int:
        """Get :class:`Changed` events for one key or every key with a prefix (or all keys)."""
        return self._feed.subscribe(key=key, prefix=prefix)

    def unsubscribe(self, sub: int) -> None:
        self._feed.unsubscribe(sub)

    def report_all_changes(self, on: bool = True, *, coalesce: bool = False) -> None:
        """Emit a :class:`Changed` event for every change, subscribed or not (change logs).
        ``coalesce``: one event per key and origin between two :meth:`poll` calls, however many
        times the key changed (a driver that batches, like the asyncio runtime)."""
        self._feed.all_changes = on
        self._feed.set_coalesce(coalesce)

    # ================================================================ receiving

    def receive(self, data: bytes, now: float) -> str:
        """Take one message; returns its sender. A bad message raises :class:`ProtocolError`
        and changes nothing."""
        self._core.advance(now)
        try:
            env = decode_message(data, cluster=self.config.cluster_id, limits=self.config.limits)
            self._accept(env)
        except ProtocolError:
            self._core.count("rejected")
            raise
        return env.sender

    def _accept(self, env: Envelope) -> None:
        """Checks every message (a reassembled one too) passes before it takes effect."""
        core = self._core
        if env.sender == self.node_id:
            raise ProtocolError("self_message", "message claims to come from this node")
        new_incarnation = self._members.check(env.sender, env.incarnation)
        if env.hlc.wall > _MAX_WALL_MS or env.hlc.logical > _MAX_LOGICAL:
            raise ProtocolError("malformed", f"clock timestamp out of range: {env.hlc}")
        body = env.body
        if isinstance(body, Chunk):
            # A fragment takes no effect of its own (no incarnation, clock or sign of life):
            # only the whole message does, once reassembled and checked like any other.
            self._chunks.check(env, body)
            core.count("received_CHUNK")
            core.count("bytes_received", env.size)
            inner = self._chunks.add(env, body)
            if inner is not None:
                whole = decode_message(
                    inner, cluster=self.config.cluster_id, limits=self.config.limits
                )
                if whole.sender != env.sender or isinstance(whole.body, Chunk):
                    raise ProtocolError(
                        "malformed", "a chunked message must be one non-chunk message of its sender"
                    )
                self._accept(whole)
            return
        # --- accepted: from here on the message takes effect
        peer = env.sender
        if new_incarnation:
            self._propagation.forget(peer)
            self._requests.forget(peer)
        self._members.record(peer, env.incarnation)
        ahead = env.hlc.wall - core.physical_ms()
        if ahead > self.config.max_clock_offset_ms:
            # A clock this far ahead is not merged: one broken peer must not drag every replica's
            # timestamps into the future (counted instead; the data itself is still merged).
            core.count("clock_skew_flagged")
        else:
            core.hlc.update(env.hlc)
        core.count(f"received_{env.kind.name}")
        core.count("bytes_received", env.size)
        core.count(f"bytes_received_{env.kind.name}", env.size)
        self._propagation.heard_from(peer, reply=env.reply_to != 0)
        self._ae.heard_from(peer)
        self._dispatch(env)

    def _dispatch(self, env: Envelope) -> None:
        peer = env.sender
        match env.body:
            case Delta() as m:
                self._join(m.entries, peer, forward=self.config.forwarding)
                self._core.send(peer, Ack(m.stream, m.lo, m.hi), env.msg_id)
            case Ack() as m:
                self._propagation.on_ack(peer, m)
            case AeRoot() as m:
                self._ae.on_root(env, m)
            case AeOk():
                self._ae.on_ok(env)
            case AeStep() as m:
                self._ae.on_step(env, m)
            case Read() as m:
                s = self._store.state(m.key)
                vv = self._store.version(m.key)
                self._core.send(peer, ReadReply(m.op, m.key, s, vv), env.msg_id)
            case ReadReply() as m:
                if self._requests.expects_reply(m.op, m.key, peer):
                    if m.state is not None:
                        self._join((Entry(m.key, m.state, m.vv),), peer, forward=False)
                    self._requests.replied(m.op, peer, self.get(m.key))
            case Leave() as m:
                # its own entry only: a LEAVE speaks for its sender, nobody else
                if self._members.only_changes(self._store.state(MEMBERS_KEY), m.members, peer):
                    self._join((Entry(MEMBERS_KEY, m.members),), peer, forward=False)
                else:
                    self._core.count("entries_ignored")
                if self._members.is_left(peer):
                    self._ae.cancel_repair(peer)  # (it is repaired when it comes back)

    def _join(
        self, entries: tuple[Entry, ...] | list[Entry], origin: str, *, forward: bool
    ) -> None:
        """Join received entries; report, forward and apply what inflated the store."""
        trusted = []
        for e in entries:
            if e.key.startswith("$") and not (
                e.key == MEMBERS_KEY and self._members.acceptable(e.state)
            ):
                self._core.count("entries_ignored")
                continue  # unknown reserved keys, a membership that is not a map or from the future
            trusted.append(e)
        for e in self._store.join(trusted, origin):
            self._feed.changed(e.key, origin)
            if forward:
                self._propagation.enqueue(e.key, e.state, origin)
            if e.key == MEMBERS_KEY:
                members = self._store.state(MEMBERS_KEY)
                was_left = self._members.left_set()
                self._members.refresh(members)
                now_left = self._members.left_set()
                for p in was_left - now_left:
                    # back after leaving: it missed what was not sent to it meanwhile
                    self._core.count("peers_rejoined")
                    self._propagation.mark_behind(p)
                for p in now_left - was_left:
                    self._ae.cancel_repair(p)  # (it is repaired when it comes back)
                if (
                    self._started
                    and not self._leaving
                    and self.config.gossip_membership
                    and self._members.own_entry_stale(members)
                ):
                    # $members misstates this running node (an older "left", another
                    # incarnation): announce again, stamped after what it says
                    self._local(MEMBERS_KEY, self._members.announcement("up"), force=False)

    def _repair(self, peer: str, probe: bool) -> None:
        self._ae.schedule_repair(peer, probe)

    # ================================================================ time

    def tick(self, now: float) -> None:
        """Do whatever is due at ``now`` (every part's timers)."""
        self._core.advance(now)
        if not self._started:
            self.start(now)
        for part in self._timed:
            part.tick(now)
        store = self._store
        exp = store.next_expiry()
        if exp is not None and exp <= self._core.physical_ms():
            for key in store.expire():
                self._feed.changed(key, None)

    def next_deadline(self) -> float | None:
        """When :meth:`tick` next has work to do (None: only when a message or update arrives)."""
        if not self._started:
            return self._core.now
        ds = [d for part in self._timed if (d := part.next_deadline()) is not None]
        exp = self._store.next_expiry()
        if exp is not None:
            core = self._core
            ds.append(core.now + max(0.0, (exp - core.physical_ms()) / 1000))
        return min(ds) if ds else None

    def __repr__(self) -> str:
        return f"Engine({self.actor!r}, keys={len(self._store)}, peers={self.peer_count()})"


def _check_timeout(timeout: object) -> None:
    ok = isinstance(timeout, int | float) and not isinstance(timeout, bool)
    if timeout is not None and not (ok and math.isfinite(timeout) and timeout > 0):  # type: ignore[arg-type,operator]
        raise InvalidArgument(f"timeout must be a positive finite number of seconds: {timeout!r}")


def _factory(op: Update) -> Callable[[], CRDTBase]:
    kind = getattr(type(op), "TYPE", None)
    if kind is None:
        raise InvalidArgument("internal updates are ops")
    return kind  # type: ignore[no-any-return]


def _check_op_id(op_id: object) -> None:
    if type(op_id) is not str or not op_id or len(op_id.encode("utf-8", "replace")) > 255:
        raise InvalidArgument("op ids are non-empty str of at most 255 bytes")
