"""Deterministic discrete-event simulation of many replication engines.

Virtual time, one seeded RNG for the network and one per node (derived from the seed), a heap of
events ordered by ``(time, sequence number)``: the same seed gives the identical run, event for
event, in any process (nothing depends on hash order). Each node is a real
:class:`~crdtcoord.engine.Engine`, the same class the asyncio runtime drives, so what a notebook
measures is what production runs.

Faults: per-link latency distributions, loss, duplication, reordering, partitions and heals,
crash and restart (keeping or losing the node's state), and per-node clock skew (each node's
engine sees ``global time + skew``).

Each node runs through a :class:`~crdtcoord.host.Host` over its own storage (a
:class:`~crdtcoord.host.MemoryStorage` unless given): a crash drops the engine and every message
in flight to it; a restart builds a new engine from the storage alone.
"""

from __future__ import annotations

import hashlib
import heapq
import math
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar, overload

from crdtcoord._exceptions import InvalidArgument
from crdtcoord.engine import Effect, Engine, EngineConfig, Kind, ProtocolError
from crdtcoord.host import Host, MemoryStorage, Storage
from crdtcoord.sim.network import NetworkConfig
from crdtcoord.types import CRDTBase, Op

E = TypeVar("E")

__all__ = ["NodeHandle", "SimStats", "Simulation"]

_DELIVER, _TIMER, _ACTION = 0, 1, 2
#: Events at one virtual instant beyond which a run is declared stuck (a bug, never a workload).
_LIVELOCK = 1_000_000


@dataclass
class SimStats:
    """Network totals of a run (bytes are message bytes as encoded by the engines)."""

    messages_sent: int = 0
    messages_delivered: int = 0
    messages_dropped: int = 0
    messages_duplicated: int = 0
    bytes_sent: int = 0
    rejected: int = 0
    #: Bytes sent per round (``round_length`` seconds of virtual time).
    bytes_by_round: dict[int, int] = field(default_factory=dict)
    messages_by_round: dict[int, int] = field(default_factory=dict)


@dataclass
class NodeHandle:
    """A simulated node: its host (engine + storage), clock skew, liveness and events."""

    name: str
    host: Host
    storage: Storage
    skew: float = 0.0
    up: bool = True
    timer_at: float | None = None
    #: bumped at each crash: messages sent to an earlier epoch are lost with the process
    epoch: int = 0
    events: list[Effect] = field(default_factory=list)

    @property
    def engine(self) -> Engine:
        return self.host.engine


class Simulation:
    """``n`` engines (or the named ones) on a simulated network. Times are in seconds."""

    def __init__(
        self,
        nodes: int | Sequence[str],
        *,
        seed: int = 0,
        config: EngineConfig | None = None,
        network: NetworkConfig | None = None,
        skews: dict[str, float] | None = None,
        round_length: float | None = None,
        record_events: bool = True,
        start: float = 0.0,
        stagger: bool = False,
        storage: Callable[[str], Storage] | None = None,
        configs: dict[str, EngineConfig] | None = None,
    ) -> None:
        """``configs`` overrides the engine config of some nodes. ``storage(name)`` builds each
        node's storage (default: a MemoryStorage each); a
        node restarted with ``lose_state`` gets a fresh one."""
        names = tuple(f"n{i:05d}" for i in range(nodes)) if isinstance(nodes, int) else tuple(nodes)
        if len(set(names)) != len(names) or not names:
            raise InvalidArgument("node names must be distinct and at least one")
        self.seed = seed
        self.config = config or EngineConfig()
        self.network = network or NetworkConfig()
        self.rng = random.Random(f"net:{seed}")
        self.now = start
        self.round_length = round_length or self.config.ae_interval
        self.record_events = record_events
        self.names = names
        self.stats = SimStats()
        self._heap: list[tuple[float, int, int, Any]] = []
        self._seq = 0
        self._blocked: set[tuple[str, str]] = set()
        self._groups: dict[str, int] | None = None
        self._trace = hashlib.blake2b(digest_size=16)
        self._storage = storage
        self._configs = dict(configs or {})
        self._last_incarnation: dict[str, int] = {}
        self.nodes: dict[str, NodeHandle] = {}
        for name in names:
            skew = (skews or {}).get(name, 0.0)
            st = self._new_storage(name)
            h = NodeHandle(name, None, st, skew)  # type: ignore[arg-type]
            self.nodes[name] = h
            self._open(h)
        for i, h in enumerate(self.nodes.values()):
            offset = (i / len(names)) * self.config.ae_interval if stagger else 0.0
            self._start_node(h, start + offset)

    # --------------------------------------------------------------------- construction

    def _new_storage(self, name: str) -> Storage:
        if self._storage is None:
            return MemoryStorage(self.config.dedupe_window)
        return self._storage(name)

    def _wall_ms(self, h: NodeHandle) -> int:
        """The node's wall clock (ms) at a (re)start; a restart takes at least 1 ms."""
        ms = max(0, int((self.now + h.skew) * 1000), self._last_incarnation.get(h.name, -1) + 1)
        self._last_incarnation[h.name] = ms
        return ms

    def _open(self, h: NodeHandle) -> None:
        boot = h.epoch
        rng = random.Random(f"node:{self.seed}:{h.name}:{boot}")
        name = h.name

        def send(peer: str, data: bytes, kind: Kind) -> None:
            self._send(name, peer, data)

        sink = h.events.append if self.record_events else None
        h.host = Host.open(
            name,
            h.storage,
            send,
            sink,
            wall_ms=self._wall_ms(h),
            clock_ms=None,  # the engine's clock is its (skewed) virtual time
            seeds=self.names,
            config=self._configs.get(name, self.config),
            rng=rng,
            process_id=rng.getrandbits(62),  # deterministic, and new at every boot
        )

    def _start_node(self, h: NodeHandle, at: float) -> None:
        def go() -> None:
            h.host.start(self.now + h.skew)
            self._after_input(h)

        self.schedule(at, go)

    @property
    def engines(self) -> dict[str, Engine]:
        return {n: h.engine for n, h in self.nodes.items()}

    def engine(self, name: str) -> Engine:
        return self.nodes[name].engine

    # --------------------------------------------------------------------- event loop

    def schedule(self, at: float, action: Callable[[], None]) -> None:
        """Run ``action`` at virtual time ``at`` (deterministically ordered with other events)."""
        self._push(max(at, self.now), _ACTION, action)

    def _push(self, at: float, kind: int, payload: Any) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (at, self._seq, kind, payload))

    def run_until(self, t: float, *, max_events: int | None = None) -> int:
        """Process events up to virtual time ``t``; returns how many were processed."""
        n = 0
        heap = self._heap
        same_time = 0
        while heap and heap[0][0] <= t:
            at, _, kind, payload = heapq.heappop(heap)
            if at == self.now:
                same_time += 1
                if same_time > _LIVELOCK:
                    raise RuntimeError(f"simulation livelock: {_LIVELOCK} events at t={at}")
            else:
                same_time = 0
            self.now = at
            if kind == _DELIVER:
                self._deliver(*payload)
            elif kind == _TIMER:
                self._fire(*payload)
            else:
                payload()
            n += 1
            if max_events is not None and n >= max_events:
                break
        if self.now < t and (max_events is None or n < max_events):
            self.now = t
        return n

    def run_for(self, dt: float) -> int:
        return self.run_until(self.now + dt)

    def in_flight(self) -> int:
        """Messages scheduled for delivery and not delivered yet."""
        return sum(1 for e in self._heap if e[2] == _DELIVER)

    # --------------------------------------------------------------------- node I/O

    def _local(self, h: NodeHandle) -> float:
        return self.now + h.skew

    def _after_input(self, h: NodeHandle) -> None:
        """The host ran the effects; schedule the node's next timer."""
        d = h.host.next_deadline()
        if d is None:
            h.timer_at = None
            return
        at = d - h.skew
        while at + h.skew < d:  # float rounding: the node's clock must reach d when it fires
            at = math.nextafter(at, math.inf)
        at = max(self.now, at)
        if h.timer_at is None or at < h.timer_at or h.timer_at < self.now:
            h.timer_at = at
            self._push(at, _TIMER, (h.name, at))

    def _fire(self, name: str, at: float) -> None:
        h = self.nodes[name]
        if not h.up or h.timer_at != at:
            return  # stale timer
        h.timer_at = None
        h.host.tick(self._local(h))
        self._after_input(h)

    def _send(self, src: str, dst: str, data: bytes) -> None:
        st = self.stats
        size = len(data)
        st.messages_sent += 1
        st.bytes_sent += size
        r = int(self.now // self.round_length)
        st.bytes_by_round[r] = st.bytes_by_round.get(r, 0) + size
        st.messages_by_round[r] = st.messages_by_round.get(r, 0) + 1
        self._trace.update(f"{self.now:.9f}|{src}>{dst}|".encode())
        self._trace.update(data)
        if dst not in self.nodes or not self._reachable(src, dst):
            st.messages_dropped += 1
            return
        link = self.network.link(src, dst)
        rng = self.rng
        if link.loss and rng.random() < link.loss:
            st.messages_dropped += 1
            return
        copies = 2 if link.duplicate and rng.random() < link.duplicate else 1
        if copies == 2:
            st.messages_duplicated += 1
        epoch = self.nodes[dst].epoch
        for _ in range(copies):
            delay = link.latency.sample(rng)
            if link.reorder and rng.random() < link.reorder:
                delay += link.reorder_delay
            self._push(self.now + delay, _DELIVER, (src, dst, data, epoch))

    def _reachable(self, a: str, b: str) -> bool:
        if (a, b) in self._blocked:
            return False
        g = self._groups
        return g is None or g.get(a, -1) == g.get(b, -2)

    def _deliver(self, src: str, dst: str, data: bytes, epoch: int) -> None:
        h = self.nodes[dst]
        if not h.up or h.epoch != epoch or not self._reachable(src, dst):
            self.stats.messages_dropped += 1
            return
        self.stats.messages_delivered += 1
        try:
            h.host.receive(data, self._local(h))
        except ProtocolError:
            self.stats.rejected += 1
        self._after_input(h)

    # --------------------------------------------------------------------- user actions

    def update(
        self, node: str, key: str, factory: Any, fn: Callable[..., CRDTBase] | Op, **kw: Any
    ) -> int:
        """Apply a local update at ``node`` now (see :meth:`Engine.update`)."""
        h = self.nodes[node]
        if not h.up:
            raise InvalidArgument(f"node {node} is down")
        try:
            return h.host.update(key, factory, fn, self._local(h), **kw)
        finally:
            self._after_input(h)

    def read(self, node: str, key: str, **kw: Any) -> int:
        h = self.nodes[node]
        if not h.up:
            raise InvalidArgument(f"node {node} is down")
        try:
            return h.host.read(key, self._local(h), **kw)
        finally:
            self._after_input(h)

    def inject(self, src: str, dst: str, data: bytes) -> None:
        """Deliver raw bytes to ``dst`` as if ``src`` had sent them (for hostile-input tests)."""
        self._push(self.now, _DELIVER, (src, dst, data, self.nodes[dst].epoch))

    def partition(self, *groups: Iterable[str]) -> None:
        """Split the network: nodes only reach nodes of their own group (unlisted: isolated)."""
        self._groups = {n: i for i, g in enumerate(groups) for n in g}

    def block(self, a: str, b: str, *, both: bool = True) -> None:
        """Drop every message from ``a`` to ``b`` (and back, with ``both``)."""
        self._blocked.add((a, b))
        if both:
            self._blocked.add((b, a))

    def heal(self) -> None:
        """Remove every partition and blocked link."""
        self._groups = None
        self._blocked.clear()

    def set_skew(self, node: str, skew: float) -> None:
        """Step a node's clock (it never goes backwards inside the HLC)."""
        self.nodes[node].skew = skew

    def crash(self, node: str) -> None:
        """Stop ``node``: in-flight messages to it are lost, its volatile state is gone."""
        h = self.nodes[node]
        h.up = False
        h.timer_at = None
        h.epoch += 1

    def restart(self, node: str, *, lose_state: bool = False) -> None:
        """Bring ``node`` back from its storage: same incarnation and everything it persisted;
        delta buffers, acks and pending requests are gone with the process. ``lose_state``
        wipes the storage first: the node comes back empty under a new incarnation."""
        h = self.nodes[node]
        if h.up:
            raise InvalidArgument(f"node {node} is up")
        if lose_state:
            h.storage = self._new_storage(node)
        self._open(h)
        h.up = True
        h.host.start(self._local(h))
        self._after_input(h)

    def recover(self, node: str) -> None:
        """Make ``node`` repair its peers as after a crash (:meth:`Engine.recover`)."""
        h = self.nodes[node]
        h.host.recover()
        self._after_input(h)

    def leave(self, node: str) -> None:
        """Graceful shutdown: the node announces LEAVE, then stops (restart brings it back)."""
        h = self.nodes[node]
        h.host.leave(self._local(h))
        self.crash(node)

    # --------------------------------------------------------------------- observation

    def live(self) -> list[str]:
        return [n for n, h in self.nodes.items() if h.up]

    def value(self, node: str, key: str) -> Any:
        """The value of ``key`` at ``node`` as that node sees it now (None if absent)."""
        return self.nodes[node].engine.value(key)

    @overload
    def events(self, node: str) -> list[Effect]: ...

    @overload
    def events(self, node: str, kind: type[E]) -> list[E]: ...

    def events(self, node: str, kind: type[Any] | None = None) -> list[Any]:
        """Events the node reported so far (of one class, if given); ``record_events`` must be
        on. A copy: reading it drains nothing."""
        evs = self.nodes[node].events
        return [e for e in evs if kind is None or isinstance(e, kind)]

    def digests(self, nodes: Iterable[str] | None = None) -> dict[str, bytes]:
        return {n: self.nodes[n].engine.digest() for n in (nodes or self.live())}

    def converged(self, nodes: Iterable[str] | None = None) -> bool:
        """Do all (live, or the given) nodes have the same root digest?"""
        return len(set(self.digests(nodes).values())) <= 1

    def quiesce(self, *, timeout: float = 60.0, step: float | None = None) -> bool:
        """Run until every live node has the same digest and nothing is in flight (or timeout).

        Returns whether it converged. Anti-entropy keeps running meanwhile, as in production.
        """
        step = step or self.round_length / 2
        end = self.now + timeout
        while self.now < end:
            self.run_for(step)
            if self.converged() and self.in_flight() == 0:
                return True
        return self.converged()

    def trace_digest(self) -> str:
        """A digest of every message sent (time, link, bytes): equal runs have equal traces."""
        return self._trace.hexdigest()
