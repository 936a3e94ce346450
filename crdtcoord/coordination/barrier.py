"""Barriers: wait until N of a named set of participants arrived.

Arrivals are a grow-only set (``barrier/<name>``): arriving is a local write, and "at least N of
these participants arrived" can only go from false to true as arrivals merge in, so the barrier
needs no coordination — every node that sees enough arrivals opens, and a stale replica only
opens later. A barrier over **all current members** is different: membership changes (a node
joins late, another is removed), so the participant set is first fixed by a consensus decision,
then the barrier waits for exactly that set.

**Definition.** The first arrival fixes the barrier's participants and ``n`` in
``barrier/<name>/def`` (decided once by consensus when the node has a plug-in, so concurrent
first arrivals agree; without one, concurrent different definitions converge last-writer-wins).
Later callers may omit them; a caller giving a different definition is refused.

**Garbage collection.** A barrier created with ``expires_ms`` lives in an expiring key: every
replica deletes it once its clock passes that time (the same rule everywhere, so deleting never
breaks convergence; arrivals after it are refused). Pick a time well after the last participant
can arrive; participants must agree on it (it is part of the barrier's identity).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Collection
from typing import TYPE_CHECKING

from crdtcoord._exceptions import InvalidArgument
from crdtcoord.consensus.base import ConsensusError
from crdtcoord.engine import expiring_key
from crdtcoord.types import GSet, LWWRegister

if TYPE_CHECKING:
    from crdtcoord.runtime.node import Node

__all__ = ["Barrier"]


class Barrier:
    """``node.barrier(name, participants, n=None, expires_ms=None)``; ``n`` defaults to all."""

    def __init__(
        self,
        node: Node,
        name: str,
        participants: Collection[str] | None = None,
        *,
        n: int | None = None,
        expires_ms: int | None = None,
    ) -> None:
        self.node = node
        self.name = name
        base = f"barrier/{name}"
        self.key = expiring_key(base, expires_ms) if expires_ms is not None else base
        dbase = f"{base}/def"
        #: the barrier's definition (participants, n), written by its first arrival
        self.def_key = expiring_key(dbase, expires_ms) if expires_ms is not None else dbase
        self.participants = frozenset(participants) if participants is not None else None
        if self.participants is not None and not self.participants:
            raise InvalidArgument("a barrier needs at least one participant")
        if n is not None and (type(n) is not int or n < 1):
            raise InvalidArgument("n is a positive int")
        if n is not None and self.participants is not None and n > len(self.participants):
            raise InvalidArgument(
                f"n={n} but only {len(self.participants)} participants: it could never open"
            )
        self.n = n

    @classmethod
    async def of_members(cls, node: Node, name: str, *, expires_ms: int | None = None) -> Barrier:
        """A barrier over every current member, the set fixed once by consensus (a node that
        joins later is not waited for; one removed meanwhile is still waited for)."""
        if node.consensus is None:
            raise ConsensusError(
                "a barrier over all current members fixes the membership by consensus:"
                " start the node with --consensus"
            )
        members = sorted({node.node_id, *node.engine.peers()})
        raw = await node.consensus.decide(f"barrier-members/{name}", json.dumps(members).encode())
        return cls(node, name, set(json.loads(raw)), expires_ms=expires_ms)

    def _given(self) -> dict[str, object]:
        ps = sorted(self.participants) if self.participants is not None else None
        return {"participants": ps, "n": self.n}

    def definition(self) -> dict[str, object] | None:
        """The stored definition (``participants``, ``n``), if an arrival wrote it."""
        raw = self.node.value(self.def_key)
        if not isinstance(raw, str):
            return None
        try:
            d = json.loads(raw)
        except ValueError:
            return None
        return d if isinstance(d, dict) else None

    def _adopt(self, d: dict[str, object]) -> None:
        ps = d.get("participants")
        self.participants = frozenset(ps) if isinstance(ps, list) else None
        n = d.get("n")
        self.n = n if isinstance(n, int) else None

    def _check_against(self, d: dict[str, object]) -> None:
        """A caller that gives a definition must give the stored one (or none at all)."""
        given = self._given()
        if (given["participants"] is not None or given["n"] is not None) and given != d:
            raise InvalidArgument(
                f"barrier {self.name!r} is defined as {d}; this call gives {given}"
            )

    async def define(self) -> None:
        """Fix the definition: the stored one if any (this call's must agree), else this
        call's, decided once by consensus when the node has it (concurrent first arrivals
        with different definitions agree), and written for every replica."""
        stored = self.definition()
        if stored is not None:
            self._check_against(stored)
            self._adopt(stored)
            return
        self._needed()  # (a barrier that can never tell when it opens is refused first)
        proposal = self._given()
        raw = json.dumps(proposal, sort_keys=True)
        if self.node.consensus is not None:
            raw = (
                await self.node.consensus.decide(f"barrier-def/{self.key}", raw.encode())
            ).decode()
            decided = json.loads(raw)
            self._check_against(decided)
            self._adopt(decided)
        await self.node.apply(self.def_key, LWWRegister.Assign(raw), LWWRegister)

    def arrived(self) -> frozenset[str]:
        v = self.node.value(self.key)
        return frozenset(v) if v is not None else frozenset()

    def _needed(self) -> int:
        if self.n is not None:
            return self.n
        if self.participants is None:
            raise InvalidArgument("give the participants or n")
        return len(self.participants)

    def is_open(self) -> bool:
        stored = self.definition()
        if stored is not None:
            self._adopt(stored)  # (the definition every replica converges on)
        got = self.arrived()
        if self.participants is not None:
            got = got & self.participants
        return len(got) >= self._needed()

    async def arrive(self, who: str) -> None:
        """Record ``who``'s arrival (idempotent); the first arrival fixes the definition."""
        await self.define()
        if self.participants is not None and who not in self.participants:
            raise InvalidArgument(f"{who!r} is not a participant of barrier {self.name!r}")
        await self.node.apply(self.key, GSet.Add(who), GSet)
        self.node.persist_now()  # (an arrival the caller was told of survives a crash)

    async def wait(self, timeout: float | None = None) -> frozenset[str]:
        """Return the arrivals once enough arrived (:class:`TimeoutError` after ``timeout``)."""
        changed = asyncio.Event()
        stop = self.node.watch_key(self.key, changed.set)
        try:
            async with asyncio.timeout(timeout):
                while not self.is_open():
                    changed.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(changed.wait(), 1.0)
            return self.arrived()
        finally:
            stop()
