"""Leases and locks with fencing tokens, in two modes, and the escalation of conflicting claims.

``node.lease(name)`` is a :class:`LeaseHandle` on the replicated key ``lease/<name>`` (a
:class:`~crdtcoord.Lease`).

**strong** (the default when the node has a consensus plug-in): ``acquire`` asks consensus first
and succeeds only if consensus grants it; the grant is then published in the replicated key so
every node can read the holder locally. Tokens come from consensus: unique per grant and
strictly increasing. At most one holder has a valid grant at any time, *as long as holders stop
at* :attr:`LocalGrant.valid_until` (their monotonic clock, shortened for drift); a holder paused
past it is stopped by the token at the resource (:class:`~crdtcoord.consensus.Fence`).

**optimistic**: ``acquire`` writes the claim into the local replica at memory speed (and into
the node's storage before returning: a crash cannot forget a token handed out). Two nodes that
cannot see each other can both claim the lease, **with the same token**. When their claims
meet, the engine detects the conflict from version vectors and escalates it: consensus decides
once per lease and contested token (so every node that sees any pair of those claims gets the
same answer), the earliest claim the first proposer knew wins and is written back with the next
token, every replica converges on it, the winner's grant carries on with that token, and the
loser's grant is marked lost (:class:`~crdtcoord.consensus.LeaseLost` on its next
:meth:`LocalGrant.check`). Claims at different tokens need no decision: the larger wins the
merge and the other holder is told. Double
holding lasts from the claims until the decision reaches the loser: about one propagation delay
plus one consensus round when connected, the whole partition when not. Without a consensus
plug-in the conflict is still detected and the lease's merge order settles it the same way
everywhere (larger token, then epoch, expiry...), without a fresh token.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from crdtcoord._exceptions import InvalidArgument, LeaseHeld
from crdtcoord.consensus.base import (
    Consensus,
    ConsensusError,
    ConsensusUnavailable,
    Grant,
    LeaseLost,
    valid_until,
)
from crdtcoord.engine import Escalation
from crdtcoord.types import Lease, LeaseInfo
from crdtcoord.types.lease import check_holder

if TYPE_CHECKING:
    from crdtcoord.runtime.node import Node

__all__ = ["Escalator", "LeaseHandle", "LocalGrant", "lease_key"]

log = logging.getLogger("crdtcoord.coordination")

MODES = ("strong", "optimistic")


_new = object.__new__
_set = object.__setattr__


def _acquire_op(holder: str, ttl_ms: int) -> Lease.Acquire:
    """``Lease.Acquire(holder, ttl_ms)`` for arguments already checked."""
    op = _new(Lease.Acquire)
    _set(op, "holder", holder)
    _set(op, "ttl_ms", ttl_ms)
    return op


def lease_key(name: str) -> str:
    """The replicated key of lease ``name``."""
    return f"lease/{name}"


@dataclass
class LocalGrant:
    """A lease this node's caller holds. ``token``: pass it to every resource (fencing).
    ``lost`` turns True when the node learns the lease went elsewhere (a decision, a newer
    grant, a release, expiry by renewal failure); :meth:`check` raises then, or once the safe
    term is over."""

    name: str
    holder: str
    token: int
    ttl_ms: int
    mode: str
    valid_until: float
    consensus: Grant | None = None
    lost: bool = False
    reason: str = ""
    #: another holder claimed the lease concurrently with the same token (optimistic mode):
    #: a fence could not tell the two apart, so :meth:`check` refuses until the decision
    contested: bool = False
    #: the replicated record this grant was made as (optimistic mode): its claim, if escalated
    claim: LeaseInfo | None = None
    _event: asyncio.Event | None = field(default=None, repr=False)  # (made when awaited)

    def remaining(self) -> float:
        """Seconds of safe term left (monotonic clock); negative once over."""
        return self.valid_until - time.monotonic()

    def check(self) -> None:
        """Raise :class:`LeaseLost` unless this grant may still be used: call it before each
        fenced action (and pass :attr:`token` along)."""
        if self.lost:
            raise LeaseLost(f"lease {self.name!r} of {self.holder!r} lost: {self.reason}")
        if self.contested:
            raise LeaseLost(
                f"lease {self.name!r} of {self.holder!r} contested: another holder claimed it"
                f" with the same token {self.token}; wait for the decision (wait_lost, or check"
                " again)"
            )
        if self.remaining() <= 0:
            raise LeaseLost(f"lease {self.name!r} of {self.holder!r}: term over (renew sooner)")

    def _lose(self, reason: str) -> None:
        if not self.lost:
            self.lost = True
            self.reason = reason
            if self._event is not None:
                self._event.set()

    async def wait_lost(self) -> None:
        """Return when the grant is lost (for a task that must stop at once)."""
        if self.lost:
            return
        if self._event is None:
            self._event = asyncio.Event()
        await self._event.wait()

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "holder": self.holder,
            "token": self.token,
            "mode": self.mode,
            "ttl_ms": self.ttl_ms,
            "valid_for_s": round(self.remaining(), 3),
        }


class LeaseHandle:
    """A named lease on one node (see the module documentation)."""

    def __init__(self, node: Node, name: str) -> None:
        if not isinstance(name, str) or not name or "\0" in name:
            raise InvalidArgument("a lease name is a non-empty str")
        self.node = node
        self.name = name
        self.key = lease_key(name)

    # ------------------------------------------------------------------ reads

    def record(self) -> LeaseInfo | None:
        """The replicated record as this node sees it (possibly stale: see the module doc)."""
        v = self.node.value(self.key)  # (a LeaseInfo is immutable: no copy needed)
        return v if isinstance(v, LeaseInfo) else None

    def holder(self) -> str | None:
        """The holder if the local replica says the lease is held now, else None. A stale
        read: another node may have been granted it since (strong mode: ask :meth:`read`)."""
        rec = self.record()
        if rec is None or rec.holder is None:
            return None
        return rec.holder if rec.expiry.wall > self.node.hlc_now_ms() else None

    async def read(self) -> dict[str, Any]:
        """The lease as consensus holds it (strong mode; linearizable), else the local record."""
        c = self.node.consensus
        if c is not None:
            st = await c.read(self.name)
            return {"holder": st.holder, "token": st.token, "expires_in_s": st.expires_in}
        rec = self.record()
        if rec is None:
            return {"holder": None, "token": 0, "expires_in_s": 0.0}
        left = max(0.0, (rec.expiry.wall - self.node.hlc_now_ms()) / 1000)
        return {"holder": rec.holder if left else None, "token": rec.token, "expires_in_s": left}

    # ------------------------------------------------------------------ acquire, renew, release

    def _mode(self, mode: str | None) -> str:
        if mode is None:
            mode = "strong" if self.node.consensus is not None else "optimistic"
        if mode not in MODES:
            raise InvalidArgument(f"mode is 'strong' or 'optimistic', not {mode!r}")
        if mode == "strong" and self.node.consensus is None:
            raise ConsensusError(
                "strong mode needs a consensus plug-in: start the node with"
                " --consensus raft or --consensus etcd://HOST:PORT (or Node(consensus=...))"
            )
        return mode

    async def acquire(self, holder: str, ttl: float, *, mode: str | None = None) -> LocalGrant:
        """Grant the lease to ``holder`` for ``ttl`` seconds (renew if it holds it already);
        :class:`~crdtcoord.LeaseHeld` if someone else holds it."""
        node = self.node
        if (mode is None and node.consensus is None) or mode == "optimistic":
            # the memory-speed path: arguments checked here, the op built without re-checks and
            # applied at once (no suspension)
            ttl_ms = _ttl_ms(ttl)
            sent = time.monotonic()
            holder = check_holder(holder)
            rec = node.value(self.key)
            floor = node.token_floor
            if floor and (rec is None or rec.token < floor):
                # the first grant of this lease since an unclean restart: above any token the
                # dead process may have handed out without writing it
                live = rec is not None and rec.expiry.wall > node.hlc_now_ms()
                if live and rec is not None and rec.holder not in (None, holder):
                    raise LeaseHeld(rec.holder, rec.expiry, rec.token)
                if rec is None or rec.holder != holder or rec.expiry.wall <= node.hlc_now_ms():
                    node.apply_local(self.key, Lease, Lease.Force(holder, ttl_ms, floor + 1))
            # (a grant is written within the batching window; the HTTP server writes it before
            # answering: its holder outlives this process, an in-process holder does not)
            node.apply_local(self.key, Lease, _acquire_op(holder, ttl_ms))
            rec = node.value(self.key)
            assert isinstance(rec, LeaseInfo) and rec.holder == holder
            until = valid_until(sent, ttl_ms)
            grant = node.grants.adopt(self.name, holder, rec.token, ttl_ms, "optimistic", until)
            grant.claim = rec
            return grant
        mode = self._mode(mode)
        ttl_ms = _ttl_ms(ttl)
        assert node.consensus is not None
        g = await node.consensus.acquire(self.name, holder, ttl_ms)
        rec = self.record()
        if (
            rec is not None
            and rec.token >= g.token
            and (rec.holder, rec.token) != (holder, g.token)
        ):
            # optimistic claims the consensus never saw, with tokens this grant cannot dominate
            # (a stale copy of an earlier strong grant has a smaller token): the two modes would
            # hand out tokens a fence cannot order. One lease name, one mode.
            with contextlib.suppress(Exception):
                await node.consensus.release(g)
            if rec.holder is not None and rec.expiry.wall > node.hlc_now_ms():
                raise LeaseHeld(rec.holder, rec.expiry, rec.token)
            raise InvalidArgument(
                f"lease {self.name!r} is used in optimistic mode (its record has token"
                f" {rec.token}, consensus gave {g.token}): one lease name, one mode"
            )
        await self._publish(g)
        return node.grants.adopt(self.name, holder, g.token, g.ttl_ms, mode, g.valid_until, g)

    async def _publish(self, g: Grant) -> None:
        """Mirror a consensus grant into the replicated key (local reads everywhere)."""
        rec = self.record()
        if rec is not None and rec.holder == g.holder and rec.token == g.token:
            with contextlib.suppress(Exception):  # (expired locally: force instead)
                await self.node.apply(self.key, Lease.Renew(g.holder, g.ttl_ms), Lease)
                return
        await self.node.apply(self.key, Lease.Force(g.holder, g.ttl_ms, g.token), Lease)

    async def renew(self, grant: LocalGrant) -> LocalGrant:
        """Extend ``grant`` (same token); :class:`LeaseLost` if it is no longer held."""
        grant.check()
        sent = time.monotonic()
        if grant.mode == "strong":
            assert self.node.consensus is not None and grant.consensus is not None
            try:
                g = await self.node.consensus.renew(grant.consensus)
            except LeaseLost as e:
                grant._lose(str(e))
                raise
            grant.consensus = g
            grant.valid_until = g.valid_until
            await self._publish(g)
        else:
            try:
                await self.node.apply(self.key, Lease.Renew(grant.holder, grant.ttl_ms), Lease)
            except Exception as e:
                grant._lose(f"renewal refused: {e}")
                raise LeaseLost(str(e)) from None
            rec = self.record()
            if rec is None or rec.holder != grant.holder or rec.token != grant.token:
                grant._lose("the record changed")
                raise LeaseLost(f"lease {self.name!r} changed hands")
            grant.valid_until = valid_until(sent, grant.ttl_ms)
        return grant

    async def release(self, grant: LocalGrant) -> bool:
        """Give the lease up; returns whether this grant still held it."""
        self.node.grants.untrack(grant)
        if grant.lost:
            return False
        grant._lose("released")
        if grant.mode == "strong":
            assert self.node.consensus is not None and grant.consensus is not None
            ok = await self.node.consensus.release(grant.consensus)
            rec = self.record()
            if ok and rec is not None and rec.holder == grant.holder:
                await self.node.apply(self.key, Lease.Release(grant.holder), Lease)
            return ok
        rec = self.record()
        if rec is None or rec.holder != grant.holder or rec.token != grant.token:
            return False
        await self.node.apply(self.key, Lease.Release(grant.holder), Lease)
        return True

    async def release_holder(self, holder: str) -> bool:
        """Release the lease if ``holder`` holds it (for callers that did not keep their
        grant, e.g. the CLI): the grant this node tracks, else the current one."""
        for g in self.node.grants.held():
            if g.name == self.name and g.holder == holder:
                return await self.release(g)
        c = self.node.consensus
        if c is not None:
            st = await c.read(self.name)
            if st.holder != holder:
                return False
            ok = await c.release(Grant(self.name, holder, st.token, 1, time.monotonic() + 1.0))
            rec = self.record()
            if ok and rec is not None and rec.holder == holder:
                await self.node.apply(self.key, Lease.Release(holder), Lease)
            return ok
        rec = self.record()
        if rec is None or rec.holder != holder or rec.expiry.wall <= self.node.hlc_now_ms():
            return False
        await self.node.apply(self.key, Lease.Release(holder), Lease)
        return True

    @contextlib.asynccontextmanager
    async def hold(
        self, holder: str, ttl: float, *, mode: str | None = None, renew_every: float | None = None
    ) -> AsyncIterator[LocalGrant]:
        """``async with lease.hold("me", 10) as g:`` — acquire, renew in the background every
        ``ttl/3`` s, release on exit. If a renewal fails the grant is marked lost: check it
        (``g.check()``) before each fenced action, or ``await g.wait_lost()``."""
        grant = await self.acquire(holder, ttl, mode=mode)
        every = renew_every if renew_every is not None else ttl / 3

        async def renewer() -> None:
            while not grant.lost:
                await asyncio.sleep(every)
                try:
                    await self.renew(grant)
                except (LeaseLost, ConsensusUnavailable) as e:
                    grant._lose(f"renewal failed: {e}")
                    return

        task = asyncio.ensure_future(renewer())
        try:
            yield grant
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
            with contextlib.suppress(Exception):
                await self.release(grant)


def _ttl_ms(ttl: float) -> int:
    if not isinstance(ttl, int | float) or isinstance(ttl, bool) or not 0.001 <= ttl <= 86_400:
        raise InvalidArgument("ttl is a number of seconds from 0.001 to 86,400")
    return max(1, round(ttl * 1000))


class Grants:
    """The grants this node's callers hold, watched against the replicated records. A record
    naming another holder with a larger token makes the grant lost (the loser's event); the
    same token means a concurrent claim: with consensus the grant is *contested* until the
    decision (the winner's grant then continues with the decision's token), without it the
    merge order already chose and the other claim's grant is lost."""

    def __init__(self, decides: Callable[[], bool] = lambda: False) -> None:
        self._decides = decides
        self._by_key: dict[str, list[LocalGrant]] = {}
        self.lost: list[LocalGrant] = []
        self.on_lost: Callable[[LocalGrant], None] | None = None
        #: called when a grant becomes contested (key, its claim, the other claim): the node
        #: escalates from there too, so a conflict is decided even if the node that first saw
        #: it went away
        self.on_contested: Callable[[str, LeaseInfo, LeaseInfo], None] | None = None

    def adopt(
        self,
        name: str,
        holder: str,
        token: int,
        ttl_ms: int,
        mode: str,
        until: float,
        consensus: Grant | None = None,
    ) -> LocalGrant:
        """The caller's grant for this acquire: the live grant of ``holder`` with ``token`` if
        there is one (a renewal: its term extended), else a new one, tracked."""
        key = "lease/" + name
        lst = self._by_key.get(key)
        if lst is None:
            g = LocalGrant(name, holder, token, ttl_ms, mode, until, consensus)
            self._by_key[key] = [g]
            return g
        for g in lst:
            if g.holder == holder and g.token == token and g.mode == mode and not g.lost:
                g.valid_until, g.ttl_ms = until, ttl_ms
                if consensus is not None:
                    g.consensus = consensus
                return g
        g = LocalGrant(name, holder, token, ttl_ms, mode, until, consensus)
        lst[:] = [x for x in lst if not x.lost]
        lst.append(g)
        return g

    def untrack(self, g: LocalGrant) -> None:
        key = lease_key(g.name)
        lst = self._by_key.get(key)
        if lst is not None and g in lst:
            lst.remove(g)
            if not lst:
                del self._by_key[key]

    def changed(self, key: str, rec: LeaseInfo | None) -> None:
        lst = self._by_key.get(key)
        if not lst or rec is None:
            return
        for g in list(lst):
            if rec.holder == g.holder and rec.token == g.token:
                continue
            if g.mode == "strong":
                # a strong grant answers to consensus; the record only tells it lost when it
                # names another holder with a token at least as large (a conflicting claim in
                # the other mode, decided against it): otherwise it is its own publication or
                # an older record
                if rec.holder in (None, g.holder) or rec.token < g.token:
                    continue
                self._lose(lst, g, f"now held by {rec.holder!r} with token {rec.token}")
                continue
            if rec.token < g.token:
                continue  # an older record: this grant is newer
            if rec.holder == g.holder and g.remaining() > 0:
                # a larger token for the same holder while its term runs: the decision of a
                # conflict in this grant's favour (or the same holder granted it elsewhere)
                g.token = rec.token
                g.contested = False
                continue
            if rec.token == g.token and rec.holder is not None and self._decides():
                # a concurrent claim at the same token: unusable until the decision
                if not g.contested:
                    g.contested = True
                    if self.on_contested is not None and g.claim is not None:
                        self.on_contested(key, g.claim, rec)
                continue
            why = (
                f"now held by {rec.holder!r} with token {rec.token}"
                if rec.holder is not None
                else f"revoked (token {rec.token})"
            )
            self._lose(lst, g, why)

    def _lose(self, lst: list[LocalGrant], g: LocalGrant, why: str) -> None:
        g._lose(why)
        g.contested = False
        lst.remove(g)
        self.lost.append(g)
        if self.on_lost is not None:
            self.on_lost(g)

    def held(self) -> list[LocalGrant]:
        """The grants neither lost nor past their term."""
        return [g for lst in self._by_key.values() for g in lst if not g.lost and g.remaining() > 0]


# ---------------------------------------------------------------------- escalation


def conflict_id(key: str, token: int) -> str:
    """One conflict per key and contested token, whichever node sees it and whichever pair of
    its claims it sees: claims at the same token were all granted from the same record."""
    return f"{key}@{token}"


def decide_between(claims: list[LeaseInfo]) -> dict[str, Any]:
    """The deterministic proposal among claims at one token: the earliest claim wins (then the
    smaller holder), with the next token."""
    winner = min(claims, key=lambda r: (r.granted_at, r.holder or ""))
    return {
        "holder": winner.holder,
        "token": max(c.token for c in claims) + 1,
        "expiry_ms": winner.expiry.wall,
    }


@dataclass
class EscalationStats:
    raised: int = 0
    decided: int = 0
    applied: int = 0
    retries: int = 0
    failed: int = 0
    undecided: int = 0  # no consensus configured: the merge order settled it
    dominated: int = 0  # different tokens: the larger one wins the merge, nothing to decide

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


class Escalator:
    """Turns the engine's :class:`~crdtcoord.engine.Escalation` events into decisions.

    ``hook`` replaces the default: it gets the event (and may return an awaitable). The default
    escalates only claims at the **same token** (two grants made from the same record: a fence
    cannot tell them apart); claims at different tokens need nothing, the larger token wins the
    merge and the other holder is told. It proposes :func:`decide_between` (the earliest claim
    this node knows at that token) under :func:`conflict_id` (one decision per key and token,
    retried with bounded backoff), then writes it as a ``Lease.Force`` with the next token,
    unless the replica already holds that token or a newer one."""

    def __init__(
        self,
        node: Node,
        consensus: Consensus | None,
        hook: Callable[[Escalation], Any] | None = None,
        *,
        attempts: int = 6,
    ) -> None:
        self.node = node
        self.consensus = consensus
        self.hook = hook
        self.attempts = attempts
        self.stats = EscalationStats()
        self._inflight: dict[str, list[LeaseInfo]] = {}  # conflict -> the claims seen
        self._decided: dict[str, dict[str, Any]] = {}  # the last decisions, by conflict
        self._tasks: set[asyncio.Task[None]] = set()
        self.decisions: list[dict[str, Any]] = []  # the last ones, for status

    def __call__(self, e: Escalation) -> None:
        self.stats.raised += 1
        if self.hook is not None:
            out = self.hook(e)
            if asyncio.iscoroutine(out) or isinstance(out, asyncio.Future):
                self._spawn(out)
            return
        if not (isinstance(e.local, Lease) and isinstance(e.remote, Lease)):
            self.stats.undecided += 1
            return
        a, b = e.local.value(), e.remote.value()
        if a is None or b is None:
            return
        if self.consensus is None:
            self.stats.undecided += 1
            log.info("conflict on %s settled by merge order (no consensus plug-in)", e.key)
            return
        self.contest(e.key, a, b)

    def contest(self, key: str, a: LeaseInfo, b: LeaseInfo) -> None:
        """Two claims on lease ``key`` met: decide them (once per key and token)."""
        if self.consensus is None:
            return
        if a.token != b.token:
            self.stats.dominated += 1
            return
        cid = conflict_id(key, a.token)
        done = self._decided.get(cid)
        if done is not None:
            self._spawn(self._apply(key, done))
            return
        seen = self._inflight.get(cid)
        if seen is not None:
            seen.extend(x for x in (a, b) if x not in seen)
            return
        self._inflight[cid] = [a, b]
        self._spawn(self._resolve(key, cid))

    def _spawn(self, coro: Any) -> None:
        t = asyncio.ensure_future(coro)
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)

    async def _resolve(self, key: str, cid: str) -> None:
        """Propose until decided: ``attempts`` quick retries (50 ms doubling), then every 2 s
        for as long as the conflict is current here (consensus may be away for a while; the
        contested grants refuse ``check`` meanwhile). Stops when a newer record supersedes
        the contested token, or the node closes."""
        assert self.consensus is not None
        delay = 0.05
        token = self._inflight[cid][0].token
        try:
            attempt = 0
            while True:
                # (every claim seen by now: one more may have arrived during a retry)
                proposal = decide_between(self._inflight[cid])
                try:
                    raw = await self.consensus.decide(cid, json.dumps(proposal).encode())
                    break
                except ConsensusUnavailable as e:
                    attempt += 1
                    if attempt == self.attempts:
                        self.stats.failed += 1
                        log.warning("escalation %s not decided yet (retrying): %s", cid, e)
                    self.stats.retries += 1
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 2.0)
                    rec = self.node.value(key)
                    if isinstance(rec, LeaseInfo) and rec.token > token:
                        return  # superseded: a newer grant or another node's decision
            decision = json.loads(raw)
            self.stats.decided += 1
            self._decided[cid] = decision
            while len(self._decided) > 1000:
                del self._decided[next(iter(self._decided))]
            self.decisions = [*self.decisions[-19:], {"conflict": cid, **decision}]
            await self._apply(key, decision)
        finally:
            self._inflight.pop(cid, None)

    async def _apply(self, key: str, d: dict[str, Any]) -> None:
        rec = self.node.value(key)
        if isinstance(rec, LeaseInfo) and rec.token >= int(d["token"]):
            return  # the decision (another node's copy) or something newer is already here
        ttl_ms = max(1, int(d["expiry_ms"]) - self.node.hlc_now_ms())
        await self.node.apply(key, Lease.Force(d["holder"], ttl_ms, int(d["token"])), Lease)
        self.stats.applied += 1

    async def close(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        for t in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
