"""The membership part: who the peers are, their incarnations, who left.

Peers are the configured seeds plus the members gossiped in the reserved key ``$members``: an
:class:`~crdtcoord.ORMap` from node id to an :class:`~crdtcoord.LWWRegister` holding
``{"inc": incarnation, "status": "up" | "left", "addr": address}``, written by each node for
itself (this module owns that schema). ``$members`` is the **only** source of truth on who left:
a node that leaves writes ``left`` for itself and ships that entry to every known member (in a
LEAVE message, and in its delta stream, which retransmits until acknowledged); it stops counting
toward consistency levels and stops being a delta target once a node has that entry. A node that
(re)starts writes ``up`` and ships it to every known member, including those it believes left; a
running node that finds ``$members`` misstating it announces itself again, stamped after what it
found — last-writer-wins by hybrid clock settles everything, whatever the order, loss or
duplication of the messages. Nodes that left are still known: a (re)starting node contacts them,
so two nodes that both left and came back cannot wait on each other forever.

Incarnations: a message from an incarnation lower than one seen from that sender is stale; one
beyond this node's clock plus the allowed offset cannot be genuine (a node's first incarnation is
its wall-clock time in ms) and is refused before it is recorded, so one corrupted message cannot
lock a sender out.
"""

from __future__ import annotations

from typing import Any

from crdtcoord._exceptions import CrdtcoordError
from crdtcoord._wire import Value
from crdtcoord.engine.core import Core
from crdtcoord.engine.messages import ProtocolError
from crdtcoord.types import CRDTBase, LWWRegister, Op, ORMap

__all__ = ["MEMBERS_KEY", "Membership"]

_DISTINCT: dict[int, tuple[tuple[str, ...], tuple[str, ...]]] = {}


def _distinct(seeds: tuple[str, ...]) -> tuple[str, ...]:
    """``seeds`` without duplicates, memoized per tuple object (a simulator passes one tuple to
    every engine: deduplicating it once, not once per engine)."""
    hit = _DISTINCT.get(id(seeds))
    if hit is not None and hit[0] is seeds:
        return hit[1]
    out = tuple(dict.fromkeys(seeds))
    if len(_DISTINCT) > 64:
        _DISTINCT.clear()
    _DISTINCT[id(seeds)] = (seeds, out)  # (the original is kept alive: its id stays unique)
    return out


#: ``$members`` entries stamped further ahead of this node's clock are refused (ms).
_MAX_AHEAD_MS = 24 * 3600 * 1000

#: Reserved key holding the gossiped membership (node id -> {"inc": incarnation, "status": ...}).
MEMBERS_KEY = "$members"


class Membership:
    """Peers, their incarnations, and departures of one engine."""

    def __init__(self, core: Core, seeds: tuple[str, ...], advertise: str | None = None) -> None:
        self._core = core
        self._advertise = advertise
        # Seeds without duplicates (computed once per distinct tuple: a simulator shares one
        # tuple among thousands of engines, and nothing here may copy it per engine).
        self._seeds = _distinct(seeds)
        self._self_seeded = core.node_id in self._seeds
        self._seed_set: frozenset[str] | None = None  # built on first gossip
        self._gossiped: list[str] = []  # members learned by gossip that are not seeds
        self._left: frozenset[str] = frozenset()  # members whose entry says "left"
        self._incarnations: dict[str, int] = {}
        self._peers: list[str] | None = None

    # ------------------------------------------------------------------ peers

    def peers(self) -> list[str]:
        """Known live peers (seeds and gossiped members), without this node; do not mutate."""
        if self._peers is None:
            me, left = self._core.node_id, self._left
            out = [p for p in self._seeds if p != me and p not in left]
            out.extend(p for p in self._gossiped if p not in left)
            self._peers = out
        return self._peers

    def known(self) -> list[str]:
        """Every member this node knows of, left or not (who a (re)start must contact)."""
        me = self._core.node_id
        out = [p for p in self._seeds if p != me]
        out.extend(self._gossiped)
        out.extend(sorted(p for p in self._left if p not in out and p != me))
        return out

    def member_count(self) -> int:
        """Cluster size used by consistency levels: live peers plus this node."""
        return len(self.peers()) + 1

    def random_peer(self) -> str | None:
        """A uniformly random live peer (no list is built while nobody left); if every member
        left, a random one of them."""
        if self._left:
            peers = self.peers()
            if not peers:
                # everyone else left: keep probing them now and then, so that two nodes that
                # both left and came back find each other even if their announcements were lost
                peers = self.known()
            return peers[self._core.rng.randrange(len(peers))] if peers else None
        total = len(self._seeds) + len(self._gossiped)
        if total - self._self_seeded <= 0:
            return None
        me, rng = self._core.node_id, self._core.rng
        while True:  # this node is at most one of the distinct candidates
            i = rng.randrange(total)
            p = self._seeds[i] if i < len(self._seeds) else self._gossiped[i - len(self._seeds)]
            if p != me:
                return p

    def is_left(self, peer: str) -> bool:
        return peer in self._left

    def left_set(self) -> frozenset[str]:
        """Members whose ``$members`` entry says they left."""
        return self._left

    # ------------------------------------------------------------------ $members

    def announcement(self, status: str = "up") -> Op:
        """The op that writes this node's own entry into ``$members`` (with the address it
        advertises, if any, so that other nodes learn how to reach it)."""
        entry: dict[str, Value] = {"inc": self._core.id.incarnation, "status": status}
        if self._advertise is not None:
            entry["addr"] = self._advertise
        return ORMap.Update(self._core.node_id, LWWRegister.Assign(entry))

    def add_seed(self, peer: str) -> bool:
        """Add a peer learned at run time (e.g. a transport resolved an address); returns
        whether it is new."""
        if peer == self._core.node_id or peer in self._seeds:
            return False
        self._seeds = (*self._seeds, peer)
        if self._seed_set is not None:
            self._seed_set = self._seed_set | {peer}
        if peer in self._gossiped:
            self._gossiped = [p for p in self._gossiped if p != peer]
        self._peers = None
        return True

    def refresh(self, members: Any) -> None:
        """Recompute gossiped peers from the ``$members`` state."""
        if not isinstance(members, ORMap):
            return
        if self._seed_set is None:
            self._seed_set = frozenset(self._seeds)
        gossiped = []
        left = set()
        for node, info in members.value().items():
            if not isinstance(node, str) or node == self._core.node_id:
                continue
            st = info.get("status") if isinstance(info, dict) else None
            if st == "left":
                left.add(node)
            elif st == "up" and node not in self._seed_set:
                gossiped.append(node)
        self._gossiped = sorted(gossiped)
        self._left = frozenset(left)
        self._peers = None

    def acceptable(self, state: object) -> bool:
        """May ``state`` be joined into ``$members``? It must be a map of registers, none stamped
        more than a day beyond this node's clock: a forged entry from far in the future would
        win every later announcement, and a node re-announcing over it would push its own clock
        past what peers accept. (A merely skewed clock — a node that left while a minute
        ahead — is still heard: its peers flag the skew, and LWW order still holds.)"""
        if not isinstance(state, ORMap):
            return False
        limit = self._core.physical_ms() + _MAX_AHEAD_MS
        for k in state.keys():  # noqa: SIM118 (an ORMap is not iterable)
            reg = state.get(k)
            ts = getattr(reg, "timestamp", None)
            if not isinstance(reg, LWWRegister) or (ts is not None and ts.wall > limit):
                return False
        return True

    def only_changes(self, members: Any, delta: CRDTBase, sender: str) -> bool:
        """Does joining ``delta`` into ``members`` change no entry but ``sender``'s? (A LEAVE
        speaks for its sender only: an empty map whose causal context covers other members'
        entries would delete them.)"""
        if not isinstance(delta, ORMap) or not self.acceptable(delta):
            return False
        before = members.value() if isinstance(members, ORMap) else {}
        after_state = members.copy() if isinstance(members, ORMap) else ORMap()
        try:
            after_state.merge(delta)
        except CrdtcoordError:
            return False
        after = after_state.value()
        return all(before.get(k) == after.get(k) for k in set(before) | set(after) if k != sender)

    def own_entry_stale(self, members: Any) -> bool:
        """Does ``$members`` misstate this running node (status not up, or another
        incarnation)? Then it must announce itself again."""
        if not isinstance(members, ORMap):
            return False
        mine = members.value().get(self._core.node_id)
        return not (
            isinstance(mine, dict)
            and mine.get("status") == "up"
            and mine.get("inc") == self._core.id.incarnation
            and mine.get("addr") == self._advertise
        )

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

    def record(self, sender: str, incarnation: int) -> None:
        """Record an accepted message's incarnation."""
        self._incarnations[sender] = incarnation

    def incarnation_of(self, peer: str) -> int | None:
        return self._incarnations.get(peer)
