"""A hand-driven cluster of engines: every message waits in a visible queue until a test delivers,
drops or duplicates it. This is what Hypothesis' stateful tests drive (the simulator, which
schedules deliveries itself, is for experiments).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from crdtcoord.engine import (
    Effect,
    Engine,
    EngineConfig,
    Persist,
    ProtocolError,
    Send,
    WriteDone,
)
from crdtcoord.types import CRDTBase

__all__ = ["ManualCluster", "Message"]


@dataclass(frozen=True)
class Message:
    src: str
    dst: str
    data: bytes
    kind: str


@dataclass
class ManualCluster:
    """Engines named ``names`` with full seed lists; ``queue`` holds undelivered messages."""

    names: Sequence[str]
    config: EngineConfig = field(default_factory=EngineConfig)
    now: float = 0.0
    queue: list[Message] = field(default_factory=list)
    #: node -> [(incarnation, event)] (op handles restart with each incarnation)
    events: dict[str, list[tuple[int, Effect]]] = field(default_factory=dict)
    persisted: dict[str, list[Persist]] = field(default_factory=dict)
    groups: dict[str, int] | None = None
    down: set[str] = field(default_factory=set)
    incarnations: dict[str, int] = field(default_factory=dict)
    rejected: int = 0
    #: every WriteDone: (writer, writer incarnation, op id, {acknowledger: its incarnation})
    acks: list[tuple[str, int, int, dict[str, int]]] = field(default_factory=list)
    boots: int = 0

    def __post_init__(self) -> None:
        self.names = tuple(self.names)
        self.engines: dict[str, Engine] = {}
        for n in self.names:
            self.incarnations[n] = 1
            self.engines[n] = self._engine(n, 1)
            self.events[n] = []
            self.persisted[n] = []
        for n in self.names:
            self.engines[n].start(self.now)
            self._collect(n)

    # ------------------------------------------------------------------ plumbing

    def _engine(self, n: str, incarnation: int, **kw: Any) -> Engine:
        self.boots += 1  # deterministic stream ids, distinct at every boot
        return Engine(
            n,
            incarnation=incarnation,
            seeds=self.names,
            config=self.config,
            stream_id=self.boots,
            **kw,
        )

    def _collect(self, n: str) -> None:
        for eff in self.engines[n].poll():
            if isinstance(eff, Send):
                self.queue.append(Message(n, eff.peer, eff.data, eff.kind.name))
            elif isinstance(eff, Persist):
                self.persisted[n].append(eff)
            else:
                self.events[n].append((self.incarnations[n], eff))
                if isinstance(eff, WriteDone):
                    who = {p: self.incarnations[p] for p in eff.acked_by if p in self.incarnations}
                    self.acks.append((n, self.incarnations[n], eff.op_id, who))

    def reachable(self, a: str, b: str) -> bool:
        if a in self.down or b in self.down:
            return False
        g = self.groups
        return g is None or g.get(a, -1) == g.get(b, -2)

    # ------------------------------------------------------------------ actions

    def update(
        self, node: str, key: str, factory: Any, fn: Callable[..., CRDTBase], **kw: Any
    ) -> int:
        op = self.engines[node].update(key, factory, fn, self.now, **kw)
        self._collect(node)
        return op

    def deliver(self, i: int, *, keep: bool = False) -> bool:
        """Deliver queued message ``i`` (keep a copy queued with ``keep``: a duplicate).
        Returns False if the message was lost to a partition or a crashed node."""
        m = self.queue[i] if keep else self.queue.pop(i)
        if not self.reachable(m.src, m.dst):
            return False
        try:
            self.engines[m.dst].receive(m.data, self.now)
        except ProtocolError:
            self.rejected += 1
        self._collect(m.dst)
        return True

    def drop(self, i: int) -> None:
        self.queue.pop(i)

    def tick(self, dt: float) -> None:
        """Advance time by ``dt`` and tick every live engine once."""
        self.now += dt
        for n in self.names:
            if n not in self.down:
                self.engines[n].tick(self.now)
                self._collect(n)

    def partition(self, *groups: Iterable[str]) -> None:
        self.groups = {n: i for i, g in enumerate(groups) for n in g}

    def heal(self) -> None:
        self.groups = None

    def crash(self, node: str) -> None:
        self.down.add(node)

    def restart(self, node: str, *, lose_state: bool = False) -> None:
        self.down.discard(node)
        versions = None
        if lose_state:
            self.incarnations[node] += 1
            store = None
        else:
            store = self.engines[node].durable_state()
            versions = self.engines[node].durable_versions()
        self.engines[node] = self._engine(
            node, self.incarnations[node], store=store, versions=versions
        )
        self.engines[node].start(self.now)
        self._collect(node)

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
        return len({self.engines[n].digest() for n in live}) <= 1
