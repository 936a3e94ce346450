"""In-process consensus: linearizable because one process decides alone.

For a single node, tests and notebooks. It is refused for a node with peers (each process would
decide alone, and two nodes could both be granted one lease): use Raft or etcd there.

With ``path`` (``crdtcoord serve --consensus local --data-dir D`` gives ``D/consensus.db``) the
leases and decisions are in SQLite, written (``synchronous=FULL``) before each answer: after a
restart tokens go on from where they were and a grant still running is not given again (its
expiry is kept as wall-clock time and read back against the monotonic clock: a wall clock set
back while the process was down makes grants last longer, never shorter). Without ``path``
everything is in memory and a restart starts over: do not hand its tokens to anything that
outlives the process.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass

from crdtcoord._exceptions import InvalidArgument, LeaseHeld
from crdtcoord.consensus.base import Grant, LeaseLost, LeaseState, valid_until

__all__ = ["LocalConsensus"]


@dataclass
class _Lease:
    holder: str | None
    token: int
    expires: float  # on this process's monotonic clock


def check_lease_args(name: str, holder: str, ttl_ms: int) -> None:
    """Common argument checks of the back-ends (a bad argument never reaches consensus)."""
    if not isinstance(name, str) or not name or len(name.encode()) > 512:
        raise InvalidArgument("a lease name is a non-empty str of at most 512 bytes")
    if not isinstance(holder, str) or not holder or len(holder.encode()) > 255:
        raise InvalidArgument("a holder is a non-empty str of at most 255 bytes")
    if type(ttl_ms) is not int or not 1 <= ttl_ms <= 86_400_000:
        raise InvalidArgument("ttl_ms is an int from 1 to 86,400,000 (a day)")


class LocalConsensus:
    """Leases and decisions in this process's memory (``clock``: monotonic seconds).
    ``shared=True`` declares that every node using it runs in this process and shares this one
    instance (an in-process cluster: tests, notebooks); otherwise a node with peers refuses it."""

    kind = "local"

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.monotonic,
        shared: bool = False,
        path: str | os.PathLike[str] | None = None,
    ) -> None:
        self._clock = clock
        self.shared = shared
        self._leases: dict[str, _Lease] = {}
        self._decisions: dict[str, bytes] = {}
        self.calls = 0
        self.path = path
        self._db: sqlite3.Connection | None = None

    async def start(self) -> None:
        if self.path is None or self._db is not None:
            return
        db = sqlite3.connect(self.path, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute(
            "CREATE TABLE IF NOT EXISTS leases"
            " (name TEXT PRIMARY KEY, holder TEXT, token INTEGER, expires_wall_ms INTEGER)"
        )
        db.execute("CREATE TABLE IF NOT EXISTS decisions (key TEXT PRIMARY KEY, value BLOB)")
        now, wall = self._clock(), time.time() * 1000
        for name, holder, token, exp in db.execute("SELECT * FROM leases"):
            self._leases[name] = _Lease(holder, token, now + (exp - wall) / 1000)
        for key, value in db.execute("SELECT * FROM decisions"):
            self._decisions[key] = bytes(value)
        self._db = db

    async def close(self) -> None:
        db, self._db = self._db, None
        if db is not None:
            db.close()

    def _save(self, name: str, rec: _Lease) -> None:
        if self._db is not None:
            wall = round(time.time() * 1000 + (rec.expires - self._clock()) * 1000)
            self._db.execute(
                "INSERT OR REPLACE INTO leases VALUES (?, ?, ?, ?)",
                (name, rec.holder, rec.token, wall),
            )

    def _live(self, name: str, now: float) -> _Lease | None:
        rec = self._leases.get(name)
        if rec is None or rec.holder is None or rec.expires <= now:
            return None
        return rec

    async def acquire(self, name: str, holder: str, ttl_ms: int) -> Grant:
        check_lease_args(name, holder, ttl_ms)
        self.calls += 1
        sent = now = self._clock()
        live = self._live(name, now)
        if live is not None and live.holder != holder:
            assert live.holder is not None
            raise LeaseHeld(live.holder, f"in {live.expires - now:.3f} s", live.token)
        rec = self._leases.get(name)
        if live is None:  # free or expired: a new grant
            token = (rec.token if rec is not None else 0) + 1
            rec = self._leases[name] = _Lease(holder, token, now + ttl_ms / 1000)
        else:
            live.expires = now + ttl_ms / 1000
            rec = live
        self._save(name, rec)
        return Grant(name, holder, rec.token, ttl_ms, valid_until(sent, ttl_ms))

    async def renew(self, grant: Grant) -> Grant:
        self.calls += 1
        sent = now = self._clock()
        live = self._live(grant.name, now)
        if live is None or live.holder != grant.holder or live.token != grant.token:
            raise LeaseLost(f"lease {grant.name!r}: grant {grant.token} is no longer held")
        live.expires = now + grant.ttl_ms / 1000
        self._save(grant.name, live)
        return Grant(
            grant.name, grant.holder, grant.token, grant.ttl_ms, valid_until(sent, grant.ttl_ms)
        )

    async def release(self, grant: Grant) -> bool:
        self.calls += 1
        live = self._live(grant.name, self._clock())
        if live is None or live.holder != grant.holder or live.token != grant.token:
            return False
        live.holder = None
        self._save(grant.name, live)
        return True

    async def read(self, name: str) -> LeaseState:
        self.calls += 1
        now = self._clock()
        rec = self._leases.get(name)
        live = self._live(name, now)
        if live is None:
            return LeaseState(name, None, rec.token if rec is not None else 0, 0.0)
        return LeaseState(name, live.holder, live.token, live.expires - now)

    async def decide(self, key: str, proposal: bytes) -> bytes:
        self.calls += 1
        if key not in self._decisions and self._db is not None:
            self._db.execute("INSERT INTO decisions VALUES (?, ?)", (key, bytes(proposal)))
        return self._decisions.setdefault(key, bytes(proposal))

    def status(self) -> dict[str, object]:
        return {"kind": self.kind, "leases": len(self._leases), "decisions": len(self._decisions)}
