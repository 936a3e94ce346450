"""The membership part: who the peers are, their incarnations, who left.

Peers are the configured seeds plus the members gossiped in the reserved key ``$members``: an
:class:`~crdtcoord.ORMap` from node id to an :class:`~crdtcoord.LWWRegister` holding
``{"inc": incarnation, "status": "up" | "left"}``, written by each node for itself (this module
owns that schema). A node that leaves gracefully writes ``left`` and sends LEAVE to its peers;
it stops counting toward consistency levels (``majority``, ``all``) until it speaks again.

Incarnations: a message from an incarnation lower than one seen from that sender is stale; one
beyond this node's clock plus the allowed offset cannot be genuine (a node's first incarnation is
its wall-clock time in ms) and is refused before it is recorded, so one corrupted message cannot
lock a sender out.
"""

from __future__ import annotations

from typing import Any

from crdtcoord._wire import Value
from crdtcoord.engine.core import Core
from crdtcoord.engine.messages import ProtocolError
from crdtcoord.types import LWWRegister, Op, ORMap

__all__ = ["MEMBERS_KEY", "Membership"]

#: Reserved key holding the gossiped membership (node id -> {"inc": incarnation, "status": ...}).
MEMBERS_KEY = "$members"


class Membership:
    """Peers, their incarnations, and departures of one engine."""

    def __init__(self, core: Core, seeds: tuple[str, ...]) -> None:
        self._core = core
        # The seed tuple is kept as given (a simulator shares one among thousands of engines:
        # nothing here may copy it per engine); it may list this node and duplicates.
        self._seeds = seeds
        self._self_seeded = core.node_id in seeds
        self._seed_set: frozenset[str] | None = None  # built on first gossip
        self._gossiped: list[str] = []  # members learned by gossip that are not seeds
        self._status: dict[str, str] = {}  # gossiped status of every member
        self._left: set[str] = set()  # sent LEAVE and has not spoken since
        self._gone_count = 0  # seeds and gossiped members currently excluded
        self._incarnations: dict[str, int] = {}
        self._peers: list[str] | None = None

    # ------------------------------------------------------------------ peers

    def peers(self) -> list[str]:
        """Known live peers (seeds and gossiped members), without this node; do not mutate."""
        if self._peers is None:
            me = self._core.node_id
            out = list(dict.fromkeys(p for p in self._seeds if p != me and not self._gone(p)))
            out.extend(p for p in self._gossiped if not self._gone(p))
            self._peers = out
        return self._peers

    def _gone(self, peer: str) -> bool:
        return peer in self._left or self._status.get(peer) == "left"

    def member_count(self) -> int:
        """Cluster size used by consistency levels: live peers plus this node."""
        return len(self.peers()) + 1

    def random_peer(self) -> str | None:
        """A uniformly random live peer (no list is built: seeds are sampled in place)."""
        if self._peers is not None or self._left or self._gone_count:
            peers = self.peers()
            return peers[self._core.rng.randrange(len(peers))] if peers else None
        total = len(self._seeds) + len(self._gossiped)
        if total - self._self_seeded <= 0:
            return None
        me, rng = self._core.node_id, self._core.rng
        while True:
            i = rng.randrange(total)
            p = self._seeds[i] if i < len(self._seeds) else self._gossiped[i - len(self._seeds)]
            if p != me:
                return p

    def is_left(self, peer: str) -> bool:
        return self._gone(peer)

    # ------------------------------------------------------------------ $members

    def announcement(self, status: str = "up") -> Op:
        """The op that writes this node's own entry into ``$members``."""
        entry: dict[str, Value] = {"inc": self._core.id.incarnation, "status": status}
        return ORMap.Update(self._core.node_id, LWWRegister.Assign(entry))

    def refresh(self, members: Any) -> None:
        """Recompute gossiped peers from the ``$members`` state."""
        if not isinstance(members, ORMap):
            return
        if self._seed_set is None:
            self._seed_set = frozenset(self._seeds)
        gossiped = []
        status: dict[str, str] = {}
        for node, info in members.value().items():
            if not isinstance(node, str) or node == self._core.node_id:
                continue
            st = info.get("status") if isinstance(info, dict) else None
            if isinstance(st, str):
                status[node] = st
            if st == "up" and node not in self._seed_set:
                gossiped.append(node)
        self._gossiped = sorted(gossiped)
        self._status = status
        self._gone_count = sum(1 for s in status.values() if s == "left")
        self._peers = None

    # ------------------------------------------------------------------ incarnations, leaving

    def check(self, sender: str, incarnation: int) -> bool:
        """Validate a sender's incarnation before its message takes effect; True if it is a new
        incarnation of a sender seen before (it restarted without its state)."""
        known = self._incarnations.get(sender, -1)
        if incarnation < known:
            raise ProtocolError(
                "stale_incarnation", f"{sender} incarnation {incarnation} < known {known}"
            )
        if incarnation > known:
            limit = self._core.physical_ms() + self._core.config.max_clock_offset_ms
            if incarnation > limit:
                raise ProtocolError(
                    "future_incarnation",
                    f"{sender} incarnation {incarnation} is beyond this node's clock ({limit} ms"
                    " with the allowed offset)",
                )
        return known >= 0 and incarnation > known

    def record(self, sender: str, incarnation: int, *, initiating: bool) -> bool:
        """Record an accepted message's incarnation; an initiating message (a delta, an
        exchange, a read) from a peer that left means it is back. Returns whether it rejoined."""
        self._incarnations[sender] = incarnation
        if initiating and sender in self._left:
            self._left.discard(sender)
            self._peers = None
            return True
        return False

    def left(self, sender: str) -> None:
        """``sender`` said LEAVE."""
        if sender not in self._left:
            self._left.add(sender)
            self._peers = None

    def incarnation_of(self, peer: str) -> int | None:
        return self._incarnations.get(peer)
