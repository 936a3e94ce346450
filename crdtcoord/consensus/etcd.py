"""etcd consensus: aiohttp against etcd's v3 JSON gateway (no grpc).

Recipe (etcd's own advice after Jepsen's 2020 analysis): a lease is a key
``<prefix>lease/<name>`` created by a transaction that compares ``CREATE == 0``; the **fencing
token is the key's create revision** (cluster-wide, strictly increasing across holders). A
decision is a key ``<prefix>decision/<key>`` created once (``CREATE == 0``); a losing proposer
gets the stored value in the same round trip.

**Sessions: one etcd write per acquire.** Attaching every grant to an etcd lease of its own
would cost two writes per acquire (etcd fsyncs both the lease grant and the transaction). As
etcd's own ``concurrency`` package does, the plug-in keeps one *session* etcd lease per TTL in
use, kept alive in the background every TTL/4, and attaches its grants' keys to it: an acquire is
one transaction. Each grant still ends on its own: the plug-in deletes a grant's key (a
transaction on its create revision) once the grant's TTL passed without a renewal, and if the
process dies or loses etcd, the session lease expires and etcd deletes every key on it. A
grant's safe term counts from the *earlier* of the acquire and the session's last keep-alive
sent, so it may start up to TTL/4 shorter than asked, never longer than etcd keeps the key.
Renewing is a keep-alive of the session plus a check that the key still has the token and
names the session (sent concurrently: one round trip); releasing deletes the key if its create
revision is still the token. Closing the plug-in revokes its sessions: its grants end.

The gateway's quirks are handled: bytes are base64, int64 come back as strings, zero values are
omitted (a failed transaction has no ``succeeded``, a missing key no ``kvs``, a dead lease no
``TTL``). A call that times out has an **unknown outcome**: acquire (by a nonce in the value)
and decide re-read the key before answering. etcd's smallest lease TTL is 2 s, and TTLs are
whole seconds (rounded up).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import math
import secrets
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

log = logging.getLogger("crdtcoord.consensus.etcd")


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
        #: TTL (s) -> (session etcd lease id, monotonic time its last grant/keep-alive was sent)
        self._sessions: dict[int, tuple[str, float]] = {}
        self._session_locks: dict[int, asyncio.Lock] = {}
        #: key -> (token, session lease, monotonic deadline): grants made here, deleted by the
        #: maintenance task once their deadline passes without a renewal
        self._owned: dict[str, tuple[int, str, float, str]] = {}
        #: key -> (token, value): grants past their term whose key is still to be deleted
        self._ending: dict[str, tuple[int, str]] = {}
        self._maintainer: asyncio.Task[None] | None = None
        self._closed = False

    # ------------------------------------------------------------------ plumbing

    async def start(self) -> None:
        self._closed = False
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.timeout, sock_connect=self.timeout)
            )

    async def close(self) -> None:
        """Stop, and revoke this plug-in's sessions: the grants made here end (their holders
        were this node's callers)."""
        self._closed = True
        t, self._maintainer = self._maintainer, None
        if t is not None:
            t.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        sessions, self._sessions = list(self._sessions.values()), {}
        self._owned.clear()
        if self._session is not None:
            for lease, _ in sessions:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self._post("/v3/lease/revoke", {"ID": lease}), 1.0)
        s, self._session = self._session, None
        if s is not None:
            await s.close()

    # ------------------------------------------------------------------ sessions

    async def _lease_for(self, ttl_s: int) -> tuple[str, float]:
        """The session etcd lease of ``ttl_s`` and when its last grant or keep-alive was sent
        (granted on first use: one extra round trip, once per TTL)."""
        cur = self._sessions.get(ttl_s)
        if cur is not None and time.monotonic() - cur[1] < ttl_s / 2:
            return cur
        lock = self._session_locks.setdefault(ttl_s, asyncio.Lock())
        if cur is not None:  # (stale: etcd was away; a grant from it would be over already)
            async with lock:
                sent = time.monotonic()
                if await self._keepalive(cur[0]) > 0:
                    cur = self._sessions[ttl_s] = (cur[0], sent)
                    return cur
                if self._sessions.get(ttl_s) == cur:
                    del self._sessions[ttl_s]
        async with lock:
            cur = self._sessions.get(ttl_s)
            if cur is None:
                sent = time.monotonic()
                cur = self._sessions[ttl_s] = (await self._grant(ttl_s), sent)
        if self._maintainer is None or self._maintainer.done():
            self._maintainer = asyncio.ensure_future(self._maintain())
        return cur

    def _background(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        task.add_done_callback(lambda t: t.cancelled() or t.exception())

    async def _maintain(self) -> None:
        """Keep the sessions alive (every TTL/4), end the grants not renewed in time, and let
        a session with no grant go after a minute unused."""
        idle: dict[int, float] = {}
        while not self._closed:
            await asyncio.sleep(0.25)
            try:
                await self._maintain_once(idle)
            except Exception:  # (never let one bad round stop the keep-alives and the ends)
                log.exception("etcd session maintenance failed; retrying")

    async def _maintain_once(self, idle: dict[int, float]) -> None:
        now = time.monotonic()
        for key, (token, _lease, deadline, value) in list(self._owned.items()):
            if now >= deadline:  # (no renewal can save it now: see renew)
                self._owned.pop(key, None)
                self._ending[key] = (token, value)
        for key, (token, value) in list(self._ending.items()):
            try:
                await self._delete_if(key, token, value)
                self._ending.pop(key, None)
            except (ConsensusError, TimeoutError):
                pass  # (etcd away: tried again next round; the session keeps it meanwhile)
        used = {lease for _, lease, _, _ in self._owned.values()}
        for ttl_s, (lease, sent) in list(self._sessions.items()):
            if lease not in used:
                if now - idle.setdefault(ttl_s, now) > 60.0:
                    del self._sessions[ttl_s]
                    idle.pop(ttl_s, None)
                    self._background(self._revoke(lease))
                    continue
            else:
                idle.pop(ttl_s, None)
            if now - sent < ttl_s / 4:
                continue
            try:
                left = await self._keepalive(lease)
            except (TimeoutError, ConsensusError):
                continue  # (etcd away: the session may expire; grants end with it)
            if self._sessions.get(ttl_s, (None,))[0] == lease:
                if left > 0:
                    self._sessions[ttl_s] = (lease, now)
                else:  # expired: etcd deleted its keys
                    del self._sessions[ttl_s]
                    for key, (_, le, _, _) in list(self._owned.items()):
                        if le == lease:
                            self._owned.pop(key, None)

    async def _delete_if(self, key: str, token: int, value: str | None = None) -> bool:
        """Delete ``key`` if it still has create revision ``token`` (and ``value``, when
        given: a grant moved elsewhere since is not this caller's to end)."""
        compare = [{"key": _b64(key), "target": "CREATE", "result": "EQUAL",
                    "create_revision": str(token)}]  # fmt: skip
        if value is not None:
            compare.append({"key": _b64(key), "target": "VALUE", "result": "EQUAL",
                            "value": _b64(value)})  # fmt: skip
        txn = {
            "compare": compare,
            "success": [{"request_delete_range": {"key": _b64(key)}}],
            "failure": [],
        }  # fmt: skip
        out = await self._post("/v3/kv/txn", txn)
        return bool(out.get("succeeded", False))

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

    def _granted(
        self,
        name: str,
        holder: str,
        key: str,
        token: int,
        ttl_s: int,
        lease: str,
        since: float,
        value: str,
    ) -> Grant:
        """A grant made (or renewed) here: tracked until its TTL from ``since`` passes (then
        its key is deleted if it still holds ``value``, the exact value written here)."""
        self._owned[key] = (token, lease, since + ttl_s, value)
        return Grant(name, holder, token, ttl_s * 1000, valid_until(since, ttl_s * 1000), lease)

    async def acquire(self, name: str, holder: str, ttl_ms: int) -> Grant:
        try:
            return await self._acquire(name, holder, ttl_ms)
        except ConsensusError as e:
            if "lease not found" not in str(e) or isinstance(e, ConsensusUnavailable):
                raise
            # the session expired while etcd was away (the keys on it went with it): a new
            # session, and the acquire once more
            ttl_s = max(2, math.ceil(ttl_ms / 1000))
            self._sessions.pop(ttl_s, None)
            return await self._acquire(name, holder, ttl_ms)

    async def _acquire(self, name: str, holder: str, ttl_ms: int) -> Grant:
        check_lease_args(name, holder, ttl_ms)
        ttl_s = max(2, math.ceil(ttl_ms / 1000))
        key = self._key("lease", name)
        lease, lease_sent = await self._lease_for(ttl_s)
        nonce = secrets.token_hex(8)  # (tells this very attempt apart after a timeout)
        value = json.dumps({"holder": holder, "lease": lease, "nonce": nonce})
        since = min(lease_sent, time.monotonic())
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
            if kv is not None and self._value(kv).get("nonce") == nonce:
                return self._granted(
                    name, holder, key, int(kv["create_revision"]), ttl_s, lease, since, value
                )
            raise
        if out.get("succeeded", False):
            token = int(out["header"]["revision"])
            return self._granted(name, holder, key, token, ttl_s, lease, since, value)
        resp = (out.get("responses") or [{}])[0].get("response_range", {})
        kvs = resp.get("kvs") or []
        if not kvs:  # deleted in between: try once more
            return await self._acquire(name, holder, ttl_ms)
        kv = kvs[0]
        current = self._value(kv)
        token = int(kv["create_revision"])
        if current.get("holder") == holder:
            # already ours: a renewal, with the TTL asked now (same token)
            mine = self._owned.get(key)
            if current.get("lease") == lease and mine is not None and mine[0] == token:
                sent = time.monotonic()
                alive = await self._keepalive(lease) > 0
                mine = self._owned.get(key)
                if alive and mine is not None and mine[0] == token:
                    self._sessions[ttl_s] = (lease, sent)
                    return self._granted(name, holder, key, token, ttl_s, lease, sent, mine[3])
                if not alive:
                    self._sessions.pop(ttl_s, None)  # (the session expired: its keys went too)
                    return await self._acquire(name, holder, ttl_ms)
            # on another session (another TTL, another node, or ended here meanwhile): moved
            # to this one with a new value, unchanged since read (whoever tracked it before
            # deletes only the value it wrote)
            move = {
                "compare": [{"key": _b64(key), "target": "MOD", "result": "EQUAL",
                             "mod_revision": str(kv["mod_revision"])}],
                "success": [{"request_put": {"key": _b64(key), "value": _b64(value),
                                             "lease": lease}}],
                "failure": [],
            }  # fmt: skip
            if (await self._post("/v3/kv/txn", move)).get("succeeded", False):
                return self._granted(name, holder, key, token, ttl_s, lease, since, value)
            return await self._acquire(name, holder, ttl_ms)  # (it just ended or moved)
        mine = self._owned.get(key)
        if mine is not None and mine[0] == token:
            left = max(0.0, mine[2] - time.monotonic())
        else:
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
        key = self._key("lease", grant.name)

        def ended() -> bool:  # (the maintenance task ends grants not renewed in time)
            mine = self._owned.get(key)
            return mine is None or mine[0] != grant.token

        if ended():
            raise LeaseLost(f"lease {grant.name!r}: grant {grant.token} ended (not renewed)")
        sent = time.monotonic()
        kv, ttl = await asyncio.gather(self._range(key), self._keepalive(grant.handle))
        if ended():  # (its term ran out while this renewal was under way: it is being deleted)
            raise LeaseLost(f"lease {grant.name!r}: grant {grant.token} ended (not renewed)")
        if (
            kv is None
            or int(kv["create_revision"]) != grant.token
            or str(self._value(kv).get("lease", "")) != grant.handle
        ):  # (gone, granted again, or moved to another session by a later acquire)
            self._owned.pop(key, None)
            raise LeaseLost(f"lease {grant.name!r}: grant {grant.token} is no longer held")
        if ttl <= 0:
            self._owned.pop(key, None)
            raise LeaseLost(f"lease {grant.name!r}: its etcd session expired")
        ttl_s = grant.ttl_ms // 1000
        if self._sessions.get(ttl_s, (None,))[0] == grant.handle:
            self._sessions[ttl_s] = (grant.handle, sent)
        mine = self._owned[key]
        return self._granted(
            grant.name, grant.holder, key, grant.token, ttl_s, grant.handle, sent, mine[3]
        )

    async def release(self, grant: Grant) -> bool:
        key = self._key("lease", grant.name)
        mine = self._owned.get(key)
        if mine is not None and mine[0] == grant.token:
            del self._owned[key]
        return await self._delete_if(key, grant.token)

    async def read(self, name: str) -> LeaseState:
        key = self._key("lease", name)
        kv = await self._range(key)
        if kv is None:
            return LeaseState(name, None, 0, 0.0)
        v = self._value(kv)
        token = int(kv["create_revision"])
        mine = self._owned.get(key)
        if mine is not None and mine[0] == token:
            left = max(0.0, mine[2] - time.monotonic())
        else:  # (another node's grant: its session's TTL, an upper bound)
            left = await self._lease_left(str(v.get("lease", "")))
        return LeaseState(name, v.get("holder"), token, left)

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
