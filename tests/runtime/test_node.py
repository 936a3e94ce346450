"""The asyncio Node over the in-process transport: handles, levels, restarts, feed, clocks."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from crdtcoord import (
    ALL,
    MAJORITY,
    ConsistencyTimeout,
    InsufficientRights,
    InvalidArgument,
    LWWRegister,
    ORSet,
)
from crdtcoord.engine import EngineConfig
from crdtcoord.runtime import Compacted, LocalNetwork, LocalTransport, Node
from crdtcoord.storage import SqliteStorage

FAST = EngineConfig(ae_interval=0.2, retransmit_after=0.1, retransmit_min=0.02)


def cluster(names: list[str], net: LocalNetwork, **kw: object) -> list[Node]:
    return [
        Node(n, transport=LocalTransport(net, [p for p in names if p != n]), config=FAST, **kw)  # type: ignore[arg-type]
        for n in names
    ]


async def until(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    end = asyncio.get_running_loop().time() + timeout
    while not cond():
        if asyncio.get_running_loop().time() > end:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


async def test_three_nodes_converge_through_handles() -> None:
    net = LocalNetwork()
    nodes = cluster(["a", "b", "c"], net)
    for n in nodes:
        await n.start()
    try:
        for i, n in enumerate(nodes):
            await n.counter("hits").inc(i + 1)
            await n.pn_counter("balance").dec(2)
            await n.set("workers").add(n.node_id)
            await n.register("leader").set(n.node_id)
            await n.flag("on").enable()
            await n.map("cfg").update(n.node_id, LWWRegister.Assign(i))
        await until(lambda: len({n.engine.digest() for n in nodes}) == 1)
        a = nodes[0]
        assert a.counter("hits").value() == 6 and a.pn_counter("balance").value() == -6
        assert a.set("workers").value() == {"a", "b", "c"} and "b" in a.set("workers")
        assert a.register("leader").value() in {"a", "b", "c"} and a.flag("on").value()
        assert a.map("cfg").value() == {"a": 0, "b": 1, "c": 2}
    finally:
        for n in nodes:
            await n.close()


async def test_majority_writes_wait_for_acknowledgements_and_time_out_in_a_partition() -> None:
    net = LocalNetwork()
    nodes = cluster(["a", "b", "c"], net)
    for n in nodes:
        await n.start()
    try:
        a = nodes[0]
        await a.counter("k").inc(consistency=MAJORITY)
        assert any(n.counter("k").value() == 1 for n in nodes[1:])  # durable elsewhere already
        net.partition(["a"], ["b", "c"])
        with pytest.raises(ConsistencyTimeout) as info:
            await a.counter("k").inc(consistency=ALL, timeout=0.3)
        assert info.value.required == 3 and info.value.reached == 1
        assert a.counter("k").value() == 2  # indefinite: applied here, propagates after heal
        net.heal()
        await until(lambda: all(n.counter("k").value() == 2 for n in nodes))
        assert await nodes[2].counter("k").read(consistency=ALL) == 2
    finally:
        for n in nodes:
            await n.close()


async def test_an_op_id_is_applied_once_across_a_restart(tmp_path: Path) -> None:
    node = Node("a", storage=SqliteStorage(tmp_path / "a.db"), config=FAST)
    await node.start()
    await node.pn_counter("k").inc(5, op_id="req-1", consistency=MAJORITY)  # one node: itself
    await node.close()
    again = Node("a", storage=SqliteStorage(tmp_path / "a.db"), config=FAST)
    await again.start()
    try:
        assert again.pn_counter("k").value() == 5
        await again.pn_counter("k").inc(5, op_id="req-1")  # the client's retry
        assert again.pn_counter("k").value() == 5
    finally:
        await again.close()


async def test_local_writes_are_durable_within_the_batching_window(tmp_path: Path) -> None:
    node = Node("a", storage=SqliteStorage(tmp_path / "a.db"), config=FAST)
    await node.start()
    try:
        for _ in range(500):
            await node.counter("hits").inc()
        storage = node.storage
        assert isinstance(storage, SqliteStorage)
        writes = storage.writes
        await asyncio.sleep(FAST.delta_delay * 4)
        assert storage.writes - writes <= 3  # group commit: not 500 transactions
        snap = SqliteStorage(tmp_path / "b.db")  # (a second reader would need the lock)
        del snap
    finally:
        await node.close()


async def collect(it: AsyncIterator[object], n: int) -> list[object]:
    out = []
    async for x in it:
        out.append(x)
        if len(out) == n:
            break
    return out


async def test_the_feed_replays_from_a_cursor_then_follows() -> None:
    net = LocalNetwork()
    a, b = cluster(["a", "b"], net)
    await a.start()
    await b.start()
    try:
        live = asyncio.ensure_future(collect(b.subscribe("cfg/"), 3))
        local = asyncio.ensure_future(collect(a.subscribe("cfg/"), 3))
        for key, v in (("cfg/x", 1), ("other", 1), ("cfg/y", 2), ("cfg/x", 3)):
            await a.register(key).set(v)
            await asyncio.sleep(FAST.delta_delay * 3)  # (deltas of one batch arrive as one)
        got = await asyncio.wait_for(live, 5)
        assert [c.key for c in got] == ["cfg/x", "cfg/y", "cfg/x"]  # type: ignore[attr-defined]
        assert all(c.origin == "a" for c in got)  # type: ignore[attr-defined]
        mine = await asyncio.wait_for(local, 5)
        assert [(c.key, c.origin) for c in mine] == [  # type: ignore[attr-defined]
            ("cfg/x", None),
            ("cfg/y", None),
            ("cfg/x", None),
        ]
        assert got[-1].value == 3  # type: ignore[attr-defined]
        first = got[0].cursor  # type: ignore[attr-defined]
        replay = await asyncio.wait_for(collect(b.subscribe("cfg/", since=first), 2), 5)
        assert [c.cursor for c in replay] == [c.cursor for c in got[1:]]  # type: ignore[attr-defined]
        cursors = [int(c.cursor.split("-")[1]) for c in got]  # type: ignore[attr-defined]
        assert cursors == sorted(cursors)
    finally:
        await a.close()
        await b.close()


async def test_a_cursor_the_node_cannot_continue_gets_compacted_with_a_snapshot(
    tmp_path: Path,
) -> None:
    node = Node("a", storage=SqliteStorage(tmp_path / "a.db"), config=FAST)
    await node.start()
    await node.set("s/1").add("x")
    await asyncio.sleep(0.05)
    old = node.cursor
    await node.close()
    again = Node("a", storage=SqliteStorage(tmp_path / "a.db"), config=FAST)
    await again.start()
    try:
        assert int(again.cursor.split("-")[1]) > int(old.split("-")[1])  # never reused
        with pytest.raises(Compacted) as info:
            await collect(again.subscribe("s/", since=old), 1)
        assert info.value.snapshot == {"s/1": frozenset({"x"})}
        with pytest.raises(Compacted):
            await collect(again.subscribe("s/", since="99-1"), 1)  # another incarnation
        with pytest.raises(InvalidArgument):
            await collect(again.subscribe("s/", since="garbage"), 1)
    finally:
        await again.close()


async def test_a_subscriber_that_falls_behind_is_told() -> None:
    node = Node("a", config=FAST, feed_queue=4)
    await node.start()
    try:
        slow = node.subscribe("k")
        first = asyncio.ensure_future(slow.__anext__())
        await asyncio.sleep(0)
        for i in range(50):  # nobody reads: the queue overflows
            await node.counter(f"k{i}").inc()
        await asyncio.sleep(FAST.delta_delay * 4)
        assert (await asyncio.wait_for(first, 5)).key == "k0"
        with pytest.raises(Compacted) as info:
            for _ in range(10):
                await asyncio.wait_for(slow.__anext__(), 5)
        assert "fell behind" in str(info.value) and len(info.value.snapshot) == 50
    finally:
        await node.close()


async def test_a_backward_wall_clock_step_does_not_stall_the_node() -> None:
    wall = [1_700_000_000_000]
    net = LocalNetwork()
    a = Node("a", transport=LocalTransport(net, ["b"]), config=FAST, wall_clock=lambda: wall[0])
    b = Node("b", transport=LocalTransport(net, ["a"]), config=FAST)
    await a.start()
    await b.start()
    try:
        await a.counter("k").inc()
        await until(lambda: b.counter("k").value() == 1)
        stamp = a.engine.clock.last
        wall[0] -= 3_600_000  # NTP steps the wall clock back one hour
        rounds = a.engine.metrics.get("ae_rounds", 0)
        await a.counter("k").inc()
        await until(lambda: b.counter("k").value() == 2)  # deltas still flow
        await asyncio.sleep(0.5)
        assert a.engine.metrics.get("ae_rounds", 0) > rounds  # timers (monotonic) still fire
        assert a.engine.clock.now() > stamp  # the hybrid clock never goes back
    finally:
        await a.close()
        await b.close()


async def test_leaving_gracefully_stops_counting_for_majority() -> None:
    net = LocalNetwork()
    a, b, c = cluster(["a", "b", "c"], net)
    for n in (a, b, c):
        await n.start()
    await a.counter("k").inc()
    await until(lambda: c.counter("k").value() == 1)
    assert await c.close() is True  # its delta was acknowledged before it left: clean
    await until(lambda: a.engine.member_count() == 2)
    await a.counter("k").inc(consistency=ALL, timeout=1.0)  # ALL is now a and b
    await a.close()
    await b.close()


async def test_a_silent_peer_is_suspected_then_cleared() -> None:
    net = LocalNetwork()
    a, b = cluster(["a", "b"], net, failure_timeout=0.3)
    await a.start()
    await b.start()
    try:
        await until(lambda: any(p["last_contact_s"] is not None for p in a.peer_status()))
        net.partition(["a"], ["b"])
        await until(lambda: a.peer_status()[0]["suspected"], timeout=3)
        net.heal()
        await until(lambda: not a.peer_status()[0]["suspected"], timeout=3)
        assert a.status()["peers"][0]["node"] == "b"
    finally:
        await a.close()
        await b.close()


async def test_bounded_counter_spends_only_local_rights() -> None:
    net = LocalNetwork()
    a, b = cluster(["a", "b"], net)
    await a.start()
    await b.start()
    try:
        q = a.bounded_counter("quota")
        await q.inc(5)
        await until(lambda: b.engine.incarnation_of("a") is not None)
        await until(lambda: a.engine.incarnation_of("b") is not None)
        await q.transfer("b", 2)
        await until(lambda: b.bounded_counter("quota").rights() == 2)
        await b.bounded_counter("quota").dec(2)
        with pytest.raises(InsufficientRights):
            await b.bounded_counter("quota").dec(1)
        await until(lambda: a.bounded_counter("quota").value() == 3)
        assert ORSet  # (imported types are the kernel's)
    finally:
        await a.close()
        await b.close()


async def test_a_subscription_sees_a_change_made_right_after_it_is_created() -> None:
    """Registration happens at subscribe(), not at the first anext: nothing falls in between."""
    node = Node("a", config=FAST)
    await node.start()
    try:
        sub = node.subscribe("k")
        await node.register("k").set(1)  # before anyone iterates
        first = await asyncio.wait_for(anext(sub), 5)
        assert (first.key, first.value) == ("k", 1)
        sub.close()
        with pytest.raises(StopAsyncIteration):
            await anext(sub)
        assert node.status()["feed"]["subscribers"] == 0
    finally:
        await node.close()


async def test_freeze_gc_freezes_the_startup_heap_once_started() -> None:
    import gc

    assert gc.get_freeze_count() == 0
    node = Node("solo", freeze_gc=True)
    try:
        assert gc.get_freeze_count() == 0  # (nothing happens before start)
        await node.start()
        assert gc.get_freeze_count() > 1000  # the imported modules, the node, the engine
        await node.counter("c").inc()
        assert node.counter("c").value() == 1
    finally:
        await node.close(drain=0.1)
    assert gc.get_freeze_count() == 0  # close unfreezes: a closed node is collected
    plain = Node("plain")
    await plain.start()
    try:
        assert gc.get_freeze_count() == 0  # off by default: an application decides
    finally:
        await plain.close(drain=0.1)
