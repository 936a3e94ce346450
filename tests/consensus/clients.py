"""Concurrent lease clients that record a history for the linearizability checker (shared by
the back-end tests and the Raft member script)."""

from __future__ import annotations

import asyncio
import contextlib
import random
from typing import Any

from crdtcoord import LeaseHeld
from crdtcoord.consensus import ConsensusUnavailable, Grant, LeaseLost
from crdtcoord.testing.linearizability import History

TTL_MS = 60_000  # longer than any test: expiry is not part of the model


async def client(
    name: str, consensus: Any, history: History, leases: list[str], ops: int, seed: int
) -> None:
    """``ops`` random calls: acquire, renew/release of what it holds, reads."""
    rng = random.Random(seed)
    held: dict[str, Grant] = {}
    for _ in range(ops):
        lease = rng.choice(leases)
        g = held.get(lease)
        r = rng.random()
        if g is not None and r < 0.5:
            kind = "release" if r < 0.35 else "renew"
            op = history.invoke(name, kind, (lease, name, g.token))
            try:
                if kind == "release":
                    ok = await consensus.release(g)
                    held.pop(lease, None)
                else:
                    held[lease] = await consensus.renew(g)
                    ok = True
                history.complete(op, ok)
            except LeaseLost:
                history.complete(op, False)
                held.pop(lease, None)
            except ConsensusUnavailable:
                held.pop(lease, None)  # (unknown outcome: left pending)
        elif r < 0.8:
            op = history.invoke(name, "acquire", (lease, name))
            try:
                g = await consensus.acquire(lease, name, TTL_MS)
                held[lease] = g
                history.complete(op, ("ok", g.token))
            except LeaseHeld as e:
                history.complete(op, ("held", e.holder))
            except ConsensusUnavailable:
                pass
        else:
            op = history.invoke(name, "read", (lease,))
            try:
                st = await consensus.read(lease)
                history.complete(op, (st.holder, st.token))
            except ConsensusUnavailable:
                pass
        await asyncio.sleep(rng.uniform(0, 0.002))
    for g in held.values():  # leave nothing held (a clean end for the next run)
        op = history.invoke(name, "release", (g.name, name, g.token))
        with contextlib.suppress(ConsensusUnavailable):
            history.complete(op, await consensus.release(g))
