"""The asyncio node: one replica with a real clock, a transport and a storage.

``Node`` drives the same engine as the simulator, through the same :class:`~crdtcoord.host.Host`
(in deferred mode: local updates are group-committed, see the host). It owns two clocks: a
**monotonic** clock for every timer (a wall-clock step, forward or back, never stalls or
rushes one) and the **wall** clock, used only for the hybrid logical clock and for a new node's
incarnation.

Example::

    async with Node("n1", transport=HttpTransport(...), storage=SqliteStorage("n1.db")) as n:
        hits = n.counter("hits")
        await hits.inc()                       # local: applied now, durable within 5 ms
        await hits.inc(consistency=MAJORITY)   # returns once a majority made it durable
        print(hits.value())
        async for change in n.subscribe("cfg/", since=cursor):
            ...

Closing is graceful: the node writes what is pending, waits (bounded) until its peers have
acknowledged its deltas, announces LEAVE (peers stop counting it for ``majority`` until it is
back), and records a clean shutdown if nothing was left unsent.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections.abc import Callable, Collection
from typing import Any

from crdtcoord._exceptions import CrdtcoordError, InvalidArgument
from crdtcoord.consensus.base import Consensus, ConsensusError
from crdtcoord.coordination.barrier import Barrier
from crdtcoord.coordination.election import Election
from crdtcoord.coordination.failure import PhiAccrual, PhiSettings
from crdtcoord.coordination.leases import Escalator, Grants, LeaseHandle
from crdtcoord.coordination.ratelimit import RateLimiter
from crdtcoord.coordination.semaphore import Semaphore
from crdtcoord.documents import Document
from crdtcoord.engine import (
    LOCAL,
    MEMBERS_KEY,
    Changed,
    Consistency,
    Engine,
    EngineConfig,
    Escalation,
    Event,
    Kind,
    OpFailed,
    PeerRepair,
    ReadDone,
    WriteDone,
)
from crdtcoord.host import Host, MemoryStorage, Storage
from crdtcoord.runtime.documents import DocumentHandle, _take_local
from crdtcoord.runtime.feed import META_KEY, ChangeFeed, Subscription
from crdtcoord.runtime.handles import (
    BoundedCounterHandle,
    CounterHandle,
    FlagHandle,
    MapHandle,
    PNCounterHandle,
    RegisterHandle,
    SetHandle,
)
from crdtcoord.runtime.transport import LocalNetwork, LocalTransport, Transport
from crdtcoord.types import CRDTBase, Lease, Op

#: What :attr:`Node.apply_local` applies: an op, or ``fn(state, ctx)`` returning its delta.
LocalUpdate = Op | Callable[..., CRDTBase]

__all__ = ["Node", "NotRunning", "wall_ms"]


class NotRunning(CrdtcoordError):
    """The node is not started yet, or is closing or closed: retry on another node, or later."""


def wall_ms() -> int:
    """The wall clock in integer milliseconds."""
    return time.time_ns() // 1_000_000


log = logging.getLogger("crdtcoord.node")

#: storage meta: how many times a process of this node stopped without a clean shutdown
CRASHES = "unclean_restarts"


class Node:
    """One replica on asyncio (see the module documentation)."""

    def __init__(
        self,
        node_id: str,
        *,
        transport: Transport | None = None,
        storage: Storage | None = None,
        config: EngineConfig | None = None,
        critical: Callable[[str, CRDTBase], bool] | None = None,
        failure_timeout: float = 5.0,
        wall_clock: Callable[[], int] = wall_ms,
        monotonic: Callable[[], float] = time.monotonic,
        keep_changes: int = 100_000,
        feed_queue: int = 10_000,
        consensus: Consensus | None = None,
        escalation_hook: Callable[[Escalation], Any] | None = None,
        critical_prefixes: tuple[str, ...] = (),
        phi: PhiSettings | None = None,
        remove_after: float | None = None,
        freeze_gc: bool = False,
    ) -> None:
        """``failure_timeout``: seconds of silence after which a peer is shown as suspected;
        ``keep_changes``: changes kept for feed replays; ``feed_queue``: changes a subscriber
        may fall behind before it gets ``Compacted``. ``consensus``: the plug-in that decides
        escalated conflicts and grants strong leases; ``escalation_hook`` replaces the default
        handling of conflicts (see :class:`~crdtcoord.coordination.Escalator`);
        ``critical_prefixes``: keys under these prefixes are critical (version vectors kept,
        conflicts escalated) besides the types critical by default (leases). ``phi``: the
        failure detector's settings; ``remove_after``: remove (by consensus) a peer suspected
        for that many seconds (None: never automatically). ``freeze_gc``: once started, move
        everything alive into the garbage collector's permanent generation (``gc.freeze()``),
        so that full collections no longer walk the imported libraries and the startup state —
        in the HTTP benchmark, an idle node's full collections (5 in 10 s, up to 50 ms each)
        went to none; :meth:`close` unfreezes. It is process-wide (an unfreeze releases every
        frozen object): ``crdtcoord serve`` sets it; an application that embeds a node decides
        for itself."""
        self.node_id = node_id
        self._freeze_gc = freeze_gc
        self._frozen = False
        # (a node sends the first delta after a quiet window at once: see delta_idle_send)
        self.config = config or EngineConfig(delta_idle_send=True)
        self.transport: Transport = transport or LocalTransport(LocalNetwork())
        self.storage: Storage = storage or MemoryStorage(self.config.dedupe_window)
        self.failure_timeout = failure_timeout
        if critical_prefixes:
            prefixes = tuple(critical_prefixes)
            base = critical

            def critical_fn(key: str, state: CRDTBase) -> bool:
                if key.startswith(prefixes):
                    return True
                return base(key, state) if base is not None else state.CRITICAL_BY_DEFAULT

            critical = critical_fn
        self._critical = critical
        #: the consensus plug-in (None: strong mode unavailable, conflicts settle by merge)
        self.consensus = consensus
        self.grants = Grants(lambda: self.consensus is not None)
        self.grants.on_lost = self._grant_lost
        #: phi-accrual failure detector over message arrivals (monotonic seconds)
        self.detector = PhiAccrual(phi)
        self.remove_after = remove_after
        #: ("suspected" | "recovered" | "removed", peer, monotonic time), the last 1,000
        self.membership_events: list[tuple[str, str, float]] = []
        self.on_membership_event: Callable[[str, str], None] | None = None
        self._suspected_since: dict[str, float] = {}
        self._watchdog: asyncio.Task[None] | None = None
        self.escalator = Escalator(self, consensus, escalation_hook)
        if escalation_hook is None:
            self.grants.on_contested = self.escalator.contest
        self._wall = wall_clock
        self._mono = monotonic
        self._keep = keep_changes
        self._feed_queue = feed_queue
        self._t0 = 0.0
        self._host: Host | None = None
        self._feed: ChangeFeed | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        #: ``apply_local(key, factory, op)``: apply an update at LOCAL consistency, now (no
        #: suspension): the fast path of the handles. Durable within one batching window; the
        #: timer writes and sends it. Before start and from close on it raises NotRunning.
        self.apply_local: Callable[[str, Any, LocalUpdate], None] = self._refuse_local
        self._waiting: dict[int, asyncio.Future[Event]] = {}
        self._contact: dict[str, float] = {}
        self._started_at = 0.0
        self._closed = False
        #: escalations raised by the engine (the consensus hook comes with coordination)
        self.escalations: list[Escalation] = []
        self.on_escalation: Callable[[Escalation], None] | None = None
        #: counters of this node's own (besides the engine's)
        self.counters: dict[str, int] = {}
        #: called after every storage write with (persist effects, seconds): metrics hook
        self.write_observers: list[Callable[[int, float], None]] = []
        #: updates applied through this node's API (retries of an applied op id included)
        self.ops_applied = 0
        self._early_peers: list[str] = []
        self._key_watchers: dict[str, list[Callable[[], None]]] = {}
        self._edited_docs: set[str] = set()
        self._semaphores: dict[str, Semaphore] = {}
        #: the smallest fencing token an optimistic grant of this process hands out
        self.token_floor = 0
        self.close_report = ""
        self._closing = False  # close() began: updates are refused

    # ------------------------------------------------------------------ lifecycle

    async def start(self, *, wait_peers: float = 5.0) -> Node:
        """Open the storage, start the transport and the engine, and wait (at most
        ``wait_peers`` seconds) until the transport knows every configured peer's id — until
        then a ``majority`` would be counted among the peers known so far. A peer that is down
        does not block the start beyond that: it is reached when it comes up."""
        if self._host is not None:
            return self
        self._loop = asyncio.get_running_loop()
        self._t0 = self._mono()
        # the transport first: it may have to bind to learn its own address (port 0), which
        # the engine gossips; a message arriving before the engine exists is refused (the
        # sender retries)
        await self.transport.start(self)
        try:
            self._host = Host.open(
                self.node_id,
                self.storage,
                self._send,
                self._on_event,
                wall_ms=self._wall(),
                meta=lambda events: self._feed.meta(events) if self._feed is not None else None,
                defer=True,
                seeds=tuple(self.transport.seeds()),
                config=self.config,
                critical=self._critical,
                clock_ms=self._wall,
                advertise=self.transport.advertise(),
            )
        except BaseException:
            await self.transport.close()  # (e.g. the data dir is locked by another process)
            raise
        self._host.on_write = self._observe_write
        # Tokens handed out by optimistic leases since the last write may be forgotten by a
        # crash: after an unclean stop, new grants start above anything the dead process could
        # have handed out (the floor moves up by 2**32 per unclean restart).
        crashes = self._host.restored_meta.get(CRASHES, 0) + (1 if self._host.unclean else 0)
        self._host.mark_running({CRASHES: crashes})
        self.token_floor = crashes << 32
        engine = self._host.engine
        engine.report_all_changes(coalesce=True)
        self.apply_local = self._local_path(engine)
        for p in self._early_peers:
            engine.add_peer(p)
        self._early_peers.clear()
        self._feed = ChangeFeed(
            engine.incarnation,
            self._host.restored_meta.get(META_KEY, 0),
            self.value,
            self._keys,
            keep=self._keep,
            queue=self._feed_queue,
        )
        self._started_at = self._now()
        self._host.start(self._now())
        self._reschedule()
        wait = getattr(self.transport, "wait_peers", None)
        if wait is not None and wait_peers > 0:
            await wait(wait_peers)
        self._watchdog = asyncio.ensure_future(self._watch_peers())
        if self.consensus is not None:
            if (
                self.consensus.kind == "local"
                and not getattr(self.consensus, "shared", False)
                and (self.transport.seeds() or self.engine.peers())
            ):
                await self.close(drain=0.1)
                raise ConsensusError(
                    "LocalConsensus is for a single node: with peers each process would decide"
                    " alone; use raft or etcd (or LocalConsensus(shared=True) for nodes of one"
                    " process sharing one instance)"
                )
            await self.consensus.start()
        if self._freeze_gc:
            gc.collect()  # (garbage of the startup is freed, not frozen)
            gc.freeze()
            self._frozen = True
        return self

    async def close(self, *, drain: float = 2.0) -> bool:
        """Graceful shutdown; returns whether it was clean (every delta acknowledged). From
        the first moment the node refuses updates (:class:`NotRunning`): an update after its
        LEAVE would announce it again."""
        if self._closing or self._host is None:
            return False
        self._commit_documents()  # (direct document edits not committed yet)
        self._closing = True
        self.apply_local = self._refuse_local
        host = self._host
        host.flush()
        await self._drain(self._now() + drain * 0.75)
        host.leave(self._now())  # ($members says "left": one more delta, then LEAVE)
        host.flush()
        await self._drain(self._now() + drain * 0.25)
        self._closed = True
        if self._watchdog is not None:
            self._watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._watchdog
        for sem in self._semaphores.values():
            sem.close()
        await self.escalator.close()
        if self.consensus is not None:
            with contextlib.suppress(Exception):
                await self.consensus.close()
        e = host.engine
        left_over = []
        if e.backlog():
            lagging = [
                p["node"] + (" (leaving too)" if p["left"] else "")
                for p in self.peer_status()
                if p["lag"]
            ]
            who = ", ".join(lagging) or "any peer (the last batch was never sent)"
            left_over.append(f"{e.backlog()} delta batch(es) not acknowledged by {who}")
        if e.repairs():
            left_over.append(f"a repair owed to {', '.join(e.repairs())}")
        if e.pending_requests():
            left_over.append(f"{e.pending_requests()} request(s) waiting for their level")
        #: why the last close was not clean ("" if it was): the next start probes the peers
        self.close_report = "; ".join(left_over)
        await self.transport.close()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for fut in self._waiting.values():
            if not fut.done():
                fut.cancel()
        if self._frozen:
            gc.unfreeze()  # (else this node, now garbage, would stay frozen with its store)
            self._frozen = False
        return host.close()

    async def _drain(self, deadline: float) -> None:
        """Wait (until ``deadline``) for every delta to be acknowledged and every repair owed
        to be done; timers keep running."""
        assert self._host is not None
        engine = self._host.engine
        while (engine.backlog() or engine.repairs()) and engine.peers() and self._now() < deadline:
            await asyncio.sleep(0.01)

    async def __aenter__(self) -> Node:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ------------------------------------------------------------------ clocks and timer

    def _now(self) -> float:
        return self._mono() - self._t0

    def _reschedule(self) -> None:
        if self._closed or self._host is None or self._loop is None:
            return
        d = self._host.next_deadline()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = d
        if d is not None:
            self._timer = self._loop.call_later(max(0.0, d - self._now()), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        if self._host is None or self._closed:
            return
        self._host.tick(self._now())
        self._reschedule()

    # ------------------------------------------------------------------ engine plumbing

    @property
    def engine(self) -> Engine:
        """The engine (for inspection; mutate through handles or :meth:`apply`)."""
        if self._host is None:
            raise NotRunning("the node is not started")
        return self._host.engine

    @property
    def incarnation(self) -> int:
        return self.engine.incarnation

    @property
    def actor(self) -> str:
        return self.engine.actor

    def actor_of(self, node: str) -> str:
        """The replica id of another node's current incarnation (it must have been heard from)."""
        inc = self.engine.incarnation_of(node)
        if inc is None:
            raise InvalidArgument(f"node {node!r} has not been heard from yet")
        return f"{node}/{inc}"

    def _send(self, peer: str, data: bytes, kind: Kind) -> None:
        self.transport.send(peer, data, kind)

    def receive(self, data: bytes) -> str:
        """Take one message from the transport; returns the sender. A refused message raises
        :class:`~crdtcoord.ProtocolError` and changes nothing."""
        host = self._host
        if host is None or self._closed:
            raise NotRunning("the node is not running")
        sender = host.receive(data, self._now())
        now = self._now()
        self._contact[sender] = now
        self.detector.heartbeat(sender, now)
        self._reschedule()
        return sender

    def add_peer(self, peer: str) -> None:
        """A peer became reachable (the transport resolved its address)."""
        if self._host is None:
            self._early_peers.append(peer)  # (added when the engine exists)
            return
        self.engine.add_peer(peer)
        if self._host is not None:
            self._host.run()
        self._reschedule()

    def _on_event(self, e: Event) -> None:
        if isinstance(e, Changed):
            if e.key == MEMBERS_KEY:
                self._learn_addresses()
                return
            if self._feed is not None:
                self._feed.changed(e)
            if e.key.startswith("lease/"):
                state = self.engine.get(e.key)
                if isinstance(state, Lease):
                    self.grants.changed(e.key, state.value())
            for w in self._key_watchers.get(e.key, ()):
                w()
        elif isinstance(e, WriteDone | ReadDone | OpFailed):
            fut = self._waiting.pop(e.handle, None)
            if fut is not None and not fut.done():
                if isinstance(e, OpFailed):
                    fut.set_exception(e.error)
                else:
                    fut.set_result(e)
        elif isinstance(e, Escalation):
            self.escalations.append(e)
            del self.escalations[:-100]  # (the last ones, for inspection)
            if self.on_escalation is not None:
                self.on_escalation(e)
            self.escalator(e)
        elif isinstance(e, PeerRepair):
            self.counters["peer_repairs"] = self.counters.get("peer_repairs", 0) + 1

    def watch_key(self, key: str, fn: Callable[[], None]) -> Callable[[], None]:
        """Call ``fn`` (no arguments, on the loop) after each committed change of ``key``;
        returns the function that stops it. For coordination primitives that wait."""
        self._key_watchers.setdefault(key, []).append(fn)

        def stop() -> None:
            lst = self._key_watchers.get(key)
            if lst is not None and fn in lst:
                lst.remove(fn)
                if not lst:
                    del self._key_watchers[key]

        return stop

    def suspected(self, peer: str) -> bool:
        """Is ``peer`` suspected: phi at or over the threshold, or silent past
        ``failure_timeout`` (never heard from: since this node started)?"""
        now = self._now()
        if self.detector.suspected(peer, now):
            return True
        last = self._contact.get(peer)
        silent = now - (last if last is not None else self._started_at)
        return silent > self.failure_timeout

    async def _watch_peers(self) -> None:
        """Every 0.25 s: suspicion and recovery events, and automatic removal."""
        while not self._closing:
            await asyncio.sleep(0.25)
            if self._host is None:
                continue
            now = self._now()
            peers = self.engine.peers()
            for p in [x for x in self._suspected_since if x not in peers]:
                # removed meanwhile (another node's decision, gossiped) or left
                del self._suspected_since[p]
                self._member_event("removed", p)
            for p in peers:
                sus = self.suspected(p)
                since = self._suspected_since.get(p)
                if sus and since is None:
                    self._suspected_since[p] = now
                    self._member_event("suspected", p)
                elif not sus and since is not None:
                    del self._suspected_since[p]
                    self._member_event("recovered", p)
                elif (
                    sus
                    and since is not None
                    and self.remove_after is not None
                    and now - since >= self.remove_after
                    and self.consensus is not None
                ):
                    with contextlib.suppress(Exception):
                        await self.remove_member(p)

    def _member_event(self, kind: str, peer: str) -> None:
        if kind == "recovered":
            log.info("peer %s recovered", peer)
        else:
            log.warning("peer %s %s", peer, kind)
        self.membership_events.append((kind, peer, self._now()))
        del self.membership_events[:-1000]
        if self.on_membership_event is not None:
            self.on_membership_event(kind, peer)

    async def remove_member(self, peer: str) -> bool:
        """Remove ``peer`` from the membership (it stops counting for ``majority``/``all``)
        through one consensus decision per peer and incarnation; returns whether this call's
        decision was to remove it (another node may have decided first: same outcome)."""
        if self.consensus is None:
            raise ConsensusError("removing a member is a consensus decision: --consensus")
        inc = self.engine.incarnation_of(peer)
        if inc is None and peer not in self.engine.peers():
            raise InvalidArgument(f"{peer!r} is not a member this node knows")
        decision = await self.consensus.decide(f"remove/{peer}/{inc}", self.node_id.encode())
        assert self._host is not None
        self._host.engine.remove_member(peer, self._now())
        self._host.run()
        self._reschedule()
        self._suspected_since.pop(peer, None)
        self._member_event("removed", peer)
        return decision == self.node_id.encode()

    def _grant_lost(self, g: Any) -> None:
        """A strong grant lost to a record in the other mode: give it back to consensus, so
        consensus does not keep naming a holder every replica has moved past."""
        c = self.consensus
        if g.mode == "strong" and g.consensus is not None and c is not None:
            task = asyncio.ensure_future(c.release(g.consensus))
            task.add_done_callback(lambda t: t.cancelled() or t.exception())

    def wall_ms(self) -> int:
        """This node's wall clock in ms (injectable: ``Node(wall_clock=...)``)."""
        return self._wall()

    def hlc_now_ms(self) -> int:
        """This node's hybrid-clock time in ms (what lease expiries are compared with)."""
        return self.engine.clock.now().wall

    def _observe_write(self, n: int, seconds: float) -> None:
        for f in self.write_observers:
            f(n, seconds)

    def _learn_addresses(self) -> None:
        for node, info in self.engine.members().items():
            if node != self.node_id and isinstance(info, dict):
                addr = info.get("addr")
                if isinstance(addr, str):
                    self.transport.learn(node, addr)

    # ------------------------------------------------------------------ updates and reads

    def _refuse_local(self, key: str, factory: Any, op: LocalUpdate) -> None:
        raise NotRunning("the node is closing" if self._closing else "the node is not running")

    def _local_path(self, engine: Engine) -> Callable[[str, Any, LocalUpdate], None]:
        """What :attr:`apply_local` is while the node runs: a closure over what the handles'
        hot path reads (a closure reads its variables faster than attributes)."""
        update = engine.update
        mono, t0, delay = self._mono, self._t0, self.config.delta_delay
        node = self

        def apply_local(key: str, factory: Any, op: LocalUpdate) -> None:
            now = mono() - t0
            update(key, factory, op, now)
            node.ops_applied += 1
            at = node._timer_at
            if at is None or at > now + delay:
                node._run_effects()  # (deferred: the batching timer writes them)

        return apply_local

    def _run_effects(self) -> None:
        assert self._host is not None
        self._host.run()
        self._reschedule()

    def persist_now(self) -> None:
        """Write every update applied so far to the storage now, instead of within the
        batching window: what a grant, a permit or an arrival calls before it answers, so a
        crash right after cannot forget what a caller was told."""
        host = self._host
        if host is None:
            raise NotRunning("the node is not running")
        host.write_now()

    async def apply(
        self,
        key: str,
        op: Op | Callable[..., CRDTBase],
        factory: Any = None,
        *,
        consistency: Consistency = LOCAL,
        op_id: str | None = None,
        timeout: float | None = None,
    ) -> bool:
        """Apply ``op`` to ``key`` (created with ``factory()``, by default the op's type).
        Returns False if ``op_id`` was already applied (nothing changed now; at a level above
        LOCAL the call still waits for that level, as the original did)."""
        if self._host is None or self._closing:
            raise NotRunning(
                "the node is not running" if self._host is None else "the node is closing"
            )
        if factory is None:
            if not isinstance(op, Op):
                raise InvalidArgument("an update function needs a factory (the key's type)")
            factory = type(op).TYPE
        if consistency is LOCAL and op_id is None:
            self.apply_local(key, factory, op)
            return True
        engine = self._host.engine
        fresh = op_id is None or not engine.has_op_id(op_id)
        handle = engine.update(
            key, factory, op, self._now(), consistency=consistency, op_id=op_id, timeout=timeout
        )
        self.ops_applied += 1
        if consistency is LOCAL:
            self._host.run()
            self._reschedule()
            return fresh
        assert self._loop is not None
        fut: asyncio.Future[Event] = self._loop.create_future()
        self._waiting[handle] = fut
        self._host.run()
        self._reschedule()
        await fut
        return fresh

    async def read(
        self, key: str, *, consistency: Consistency = LOCAL, timeout: float | None = None
    ) -> Any:
        """The value of ``key`` after joining the replies of ``consistency`` replicas."""
        if self._host is None or self._closed:
            raise NotRunning("the node is not running")
        assert self._loop is not None
        handle = self._host.engine.read(key, self._now(), consistency=consistency, timeout=timeout)
        fut: asyncio.Future[Event] = self._loop.create_future()
        self._waiting[handle] = fut
        self._host.run()
        self._reschedule()
        done = await fut
        assert isinstance(done, ReadDone)
        return None if done.state is None else done.state.value()

    def value(self, key: str) -> Any:
        """The local value of ``key`` (None if absent), without waiting."""
        return self.engine.value(key)

    def state(self, key: str) -> CRDTBase | None:
        """A copy of the local state of ``key``."""
        return self.engine.get(key)

    def keys(self, prefix: str = "") -> list[str]:
        return self._keys(prefix)

    def _keys(self, prefix: str) -> list[str]:
        return [k for k in self.engine.keys(prefix) if not k.startswith("$")]

    def pending_writes(self) -> int:
        """Updates applied in memory and not yet written (the batching window's backlog)."""
        return self._host.pending_writes() if self._host is not None else 0

    def flush(self) -> None:
        """Write what is pending now (instead of at the next batching tick)."""
        if self._host is not None:
            self._host.flush()

    # ------------------------------------------------------------------ handles

    def document(self, name: str) -> DocumentHandle:
        """The Yjs document ``name`` (see :mod:`crdtcoord.runtime.documents`)."""
        return DocumentHandle(self, name)

    def attach_document(self, key: str, state: Document) -> None:
        """Commit the direct edits of ``key``'s live document on the loop, right after them."""
        if state.on_local_edit is None:
            state.on_local_edit = lambda: self._document_edited(key)

    def _document_edited(self, key: str) -> None:
        if key in self._edited_docs:
            return
        self._edited_docs.add(key)
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon(self._commit_documents)

    def _commit_documents(self) -> None:
        """Commit the direct edits made on live documents (LOCAL consistency)."""
        keys, self._edited_docs = self._edited_docs, set()
        if self._host is None or self._closing:
            return
        for key in keys:
            state = self.engine.live(key)
            if isinstance(state, Document) and state.has_local():
                self.apply_local(key, Document, _take_local)

    def counter(self, name: str) -> CounterHandle:
        return CounterHandle(self, name)

    def pn_counter(self, name: str) -> PNCounterHandle:
        return PNCounterHandle(self, name)

    def bounded_counter(self, name: str, lower: int = 0) -> BoundedCounterHandle:
        return BoundedCounterHandle(self, name, lower)

    def set(self, name: str) -> SetHandle:
        return SetHandle(self, name)

    def register(self, name: str) -> RegisterHandle:
        return RegisterHandle(self, name)

    def map(self, name: str) -> MapHandle:
        return MapHandle(self, name)

    def flag(self, name: str) -> FlagHandle:
        return FlagHandle(self, name)

    def lease(self, name: str) -> LeaseHandle:
        """A lease with fencing tokens (strong with a consensus plug-in, else optimistic)."""
        return LeaseHandle(self, name)

    def election(self, name: str) -> Election:
        """Leader election on a strong lease (see :mod:`crdtcoord.coordination.election`)."""
        return Election(self, name)

    def barrier(
        self,
        name: str,
        participants: Collection[str] | None = None,
        *,
        n: int | None = None,
        expires_ms: int | None = None,
    ) -> Barrier:
        """Wait until ``n`` (default: all) of ``participants`` arrived."""
        return Barrier(self, name, participants, n=n, expires_ms=expires_ms)

    async def semaphore(self, name: str, permits: int, *, init: bool | None = None) -> Semaphore:
        """A cluster-wide semaphore of ``permits`` (escrowed rights; see the module doc).
        One handle per name and node: a second call returns the first handle (its
        ``permits`` must agree)."""
        sem = self._semaphores.get(name)
        if sem is not None:
            if sem.permits != permits:
                raise InvalidArgument(
                    f"semaphore {name!r} has {sem.permits} permits here, not {permits}"
                )
            return sem
        sem = await Semaphore(self, name, permits).init(init=init)
        return self._semaphores.setdefault(name, sem)

    def rate_limiter(self, name: str, limit: int, window: float) -> RateLimiter:
        """At most ``limit`` events per ``window`` seconds cluster-wide, decided locally."""
        return RateLimiter(self, name, limit, window)

    # ------------------------------------------------------------------ change feed

    def subscribe(self, prefix: str = "", since: str | None = None) -> Subscription:
        """Changes of keys under ``prefix`` in commit order (see :mod:`crdtcoord.runtime.feed`);
        ``since``: resume after that cursor (:class:`~crdtcoord.runtime.Compacted` if the node
        no longer can, with a snapshot). Registered at once: a change made right after this
        call is delivered; close it (or use ``async with``) when done."""
        if self._feed is None:
            raise NotRunning("the node is not started")
        return self._feed.subscribe(prefix, since)

    def feed_lag(self) -> int:
        """Changes queued for the slowest feed subscriber."""
        return self._feed.lag() if self._feed is not None else 0

    @property
    def cursor(self) -> str:
        """The feed cursor of the latest change."""
        if self._feed is None:
            raise NotRunning("the node is not started")
        return self._feed.cursor

    # ------------------------------------------------------------------ status

    def peer_status(self) -> list[dict[str, Any]]:
        """Per peer: last contact, suspicion, delta lag, round trip."""
        e = self.engine
        now = self._now()
        out = []
        for p in sorted(set(e.peers()) | set(self._contact)):
            st = e.peer_stream(p)
            last = self._contact.get(p)
            out.append(
                {
                    "node": p,
                    "incarnation": e.incarnation_of(p),
                    "last_contact_s": None if last is None else round(now - last, 3),
                    "suspected": self.suspected(p),
                    "phi": round(min(self.detector.phi(p, now), 999.0), 2),
                    "left": p not in e.peers(),
                    "lag": (e.delta_seq - st.acked) if st is not None else e.delta_seq,
                    "rtt_ms": round(st.srtt * 1000, 3) if st is not None and st.srtt else None,
                }
            )
        return out

    def status(self) -> dict[str, Any]:
        """Everything ``/v1/status`` shows (see ``docs/operations.md`` for each field)."""
        e = self.engine
        m = e.metrics
        host = self._host
        assert host is not None and self._feed is not None
        sync = {
            k: m.get(k, 0)
            for k in (
                "bytes_sent",
                "bytes_received",
                "sent_DELTA",
                "received_DELTA",
                "retransmits",
                "ae_rounds",
                "ae_in_sync",
                "repairs_scheduled",
                "repairs_done",
                "escalations",
                "rejected",
                "entries_refused",
                "heals_detected",
            )
        }
        storage: dict[str, Any] = {"kind": type(self.storage).__name__}
        for attr in (
            "path",
            "durability",
            "writes",
            "compactions",
            "checkpoints",
            "inline_checkpoints",
            "last_write_s",
        ):
            if hasattr(self.storage, attr):
                v = getattr(self.storage, attr)
                storage[attr] = str(v) if attr == "path" else v
        storage["pending_writes"] = host.pending_writes()
        return {
            "node": self.node_id,
            "incarnation": e.incarnation,
            "cluster": self.config.cluster_id,
            "uptime_s": round(self._now() - self._started_at, 3),
            "keys": len(self._keys("")),
            "members": e.member_count(),
            "peers": self.peer_status(),
            "backlog": e.backlog(),
            "repairs": e.repairs(),
            "pending_requests": e.pending_requests(),
            "sync": sync,
            "feed": {
                "cursor": self._feed.cursor,
                "subscribers": self._feed.subscribers(),
                "lag": self._feed.lag(),
            },
            "storage": storage,
            "transport": self.transport.status(),
            "escalations": len(self.escalations),
            "coordination": {
                "consensus": self.consensus.status() if self.consensus is not None else None,
                "escalations": self.escalator.stats.as_dict(),
                "decisions": self.escalator.decisions[-5:],
                "leases_held": [g.as_dict() for g in self.grants.held()],
                "leases_lost": len(self.grants.lost),
                "membership_events": [
                    {"event": k, "peer": p, "at_s": round(t, 3)}
                    for k, p, t in self.membership_events[-10:]
                ],
            },
        }

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("running" if self._host else "new")
        return f"Node({self.node_id!r}, {state})"
