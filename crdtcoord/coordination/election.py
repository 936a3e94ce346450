"""Leader election on strong leases, and an advisory leader from converged membership.

``node.election(name)``: candidates :meth:`Election.campaign`; the one consensus grants the lease
``election/<name>`` to leads, with the grant's fencing token as its **term** (strictly
increasing), renewed in the background until it resigns, fails to renew, or the process dies. A
leader that resigns releases at once and waiting candidates retry as soon as the release reaches
them; when a leader dies its grant expires after its TTL and the next candidate to retry gets
it: a new leader within TTL + one retry interval + one consensus round. Every action a leader
takes on shared resources must carry its term (the token): a deposed leader that has not noticed
yet is refused there.

:meth:`Election.weak_leader` is **advisory only**: the smallest node id among this node and the
peers it does not suspect. It costs nothing and converges with membership, but two partitioned
sides each see their own leader, and a slow node can be passed over: use it for work that is
safe to do twice (cache warming), never for exclusive side effects.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from crdtcoord._exceptions import LeaseHeld
from crdtcoord.consensus.base import ConsensusUnavailable, LeaseLost
from crdtcoord.coordination.leases import LeaseHandle, LocalGrant

if TYPE_CHECKING:
    from crdtcoord.runtime.node import Node

__all__ = ["Election", "Leadership"]


class Leadership:
    """This candidate leads: :attr:`term` is its fencing token. Renewed in the background;
    :meth:`check` raises :class:`LeaseLost` once it no longer leads."""

    def __init__(self, election: Election, grant: LocalGrant, renew_every: float) -> None:
        self.election = election
        self.grant = grant
        self._task = asyncio.ensure_future(self._renew(renew_every))

    @property
    def candidate(self) -> str:
        return self.grant.holder

    @property
    def term(self) -> int:
        return self.grant.token

    @property
    def lost(self) -> bool:
        return self.grant.lost

    def check(self) -> None:
        self.grant.check()

    async def wait_lost(self) -> None:
        await self.grant.wait_lost()

    async def _renew(self, every: float) -> None:
        lease = self.election.lease
        while not self.grant.lost:
            await asyncio.sleep(every)
            try:
                await lease.renew(self.grant)
            except (LeaseLost, ConsensusUnavailable) as e:
                self.grant._lose(f"renewal failed: {e}")
                return

    async def resign(self) -> None:
        """Stop leading now (release the lease: waiting candidates take over at once)."""
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._task
        with contextlib.suppress(Exception):
            await self.election.lease.release(self.grant)


class Election:
    """A named election on one node (see the module documentation)."""

    def __init__(self, node: Node, name: str) -> None:
        self.node = node
        self.name = name
        self.lease = LeaseHandle(node, f"election/{name}")

    def leader(self) -> str | None:
        """The leader as the local replica shows it (possibly stale by a propagation delay)."""
        return self.lease.holder()

    def weak_leader(self) -> str:
        """Advisory: the smallest id among this node and the peers it does not suspect."""
        live = [p for p in self.node.engine.peers() if not self.node.suspected(p)]
        return min([self.node.node_id, *live])

    async def campaign(self, candidate: str, ttl: float = 5.0, *, retry: float = 0.1) -> Leadership:
        """Wait until ``candidate`` leads (strong lease); returns its :class:`Leadership`."""
        changed = asyncio.Event()
        stop = self.node.watch_key(self.lease.key, changed.set)
        try:
            while True:
                try:
                    g = await self.lease.acquire(candidate, ttl, mode="strong")
                    return Leadership(self, g, ttl / 3)
                except LeaseHeld:
                    pass
                except ConsensusUnavailable:
                    pass  # (no majority right now: keep trying)
                changed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), retry)
        finally:
            stop()

    async def observe(self) -> AsyncIterator[str | None]:
        """The leader now, then each time it changes (as the local replica sees it)."""
        changed = asyncio.Event()
        stop = self.node.watch_key(self.lease.key, changed.set)
        try:
            last: object = object()
            while True:
                cur = self.leader()
                if cur != last:
                    last = cur
                    yield cur
                changed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), 0.5)  # (also notices expiry)
        finally:
            stop()
