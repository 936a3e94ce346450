"""etcd consensus: aiohttp against etcd's v3 JSON gateway (no grpc).

Recipe (etcd's own advice after Jepsen's 2020 analysis): a lease is a key
``<prefix>lease/<name>`` created by a transaction that compares ``CREATE == 0`` and puts
``{"holder", "lease"}`` attached to an etcd lease of the requested TTL; the **fencing token is the
key's create revision** (cluster-wide, strictly increasing across holders). Renewing is a
keep-alive of the etcd lease plus a check that the key still has that create revision; releasing
is a transaction that deletes the key only if its create revision is still the token (the
etcd lease is then revoked in the background). A decision is a key ``<prefix>decision/<key>``
created once (``CREATE == 0``); a losing proposer gets the stored value in the same round trip.

The gateway's quirks are handled: bytes are base64, int64 come back as strings, zero values are
omitted (a failed transaction has no ``succeeded``, a missing key no ``kvs``, a dead lease no
``TTL``). A call that times out has an **unknown outcome**: acquire and decide re-read the key
before answering. etcd's smallest lease TTL is 2 s, and TTLs are whole seconds (rounded up).

**One round trip per acquire.** Granting an etcd lease and then creating the key would be two
round trips. Instead the plug-in keeps one *spare* etcd lease per TTL in use, granted ahead and
kept alive in the background (every TTL/4; dropped after a minute unused), and an acquire
attaches the key to the spare in its single transaction. The grant's safe term counts from the
spare's last keep-alive *sent* (so it may start up to TTL/4 shorter than asked, never longer
than etcd will keep the key); a refused acquire keeps the spare. Renewing sends its two calls
concurrently: every operation is one round trip.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import math
import time
from typing import Any

import aiohttp

from crdtcoord._exceptions import LeaseHeld
from crdtcoord.consensus.base import (
    ConsensusError,
    ConsensusUnavailable,
    Grant,
    LeaseLost,
    LeaseState,
    valid_until,
)
from crdtcoord.consensus.local import check_lease_args

__all__ = ["EtcdConsensus"]


def _b64(x: str | bytes) -> str:
    return base64.b64encode(x.encode() if isinstance(x, str) else x).decode()


def _unb64(x: str) -> bytes:
    return base64.b64decode(x)


class EtcdConsensus:
    """Leases and decisions in an etcd cluster (``endpoints``: client URLs, tried in turn)."""

    kind = "etcd"

    def __init__(
        self,
        endpoints: list[str] | str,
        *,
        prefix: str = "/crdtcoord/",
        timeout: float = 3.0,
    ) -> None:
        eps = [endpoints] if isinstance(endpoints, str) else list(endpoints)
        if not eps:
            raise ConsensusError("EtcdConsensus needs at least one endpoint")
        self.endpoints = [e.rstrip("/") for e in eps]
        self.prefix = prefix
        self.timeout = timeout
        self._session: aiohttp.ClientSession | None = None
        self._current = 0
        self.calls = 0
        self.errors = 0
        #: TTL (s) -> (etcd lease id, monotonic time its last grant/keep-alive was sent)
        self._spares: dict[int, tuple[str, float]] = {}
        self._spare_used: dict[int, float] = {}
        self._spare_tasks: dict[int, asyncio.Task[None]] = {}
        self._closed = False
        self._refilling: set[int] = set()

    # ------------------------------------------------------------------ plumbing

    async def start(self) -> None:
        self._closed = False
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.timeout, sock_connect=self.timeout)
            )

    async def close(self) -> None:
        self._closed = True
        tasks = list(self._spare_tasks.values())
        self._spare_tasks.clear()
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        spares, self._spares = list(self._spares.values()), {}
        if self._session is not None:
            for lease, _ in spares:  # (else they would expire by themselves)
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self._revoke(lease), 1.0)
        s, self._session = self._session, None
        if s is not None:
            await s.close()

    # ------------------------------------------------------------------ spare leases

    async def _take_lease(self, ttl_s: int) -> tuple[str, float]:
        """An etcd lease of ``ttl_s`` and the time its last grant or keep-alive was sent: the
        spare if it is fresh (a new spare is granted in the background), else one granted now."""
        self._spare_used[ttl_s] = time.monotonic()
        spare = self._spares.pop(ttl_s, None)
        if ttl_s not in self._refilling:
            self._refilling.add(ttl_s)
            self._background(self._refill(ttl_s))
        t = self._spare_tasks.get(ttl_s)
        if t is None or t.done():
            self._spare_tasks[ttl_s] = asyncio.ensure_future(self._spare_loop(ttl_s))
        if spare is not None and time.monotonic() - spare[1] < ttl_s / 2:
            return spare
        if spare is not None:
            self._background(self._revoke(spare[0]))
        sent = time.monotonic()
        return await self._grant(ttl_s), sent

    def _give_back(self, ttl_s: int, lease: str, sent: float) -> None:
        """An unused lease: the spare again if the slot is empty, else revoked."""
        if ttl_s not in self._spares and time.monotonic() - sent < ttl_s / 2:
            self._spares[ttl_s] = (lease, sent)
        else:
            self._background(self._revoke(lease))

    def _background(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        task.add_done_callback(lambda t: t.cancelled() or t.exception())

    async def _refill(self, ttl_s: int) -> None:
        try:
            sent = time.monotonic()
            lease = await self._grant(ttl_s)
            if self._closed:
                await self._revoke(lease)
            else:
                self._give_back(ttl_s, lease, sent)
        finally:
            self._refilling.discard(ttl_s)

    async def _spare_loop(self, ttl_s: int) -> None:
        """Keep the spare lease of ``ttl_s`` alive while acquires use that TTL (every TTL/4)."""
        period = ttl_s / 4
        while time.monotonic() - self._spare_used.get(ttl_s, 0.0) < 60.0:
            await asyncio.sleep(period / 2)
            spare = self._spares.get(ttl_s)
            sent = time.monotonic()
            if spare is None or sent - spare[1] < period:
                continue
            try:
                left = await self._keepalive(spare[0])
            except (TimeoutError, ConsensusError):
                continue  # (etcd away: the spare ages out; acquires grant their own)
            if self._spares.get(ttl_s) == spare:
                if left > 0:
                    self._spares[ttl_s] = (spare[0], sent)
                else:
                    del self._spares[ttl_s]
        spare = self._spares.pop(ttl_s, None)
        self._spare_tasks.pop(ttl_s, None)
        if spare is not None:
            await self._revoke(spare[0])

    async def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """One gateway call, trying each endpoint once; :class:`ConsensusUnavailable` if none
        answers (the outcome of a mutation is then unknown)."""
        if self._session is None:
            if self._closed:
                raise ConsensusUnavailable("the etcd plug-in is closed")
            await self.start()
        assert self._session is not None
        self.calls += 1
        last: Exception | None = None
        for i in range(len(self.endpoints)):
            ep = self.endpoints[(self._current + i) % len(self.endpoints)]
            try:
                async with self._session.post(ep + path, json=body) as r:
                    data = await r.json(content_type=None)
                    if r.status == 200 and isinstance(data, dict):
                        self._current = (self._current + i) % len(self.endpoints)
                        return data
                    msg = data.get("message") if isinstance(data, dict) else data
                    if r.status in (400, 404, 412):  # a definite refusal, not unavailability
                        raise ConsensusError(f"etcd {path}: {msg} (HTTP {r.status})")
                    last = ConsensusError(f"etcd {path}: {msg} (HTTP {r.status})")
            except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as e:
                last = e
        self.errors += 1
        raise ConsensusUnavailable(f"etcd did not answer {path}: {last}; the outcome is unknown")

    def _key(self, kind: str, name: str) -> str:
        return f"{self.prefix}{kind}/{name}"

    async def _range(self, key: str) -> dict[str, Any] | None:
        out = await self._post("/v3/kv/range", {"key": _b64(key)})
        kvs = out.get("kvs") or []
        return kvs[0] if kvs else None

    async def _grant(self, ttl_s: int) -> str:
        out = await self._post("/v3/lease/grant", {"TTL": str(ttl_s)})
        lease = out.get("ID")
        if not lease:
            raise ConsensusError(f"etcd did not grant a lease: {out}")
        return str(lease)

    async def _revoke(self, lease: str) -> None:
        with contextlib.suppress(ConsensusError):  # (already gone: revoked or expired)
            await self._post("/v3/lease/revoke", {"ID": lease})

    async def _keepalive(self, lease: str) -> int:
        """Refresh an etcd lease; its TTL in seconds (0: the lease is gone)."""
        out = await self._post("/v3/lease/keepalive", {"ID": lease})
        res = out.get("result", out)
        return int(res.get("TTL", 0) or 0)

    @staticmethod
    def _value(kv: dict[str, Any]) -> dict[str, Any]:
        try:
            v = json.loads(_unb64(kv.get("value", "")))
        except ValueError:
            return {}
        return v if isinstance(v, dict) else {}

    # ------------------------------------------------------------------ leases

    async def acquire(self, name: str, holder: str, ttl_ms: int) -> Grant:
        check_lease_args(name, holder, ttl_ms)
        ttl_s = max(2, math.ceil(ttl_ms / 1000))
        key = self._key("lease", name)
        lease, sent = await self._take_lease(ttl_s)
        value = json.dumps({"holder": holder, "lease": lease})
        txn = {
            "compare": [{"key": _b64(key), "target": "CREATE", "result": "EQUAL",
                         "create_revision": "0"}],
            "success": [{"request_put": {"key": _b64(key), "value": _b64(value), "lease": lease}}],
            "failure": [{"request_range": {"key": _b64(key)}}],
        }  # fmt: skip
        try:
            out = await self._post("/v3/kv/txn", txn)
        except ConsensusUnavailable:
            # unknown outcome: the key tells whether this very attempt won
            kv = await self._range(key)
            if kv is not None and self._value(kv).get("lease") == lease:
                token = int(kv["create_revision"])
                return Grant(
                    name, holder, token, ttl_s * 1000, valid_until(sent, ttl_s * 1000), lease
                )
            await self._revoke(lease)
            raise
        if out.get("succeeded", False):
            token = int(out["header"]["revision"])
            return Grant(name, holder, token, ttl_s * 1000, valid_until(sent, ttl_s * 1000), lease)
        self._give_back(ttl_s, lease, sent)  # (not needed: the key exists)
        resp = (out.get("responses") or [{}])[0].get("response_range", {})
        kvs = resp.get("kvs") or []
        if not kvs:  # deleted in between: try once more
            return await self.acquire(name, holder, ttl_ms)
        kv = kvs[0]
        current = self._value(kv)
        token = int(kv["create_revision"])
        if current.get("holder") == holder:
            # already ours: a renewal with the TTL asked now (same token): the key moves to a
            # lease of that TTL in one transaction, the old lease is revoked off the path
            old = str(current.get("lease", ""))
            new, new_sent = await self._take_lease(ttl_s)
            value = json.dumps({"holder": holder, "lease": new})
            move = {  # (unchanged since read: the lease replaced is exactly `old`)
                "compare": [{"key": _b64(key), "target": "MOD", "result": "EQUAL",
                             "mod_revision": str(kv["mod_revision"])}],
                "success": [{"request_put": {"key": _b64(key), "value": _b64(value),
                                             "lease": new}}],
                "failure": [],
            }  # fmt: skip
            moved = await self._post("/v3/kv/txn", move)
            if moved.get("succeeded", False):
                if old and old != new:
                    self._background(self._revoke(old))
                return Grant(
                    name, holder, token, ttl_s * 1000, valid_until(new_sent, ttl_s * 1000), new
                )
            self._give_back(ttl_s, new, new_sent)
            return await self.acquire(name, holder, ttl_ms)  # (it just expired or moved)
        left = await self._lease_left(str(current.get("lease", "")))
        raise LeaseHeld(str(current.get("holder")), f"in {left:.3f} s", token)

    async def _lease_left(self, lease: str) -> float:
        if not lease:
            return 0.0
        try:
            out = await self._post("/v3/lease/timetolive", {"ID": lease})
        except ConsensusError:
            return 0.0
        return max(0.0, float(int(out.get("TTL", -1) or -1)))

    async def renew(self, grant: Grant) -> Grant:
        sent = time.monotonic()
        kv, ttl = await asyncio.gather(
            self._range(self._key("lease", grant.name)), self._keepalive(grant.handle)
        )
        if (
            kv is None
            or int(kv["create_revision"]) != grant.token
            or str(self._value(kv).get("lease", "")) != grant.handle
        ):  # (gone, granted again, or moved to another etcd lease by a later acquire)
            raise LeaseLost(f"lease {grant.name!r}: grant {grant.token} is no longer held")
        if ttl <= 0:
            raise LeaseLost(f"lease {grant.name!r}: its etcd lease expired")
        return Grant(
            grant.name, grant.holder, grant.token, grant.ttl_ms,
            valid_until(sent, min(grant.ttl_ms, ttl * 1000)), grant.handle,
        )  # fmt: skip

    async def release(self, grant: Grant) -> bool:
        key = self._key("lease", grant.name)
        txn = {
            "compare": [{"key": _b64(key), "target": "CREATE", "result": "EQUAL",
                         "create_revision": str(grant.token)}],
            "success": [{"request_delete_range": {"key": _b64(key)}}],
            "failure": [],
        }  # fmt: skip
        out = await self._post("/v3/kv/txn", txn)
        if grant.handle:  # (the key is gone: the lease is only cleaned up, off the path)
            self._background(self._revoke(grant.handle))
        return bool(out.get("succeeded", False))

    async def read(self, name: str) -> LeaseState:
        kv = await self._range(self._key("lease", name))
        if kv is None:
            return LeaseState(name, None, 0, 0.0)
        v = self._value(kv)
        left = await self._lease_left(str(v.get("lease", "")))
        return LeaseState(name, v.get("holder"), int(kv["create_revision"]), left)

    # ------------------------------------------------------------------ decisions

    async def decide(self, key: str, proposal: bytes) -> bytes:
        k = self._key("decision", key)
        txn = {
            "compare": [{"key": _b64(k), "target": "CREATE", "result": "EQUAL",
                         "create_revision": "0"}],
            "success": [{"request_put": {"key": _b64(k), "value": _b64(proposal)}}],
            "failure": [{"request_range": {"key": _b64(k)}}],
        }  # fmt: skip
        for _ in range(3):
            try:
                out = await self._post("/v3/kv/txn", txn)
            except ConsensusUnavailable:
                kv = await self._range(k)  # unknown outcome: whatever is stored is the decision
                if kv is not None:
                    return _unb64(kv.get("value", ""))
                raise
            if out.get("succeeded", False):
                return bytes(proposal)
            resp = (out.get("responses") or [{}])[0].get("response_range", {})
            kvs = resp.get("kvs") or []
            if kvs:
                return _unb64(kvs[0].get("value", ""))
            await asyncio.sleep(0.01)
        raise ConsensusError(f"etcd: no decision could be read for {key!r}")

    def status(self) -> dict[str, object]:
        return {
            "kind": self.kind,
            "endpoints": self.endpoints,
            "calls": self.calls,
            "errors": self.errors,
        }
