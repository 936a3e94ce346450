"""Semaphores and quotas on a bounded counter (escrow): acquire and release at memory speed.

The permits are a :class:`~crdtcoord.BoundedCounter` (``sem/<name>``) that never goes below 0
**in any merged state**: each node may take permits only out of the rights it holds, so two
nodes can never both take the last permit. ``acquire`` spends local rights (no message);
``release`` gives the permit back as new rights of the releasing node; a node releases only
what it acquired (a release beyond what this node holds raises
:class:`~crdtcoord.InvalidArgument` instead of minting permits). Permits held by a process that
crashes stay taken (a bounded counter cannot tell a crash from a long hold): size for it, or
use a lease per holder where a crash must give the permit back.

Rights move between nodes two ways. **Proactively**: a node holding more than its share (the
permits left divided by the nodes) above a high-water mark gives the surplus to the node with
the fewest rights, so busy nodes rarely find themselves empty. **On demand**: a node short of
rights posts what it needs (``sem/<name>/want``, one entry per node) and waits; nodes with spare
rights see the request and transfer. When the permits left in total would do but none is local
(*fragmentation*), ``acquire`` waits for transfers up to its timeout, then raises
:class:`~crdtcoord.InsufficientRights` saying so. Nodes that are down keep their rights until
they come back (their permits are unavailable meanwhile: size the semaphore for it).

The permits are created once: by the consensus decision of which node initializes (with a
plug-in), else by the node told ``init=True``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import TYPE_CHECKING

from crdtcoord._exceptions import InsufficientRights, InvalidArgument
from crdtcoord.types import BoundedCounter, LWWRegister, ORMap

if TYPE_CHECKING:
    from crdtcoord.runtime.node import Node

__all__ = ["PermitsUnavailable", "Semaphore"]


class PermitsUnavailable(InsufficientRights):
    """``acquire`` timed out: not enough permits left, or not here (fragmentation)."""

    def __init__(self, replica: str, requested: int, available: int, why: str) -> None:
        super().__init__(replica, requested, available)
        self.args = (why,)


class Semaphore:
    """A cluster-wide semaphore of ``permits`` (see the module documentation)."""

    def __init__(self, node: Node, name: str, permits: int, *, high_water: float = 1.5) -> None:
        if type(permits) is not int or permits < 1:
            raise InvalidArgument("permits is a positive int")
        self.node = node
        self.name = name
        self.permits = permits
        self.key = f"sem/{name}"
        self.want_key = f"sem/{name}/want"
        self.high_water = high_water
        self._stops: list[object] = []
        self._rebalancing = False
        self._task: asyncio.Task[None] | None = None
        self._held = 0

    # ------------------------------------------------------------------ setup

    async def init(self, *, init: bool | None = None) -> Semaphore:
        """Create the permits once (consensus picks the node, or ``init=True`` says this one),
        and start answering other nodes' requests for rights."""
        if self.node.value(self.key) is None:
            me = self.node.node_id
            if init is None:
                if self.node.consensus is None:
                    raise InvalidArgument(
                        "without a consensus plug-in one node must create the permits:"
                        " init=True on exactly that node"
                    )
                who = await self.node.consensus.decide(f"sem-init/{self.name}", me.encode())
                init = who.decode() == me
            if init:
                await self.node.apply(
                    self.key, BoundedCounter.Increment(self.permits), BoundedCounter
                )
        self._stops = [
            self.node.watch_key(self.want_key, self._on_change),
            self.node.watch_key(self.key, self._on_change),
        ]
        return self

    def close(self) -> None:
        for stop in self._stops:
            stop()  # type: ignore[operator]
        self._stops = []

    # ------------------------------------------------------------------ reads

    def _state(self) -> BoundedCounter | None:
        s = self.node.state(self.key)
        return s if isinstance(s, BoundedCounter) else None

    def available(self) -> int:
        """Permits left in the cluster, as this node knows (never negative anywhere)."""
        s = self._state()
        return s.value() if s is not None else 0

    def local(self) -> int:
        """Permits this node can take right now without asking anyone."""
        s = self._state()
        return s.rights(self.node.actor) if s is not None else 0

    # ------------------------------------------------------------------ acquire, release

    async def acquire(self, n: int = 1, *, timeout: float = 5.0) -> None:
        """Take ``n`` permits (local rights first; else ask for rights and wait)."""
        if self.local() >= n:
            await self.node.apply(self.key, BoundedCounter.Decrement(n), BoundedCounter)
            self._held += n
            return
        deadline = time.monotonic() + timeout
        changed = asyncio.Event()
        stop = self.node.watch_key(self.key, changed.set)
        try:
            await self._ask(n - self.local())
            while self.local() < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    total = self.available()
                    why = (
                        f"fragmented: {total} permits left in the cluster, {self.local()} here;"
                        " no node transferred rights in time"
                        if total >= n
                        else f"only {total} permits left"
                    )
                    raise PermitsUnavailable(
                        self.node.actor, n, self.local(), f"semaphore {self.name!r}: {why}"
                    )
                changed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), min(left, 0.5))
            await self.node.apply(self.key, BoundedCounter.Decrement(n), BoundedCounter)
            self._held += n
        finally:
            stop()
            await self._ask(0)

    async def release(self, n: int = 1) -> None:
        """Give ``n`` permits back (they become rights of this node); at most what this
        node acquired and has not released."""
        if type(n) is not int or n < 1:
            raise InvalidArgument("n is a positive int")
        if n > self._held:
            raise InvalidArgument(
                f"semaphore {self.name!r}: releasing {n} but this node holds {self._held}"
            )
        self._held -= n
        await self.node.apply(self.key, BoundedCounter.Increment(n), BoundedCounter)

    def held(self) -> int:
        """Permits acquired through this handle's node and not yet released."""
        return self._held

    @contextlib.asynccontextmanager
    async def hold(self, n: int = 1, *, timeout: float = 5.0):  # type: ignore[no-untyped-def]
        """``async with sem.hold(): ...``"""
        await self.acquire(n, timeout=timeout)
        try:
            yield self
        finally:
            await self.release(n)

    # ------------------------------------------------------------------ moving rights

    async def _ask(self, n: int) -> None:
        want = self.node.value(self.want_key) or {}
        if want.get(self.node.actor, 0) == n:
            return
        await self.node.apply(
            self.want_key, ORMap.Update(self.node.actor, LWWRegister.Assign(n)), ORMap
        )

    def _on_change(self) -> None:
        if not self._rebalancing:
            self._rebalancing = True
            self._task = asyncio.ensure_future(self._rebalance())

    async def _rebalance(self) -> None:
        """Answer requests for rights from this node's surplus; then even out shares."""
        try:
            s = self._state()
            if s is None:
                return
            me = self.node.actor
            mine = s.rights(me)
            if mine <= 0:
                return
            want = self.node.value(self.want_key) or {}
            for actor, n in sorted(want.items()):
                if actor == me or not isinstance(n, int) or n <= 0 or mine <= 0:
                    continue
                give = min(n, mine)
                await self.node.apply(
                    self.key, BoundedCounter.Transfer(actor, give), BoundedCounter
                )
                mine -= give
            # proactive: above high water, even out with the poorest known node
            rights = {a: r for a, r in s.rights_map().items() if a != me}
            members = max(1, len(self.node.engine.peers()) + 1)
            share = s.value() / members
            if rights and mine > self.high_water * share and share >= 1:
                poorest = min(rights, key=lambda a: (rights[a], a))
                surplus = int(mine - share)
                if surplus > 0 and rights[poorest] < share:
                    await self.node.apply(
                        self.key, BoundedCounter.Transfer(poorest, surplus), BoundedCounter
                    )
        finally:
            self._rebalancing = False
