"""What a node needs from a transport, and an in-process transport for tests and notebooks.

A transport moves engine messages between nodes. It must deliver each message intact and
authenticate its sender (``docs/protocol.md`` §2); loss, duplication and reordering are fine.
The HTTP transport (``crdtcoord_http.HttpTransport``) is the networked one; :class:`LocalTransport`
connects nodes of one process through a :class:`LocalNetwork`, with optional latency, loss and
partitions.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterable
from typing import Any, Protocol, runtime_checkable

from crdtcoord.engine import Kind, ProtocolError

__all__ = ["LocalNetwork", "LocalTransport", "NodePort", "Transport"]


@runtime_checkable
class NodePort(Protocol):
    """What a transport may call on its node."""

    @property
    def node_id(self) -> str: ...

    def receive(self, data: bytes) -> str:
        """Hand over one received message; returns its sender; :class:`ProtocolError` if it
        was refused (nothing changed)."""
        ...

    def add_peer(self, peer: str) -> None:
        """A peer became reachable (its address was resolved)."""
        ...


@runtime_checkable
class Transport(Protocol):
    """Moves engine messages between nodes (see the module documentation)."""

    def seeds(self) -> list[str]:
        """Node ids of the peers known before start (more can be added with add_peer)."""
        ...

    def advertise(self) -> str | None:
        """The address peers should use to reach this node (gossiped in ``$members``)."""
        ...

    async def start(self, node: NodePort) -> None: ...

    def send(self, peer: str, data: bytes, kind: Kind) -> None:
        """Queue one message; never blocks (a transport drops what it cannot send: the
        protocol retransmits and repairs)."""
        ...

    def learn(self, peer: str, address: str) -> None:
        """Another node's address, as gossiped in ``$members``."""
        ...

    async def close(self) -> None: ...

    def status(self) -> dict[str, Any]:
        """Transport counters for ``/v1/status`` (queues, drops, errors)."""
        ...


class LocalNetwork:
    """A hub connecting the :class:`LocalTransport` s of one process."""

    def __init__(self, *, latency: float = 0.0, loss: float = 0.0, seed: int = 0) -> None:
        self.latency = latency
        self.loss = loss
        self._rng = random.Random(seed)
        self._nodes: dict[str, NodePort] = {}
        self._groups: dict[str, int] | None = None
        self.delivered = 0
        self.dropped = 0
        self.rejected = 0

    def attach(self, node: NodePort) -> None:
        self._nodes[node.node_id] = node

    def detach(self, node_id: str) -> None:
        self._nodes.pop(node_id, None)

    def partition(self, *groups: Iterable[str]) -> None:
        """Nodes only reach nodes of their own group (unlisted nodes are isolated)."""
        self._groups = {n: i for i, g in enumerate(groups) for n in g}

    def heal(self) -> None:
        self._groups = None

    def _reachable(self, a: str, b: str) -> bool:
        g = self._groups
        return g is None or g.get(a, -1) == g.get(b, -2)

    def deliver(self, src: str, dst: str, data: bytes) -> None:
        if not self._reachable(src, dst) or (self.loss and self._rng.random() < self.loss):
            self.dropped += 1
            return
        loop = asyncio.get_running_loop()
        if self.latency:
            loop.call_later(self.latency, self._arrive, src, dst, data)
        else:
            loop.call_soon(self._arrive, src, dst, data)

    def _arrive(self, src: str, dst: str, data: bytes) -> None:
        node = self._nodes.get(dst)
        if node is None or not self._reachable(src, dst):
            self.dropped += 1
            return
        try:
            node.receive(data)
            self.delivered += 1
        except ProtocolError:
            self.rejected += 1


class LocalTransport:
    """An in-process transport: ``peers`` are the node ids of the other nodes on ``network``."""

    def __init__(self, network: LocalNetwork, peers: Iterable[str] = ()) -> None:
        self.network = network
        self._peers = list(peers)
        self._node: NodePort | None = None
        self.sent = 0

    def seeds(self) -> list[str]:
        return list(self._peers)

    def advertise(self) -> str | None:
        return None

    async def start(self, node: NodePort) -> None:
        self._node = node
        self.network.attach(node)

    def send(self, peer: str, data: bytes, kind: Kind) -> None:
        if self._node is None:
            return
        self.sent += 1
        self.network.deliver(self._node.node_id, peer, data)

    def learn(self, peer: str, address: str) -> None:
        pass

    async def close(self) -> None:
        if self._node is not None:
            self.network.detach(self._node.node_id)
            self._node = None

    def status(self) -> dict[str, Any]:
        return {"kind": "local", "sent": self.sent}
