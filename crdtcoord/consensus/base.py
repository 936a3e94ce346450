"""The consensus plug-in protocol: what the few updates that must not diverge go through.

A :class:`Consensus` grants leases with **fencing tokens** (per lease name, strictly increasing
across grants: a renewal keeps its token, any new grant gets a larger one) and records
**decisions** (the first value proposed under a key wins; every later proposal under that key
gets that same value back, so a conflict seen on several nodes is decided once). Every call is
linearizable. Three back-ends implement it: :class:`~crdtcoord.consensus.LocalConsensus` (one
process), :class:`~crdtcoord.consensus.RaftConsensus` (embedded, pysyncobj) and
:class:`~crdtcoord.consensus.EtcdConsensus` (an etcd cluster).

**Safe expiry.** A grant is valid for its holder only until :attr:`Grant.valid_until`, computed
on the holder's *monotonic* clock from the moment the request was **sent** (the consensus side
starts its term later), shortened for clock drift and a safety margin (``docs/coordination.md``,
after Gray & Cheriton): ``sent + ttl * (1 - drift) / (1 + drift) - margin``. Even so, a process
paused past that point can act late; only the token protects a resource: it must refuse a token
lower than the highest it has seen (see :class:`Fence`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from crdtcoord._exceptions import CrdtcoordError

__all__ = [
    "DRIFT",
    "MARGIN",
    "Consensus",
    "ConsensusError",
    "ConsensusUnavailable",
    "Fence",
    "Grant",
    "LeaseLost",
    "LeaseState",
    "StaleToken",
    "valid_until",
]

#: Bound on the rate difference of two clocks (rho): 0.1 %, ten times a typical crystal's.
DRIFT = 0.001
#: Seconds subtracted from every term for the delay of the answer and scheduling.
MARGIN = 0.05


class ConsensusError(CrdtcoordError):
    """A consensus call failed (the message says why)."""


class ConsensusUnavailable(ConsensusError):
    """The consensus system could not be reached or did not answer in time. The outcome of a
    call that timed out is unknown: read the state before retrying."""


class LeaseLost(CrdtcoordError):
    """The lease is no longer held by this grant (expired, revoked, released, or lost to a
    decision): stop acting on it."""


class StaleToken(CrdtcoordError):
    """A fenced resource refused a token lower than one it has already seen."""


def valid_until(sent: float, ttl_ms: int, *, drift: float = DRIFT, margin: float = MARGIN) -> float:
    """The last monotonic instant a grant requested at ``sent`` may be used (see above)."""
    return sent + (ttl_ms / 1000.0) * (1 - drift) / (1 + drift) - margin


@dataclass(frozen=True, slots=True)
class Grant:
    """A lease granted by consensus. ``token``: the fencing token (pass it to every resource
    the holder touches). ``valid_until``: on this process's monotonic clock. ``handle``: the
    back-end's reference (an etcd lease id), opaque."""

    name: str
    holder: str
    token: int
    ttl_ms: int
    valid_until: float
    handle: str = ""

    def remaining(self, now: float | None = None) -> float:
        """Seconds left before this grant must not be used any more (negative: expired)."""
        return self.valid_until - (time.monotonic() if now is None else now)

    def check(self, now: float | None = None) -> None:
        """Raise :class:`LeaseLost` if the grant's safe term is over."""
        if self.remaining(now) <= 0:
            raise LeaseLost(f"lease {self.name!r} of {self.holder!r} expired (token {self.token})")


@dataclass(frozen=True, slots=True)
class LeaseState:
    """A lease as the consensus system holds it: ``holder`` None when free (``token`` is then
    the last one handed out with Local and Raft, 0 with etcd, which keeps no key for a free
    lease), ``expires_in`` seconds left in its own view."""

    name: str
    holder: str | None
    token: int
    expires_in: float


@runtime_checkable
class Consensus(Protocol):
    """One small async protocol for every back-end (see the module documentation)."""

    #: "local", "raft" or "etcd" (shown in status and metrics)
    kind: str

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def acquire(self, name: str, holder: str, ttl_ms: int) -> Grant:
        """Grant ``name`` to ``holder`` for ``ttl_ms`` if it is free or expired (a new token),
        or renew it if ``holder`` already holds it (same token); else raise
        :class:`~crdtcoord.LeaseHeld` with the current holder and token."""
        ...

    async def renew(self, grant: Grant) -> Grant:
        """Extend a grant still held (same token); :class:`LeaseLost` if it is not."""
        ...

    async def release(self, grant: Grant) -> bool:
        """Give the lease up if this grant still holds it; returns whether it did."""
        ...

    async def read(self, name: str) -> LeaseState:
        """The lease as consensus holds it now (a linearizable read)."""
        ...

    async def decide(self, key: str, proposal: bytes) -> bytes:
        """Record ``proposal`` under ``key`` unless a decision is there; return the decision
        (idempotent: every caller gets the first proposal)."""
        ...

    def status(self) -> dict[str, object]:
        """Back-end details for ``/v1/status``."""
        ...


class Fence:
    """What a fenced resource does with tokens: remember the highest seen (per resource) and
    refuse anything lower. A holder that was paused past its term and comes back with an old
    token is refused here, whatever it believes."""

    def __init__(self) -> None:
        self._highest: dict[str, int] = {}

    def check(self, resource: str, token: int) -> None:
        """Accept ``token`` for ``resource`` (and remember it) or raise :class:`StaleToken`."""
        top = self._highest.get(resource, 0)
        if token < top:
            raise StaleToken(f"{resource}: token {token} < {top} already seen")
        self._highest[resource] = token

    def highest(self, resource: str) -> int:
        return self._highest.get(resource, 0)
