"""Replication engine behaviour, scenario by scenario, on a hand-driven network."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crdtcoord import GCounter, GSet, Lease, LWWRegister, ORSet, PNCounter
from crdtcoord.engine import (
    ALL,
    MAJORITY,
    Changed,
    Engine,
    EngineConfig,
    Escalation,
    Kind,
    OpFailed,
    PeerRepair,
    Persist,
    ReadDone,
    Send,
    WriteDone,
    at_least,
)
from crdtcoord.testing.cluster import ManualCluster


def inc(n: int = 1) -> Any:
    return lambda c, ctx: c.increment(ctx.replica, n)


def add(e: Any) -> Any:
    return lambda s, ctx: s.add(ctx.replica, e)


QUIET_ARGS: dict[str, Any] = {"ae_enabled": False, "gossip_membership": False}
QUIET = EngineConfig(**QUIET_ARGS)


def kinds(cluster: ManualCluster) -> list[str]:
    return [m.kind for m in cluster.queue]


def test_local_update_persists_before_it_is_pushed() -> None:
    c = ManualCluster(["a", "b"], QUIET)
    c.update("a", "hits", GCounter, inc(3))
    assert [type(p) for p in c.persisted["a"]] == [Persist]
    assert c.queue == []  # batched: nothing is sent before delta_delay
    c.tick(0.01)
    assert kinds(c) == ["DELTA"]
    c.flush_network()
    assert c.engines["b"].value("hits") == 3
    # the ack arrived: the delta buffer is empty again
    assert c.engines["a"].backlog() == 0


def test_persist_precedes_the_ack_of_a_received_delta() -> None:
    a = Engine("a", seeds=("a", "b"), config=QUIET)
    b = Engine("b", seeds=("a", "b"), config=QUIET)
    for e in (a, b):
        e.start(0.0)
    a.update("hits", GCounter, inc(), 0.0)
    a.poll()
    a.tick(0.01)
    (send,) = [e for e in a.poll() if isinstance(e, Send)]
    b.receive(send.data, 0.02)
    effects = b.poll()
    persist_at = next(i for i, e in enumerate(effects) if isinstance(e, Persist))
    ack_at = next(i for i, e in enumerate(effects) if isinstance(e, Send) and e.kind is Kind.ACK)
    assert persist_at < ack_at


def test_deltas_are_batched_per_key() -> None:
    c = ManualCluster(["a", "b"], QUIET)
    for _ in range(50):
        c.update("a", "hits", GCounter, inc())
        c.update("a", "set", ORSet, add("x"))
    c.tick(0.01)
    assert kinds(c) == ["DELTA"]  # 100 updates, one message
    assert len(c.queue[0].data) < 200
    c.flush_network()
    assert c.engines["b"].value("hits") == 50


def test_receivers_forward_what_inflated_but_never_back() -> None:
    c = ManualCluster(["a", "b", "c"], EngineConfig(**{**QUIET_ARGS, "forward_deltas": True}))
    c.partition(["a", "b"], ["b", "c"])  # groups are exclusive: b ends up with c only
    c.groups = {"a": 0, "b": 0}
    c.update("a", "k", GSet, add(1))
    c.tick(0.01)
    c.flush_network()  # a -> b delivered, a -> c lost (no route)
    c.groups = None
    c.tick(0.01)  # b flushes what inflated its state
    sends = [m for m in c.queue if m.src == "b" and m.kind == "DELTA"]
    assert [m.dst for m in sends] == ["c"]  # forwarded to c, never back to a
    c.flush_network()
    assert c.engines["c"].value("k") == frozenset({1})


def test_a_full_mesh_sends_each_update_once_per_peer() -> None:
    """With every peer as a target, receivers do not forward (the origin reaches everyone; a
    forward would cost about n² messages per update)."""
    names = [f"n{i}" for i in range(8)]
    c = ManualCluster(names, QUIET)
    c.update("n0", "k", GCounter, inc())
    c.tick(0.01)
    c.flush_network()
    c.tick(0.01)
    sent = {m: sum(e.metrics.get(f"sent_{m}", 0) for e in c.engines.values()) for m in ("DELTA",)}
    assert sent == {"DELTA": 7}
    assert {e.value("k") for e in c.engines.values()} == {1}


def test_epidemic_fanout_forwards() -> None:
    names = [f"n{i}" for i in range(8)]
    c = ManualCluster(names, EngineConfig(**{**QUIET_ARGS, "delta_fanout": 2}))
    c.update("n0", "k", GCounter, inc())
    for _ in range(6):
        c.tick(0.01)
        c.flush_network()
    reached = sum(1 for e in c.engines.values() if e.value("k") == 1)
    assert reached > 3  # beyond the origin's two targets: the receivers forwarded


def test_lost_deltas_are_retransmitted() -> None:
    c = ManualCluster(["a", "b"], QUIET)
    c.update("a", "hits", GCounter, inc(2))
    c.tick(0.01)
    c.drop(0)
    c.update("a", "hits", GCounter, inc(3))
    c.tick(0.01)
    c.flush_network()  # the second range arrives; its ack must not cover the lost first one
    assert c.engines["b"].value("hits") == 5  # a delta carries the whole per-replica total
    assert c.engines["a"].peer_stream("b").acked == 0  # type: ignore[union-attr]
    assert c.engines["a"].metrics.get("acks_out_of_order") == 1
    c.tick(1.0)  # retransmit timer
    c.flush_network()
    assert c.engines["a"].peer_stream("b").acked == 2  # type: ignore[union-attr]
    assert c.engines["a"].backlog() == 0


def test_a_peer_too_far_behind_gets_a_repair() -> None:
    # Periodic anti-entropy far away: only the repair path can bring b back.
    cfg = EngineConfig(ae_interval=10_000.0, gossip_membership=False, delta_buffer=4)
    c = ManualCluster(["a", "b"], cfg)
    c.crash("b")
    for i in range(10):
        c.update("a", f"k{i}", GSet, add(i))
        c.tick(0.01)
        c.flush_network()  # everything to b is lost
    assert any(isinstance(e, PeerRepair) and e.peer == "b" for _, e in c.events["a"])
    c.restart("b")
    for _ in range(10):  # the repair is retried until b answers
        c.tick(1.0)
        c.flush_network()
    assert c.engines["b"].keys() == c.engines["a"].keys()
    assert c.converged()
    assert not c.engines["a"].repairs()


def test_in_sync_anti_entropy_is_one_small_pair_whatever_the_size() -> None:
    sizes = {}
    for n in (1, 100, 5000):
        cfg = EngineConfig(ae_jitter=0.0, push_deltas=False, gossip_membership=False)
        c = ManualCluster(["a", "b"], cfg)
        for i in range(n):
            c.update("a", f"key-{i}", GCounter, inc(i + 1))
        assert c.quiesce()
        c.engines["b"].stop_anti_entropy()
        c.queue.clear()
        c.tick(1.0)
        c.tick(0.0)
        exchange = []
        while c.queue:
            exchange.append(c.queue[0])
            c.deliver(0)
        assert [m.kind for m in exchange] == ["AE_ROOT", "AE_OK"]
        sizes[n] = sum(len(m.data) for m in exchange)
    # Constant up to the varint width of message ids and clock fields: a few bytes at most.
    assert max(sizes.values()) - min(sizes.values()) <= 4, sizes
    assert max(sizes.values()) < 100


def test_anti_entropy_ships_only_the_differing_keys_both_ways() -> None:
    cfg = EngineConfig(ae_jitter=0.0, push_deltas=False, gossip_membership=False)
    c = ManualCluster(["a", "b"], cfg)
    for i in range(300):
        c.update("a", f"k{i}", GCounter, inc())
    assert c.quiesce()
    c.update("a", "k7", GCounter, inc())  # a has a newer k7
    c.update("b", "k9", GCounter, inc())  # b has a newer k9
    c.update("b", "only-b", GSet, add(1))
    c.engines["b"].stop_anti_entropy()
    before = {n: c.engines[n].metrics.get("ae_keys_shipped", 0) for n in "ab"}
    c.tick(1.0)
    c.flush_network()
    assert c.converged()
    shipped = sum(c.engines[n].metrics.get("ae_keys_shipped", 0) - before[n] for n in "ab")
    # k7 and k9 differ on both sides: without per-key causality the responder ships its version
    # of both; the initiator joins them and ships back only k7 (its join of k9 equals what it
    # received); only-b goes one way. None of the 298 equal keys travels.
    assert shipped == 4


@pytest.mark.parametrize("mode", ["push", "pull", "push-pull"])
def test_anti_entropy_modes_move_data_in_their_direction(mode: str) -> None:
    cfg = EngineConfig(ae_jitter=0.0, push_deltas=False, gossip_membership=False, ae_mode=mode)  # type: ignore[arg-type]
    c = ManualCluster(["a", "b"], cfg)
    c.update("a", "from-a", GSet, add(1))
    c.update("b", "from-b", GSet, add(2))
    c.engines["b"].stop_anti_entropy()  # only a initiates
    c.tick(1.0)
    c.flush_network()
    a, b = c.engines["a"], c.engines["b"]
    assert ("from-a" in b) == (mode != "pull")
    assert ("from-b" in a) == (mode != "push")


def test_repairs_respect_the_byte_budget_and_stream_over_rounds() -> None:
    cfg = EngineConfig(
        ae_jitter=0.0,
        push_deltas=False,
        gossip_membership=False,
        max_message_bytes=4096,
        max_round_bytes=8192,
    )
    c = ManualCluster(["a", "b"], cfg)
    for i in range(400):
        c.update("a", f"key-{i:04d}", GSet, add("x" * 40))
    c.engines["b"].stop_anti_entropy()
    rounds = 0
    while not c.converged():
        rounds += 1
        c.tick(1.0)
        while c.queue:
            assert len(c.queue[0].data) <= 4096
            c.deliver(0)
        assert rounds < 20
    assert rounds > 1  # more data than one round's budget: it took several rounds


def test_a_state_larger_than_a_message_travels_in_chunks() -> None:
    cfg = EngineConfig(
        ae_jitter=0.0, push_deltas=False, gossip_membership=False, max_message_bytes=2048
    )
    c = ManualCluster(["a", "b"], cfg)
    for i in range(500):
        c.update("a", "big", ORSet, add(f"element-{i}"))
    c.engines["b"].stop_anti_entropy()
    c.tick(1.0)
    seen = set()
    while c.queue:
        seen.add(c.queue[0].kind)
        assert len(c.queue[0].data) <= 2048
        c.deliver(0)
    assert "CHUNK" in seen
    assert c.engines["b"].value("big") == c.engines["a"].value("big")
    assert c.converged()


def test_write_consistency_levels() -> None:
    c = ManualCluster(["a", "b", "c"], QUIET)
    op = c.update("a", "k", GCounter, inc(), consistency=MAJORITY, timeout=1.0)
    c.flush_network()
    done = [e for _, e in c.events["a"] if isinstance(e, WriteDone)]
    assert done and done[0].handle == op and len(done[0].acked_by) >= 2
    c.partition(["a"], ["b", "c"])
    op2 = c.update("a", "k", GCounter, inc(), consistency=ALL, timeout=1.0)
    c.flush_network()
    c.tick(1.5)
    (failed,) = [e for _, e in c.events["a"] if isinstance(e, OpFailed)]
    assert failed.handle == op2
    assert failed.error.required == 3 and failed.error.reached == 1
    assert "reached 1 of 3" in str(failed.error)
    assert c.engines["a"].value("k") == 2  # indefinite: applied locally, still propagates
    c.heal()
    assert c.quiesce()
    assert c.engines["b"].value("k") == 2


def test_read_consistency_merges_the_replies() -> None:
    c = ManualCluster(["a", "b", "c"], QUIET)
    c.update("b", "k", GCounter, inc(2))
    c.update("c", "k", GCounter, inc(3))
    c.queue.clear()  # a never got the deltas
    op = c.read("a", "k", consistency=ALL)
    c.flush_network()
    (done,) = [e for _, e in c.events["a"] if isinstance(e, ReadDone)]
    assert done.handle == op and done.state is not None and done.state.value() == 5
    assert c.engines["a"].value("k") == 5  # read repair
    local = c.read("a", "k")
    assert any(isinstance(e, ReadDone) and e.handle == local for _, e in c.events["a"])


def test_at_least_counts_this_node() -> None:
    assert at_least(1).required(5) == 1
    assert at_least(3).required(5) == 3
    assert MAJORITY.required(4) == 3 and ALL.required(4) == 4


def test_subscriptions_by_key_and_prefix_carry_the_origin() -> None:
    c = ManualCluster(["a", "b"], QUIET)
    b = c.engines["b"]
    s_key = b.subscribe(key="cfg/x")
    s_pre = b.subscribe(prefix="cfg/")
    c.update("a", "cfg/x", LWWRegister, lambda r, ctx: r.assign(ctx.replica, 1, ctx.hlc))
    c.update("a", "other", GSet, add(1))
    c.tick(0.01)
    c.flush_network()
    changed = [e for _, e in c.events["b"] if isinstance(e, Changed)]
    assert [(e.key, e.origin, e.subscriptions) for e in changed] == [("cfg/x", "a", (s_key, s_pre))]
    c.update("b", "cfg/y", GSet, add(1))
    assert [e for _, e in c.events["b"] if isinstance(e, Changed)][-1] == Changed(
        "cfg/y", None, (s_pre,)
    )
    b.unsubscribe(s_pre)
    c.update("b", "cfg/z", GSet, add(1))
    assert [e for _, e in c.events["b"] if isinstance(e, Changed)][-1].key == "cfg/y"


def test_membership_is_gossiped_beyond_the_seeds() -> None:
    cfg = EngineConfig(ae_jitter=0.0)
    names = ["a", "b", "c", "d"]
    # d only knows a; a, b, c know each other
    seeds = {"d": ("a",), "a": ("a", "b", "c"), "b": ("a", "b", "c"), "c": ("a", "b", "c")}
    c = ManualCluster(names, cfg, seeds=seeds)
    assert c.quiesce(rounds=40)
    assert sorted(c.engines["d"].peers()) == ["a", "b", "c"]
    assert "d" in c.engines["b"].peers()
    assert c.engines["b"].members()["d"] == {"inc": c.engines["d"].incarnation, "status": "up"}


def test_operation_ids_make_retries_idempotent() -> None:
    e = Engine("a", config=QUIET)
    first = e.update("k", PNCounter, inc(5), 0.0, op_id="req-1")
    again = e.update("k", PNCounter, inc(5), 0.0, op_id="req-1")
    assert first == again and e.value("k") == 5
    e.update("k", PNCounter, inc(5), 0.0, op_id="req-2")
    assert e.value("k") == 10


def test_reserved_and_bad_keys_are_refused() -> None:
    e = Engine("a", config=QUIET)
    for bad in ("", "$members", "x" * 2000):
        with pytest.raises(ValueError):
            e.update(bad, GSet, add(1), 0.0)
    with pytest.raises(TypeError):
        e.update("k", GSet, add(1), 0.0)
        e.update("k", GCounter, inc(), 0.0)  # another type at an existing key


def test_concurrent_lease_grants_raise_an_escalation() -> None:
    c = ManualCluster(["a", "b"], QUIET)
    c.update(
        "a",
        "lease",
        Lease,
        lambda lease, ctx: lease.acquire(ctx.replica, "alice", ctx.now(), 10_000),
    )
    c.update(
        "b", "lease", Lease, lambda lease, ctx: lease.acquire(ctx.replica, "bob", ctx.now(), 10_000)
    )
    c.tick(0.01)
    c.flush_network()
    esc = [e for n in "ab" for _, e in c.events[n] if isinstance(e, Escalation)]
    assert {e.key for e in esc} == {"lease"} and len(esc) == 2
    assert {e.local.holder for e in esc} == {"alice", "bob"}
    # a later, causally ordered grant is not an escalation candidate
    before = len(esc)
    c.update(
        "a", "lease", Lease, lambda lease, ctx: lease.force(ctx.replica, "alice", ctx.now(), 10_000)
    )
    c.tick(0.01)
    c.flush_network()
    assert len([e for n in "ab" for _, e in c.events[n] if isinstance(e, Escalation)]) == before
    assert c.engines["b"].value("lease").holder == "alice"


def test_restart_with_and_without_state() -> None:
    c = ManualCluster(["a", "b"], EngineConfig(ae_jitter=0.0, gossip_membership=False))
    c.update("a", "s", ORSet, add("x"))
    c.tick(0.01)
    c.flush_network()
    c.crash("a")
    first = {n: c.engines[n].actor for n in "ab"}
    c.restart("a")  # keeps its store, same incarnation: dots continue
    assert c.engines["a"].actor == first["a"] and c.engines["a"].value("s") == frozenset({"x"})
    c.update("a", "s", ORSet, add("y"))
    c.crash("b")
    c.restart("b", lose_state=True)  # amnesia: new incarnation, never reuses a dot
    assert c.engines["b"].actor != first["b"] and "s" not in c.engines["b"]
    assert c.engines["b"].incarnation > int(first["b"].split("/")[1])
    c.update("b", "s", ORSet, add("z"))
    assert c.quiesce()
    assert c.engines["a"].value("s") == frozenset({"x", "y", "z"})


def test_messages_from_a_stale_incarnation_are_rejected() -> None:
    old = Engine("a", incarnation=1, seeds=("a", "b"), config=QUIET)
    new = Engine("a", incarnation=2, seeds=("a", "b"), config=QUIET)
    b = Engine("b", seeds=("a", "b"), config=QUIET)
    for e in (old, new, b):
        e.start(0.0)
    for e in (new, old):
        e.update("k", GSet, add(e.incarnation), 0.0)
        e.tick(0.01)
    from_new = next(s for s in new.poll() if isinstance(s, Send))
    from_old = next(s for s in old.poll() if isinstance(s, Send))
    b.receive(from_new.data, 0.1)
    before = b.digest()
    from crdtcoord.engine import ProtocolError

    with pytest.raises(ProtocolError) as info:
        b.receive(from_old.data, 0.1)
    assert info.value.code == "stale_incarnation" and b.digest() == before


def test_hlc_follows_message_timestamps() -> None:
    a = Engine("a", seeds=("a", "b"), config=QUIET)
    b = Engine("b", seeds=("a", "b"), config=QUIET)
    a.start(100.0)  # a's clock is 90 s ahead of b's
    b.start(10.0)
    a.update("r", LWWRegister, lambda r, ctx: r.assign(ctx.replica, "from-a", ctx.hlc), 100.0)
    a.tick(100.01)
    for s in a.poll():
        if isinstance(s, Send):
            b.receive(s.data, 10.01)
    b.update("r", LWWRegister, lambda r, ctx: r.assign(ctx.replica, "from-b", ctx.hlc), 10.02)
    assert b.value("r") == "from-b"  # causally after a's write despite the skew
    assert b.metrics.get("received_DELTA") == 1


@given(st.integers(0, 3000), st.integers(0, 3000), st.text(min_size=1, max_size=30))
@settings(max_examples=15, deadline=None)
def test_in_sync_exchange_size_does_not_depend_on_the_store(n1: int, n2: int, prefix: str) -> None:
    def exchange(n: int) -> int:
        cfg = EngineConfig(ae_jitter=0.0, push_deltas=False, gossip_membership=False)
        store = {}
        for i in range(n):
            g = GCounter()
            g.increment("w/1", i + 1)
            store[f"{prefix}{i}"] = g
        a = Engine("a", seeds=("a", "b"), config=cfg, store=store)
        b = Engine("b", seeds=("a", "b"), config=cfg, store=store)
        a.start(0.0)
        b.start(0.0)
        a.poll()
        b.poll()
        a.tick(1.0)  # a starts one exchange
        total = 0
        pending = [s for s in a.poll() if isinstance(s, Send)]
        senders = {"a": a, "b": b}
        while pending:
            s = pending.pop(0)
            total += len(s.data)
            dst = senders[s.peer]
            dst.receive(s.data, 1.0)
            pending.extend(x for x in dst.poll() if isinstance(x, Send))
        return total

    assert abs(exchange(n1) - exchange(n2)) <= 4


def test_chunks_fit_the_budget_even_with_long_ids() -> None:
    cfg = EngineConfig(
        cluster_id="c" * 255,
        ae_jitter=0.0,
        push_deltas=False,
        gossip_membership=False,
        max_message_bytes=1024,
    )
    long_a, long_b = "a" * 200, "b" * 200
    c = ManualCluster([long_a, long_b], cfg)
    for i in range(200):
        c.update(long_a, "big", ORSet, add(f"element-{i}"))
    c.engines[long_b].stop_anti_entropy()
    c.tick(1.0)
    while c.queue:
        assert len(c.queue[0].data) <= 1024
        c.deliver(0)
    assert c.converged()


def test_merkle_children_match_a_recomputation_at_every_level() -> None:
    from crdtcoord.engine.tree import DigestIndex, _leaf, key_hash, prefix_of

    store = {f"k{i}": i.to_bytes(16, "big") for i in range(5000)}
    idx = DigestIndex(lambda k: store[k])
    for k in store:
        idx.touch(k)
    idx.refresh()
    store["k7"] = b"\xff" * 16  # an update after the first digest
    idx.touch("k7")
    for level in range(8):
        for prefix in sorted({prefix_of(key_hash(k), level) for k in list(store)[:40]}):
            expected = [0] * 16
            for k in store:
                h = key_hash(k)
                if prefix_of(h, level) == prefix:
                    leaf = _leaf(k, store[k])  # from scratch, not from the index
                    expected[prefix_of(h, level + 1) & 15] ^= leaf & (2**64 - 1)
            got = idx.children(level, prefix)
            assert got == b"".join(x.to_bytes(8, "big") for x in expected), (level, prefix)
