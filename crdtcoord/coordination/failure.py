"""Phi-accrual failure detection (Hayashibara et al., 2004) over message arrivals, and member
removal as a consensus decision.

Every message a node receives from a peer is a heartbeat. The detector keeps the last
inter-arrival times per peer and reports **phi**, the suspicion level: ``-log10`` of the
probability that a heartbeat this late would still come, under a normal distribution of the
inter-arrival times (mean shifted by the acceptable pause). phi 1 ≈ a 10 % chance of a mistake,
8 (the threshold, as in Akka and Cassandra) ≈ 1e-8. Defaults follow Akka's cluster detector:
threshold 8, 1,000 samples, a minimum standard deviation of 100 ms, an acceptable pause of 3 s,
a first estimate of 1 s.

Suspicion is local and changes nothing by itself: a suspected peer keeps its place in
``majority`` (a quorum of a fixed membership) until it is **removed**, and removing a member is a
consensus decision (one decision per member and incarnation, whichever nodes ask), written into
the gossiped membership as ``left``. A removed node that was only slow comes back by itself: it
sees itself marked ``left`` and announces itself again.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

__all__ = ["PhiAccrual", "PhiSettings"]


@dataclass(frozen=True)
class PhiSettings:
    threshold: float = 8.0
    max_samples: int = 1000
    min_std_deviation: float = 0.1
    acceptable_pause: float = 3.0
    first_heartbeat_estimate: float = 1.0


@dataclass
class _History:
    intervals: deque[float] = field(default_factory=deque)
    total: float = 0.0
    squares: float = 0.0
    last: float | None = None


class PhiAccrual:
    """One detector for every peer of a node (times in seconds, from a monotonic clock)."""

    def __init__(self, settings: PhiSettings | None = None) -> None:
        self.settings = settings or PhiSettings()
        self._peers: dict[str, _History] = {}

    def heartbeat(self, peer: str, now: float) -> None:
        """A message from ``peer`` arrived at ``now``."""
        h = self._peers.get(peer)
        if h is None:
            h = self._peers[peer] = _History()
            first = self.settings.first_heartbeat_estimate  # (as Akka: a first guess, +-1/4)
            self._add(h, first - first / 4)
            self._add(h, first + first / 4)
        elif h.last is not None:
            self._add(h, now - h.last)
        h.last = now

    def _add(self, h: _History, x: float) -> None:
        h.intervals.append(x)
        h.total += x
        h.squares += x * x
        if len(h.intervals) > self.settings.max_samples:
            old = h.intervals.popleft()
            h.total -= old
            h.squares -= old * old

    def phi(self, peer: str, now: float) -> float:
        """The suspicion level of ``peer`` at ``now`` (0.0 if never heard from)."""
        h = self._peers.get(peer)
        if h is None or h.last is None or not h.intervals:
            return 0.0
        s = self.settings
        n = len(h.intervals)
        mean = h.total / n
        var = max(h.squares / n - mean * mean, 0.0)
        std = max(math.sqrt(var), s.min_std_deviation)
        return _phi(now - h.last, mean + s.acceptable_pause, std)

    def suspected(self, peer: str, now: float) -> bool:
        return self.phi(peer, now) >= self.settings.threshold

    def peers(self) -> list[str]:
        return sorted(self._peers)

    def forget(self, peer: str) -> None:
        self._peers.pop(peer, None)


def _phi(elapsed: float, mean: float, std: float) -> float:
    """-log10(P(next heartbeat later than ``elapsed``)), Akka's logistic approximation of the
    normal distribution's tail (accurate to about 1e-4, and cheap)."""
    y = (elapsed - mean) / std
    # Clamped: far from the mean the tail is 0 or 1 to double precision anyway, and an
    # unclamped exponent overflows (a heartbeat just after a long-pause history).
    e = math.exp(max(-700.0, min(700.0, -y * (1.5976 + 0.070566 * y * y))))
    if elapsed > mean:
        p = e / (1.0 + e)
        return -math.log10(p) if p > 0 else 300.0
    return -math.log10(1.0 - 1.0 / (1.0 + e))
