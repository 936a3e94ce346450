"""Membership by gossip (``$members`` is the only truth on who left), rejoining, and how a
silent peer is treated: each test states the promise it checks."""

from __future__ import annotations

from crdtcoord import GCounter
from crdtcoord._wire import DEFAULT_LIMITS
from crdtcoord.engine import ALL, EngineConfig, WriteDone
from crdtcoord.engine.messages import decode_message
from crdtcoord.testing.cluster import ManualCluster

GOSSIP = EngineConfig(ae_enabled=False)


def _inc() -> GCounter.Increment:
    return GCounter.Increment(1)


def test_a_lost_leave_still_arrives_through_the_delta_stream() -> None:
    c = ManualCluster(["a", "b", "c"], GOSSIP)
    c.flush_network()
    c.hosts["b"].leave(c.now)
    for i in range(len(c.queue) - 1, -1, -1):
        if c.queue[i].kind == "LEAVE" and c.queue[i].dst == "a":
            c.drop(i)
    c.flush_network()
    c.crash("b")
    assert c.engines["a"].peers() == ["c"]
    op = c.update("a", "k", GCounter, _inc(), consistency=ALL)
    c.flush_network()
    assert any(isinstance(e, WriteDone) and e.handle == op for _, e in c.events["a"])


def test_two_nodes_that_both_left_find_each_other_when_they_come_back() -> None:
    """Every announcement between them is lost: anti-entropy to the known (left) members
    still brings them together."""
    c = ManualCluster(["a", "b"], EngineConfig(ae_interval=1.0, ae_jitter=0.0))
    c.flush_network()
    c.hosts["a"].leave(c.now)
    c.flush_network()
    c.hosts["b"].leave(c.now)
    c.flush_network()
    for n in ("a", "b"):
        assert c.hosts[n].close()  # clean: no recovery probes on restart
        c.crash(n)
    c.restart("a")
    c.tick(0.01)
    c.queue.clear()  # a's "up" is lost
    c.restart("b")
    c.tick(0.01)
    c.queue.clear()  # and so is b's
    c.update("a", "k", GCounter, _inc())
    for _ in range(10):
        c.tick(1.0)
        c.flush_network()
    assert c.engines["a"].peers() == ["b"] and c.engines["b"].peers() == ["a"]
    assert c.engines["b"].value("k") == 1


def test_a_node_writing_after_leave_is_counted_again() -> None:
    c = ManualCluster(["a", "b", "c"], GOSSIP)
    c.flush_network()
    c.hosts["c"].leave(c.now)
    c.flush_network()
    assert c.engines["a"].member_count() == 2
    c.update("c", "k", GCounter, _inc())
    c.flush_network()
    assert c.engines["a"].member_count() == 3 and c.engines["a"].members()["c"]["status"] == "up"


def test_a_dead_peer_is_resent_one_entry_per_period_and_gets_everything_when_back() -> None:
    cfg = EngineConfig(ae_enabled=False, gossip_membership=False, retransmit_after=0.2)
    c = ManualCluster(["a", "b"], cfg)
    c.crash("b")
    sizes = []
    for i in range(40):
        c.update("a", f"k{i % 7}", GCounter, _inc())
        c.tick(0.2)
        for m in c.queue:
            if m.kind == "DELTA" and m.dst == "b":
                d = decode_message(m.data, cluster="default", limits=DEFAULT_LIMITS).body
                sizes.append(d.hi - d.lo)  # type: ignore[attr-defined]
        c.flush_network()  # lost: b is down
    assert max(sizes[-5:]) == 1  # probes carry the oldest entry only
    assert c.engines["a"].backlog() > 10
    c.restart("b")
    for _ in range(20):
        c.tick(0.5)
        c.flush_network()
    assert c.engines["a"].backlog() == 0
    assert c.engines["b"].digest() == c.engines["a"].digest()
