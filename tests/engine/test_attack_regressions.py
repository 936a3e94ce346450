"""Regressions from the fault-injection review of the engine parts and the host (each test failed
before its fix): stale replies, rejected fragments, departures, restarts, storms."""

from __future__ import annotations

import random
from typing import Any

import pytest

from crdtcoord import GCounter, ORSet, Timestamp
from crdtcoord._wire import DEFAULT_LIMITS
from crdtcoord.engine import (
    ALL,
    MAJORITY,
    Engine,
    EngineConfig,
    ProtocolError,
    Send,
    WriteDone,
)
from crdtcoord.engine.messages import AeOk, Chunk, decode_message, encode_message
from crdtcoord.sim import LinkConfig, NetworkConfig, Simulation, Uniform
from crdtcoord.testing.cluster import ManualCluster, Message

QUIET = EngineConfig(ae_enabled=False, gossip_membership=False)


def inc(n: int = 1) -> Any:
    return GCounter.Increment(n)


def deliver(c: ManualCluster, pred: Any) -> None:
    for i in range(len(c.queue) - 1, -1, -1):
        if pred(c.queue[i]):
            c.deliver(i)


def test_an_old_delta_after_peers_left_does_not_crash_the_engine() -> None:
    """The buffer was collected while retransmission timers to departed peers stayed armed; a
    late message from one of them then hit an empty buffer (IndexError)."""
    cfg = EngineConfig(ae_interval=1.0, ae_jitter=0.2, delta_buffer=1, retransmit_after=0.3)
    c = ManualCluster(["a", "b", "c"], cfg)
    seen: list[Message] = []
    c.tick(0.01)
    seen += c.queue
    c.hosts["a"].leave(c.now)
    seen += c.queue
    c.crash("a")
    c.inject("b", next(m for m in seen if (m.kind, m.src, m.dst) == ("LEAVE", "a", "b")).data)
    c.tick(3.0)
    seen += c.queue
    c.hosts["c"].leave(c.now)
    seen += c.queue
    c.crash("c")
    c.inject("b", next(m for m in seen if (m.kind, m.src, m.dst) == ("LEAVE", "c", "b")).data)
    c.tick(0.5)
    old_delta = next(m for m in seen if (m.kind, m.src, m.dst) == ("DELTA", "a", "b"))
    c.hosts["b"].receive(old_delta.data, c.now)  # must not raise


def test_a_rejected_fragment_changes_nothing_and_sends_nothing() -> None:
    """A CHUNK whose reassembled message is malformed used to record the envelope's incarnation
    (locking the genuine sender out), forget its acks, merge its clock and trigger resends."""
    c = ManualCluster(["a", "b", "c"], QUIET)
    c.tick(1.0)
    c.update("a", "k", GCounter, inc(), consistency=ALL)
    deliver(c, lambda m: m.dst == "b")
    deliver(c, lambda m: m.dst == "a")
    c.queue.clear()
    a = c.engines["a"]
    before = (a.digest(), a.incarnation_of("b"), a.clock.last, a.pending_requests())
    bad = encode_message(
        "default",
        "b",
        c.incarnation("b") + 100,
        5,
        0,
        Timestamp(int(c.now * 1000) + 400, 0),
        Chunk(77, 0, 1, b"\xc1garbage"),
    )
    with pytest.raises(ProtocolError):
        a.receive(bad, c.now)
    assert a.poll() == []
    assert (a.digest(), a.incarnation_of("b"), a.clock.last, a.pending_requests()) == before
    c.update("b", "x", GCounter, inc())
    c.tick(0.01)
    rejected = c.rejected
    deliver(c, lambda m: m.dst == "a" and m.src == "b")
    assert c.rejected == rejected and a.value("x") == 1  # the genuine b still gets through


def test_a_node_that_left_counts_again_once_it_writes() -> None:
    c = ManualCluster(["a", "b", "c"], EngineConfig(ae_enabled=False))
    c.hosts["c"].leave(c.now)
    c.flush_network()
    assert c.engines["a"].member_count() == 2
    c.update("c", "k", GCounter, inc())
    c.tick(0.01)
    c.flush_network()
    assert c.engines["a"].member_count() == 3  # its DELTA came after its LEAVE
    op = c.update("a", "w", GCounter, inc(), consistency=ALL)
    c.flush_network()
    done = [e for _, e in c.events["a"] if isinstance(e, WriteDone) and e.handle == op]
    assert done and done[0].acked_by == ("a", "b", "c")


def test_a_node_that_left_and_lost_its_disk_is_back_for_good() -> None:
    """Its fresh "up" lost last-writer-wins to its older "left" (a clock pushed ahead): a
    running node now re-announces itself when $members misstates it."""
    sim = Simulation(["a", "b", "c"], seed=1, skews={"a": 0.3})
    sim.run_for(1.0)
    sim.leave("c")
    sim.run_for(0.05)
    sim.restart("c", lose_state=True)
    sim.update("c", "k", GCounter, inc())
    assert sim.quiesce(timeout=30)
    a = sim.engine("a")
    assert sorted(a.peers()) == ["b", "c"] and a.members()["c"]["status"] == "up"


def test_a_late_leave_does_not_remove_a_live_node_and_an_older_message_does_not_revive() -> None:
    """LEAVE carries the leaver's own $members entry: the hybrid-clock order of "left" and
    "up" decides, whatever order the messages arrive in."""
    GOSSIP = EngineConfig(ae_enabled=False)
    c = ManualCluster(["a", "b", "c"], GOSSIP)
    c.flush_network()
    c.hosts["c"].leave(c.now)
    old_leave = next(m for m in c.queue if m.kind == "LEAVE" and m.dst == "a")
    c.flush_network()
    assert c.engines["a"].member_count() == 2
    c.crash("c")
    c.tick(1.0)
    c.restart("c")
    c.tick(0.01)
    c.flush_network()
    assert c.engines["a"].member_count() == 3
    c.inject("a", old_leave.data)  # a late duplicate of the old LEAVE
    assert c.engines["a"].member_count() == 3
    assert c.engines["a"].members()["c"]["status"] == "up"

    d = ManualCluster(["a", "b", "c"], GOSSIP)
    d.flush_network()
    d.update("c", "k", GCounter, inc())
    d.tick(0.01)  # c's DELTA is on the wire...
    d.hosts["c"].leave(d.now)  # ...then its LEAVE
    d.crash("c")
    to_a = [m for m in d.queue if m.dst == "a"]
    leave = next(m for m in to_a if m.kind == "LEAVE")
    first_delta = next(m for m in to_a if m.kind == "DELTA")
    d.inject("a", leave.data)
    d.inject("a", first_delta.data)  # reordered: the older DELTA arrives last
    assert d.engines["a"].member_count() == 2 and d.engines["a"].value("k") == 1


def test_a_leave_speaks_only_for_its_sender() -> None:
    """A LEAVE whose membership delta names another node is not joined (counted instead)."""
    c = ManualCluster(["a", "b", "c"], EngineConfig(ae_enabled=False))
    c.flush_network()
    c.hosts["c"].leave(c.now)
    from_c = next(m for m in c.queue if m.kind == "LEAVE" and m.dst == "b")
    c.queue.clear()
    forged = encode_message(
        "default",
        "a",
        c.incarnation("a"),
        99,
        0,
        Timestamp(int(c.now * 1000) + 1, 0),
        decode_message(from_c.data, cluster="default", limits=DEFAULT_LIMITS).body,
    )
    c.inject("b", forged)
    assert c.engines["b"].member_count() == 3
    assert c.engines["b"].metrics["entries_ignored"] >= 1


@pytest.mark.parametrize("ae", [False, True])
def test_a_restarted_writer_repairs_what_it_never_sent(ae: bool) -> None:
    c = ManualCluster(["a", "b"], EngineConfig(ae_enabled=ae, gossip_membership=False))
    c.update("a", "k", GCounter, inc())
    c.tick(0.01)
    c.queue.clear()  # the delta is lost (or a crashed before sending it)
    c.crash("a")
    c.restart("a")  # data kept, not a clean shutdown: it probes its peers
    for _ in range(4):
        c.flush_network()
        c.tick(0.5)
    assert c.engines["b"].value("k") == 1


def test_a_peer_back_from_leaving_gets_what_it_missed() -> None:
    c = ManualCluster(["a", "b"], QUIET)
    c.hosts["b"].leave(c.now)
    c.flush_network()
    c.crash("b")
    c.update("a", "k", GCounter, inc())  # b is gone: not a target
    c.tick(0.01)
    c.flush_network()
    c.restart("b")
    c.update("b", "kb", GCounter, inc())
    for _ in range(6):
        c.tick(0.5)
        c.flush_network()
    assert c.engines["b"].value("k") == 1 and c.engines["a"].value("kb") == 1


def test_a_retry_at_a_level_always_reports() -> None:
    e = Engine("a", seeds=("a",), config=QUIET)
    e.start(0.0)
    e.update("k", GCounter, inc(), 0.0, op_id="r1")
    h = e.update("k", GCounter, inc(), 0.0, op_id="r1", consistency=MAJORITY)
    assert [x for x in e.poll() if isinstance(x, WriteDone) and x.handle == h]
    assert e.value("k") == 1


def test_a_late_duplicate_fragment_does_not_evict_live_transfers() -> None:
    """At most two transfers per sender are open; a late duplicate of a completed one used to
    open a third and evict a live one (whose message was then lost)."""
    cfg = EngineConfig(ae_enabled=False, gossip_membership=False, max_message_bytes=1024)
    c = ManualCluster(["a", "b"], cfg)
    c.update("b", "k0", ORSet, ORSet.Add("0" * 3000))
    c.tick(0.01)
    old_fragment = c.queue[0].data  # fragment 0 of transfer T0
    c.flush_network()
    transfers = []
    for key in ("k1", "k2"):
        c.update("b", key, ORSet, ORSet.Add(key * 1500))
        c.tick(0.01)
        transfers.append([m for m in c.queue if m.kind == "CHUNK"])
        c.queue.clear()
    t1, t2 = transfers
    c.inject("a", t1[0].data)
    c.inject("a", t2[0].data)  # two transfers open
    c.inject("a", old_fragment)  # a late network duplicate of the completed T0
    for m in t1[1:] + t2[1:]:
        c.inject("a", m.data)
    a = c.engines["a"]
    assert a.value("k1") is not None and a.value("k2") is not None


def test_an_ae_ok_from_another_peer_does_not_cancel_an_exchange() -> None:
    c = ManualCluster(["a", "b", "c"], QUIET)
    a = c.engines["a"]
    a.recover()  # a owes b and c a repair (as after a crash)
    c.tick(0.01)  # repair exchanges: AE_ROOT a->b, a->c
    i = next(i for i, m in enumerate(c.queue) if m.kind == "AE_ROOT" and m.dst == "b")
    xid = decode_message(c.queue[i].data, cluster="default", limits=QUIET.limits).msg_id
    forged = encode_message("default", "c", c.incarnation("c"), 9, xid, Timestamp(1), AeOk())
    c.inject("a", forged)  # c answers an exchange that was b's
    assert a.metrics.get("ae_stale_answers", 0) == 1
    c.deliver(i)  # b's genuine AE_OK still completes b's repair
    deliver(c, lambda m: m.dst == "a")
    assert "b" not in a.repairs()


def test_seeds_listing_this_node_twice_do_not_hang() -> None:
    e = Engine("a", seeds=("a", "a"))
    e.tick(0.0)
    e.tick(2.0)  # an anti-entropy round: no peer, no hang
    cfg = EngineConfig(gossip_membership=False, ae_jitter=0.0)
    f = Engine("a", seeds=("b", "b", "b", "c"), config=cfg, rng=random.Random(1))
    f.start(0.0)
    picks: list[str] = []
    for t in range(1, 4001):  # one anti-entropy round per second, to a random peer
        f.tick(float(t))
        picks += [x.peer for x in f.poll() if isinstance(x, Send)]
    assert 1800 < picks.count("b") < 2200  # duplicate seeds do not weigh more


def test_a_one_way_partition_does_not_storm() -> None:
    """Messages from a peer that cannot hear us are not proof of a heal: resends stay backed
    off (they used to restart from the measured RTT every half second)."""
    cfg = EngineConfig(ae_enabled=True, gossip_membership=False)
    net = NetworkConfig(LinkConfig(latency=Uniform(0.001, 0.005)))
    sim = Simulation(["a", "b"], seed=2, config=cfg, network=net)
    sim.run_for(0.5)
    sim.block("a", "b", both=False)  # a cannot reach b; b reaches a
    for i in range(600):
        sim.update("a", f"k{i}", GCounter, inc())
        sim.update("b", "tick", GCounter, inc())
        sim.run_for(0.1)
    rate = sim.engine("a").metrics.get("retransmits", 0) / 60.0
    assert rate < 1.5, rate  # backed off: a few per second at most
    sim.heal()
    assert sim.quiesce(timeout=30)
