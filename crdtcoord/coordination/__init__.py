"""Coordination primitives built from the types, the engine and a consensus plug-in: leases and
locks with fencing tokens (strong and optimistic), the escalation of conflicting claims, leader
election, barriers, semaphores and quotas, rate limiters, and a phi-accrual failure detector.
What each guarantees in each mode is in ``docs/coordination.md``."""

from crdtcoord.coordination.barrier import Barrier
from crdtcoord.coordination.election import Election, Leadership
from crdtcoord.coordination.failure import PhiAccrual, PhiSettings
from crdtcoord.coordination.leases import (
    Escalator,
    Grants,
    LeaseHandle,
    LocalGrant,
    conflict_id,
    decide_between,
    lease_key,
)
from crdtcoord.coordination.ratelimit import RateLimiter
from crdtcoord.coordination.semaphore import Semaphore

__all__ = [
    "Barrier",
    "Election",
    "Escalator",
    "Grants",
    "LeaseHandle",
    "Leadership",
    "LocalGrant",
    "PhiAccrual",
    "PhiSettings",
    "RateLimiter",
    "Semaphore",
    "conflict_id",
    "decide_between",
    "lease_key",
]
