"""A cluster-wide rate limiter: at most ``limit`` events per ``window`` seconds, decided locally.

Each window is a grow-only counter in an expiring key (``~<expiry>~rl/<name>/<window start>``):
a node admits an event if the count it sees (its own events plus every other node's it has
received) is below the limit, and counts it. No message is waited for, so the limit can be
overshot by what the other nodes admitted and this node has not seen yet.

**Overshoot bound.** With ``n`` nodes each admitting at most ``r`` events per second, and updates
reaching every node within ``d`` seconds (the propagation delay: about 10 ms on a LAN, see the
benchmarks; the whole partition during one), a window admits at most
``limit + (n - 1) · r · d`` events — and never more than ``n · limit`` (each node stops at the
limit on its own count). Use :meth:`RateLimiter.local_share` (``limit / n`` per node, no
overshoot, no sharing) when a hard cap matters more than using the whole budget.

**Garbage collection.** Window keys expire two windows after they start: every replica deletes
them by the same rule, late increments for them are refused, and state stays bounded.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from crdtcoord._exceptions import InvalidArgument
from crdtcoord.engine import expiring_key
from crdtcoord.types import GCounter

if TYPE_CHECKING:
    from crdtcoord.runtime.node import Node

__all__ = ["RateLimiter"]


class RateLimiter:
    """``node.rate_limiter(name, limit, window)`` (see the module documentation)."""

    def __init__(self, node: Node, name: str, limit: int, window: float) -> None:
        if type(limit) is not int or limit < 1:
            raise InvalidArgument("limit is a positive int")
        if not isinstance(window, int | float) or not 0.01 <= window <= 86_400:
            raise InvalidArgument("window is 0.01 to 86,400 seconds")
        self.node = node
        self.name = name
        self.limit = limit
        self.window_ms = max(10, round(window * 1000))
        self.admitted = 0
        self.refused = 0

    def _key(self, now_ms: int) -> str:
        start = now_ms - now_ms % self.window_ms
        return expiring_key(f"rl/{self.name}/{start}", start + 2 * self.window_ms)

    def used(self, now_ms: int | None = None) -> int:
        """Events admitted in the current window, as this node knows."""
        now_ms = now_ms if now_ms is not None else self.node.wall_ms()
        v = self.node.value(self._key(now_ms))
        return int(v) if v is not None else 0

    def try_acquire(self, n: int = 1) -> bool:
        """Admit ``n`` events now if the window has room (as this node knows); no waiting."""
        now_ms = self.node.wall_ms()
        key = self._key(now_ms)
        v = self.node.value(key)
        if (int(v) if v is not None else 0) + n > self.limit:
            self.refused += 1
            return False
        self.node.apply_local(key, GCounter, GCounter.Increment(n))
        self.admitted += 1
        return True

    def local_share(self, n: int = 1) -> bool:
        """Admit ``n`` events if this node's own count stays within ``limit / members``: a hard
        cap (no overshoot), at the price of unused budget on idle nodes."""
        now_ms = self.node.wall_ms()
        key = self._key(now_ms)
        state = self.node.state(key)
        mine = state.entries().get(self.node.actor, 0) if isinstance(state, GCounter) else 0
        members = len(self.node.engine.peers()) + 1
        if mine + n > self.limit // members:
            self.refused += 1
            return False
        self.node.apply_local(key, GCounter, GCounter.Increment(n))
        self.admitted += 1
        return True

    def retry_after(self) -> float:
        """Seconds until the current window ends."""
        now_ms = self.node.wall_ms()
        return (self.window_ms - now_ms % self.window_ms) / 1000
