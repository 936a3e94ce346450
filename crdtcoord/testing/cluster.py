"""A hand-driven cluster of engines: every message waits in a visible queue until a test delivers,
drops or duplicates it. This is what Hypothesis' stateful tests drive (the simulator, which
schedules deliveries itself, is for experiments).

Each node is a :class:`~crdtcoord.host.Host` over a :class:`~crdtcoord.host.MemoryStorage`: a
crash drops the host, a restart builds a new engine from the storage alone (what the ``Persist``
effects wrote), and ``lose_state`` wipes the storage so the node comes back under a new
incarnation.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from crdtcoord.engine import (
    Effect,
    Engine,
    EngineConfig,
    Event,
    Kind,
    Persist,
    ProtocolError,
    WriteDone,
)
from crdtcoord.host import Host, MemoryStorage, Storage
from crdtcoord.types import CRDTBase

__all__ = ["ManualCluster", "Message", "RecordingStorage"]


@dataclass(frozen=True)
class Message:
    src: str
    dst: str
    data: bytes
    kind: str


class RecordingStorage(MemoryStorage):
    """A MemoryStorage that also keeps every Persist it was given (for assertions)."""

    def __init__(self, op_window: int = 10_000) -> None:
        super().__init__(op_window)
        self.log: list[Persist] = []

    def write(self, batch: Sequence[Persist], meta: dict[str, int] | None = None) -> None:
        super().write(batch, meta)
        self.log.extend(batch)


@dataclass
class ManualCluster:
    """Nodes ``names`` (each seeded with every name unless ``seeds`` says otherwise) whose
    messages wait in ``queue`` until a test delivers them."""

    names: Sequence[str]
    config: EngineConfig = field(default_factory=EngineConfig)
    now: float = 0.0
    seeds: Mapping[str, Sequence[str]] = field(default_factory=dict)
    #: per-node storage factory (default: a RecordingStorage each)
    storage: Callable[[str], Storage] | None = None
    queue: list[Message] = field(default_factory=list)
    #: node -> [(incarnation, event)]
    events: dict[str, list[tuple[int, Effect]]] = field(default_factory=dict)
    groups: dict[str, int] | None = None
    down: set[str] = field(default_factory=set)
    rejected: int = 0
    #: every WriteDone: (writer, writer incarnation, op id, {acknowledger: its incarnation})
    acks: list[tuple[str, int, int, dict[str, int]]] = field(default_factory=list)
    boots: int = 0

    def __post_init__(self) -> None:
        self.names = tuple(self.names)
        self.hosts: dict[str, Host] = {}
        self.storages: dict[str, Storage] = {}
        self._last_incarnation: dict[str, int] = {}
        for n in self.names:
            self.storages[n] = self._new_storage(n)
            self.events[n] = []
            self._open(n)

    # ------------------------------------------------------------------ plumbing

    def _new_storage(self, node: str) -> Storage:
        if self.storage is not None:
            return self.storage(node)
        return RecordingStorage(self.config.dedupe_window)

    def _wall_ms(self, node: str) -> int:
        """The node's wall clock when it (re)starts; a restart takes at least 1 ms."""
        ms = max(0, int(self.now * 1000), self._last_incarnation.get(node, -1) + 1)
        self._last_incarnation[node] = ms
        return ms

    def _open(self, n: str) -> None:
        self.boots += 1  # deterministic process ids, distinct at every boot

        def send(peer: str, data: bytes, kind: Kind) -> None:
            self.queue.append(Message(n, peer, data, kind.name))

        def event(e: Event) -> None:
            inc = self.hosts[n].engine.incarnation
            self.events[n].append((inc, e))
            if isinstance(e, WriteDone):
                who = {p: self.incarnation(p) for p in e.acked_by if p in self.hosts}
                self.acks.append((n, inc, e.handle, who))

        host = Host.open(
            n,
            self.storages[n],
            send,
            event,
            wall_ms=self._wall_ms(n),
            clock_ms=None,  # the engine's clock is the cluster's virtual time
            seeds=tuple(self.seeds.get(n, self.names)),
            config=self.config,
            process_id=self.boots,
        )
        self.hosts[n] = host
        host.start(self.now)

    @property
    def engines(self) -> dict[str, Engine]:
        """The current engine of every node (read-only view)."""
        return {n: h.engine for n, h in self.hosts.items()}

    def incarnation(self, node: str) -> int:
        return self.hosts[node].engine.incarnation

    @property
    def persisted(self) -> dict[str, list[Persist]]:
        """Every Persist each node's current storage received (RecordingStorage only)."""
        return {
            n: list(st.log) if isinstance(st, RecordingStorage) else []
            for n, st in self.storages.items()
        }

    def reachable(self, a: str, b: str) -> bool:
        if a in self.down or b in self.down:
            return False
        g = self.groups
        return g is None or g.get(a, -1) == g.get(b, -2)

    # ------------------------------------------------------------------ actions

    def update(
        self, node: str, key: str, factory: Any, fn: Callable[..., CRDTBase] | Any, **kw: Any
    ) -> int:
        return self.hosts[node].update(key, factory, fn, self.now, **kw)

    def read(self, node: str, key: str, **kw: Any) -> int:
        return self.hosts[node].read(key, self.now, **kw)

    def deliver(self, i: int, *, keep: bool = False) -> bool:
        """Deliver queued message ``i`` (keep a copy queued with ``keep``: a duplicate).
        Returns False if the message was lost to a partition or a crashed node."""
        m = self.queue[i] if keep else self.queue.pop(i)
        if not self.reachable(m.src, m.dst):
            return False
        try:
            self.hosts[m.dst].receive(m.data, self.now)
        except ProtocolError:
            self.rejected += 1
        return True

    def inject(self, dst: str, data: bytes) -> None:
        """Deliver raw bytes to ``dst`` now (hostile input, or a message saved earlier)."""
        try:
            self.hosts[dst].receive(data, self.now)
        except ProtocolError:
            self.rejected += 1

    def drop(self, i: int) -> None:
        self.queue.pop(i)

    def tick(self, dt: float) -> None:
        """Advance time by ``dt`` and tick every live engine once."""
        self.now += dt
        for n in self.names:
            if n not in self.down:
                self.hosts[n].tick(self.now)

    def partition(self, *groups: Iterable[str]) -> None:
        self.groups = {n: i for i, g in enumerate(groups) for n in g}

    def heal(self) -> None:
        self.groups = None

    def crash(self, node: str) -> None:
        """Stop the node's process: its engine is gone, its storage stays."""
        self.down.add(node)

    def restart(self, node: str, *, lose_state: bool = False) -> None:
        """Start the node again from its storage (wiped first with ``lose_state``)."""
        self.down.discard(node)
        if lose_state:
            self.storages[node] = self._new_storage(node)
        self._open(node)

    def flush_network(self, max_messages: int = 100_000) -> int:
        """Deliver queued messages (and the ones they cause) until the queue is empty."""
        n = 0
        while self.queue and n < max_messages:
            self.deliver(0)
            n += 1
        return n

    def quiesce(self, *, rounds: int = 60, dt: float | None = None) -> bool:
        """Heal nothing, but run ticks and deliveries until all live digests agree."""
        dt = dt or self.config.ae_interval
        for _ in range(rounds):
            self.flush_network()
            if self.converged():
                return True
            self.tick(dt)
        self.flush_network()
        return self.converged()

    def converged(self) -> bool:
        live = [n for n in self.names if n not in self.down]
        return len({self.hosts[n].engine.digest() for n in live}) <= 1
