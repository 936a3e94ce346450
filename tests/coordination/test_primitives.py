"""Election, barrier, semaphore, rate limiter and the failure detector, on in-process nodes
(a LocalNetwork, one shared LocalConsensus), with partitions and crashes."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from crdtcoord import InsufficientRights, LeaseHeld
from crdtcoord.consensus import LeaseLost, LocalConsensus
from crdtcoord.coordination import PhiAccrual, PhiSettings
from crdtcoord.engine import EngineConfig, expiring_key
from crdtcoord.runtime import LocalNetwork, LocalTransport, Node
from crdtcoord.types import BoundedCounter

FAST = EngineConfig(delta_delay=0.002, ae_interval=0.3, retransmit_after=0.1)


async def until(cond: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


async def make(n: int = 3, **kw: Any) -> tuple[LocalNetwork, list[Node]]:
    net = LocalNetwork()
    cons = LocalConsensus(shared=True)
    names = [chr(ord("a") + i) for i in range(n)]
    nodes = [
        Node(x, transport=LocalTransport(net, [m for m in names if m != x]), config=FAST,
             consensus=cons, **kw)
        for x in names
    ]  # fmt: skip
    for node in nodes:
        await node.start()
    return net, nodes


@pytest.fixture
async def three() -> AsyncIterator[tuple[LocalNetwork, list[Node]]]:
    net, nodes = await make(3)
    yield net, nodes
    for n in nodes:
        await n.close(drain=0.1)


async def test_one_leader_then_a_quick_handoff_on_resign_and_on_death(
    three: tuple[LocalNetwork, list[Node]],
) -> None:
    _net, (a, b, c) = three
    lead = await a.election("svc").campaign("a", ttl=0.6)
    waiting = asyncio.ensure_future(b.election("svc").campaign("b", ttl=0.6))
    await asyncio.sleep(0.3)
    assert not waiting.done() and lead.term == 1  # one leader
    await until(lambda: c.election("svc").leader() == "a")
    t0 = time.monotonic()
    await lead.resign()
    lead_b = await asyncio.wait_for(waiting, 2)
    assert time.monotonic() - t0 < 0.5 and lead_b.term > lead.term  # handoff, larger term
    # death: b stops renewing (its task is cancelled as if the process died)
    lead_b._task.cancel()
    t0 = time.monotonic()
    lead_c = await asyncio.wait_for(c.election("svc").campaign("c", ttl=0.6), 3)
    took = time.monotonic() - t0
    assert took < 0.6 + 0.5 and lead_c.term > lead_b.term  # within TTL + retry + a round
    with pytest.raises(LeaseLost):
        await asyncio.sleep(0.7)
        lead_b.check()
    await lead_c.resign()


async def test_weak_leader_is_the_smallest_unsuspected_id(
    three: tuple[LocalNetwork, list[Node]],
) -> None:
    _, (a, b, c) = three
    await asyncio.sleep(0.3)
    assert {n.election("x").weak_leader() for n in (a, b, c)} == {"a"}


async def test_a_barrier_opens_when_enough_participants_arrived(
    three: tuple[LocalNetwork, list[Node]],
) -> None:
    net, (a, b, c) = three
    parts = {"a", "b", "c"}
    waiter = asyncio.ensure_future(c.barrier("phase1", parts).wait(timeout=5))
    await a.barrier("phase1", parts).arrive("a")
    net.partition(["a", "c"], ["b"])
    await b.barrier("phase1", parts).arrive("b")  # cut off: c cannot open yet
    await asyncio.sleep(0.3)
    assert not waiter.done()
    await c.barrier("phase1", parts).arrive("c")
    await asyncio.sleep(0.2)
    assert not waiter.done()
    net.heal()
    assert await asyncio.wait_for(waiter, 5) == frozenset(parts)
    with pytest.raises(Exception, match="not a participant"):
        await a.barrier("phase1", parts).arrive("zed")


async def test_a_barrier_over_current_members_is_fixed_by_consensus(
    three: tuple[LocalNetwork, list[Node]],
) -> None:
    _, (a, _b, c) = three
    await asyncio.sleep(0.3)
    ba = await type(a.barrier("m")).of_members(a, "m")
    bc = await type(c.barrier("m")).of_members(c, "m")
    assert ba.participants == bc.participants == frozenset({"a", "b", "c"})


async def test_an_expiring_barrier_is_collected_everywhere(
    three: tuple[LocalNetwork, list[Node]],
) -> None:
    _, nodes = three
    exp = nodes[0].wall_ms() + 600
    for n in nodes:
        await n.barrier("gc", {"a", "b", "c"}, expires_ms=exp).arrive(n.node_id)
    await until(lambda: all(n.barrier("gc", {"a", "b", "c"}, expires_ms=exp).is_open()
                            for n in nodes))  # fmt: skip
    key = expiring_key("barrier/gc", exp)
    await until(lambda: all(key not in n.keys() for n in nodes), timeout=3)  # noqa: SIM118


async def test_a_semaphore_never_exceeds_its_permits_under_partitions() -> None:
    net, nodes = await make(3)
    try:
        sems = [await n.semaphore("db", 5) for n in nodes]
        await until(lambda: all(s.available() == 5 for s in sems))
        held = [0, 0, 0]
        rng = random.Random(7)
        peak = 0
        for step in range(120):
            if step == 30:
                net.partition(["a"], ["b", "c"])
            if step == 80:
                net.heal()
            i = rng.randrange(3)
            if held[i] and rng.random() < 0.4:
                await sems[i].release()
                held[i] -= 1
            else:
                try:
                    await sems[i].acquire(timeout=0.05)
                    held[i] += 1
                except InsufficientRights:
                    pass
            peak = max(peak, sum(held))
            assert sum(held) <= 5  # permits actually held never exceed the limit
            for n in nodes:  # and no replica's merged state is ever below 0
                s = n.state("sem/db")
                assert s is None or s.value() >= 0
        assert peak == 5  # (the test reached the limit, not just stayed under it)
        for i, s in enumerate(sems):
            for _ in range(held[i]):
                await s.release()
        await until(lambda: all(s.available() == 5 for s in sems))
    finally:
        for n in nodes:
            await n.close(drain=0.1)


async def test_rights_move_on_demand_and_fragmentation_is_reported(
    three: tuple[LocalNetwork, list[Node]],
) -> None:
    net, (a, b, _c) = three
    sa = await a.semaphore("q", 4, init=True)
    sb = await b.semaphore("q", 4, init=False)
    await until(lambda: sb.available() == 4)
    await sb.acquire(2, timeout=2)  # b had no rights: it asked, a transferred
    assert sb.available() == 2
    net.partition(["a"], ["b", "c"])
    with pytest.raises(InsufficientRights, match=r"fragmented|only"):
        await sb.acquire(3, timeout=0.3)
    net.heal()
    await sb.release(2)
    await until(lambda: sa.available() == 4)


async def test_the_rate_limiter_admits_up_to_the_limit_and_expires_windows(
    three: tuple[LocalNetwork, list[Node]],
) -> None:
    _, nodes = three
    rls = [n.rate_limiter("api", 30, 0.5) for n in nodes]
    await asyncio.sleep(max(0.0, rls[0].retry_after() - 0.45))  # (the start of a window)
    admitted = 0
    for _ in range(20):
        for rl in rls:
            admitted += rl.try_acquire()
        await asyncio.sleep(0.005)
    # decided locally: at most the limit plus what the others admitted unseen
    assert 30 <= admitted <= 30 + 2 * 20
    await asyncio.sleep(1.2)  # two windows later the window's key is gone everywhere
    assert not any(k.startswith("~") for n in nodes for k in n.keys())  # noqa: SIM118
    share = nodes[0].rate_limiter("hard", 9, 10.0)
    assert sum(share.local_share() for _ in range(10)) == 3  # 9 // 3 members


def test_phi_grows_with_silence_like_akka() -> None:
    fd = PhiAccrual(PhiSettings(acceptable_pause=0.0, min_std_deviation=0.05))
    t = 0.0
    for _ in range(50):
        fd.heartbeat("p", t)
        t += 1.0
    assert fd.phi("p", t - 1.0 + 0.5) < 1  # on time
    assert fd.phi("p", t - 1.0 + 1.3) > 8  # well overdue: suspected
    assert fd.suspected("p", t + 5) and not fd.suspected("q", t)
    # far on either side of the mean: no overflow, the limits hold
    assert fd.phi("p", t - 1.0 + 1e-9) < 1e-6
    assert fd.phi("p", t + 1e6) >= 8
    slow = PhiAccrual(PhiSettings(acceptable_pause=3.0, min_std_deviation=0.001))
    for i in range(5):
        slow.heartbeat("p", i * 3.0)
    assert slow.phi("p", 12.0 + 0.008) < 1e-6


async def test_a_silent_peer_is_suspected_removed_by_consensus_and_recovers() -> None:
    events: list[tuple[str, str]] = []
    net, (a, b, c) = await make(3, phi=PhiSettings(acceptable_pause=0.2), remove_after=0.5)
    a.on_membership_event = lambda kind, p: events.append((kind, p))
    try:
        await asyncio.sleep(0.8)
        net.partition(["a", "b"], ["c"])
        await until(lambda: ("suspected", "c") in events, timeout=6)
        await until(lambda: ("removed", "c") in events, timeout=6)
        assert a.engine.member_count() == 2 and "c" not in a.engine.peers()
        with pytest.raises(LeaseHeld):  # (consensus still works among a and b)
            await a.lease("l").acquire("x", 5)
            await b.lease("l").acquire("y", 5)
        net.heal()  # c was alive: it sees itself removed and announces itself again
        await until(lambda: "c" in a.engine.peers(), timeout=6)
    finally:
        for n in (a, b, c):
            await n.close(drain=0.1)


def test_a_semaphore_state_never_goes_below_zero_in_any_merge() -> None:
    """The escrow property behind the semaphore, on concurrent states directly."""
    s = BoundedCounter(0)
    s.increment("a/1", 3)
    x, y = s.copy(), s.copy()
    x.decrement("a/1", 3)
    with pytest.raises(InsufficientRights):
        y.decrement("b/1", 1)  # b holds no rights
    x.merge(y)
    assert x.value() == 0
