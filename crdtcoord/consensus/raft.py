"""Embedded Raft consensus: pysyncobj inside the crdtcoord nodes themselves, no external server.

Every node runs a Raft member next to its HTTP server (by default on the HTTP port + 1000; peers
likewise), and the lease table and the decisions are a replicated state machine. Calls go
through the Raft log, reads included, so every answer is linearizable; a node that cannot reach
a majority of the Raft members cannot get an answer (:class:`ConsensusUnavailable` after the
timeout — an unknown outcome: read before retrying).

Settings: ``appendEntriesUseBatch=False`` (with batching every call costs about 100 ms), Raft
traffic encrypted and authenticated with a key derived from the cluster secret **and the sorted
member list** (pysyncobj unpickles what it receives: never expose its port without a secret;
without one the node must be on loopback, as for HTTP). Members configured with different
member lists therefore cannot talk at all: they can never form two groups that both decide; a
node that lists only some members finds no quorum (``ConsensusUnavailable`` names its list).
Journal and snapshot in the data dir. Membership is static: every node lists every member, and
adding a member means restarting every node with the new list.

**Limits, plainly.** pysyncobj never fsyncs its journal: a committed entry survives a process
crash but not a power loss or an OS crash of a majority at once. Lease expiry is computed from
the proposer's wall clock carried in each command (never decreasing inside the state machine), so
it is only as good as the nodes' clock agreement; the fencing token is what protects a resource.
pysyncobj is a small project (Python, no Jepsen-style testing); prefer etcd where an operator
can run one.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

from crdtcoord._exceptions import LeaseHeld
from crdtcoord._net import is_loopback
from crdtcoord.consensus.base import (
    ConsensusError,
    ConsensusUnavailable,
    Grant,
    LeaseLost,
    LeaseState,
    valid_until,
)
from crdtcoord.consensus.local import check_lease_args

__all__ = ["RaftConsensus", "raft_address"]


def raft_address(http_host: str, http_port: int, offset: int = 1000) -> str:
    """The Raft address derived from an HTTP address: same host, port + ``offset``."""
    port = http_port + offset
    if port > 65535:
        raise ConsensusError(f"the Raft port {port} (HTTP port + {offset}) is out of range")
    return f"{http_host}:{port}"


def _make_state_machine() -> type:
    from pysyncobj import SyncObj, replicated

    class LeaseMachine(SyncObj):  # type: ignore[misc]
        """The replicated state: leases ``name -> [holder, token, expires_ms]``, decisions."""

        def __init__(self, self_addr: str, others: list[str], conf: Any) -> None:
            super().__init__(self_addr, others, conf)
            self.leases: dict[str, list[Any]] = {}
            self.decisions: dict[str, bytes] = {}
            self.clock_ms = 0  # the largest proposer time seen: time never goes back here

        def _now(self, now_ms: int) -> int:
            if now_ms > self.clock_ms:
                self.clock_ms = now_ms
            return self.clock_ms

        @replicated
        def acquire(self, name: str, holder: str, ttl_ms: int, now_ms: int) -> tuple[Any, ...]:
            now = self._now(now_ms)
            rec = self.leases.get(name)
            if rec is not None and rec[0] is not None and rec[2] > now:
                if rec[0] != holder:
                    return ("held", rec[0], rec[1], rec[2] - now)
                rec[2] = now + ttl_ms
                return ("ok", rec[1])
            token = (rec[1] if rec is not None else 0) + 1
            self.leases[name] = [holder, token, now + ttl_ms]
            return ("ok", token)

        @replicated
        def renew(self, name: str, holder: str, token: int, ttl_ms: int, now_ms: int) -> bool:
            now = self._now(now_ms)
            rec = self.leases.get(name)
            if rec is None or rec[0] != holder or rec[1] != token or rec[2] <= now:
                return False
            rec[2] = now + ttl_ms
            return True

        @replicated
        def release(self, name: str, holder: str, token: int, now_ms: int) -> bool:
            now = self._now(now_ms)
            rec = self.leases.get(name)
            if rec is None or rec[0] != holder or rec[1] != token or rec[2] <= now:
                return False
            rec[0] = None
            return True

        @replicated
        def read(self, name: str, now_ms: int) -> tuple[Any, ...]:
            now = self._now(now_ms)
            rec = self.leases.get(name)
            if rec is None:
                return (None, 0, 0)
            if rec[0] is None or rec[2] <= now:
                return (None, rec[1], 0)
            return (rec[0], rec[1], rec[2] - now)

        @replicated
        def decide(self, key: str, proposal: bytes) -> bytes:
            return self.decisions.setdefault(key, proposal)

    return LeaseMachine


class RaftConsensus:
    """A Raft member of this node (``listen``: ``host:port``; ``peers``: the other members'
    ``host:port``). ``secret``: the cluster secret (required unless every address is loopback);
    ``data_dir``: where the journal and snapshot go (None: in memory)."""

    kind = "raft"

    def __init__(
        self,
        listen: str,
        peers: list[str],
        *,
        secret: bytes | None = None,
        data_dir: str | os.PathLike[str] | None = None,
        timeout: float = 5.0,
    ) -> None:
        self.listen = listen
        self.peers = list(peers)
        for addr in [listen, *self.peers]:
            host, _, port = addr.rpartition(":")
            if not host or not port.isdigit():
                raise ConsensusError(f"Raft address {addr!r}: expected HOST:PORT")
            if secret is None and not is_loopback(host.strip("[]")):
                raise ConsensusError(
                    f"Raft address {addr}: without a cluster secret Raft runs on loopback only"
                    " (pysyncobj unpickles what it receives); give every node --secret-file"
                )
        self._secret = secret
        self._data_dir = Path(data_dir) if data_dir is not None else None
        self.timeout = timeout
        self._obj: Any = None
        self.calls = 0
        self.errors = 0

    async def start(self) -> None:
        if self._obj is not None:
            return
        from pysyncobj import SyncObjConf

        # The key binds the secret AND the member list: members configured with different
        # member lists cannot talk, so they can never form two groups that both decide (a
        # node that lists only some members finds no quorum instead: status says so).
        group = ",".join(sorted({self.listen, *self.peers})).encode()
        password = hashlib.sha256(
            b"crdtcoord raft v2\0" + (self._secret or b"") + b"\0" + group
        ).hexdigest()
        journal = dump = None
        if self._data_dir is not None:
            self._data_dir.mkdir(parents=True, exist_ok=True)
            journal = str(self._data_dir / "raft.journal")
            dump = str(self._data_dir / "raft.dump")
        conf = SyncObjConf(
            appendEntriesUseBatch=False,
            password=password,
            journalFile=journal,
            fullDumpFile=dump,
            dynamicMembershipChange=False,
            maxBindRetries=1,
            bindRetryTime=0.2,
            connectionRetryTime=1.0,
            commandsWaitLeader=True,
        )
        _check_port_free(self.listen)  # (pysyncobj would leak its socket on a clash)
        machine = _make_state_machine()
        loop = asyncio.get_running_loop()
        self._obj = await loop.run_in_executor(None, lambda: machine(self.listen, self.peers, conf))
        bound = await loop.run_in_executor(None, self._wait_bound)
        if not bound:
            await self.close()
            raise ConsensusError(
                f"cannot bind the Raft port {self.listen} (taken? set --raft-listen)"
            )

    def _wait_bound(self) -> bool:
        try:
            self._obj.waitBinded()
            return True
        except Exception:
            return False

    async def close(self) -> None:
        obj, self._obj = self._obj, None
        if obj is not None:
            await asyncio.get_running_loop().run_in_executor(None, obj.destroy_synchronous)

    async def _call(self, method: str, *args: Any) -> Any:
        """Run a replicated method through the log; its result (pysyncobj's callback runs on
        its tick thread: the answer is handed back to this loop)."""
        obj = self._obj
        if obj is None:
            raise ConsensusUnavailable("Raft is not started")
        from pysyncobj import FAIL_REASON

        self.calls += 1
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        lock = threading.Lock()

        def cb(result: Any, err: Any) -> None:
            def settle() -> None:
                if fut.done():
                    return
                if err == FAIL_REASON.SUCCESS:
                    fut.set_result(result)
                else:
                    fut.set_exception(ConsensusUnavailable(f"Raft: {_reason(err)}"))

            with lock:
                loop.call_soon_threadsafe(settle)

        getattr(obj, method)(*args, callback=cb)
        try:
            return await asyncio.wait_for(fut, self.timeout)
        except TimeoutError:
            self.errors += 1
            members = ", ".join(sorted({self.listen, *self.peers}))
            raise ConsensusUnavailable(
                f"Raft did not answer {method} in {self.timeout} s (no majority reachable? every"
                f" member must list the same members, here: {members}); the outcome is unknown"
            ) from None
        except ConsensusUnavailable:
            self.errors += 1
            raise

    async def acquire(self, name: str, holder: str, ttl_ms: int) -> Grant:
        check_lease_args(name, holder, ttl_ms)
        sent = time.monotonic()
        out = await self._call("acquire", name, holder, ttl_ms, _wall_ms())
        if out[0] == "held":
            raise LeaseHeld(out[1], f"in {out[3] / 1000:.3f} s", out[2])
        return Grant(name, holder, out[1], ttl_ms, valid_until(sent, ttl_ms))

    async def renew(self, grant: Grant) -> Grant:
        sent = time.monotonic()
        ok = await self._call(
            "renew", grant.name, grant.holder, grant.token, grant.ttl_ms, _wall_ms()
        )
        if not ok:
            raise LeaseLost(f"lease {grant.name!r}: grant {grant.token} is no longer held")
        return Grant(
            grant.name, grant.holder, grant.token, grant.ttl_ms, valid_until(sent, grant.ttl_ms)
        )

    async def release(self, grant: Grant) -> bool:
        return bool(await self._call("release", grant.name, grant.holder, grant.token, _wall_ms()))

    async def read(self, name: str) -> LeaseState:
        holder, token, left_ms = await self._call("read", name, _wall_ms())
        return LeaseState(name, holder, token, left_ms / 1000)

    async def decide(self, key: str, proposal: bytes) -> bytes:
        out = await self._call("decide", key, bytes(proposal))
        assert isinstance(out, bytes)
        return out

    def status(self) -> dict[str, object]:
        obj = self._obj
        out: dict[str, object] = {
            "kind": self.kind,
            "listen": self.listen,
            "peers": self.peers,
            "members": sorted({self.listen, *self.peers}),
            "calls": self.calls,
            "errors": self.errors,
        }
        if obj is not None:
            try:
                st = obj.getStatus()
                out["leader"] = str(st.get("leader")) if st.get("leader") else None
                out["term"] = st.get("raft_term")
                out["has_quorum"] = bool(st.get("has_quorum"))
            except Exception:  # (the tick thread owns the state: a racy read is only status)
                pass
        return out


def _check_port_free(addr: str) -> None:
    host, _, port = addr.rpartition(":")
    host = host.strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, int(port)))
        except OSError as e:
            raise ConsensusError(
                f"cannot bind the Raft port {addr}: {e.strerror or e} (taken? set --raft-listen)"
            ) from None


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000


def _reason(err: Any) -> str:
    from pysyncobj import FAIL_REASON

    for name in ("QUEUE_FULL", "MISSING_LEADER", "DISCARDED", "NOT_LEADER", "LEADER_CHANGED"):
        if err == getattr(FAIL_REASON, name):
            return name.lower() + " (the outcome is unknown for leader changes)"
    return f"failure {err}"
