"""Lease: a time-bounded claim with an epoch and a monotonic fencing token.

State is one *grant record* — ``holder``, ``token``, ``epoch``, ``granted_at`` and ``expiry`` (HLC
timestamps) and ``granted_by`` (the replica that wrote it) — and merge keeps the larger record by
``(token, epoch, expiry, granted_at, holder, granted_by)``. Consequences:

* **The fencing token never decreases across merges**: it is the first thing compared. A new grant
  (to a new holder, or after expiry) takes ``token + 1``; a renewal keeps the token and moves the
  expiry; a release keeps the token and bumps the epoch, so it beats a concurrent renewal.
* **A lease alone does not give mutual exclusion.** Two replicas that cannot see each other can
  both grant the lease (optimistically) from the same state; both grants get the same token.
  :meth:`Lease.conflicts` recognises such concurrent, overlapping grants so the engine can
  escalate them to consensus; :meth:`Lease.force` writes the decision (a higher token and epoch)
  that dominates every claim, and every replica converges on it.
* **What protects a resource is the token**: the resource must reject a token lower than the
  highest it has seen. A holder paused past its expiry can still act, but with a stale token.
* A stale read can show an expired or superseded grant; :meth:`holder_at` compares the expiry with
  the caller's ``now``, and expiries are only as good as the clocks' bounded skew (HLC max offset).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, NamedTuple, Self

from crdtcoord._exceptions import CrdtError, InvalidArgument, LeaseHeld
from crdtcoord._wire import INT_MAX, Reader, check_amount, check_replica
from crdtcoord.clocks.hlc import HLC, Timestamp
from crdtcoord.types._base import CRDTBase, Op, UpdateContext, wire_type

__all__ = ["Lease", "LeaseInfo", "NotLeaseHolder"]


class NotLeaseHolder(CrdtError):
    """Renew or release by someone who does not hold the lease (or whose term has expired)."""


class LeaseInfo(NamedTuple):
    """The plain value of a :class:`Lease` grant record."""

    holder: str | None
    token: int
    epoch: int
    granted_at: Timestamp
    expiry: Timestamp
    granted_by: str

    def held_at(self, now: Timestamp) -> bool:
        return self.holder is not None and now < self.expiry


def check_holder(holder: object) -> str:
    """Holders follow the replica-id rules: non-empty, at most 255 bytes of valid UTF-8."""
    try:
        return check_replica(holder)
    except InvalidArgument:
        raise InvalidArgument(
            f"holder must be a non-empty str of at most 255 UTF-8 bytes: {holder!r}"
        ) from None


def _check_ttl(ttl_ms: object) -> int:
    return check_amount(ttl_ms, "ttl_ms", allow_zero=False)


def _check_now(now: object, rec: LeaseInfo | None = None) -> Timestamp:
    """``now``: an HLC timestamp, or the replica's HLC (then: stamped after the grant seen)."""
    if isinstance(now, HLC):
        return now.update(rec.granted_at) if rec is not None else now.now()
    if type(now) is not Timestamp:
        raise InvalidArgument(
            f"now must be an HLC Timestamp or the replica's HLC, got {type(now).__name__}"
        )
    return now


def _stamp(state: Lease, ctx: UpdateContext) -> Timestamp:
    """The op's time: after the grant this replica has seen (as the engine's clock would be)."""
    rec = state.value()
    return ctx.stamp_after(rec.granted_at if rec is not None else None)


_new = object.__new__
_info = functools.partial(tuple.__new__, LeaseInfo)


@wire_type(tag=10)
class Lease(CRDTBase):
    """A replicated lease record; see the module documentation for what it does and does not
    guarantee."""

    __slots__ = ("_rec",)
    #: A key removed and re-created would restart the fencing token: leases are top-level keys.
    ALLOWED_IN_MAP = False
    #: Two concurrent grants to different holders must be escalated (see :meth:`conflicts`).
    CRITICAL_BY_DEFAULT = True

    @dataclass(frozen=True, slots=True)
    class Acquire(Op):
        """Grant to ``holder`` for ``ttl_ms`` (renew if it already holds it)."""

        holder: str
        ttl_ms: int
        FIELDS = ("holder", "ttl")

        def apply(self, state: Lease, ctx: UpdateContext) -> Lease:
            # (fields checked when the op was built, the replica by the engine)
            return state._acquire(ctx.replica, self.holder, _stamp(state, ctx), self.ttl_ms)

    @dataclass(frozen=True, slots=True)
    class Renew(Op):
        """Extend ``holder``'s unexpired grant to now + ``ttl_ms``."""

        holder: str
        ttl_ms: int
        FIELDS = ("holder", "ttl")

        def apply(self, state: Lease, ctx: UpdateContext) -> Lease:
            return state._renew(ctx.replica, self.holder, _stamp(state, ctx), self.ttl_ms)

    @dataclass(frozen=True, slots=True)
    class Release(Op):
        """Give the lease up (``holder`` must hold it)."""

        holder: str
        FIELDS = ("holder",)

        def apply(self, state: Lease, ctx: UpdateContext) -> Lease:
            return state.release(ctx.replica, self.holder, _stamp(state, ctx))

    @dataclass(frozen=True, slots=True)
    class Force(Op):
        """Write a decision that dominates every claim seen (``holder=None`` revokes)."""

        holder: str | None
        ttl_ms: int
        min_token: int = 0
        FIELDS = ("holder?", "ttl", "amount")

        def apply(self, state: Lease, ctx: UpdateContext) -> Lease:
            now = _stamp(state, ctx)
            return state.force(ctx.replica, self.holder, now, self.ttl_ms, min_token=self.min_token)

    OPS = (Acquire, Renew, Release, Force)

    def __init__(self) -> None:
        self._rec: LeaseInfo | None = None

    # ------------------------------------------------------------------ queries

    def value(self) -> LeaseInfo | None:
        return self._rec

    @property
    def token(self) -> int:
        """The fencing token of the current record (0 before the first grant)."""
        return self._rec.token if self._rec else 0

    @property
    def epoch(self) -> int:
        return self._rec.epoch if self._rec else 0

    @property
    def holder(self) -> str | None:
        """Holder named by the current record, expired or not (see :meth:`holder_at`)."""
        return self._rec.holder if self._rec else None

    @property
    def expiry(self) -> Timestamp | None:
        return self._rec.expiry if self._rec else None

    def holder_at(self, now: Timestamp) -> str | None:
        """The holder if the lease is held at ``now``, else None."""
        rec = self._rec
        return rec.holder if rec is not None and rec.held_at(now) else None

    @staticmethod
    def _order(rec: LeaseInfo) -> tuple[int, int, Timestamp, Timestamp, str, str]:
        return (
            rec.token,
            rec.epoch,
            rec.expiry,
            rec.granted_at,
            rec.holder or "",
            rec.granted_by,
        )

    @staticmethod
    def conflicts(a: Lease, b: Lease) -> bool:
        """Do two lease states name different holders over overlapping terms?

        Call it on *concurrent* updates (the engine decides concurrency from version vectors):
        such a pair means two holders may both believe they hold the lease, so it must be
        escalated. Renewals and releases of one grant never conflict.
        """
        ra, rb = a._rec, b._rec
        if ra is None or rb is None or ra.holder is None or rb.holder is None:
            return False
        if ra.holder == rb.holder:
            return False
        return ra.granted_at < rb.expiry and rb.granted_at < ra.expiry

    # ------------------------------------------------------------------ mutators

    def _write(self, rec: LeaseInfo) -> Lease:
        """Install ``rec`` and return it as the delta. Every caller builds a record that is
        the current one or dominates it (a larger token, epoch or expiry): no merge needed."""
        delta = _new(Lease)
        delta._rec = rec
        self._rec = rec
        return delta

    def _next_token(self, at_least: int = 0) -> int:
        token = max(self.token + 1, at_least)
        if token > INT_MAX:
            raise InvalidArgument("fencing token would exceed 2**63-1")
        return token

    def acquire(self, replica: str, holder: str, now: Timestamp | HLC, ttl_ms: int) -> Lease:
        """Grant the lease to ``holder`` until ``now + ttl_ms``.

        Free or expired: a new grant with ``token + 1``. Already held by ``holder``: a renewal.
        Held by someone else: :class:`LeaseHeld`, nothing changes.
        """
        check_replica(replica)
        holder = check_holder(holder)
        ttl = _check_ttl(ttl_ms)
        return self._acquire(replica, holder, _check_now(now, self._rec), ttl)

    def _acquire(self, replica: str, holder: str, now: Timestamp, ttl: int) -> Lease:
        rec = self._rec
        if rec is not None and rec.held_at(now):
            if rec.holder != holder:
                assert rec.holder is not None
                raise LeaseHeld(rec.holder, rec.expiry, rec.token)
            return self._renew(replica, holder, now, ttl)
        return self._write(
            LeaseInfo(holder, self._next_token(), self.epoch + 1, now, now.plus(ttl), replica)
        )

    def renew(self, replica: str, holder: str, now: Timestamp | HLC, ttl_ms: int) -> Lease:
        """Extend ``holder``'s unexpired grant to ``now + ttl_ms`` (same token and epoch).

        An expired grant cannot be renewed: another replica may already have granted the lease
        again, so the holder must ``acquire`` anew (and gets a new token).
        """
        check_replica(replica)
        holder = check_holder(holder)
        ttl = _check_ttl(ttl_ms)
        return self._renew(replica, holder, _check_now(now, self._rec), ttl)

    def _renew(self, replica: str, holder: str, now: Timestamp, ttl: int) -> Lease:
        rec = self._rec
        if rec is None or rec.holder != holder:
            raise NotLeaseHolder(f"{holder!r} does not hold this lease")
        if not rec.held_at(now):
            raise NotLeaseHolder(f"{holder!r}'s grant expired at {rec.expiry}; acquire again")
        expiry = now.plus(ttl)
        if expiry <= rec.expiry:
            return self._write(rec)  # nothing to extend: the delta is the current record
        return self._write(
            _info((rec.holder, rec.token, rec.epoch, rec.granted_at, expiry, replica))
        )

    def release(self, replica: str, holder: str, now: Timestamp | HLC) -> Lease:
        """Give the lease up (same token, next epoch: beats any concurrent renewal)."""
        check_replica(replica)
        holder = check_holder(holder)
        now = _check_now(now, self._rec)
        rec = self._rec
        if rec is None or rec.holder != holder:
            raise NotLeaseHolder(f"{holder!r} does not hold this lease")
        return self._write(LeaseInfo(None, rec.token, rec.epoch + 1, now, now, replica))

    def force(
        self,
        replica: str,
        holder: str | None,
        now: Timestamp | HLC,
        ttl_ms: int,
        *,
        min_token: int = 0,
    ) -> Lease:
        """Write a decision (e.g. from consensus) that dominates every claim seen so far.

        The record gets ``max(token + 1, min_token)`` and ``epoch + 1``; ``holder=None`` revokes.
        Pass ``min_token`` from the consensus system (e.g. an etcd revision) so tokens stay
        monotonic across both worlds.
        """
        check_replica(replica)
        if holder is not None:
            holder = check_holder(holder)
        ttl = _check_ttl(ttl_ms)
        now = _check_now(now, self._rec)
        check_amount(min_token, "min_token")
        expiry = now.plus(ttl) if holder is not None else now
        return self._write(
            LeaseInfo(holder, self._next_token(min_token), self.epoch + 1, now, expiry, replica)
        )

    # ------------------------------------------------------------------ lattice

    def merge(self, other: Lease) -> bool:
        self._check_mergeable(other)
        o = other._rec
        if o is None:
            return False
        if self._rec is None or self._order(o) > self._order(self._rec):
            self._rec = o
            return True
        return False

    def copy(self) -> Self:
        c = type(self)()
        c._rec = self._rec
        return c

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and self._rec == other._rec

    def stats(self) -> dict[str, int]:
        return {
            "elements": 0 if self._rec is None else 1,
            "metadata": 0 if self._rec is None else 6,
        }

    def to_payload(self) -> Any:
        rec = self._rec
        if rec is None:
            return None
        return [
            rec.holder,
            rec.token,
            rec.epoch,
            rec.granted_at.to_wire(),
            rec.expiry.to_wire(),
            rec.granted_by,
        ]

    @classmethod
    def from_payload(cls, payload: Any, version: int, reader: Reader, depth: int) -> Self:
        c = cls()
        if payload is None:
            return c
        holder, token, epoch, granted, expiry, by = reader.arr(payload, "Lease", 6)
        if holder is not None:
            holder = reader.replica(holder, "holder")
        g = Timestamp(*reader.timestamp_parts(granted, "granted_at"))
        e = Timestamp(*reader.timestamp_parts(expiry, "expiry"))
        if e < g:
            reader.fail("lease expiry precedes its grant")
        c._rec = LeaseInfo(
            holder,
            reader.integer(token, "token", 1),
            reader.integer(epoch, "epoch", 1),
            g,
            e,
            reader.replica(by, "granted_by"),
        )
        return c

    def __repr__(self) -> str:
        return f"Lease({self._rec!r})"
