"""Attacks on membership (``$members`` as the only truth on who left, protocol.md §4.5 and §9),
silent peers and clean shutdowns: regressions of defects D1-D8 found earlier (scenarios b01-b10)
and of defects D-N1..D-N5 found against the rewrite (each failed before its fix). Each test states
the promise it checks."""

from __future__ import annotations

import random

import pytest

from crdtcoord import GCounter, LWWRegister, ORMap, ORSet
from crdtcoord.clocks.hlc import Timestamp
from crdtcoord.engine import ALL, EngineConfig, OpFailed, PeerRepair, WriteDone
from crdtcoord.engine.messages import Delta, Entry, Leave, encode_message
from crdtcoord.sim import LinkConfig, NetworkConfig, Simulation, Uniform
from crdtcoord.testing.cluster import ManualCluster

QUIET = EngineConfig(ae_enabled=False, gossip_membership=False)


def _inc() -> GCounter.Increment:
    return GCounter.Increment(1)


def _run(c: ManualCluster, seconds: int, dt: float = 1.0) -> None:
    for _ in range(seconds):
        c.tick(dt)
        c.flush_network()


def _write_done(c: ManualCluster, node: str, handle: int) -> bool:
    return any(isinstance(e, WriteDone) and e.handle == handle for _, e in c.events[node])


def _sim_outcome(sim: Simulation, node: str, handle: int) -> list[str]:
    return [type(e).__name__ for e in sim.events(node) if getattr(e, "handle", None) == handle]


def _forged(sender: ManualCluster, node: str, body: object, msg_id: int = 999_999) -> bytes:
    e = sender.engines[node]
    ts = Timestamp(int(sender.now * 1000), 7)
    return encode_message("default", node, e.incarnation, msg_id, 0, ts, body)  # type: ignore[arg-type]


# ====================================================================== b01..b10 regressions


@pytest.mark.parametrize("lost", ["leave", "everything"])
def test_b01_a_departure_whose_leave_is_lost_is_still_honoured(lost: str) -> None:
    """The LEAVE of ``b`` to ``a`` is lost: the ``left`` entry in ``b``'s delta (sent just
    before, its envelope clock after the entry's stamp) is enough; if that delta is lost too,
    ``a`` learns the departure from ``c`` by anti-entropy. Either way ``a`` stops counting
    ``b`` and a write at ALL completes."""
    c = ManualCluster(["a", "b", "c"], EngineConfig())
    _run(c, 5, 0.3)
    c.hosts["b"].leave(c.now)
    c.queue[:] = [
        m
        for m in c.queue
        if not (m.src == "b" and m.dst == "a" and (lost == "everything" or m.kind == "LEAVE"))
    ]
    c.flush_network()
    c.crash("b")
    _run(c, 30)
    a = c.engines["a"]
    assert a.members()["b"]["status"] == "left" and a.peers() == ["c"]
    h = c.update("a", "k", GCounter, _inc(), consistency=ALL)
    _run(c, 10)
    assert _write_done(c, "a", h)


def test_b02_a_late_delta_of_an_older_process_does_not_revive_a_departed_node() -> None:
    """A DELTA of an earlier process of ``b`` (same incarnation), delivered after ``b`` left,
    does not make ``b`` count again (its data is still merged)."""
    c = ManualCluster(["a", "b", "c"], EngineConfig(ae_enabled=False))
    c.tick(0.1)
    c.flush_network()
    c.update("b", "k", GCounter, _inc())
    c.tick(0.01)
    late = [m for m in c.queue if m.src == "b" and m.dst == "a" and m.kind == "DELTA"]
    assert late
    c.queue[:] = [m for m in c.queue if m not in late]
    c.flush_network()
    c.crash("b")
    c.tick(0.1)
    c.restart("b")
    _run(c, 5)
    c.hosts["b"].leave(c.now)
    c.flush_network()
    c.crash("b")
    a = c.engines["a"]
    assert a.peers() == ["c"]
    c.inject("a", late[0].data)
    assert a.peers() == ["c"] and a.value("k") == 1
    h = c.update("a", "w", GCounter, _inc(), consistency=ALL)
    _run(c, 10)
    assert _write_done(c, "a", h)


def test_b03_a_node_whose_clock_ran_ahead_can_still_leave() -> None:
    """``b`` ran with its clock 60 s ahead, was fixed and restarted with its data, then left:
    its departure is honoured at once (no old clock of ``b`` shadows it)."""
    sim = Simulation(["a", "b", "c"], seed=1, config=EngineConfig())
    sim.run_for(3)
    sim.set_skew("b", 60.0)
    sim.run_for(3)
    sim.update("b", "k", GCounter, _inc())
    sim.run_for(2)
    sim.crash("b")
    sim.set_skew("b", 0.0)
    sim.restart("b")
    sim.run_for(3)
    assert sim.engine("a").peers() == ["b", "c"]
    sim.leave("b")
    sim.run_for(2)
    for n in ("a", "c"):
        assert "b" not in sim.engine(n).peers()
    h = sim.update("a", "w", GCounter, _inc(), consistency=ALL)
    sim.run_for(10)
    assert _sim_outcome(sim, "a", h) == ["WriteDone"]


def test_b04_leaves_delivered_after_both_nodes_restarted_change_nothing() -> None:
    """``a`` and ``b`` leave; their LEAVEs are still in flight when both restart with their
    data: the late LEAVEs (stamped before the "up" announcements) change nothing, everyone
    counts everyone, and a write at ALL reaches ``b``."""
    c = ManualCluster(["a", "b", "c"], EngineConfig())
    c.tick(1.0)
    c.flush_network()
    c.hosts["a"].leave(c.now)
    c.crash("a")
    c.hosts["b"].leave(c.now)
    c.crash("b")
    c.tick(1.0)
    c.restart("a")
    c.restart("b")
    c.flush_network()
    _run(c, 20)
    for n in "abc":
        e = c.engines[n]
        assert e.member_count() == 3
        assert {k: v["status"] for k, v in e.members().items()} == dict.fromkeys("abc", "up")
    h = c.update("a", "w", GCounter, _inc(), consistency=ALL)
    _run(c, 5)
    assert _write_done(c, "a", h) and c.engines["b"].value("w") == 1


def _dead_peer_sizes(heal_cycles: int) -> list[int]:
    """Sizes of what ``a`` sends its dead peer ``c`` once ``c`` is in probe mode: for 10 s, then
    while the link to ``b`` breaks and heals ``heal_cycles`` times."""
    c = ManualCluster(["a", "b", "c"], QUIET)
    c.crash("c")
    for i in range(30):
        c.update("a", f"k{i}", ORSet, ORSet.Add("v" * 500))
        c.tick(0.01)
        c.flush_network()
    _run(c, 20)  # c silent through many resends: only one-entry probes from now on
    sizes: list[int] = []

    def step() -> None:
        c.tick(1.0)
        sizes.extend(len(m.data) for m in c.queue if m.src == "a" and m.dst == "c")
        c.flush_network()

    for _ in range(10):
        step()
    for i in range(heal_cycles):
        c.partition(["a", "c"], ["b"])
        c.update("a", f"x{i}", GCounter, _inc())
        for _ in range(4):
            step()
        c.heal()
        for _ in range(3):
            step()
    return sizes


def test_b05_a_dead_peer_is_sent_one_entry_per_period() -> None:
    """A peer silent through several resends gets only the oldest entry each period (about 600
    bytes here), not its 30-entry backlog."""
    sizes = _dead_peer_sizes(0)
    assert 3 <= len(sizes) <= 10 and max(sizes) < 2_000


def test_b05_heals_of_a_flaky_peer_do_not_resend_the_whole_backlog_to_a_dead_one() -> None:
    """A peer silent through many resends gets only one-entry probes (protocol: "a dead peer is
    not sent its growing backlog over and over"), even while another, flaky, peer keeps
    breaking and healing its link: those heals prove nothing about the dead peer."""
    sizes = _dead_peer_sizes(5)
    assert sizes
    assert max(sizes) < 2_000, f"{sum(s > 2_000 for s in sizes)} full resends, max {max(sizes)}"


def test_b06_a_node_that_left_with_its_clock_ahead_is_counted_after_restart() -> None:
    """``b`` left while its clock ran 60 s ahead (its "left" is stamped in the future), then
    restarted with a correct clock: its "up" is stamped after its own "left", so peers count
    it again at once, and a write at ALL completes."""
    sim = Simulation(["a", "b", "c"], seed=1, config=EngineConfig())
    sim.run_for(3)
    sim.set_skew("b", 60.0)
    sim.run_for(3)
    sim.leave("b")
    sim.run_for(2)
    assert "b" not in sim.engine("a").peers()
    sim.set_skew("b", 0.0)
    sim.restart("b")
    sim.run_for(5)
    for n in ("a", "c"):
        assert "b" in sim.engine(n).peers()
        assert sim.engine(n).members()["b"]["status"] == "up"
    h = sim.update("a", "w", GCounter, _inc(), consistency=ALL)
    sim.run_for(6)
    assert _sim_outcome(sim, "a", h) == ["WriteDone"]


@pytest.mark.parametrize("ae", [False, True])
def test_b07_close_is_not_clean_with_a_delta_still_batched(ae: bool) -> None:
    """An update still in the ``delta_delay`` window has not left: close() does not record a
    clean shutdown, so the restart probes the peer and the update reaches it."""
    c = ManualCluster(["a", "b"], EngineConfig(ae_enabled=ae, gossip_membership=False))
    c.tick(0.5)
    c.flush_network()
    c.update("a", "k", GCounter, _inc())
    assert c.engines["a"].backlog() == 1
    assert c.hosts["a"].close() is False
    c.queue.clear()
    c.crash("a")
    c.tick(0.1)
    c.restart("a")
    _run(c, 30)
    assert c.engines["b"].value("k") == 1


def test_b08_close_is_not_clean_while_a_repair_is_owed() -> None:
    """A peer handed to a repair (it fell behind the delta buffer) is owed data that no buffer
    entry holds: close() is not clean, and the restart repairs the peer."""
    c = ManualCluster(
        ["a", "b"], EngineConfig(ae_enabled=False, gossip_membership=False, delta_buffer=2)
    )
    c.tick(0.5)
    c.flush_network()
    c.partition(["a"], ["b"])
    for i in range(5):
        c.update("a", f"k{i}", GCounter, _inc())
        c.tick(0.01)
        c.flush_network()
    c.heal()
    c.update("a", "k5", GCounter, _inc())
    c.tick(0.01)
    c.queue[:] = [m for m in c.queue if not m.kind.startswith("AE_")]  # the repair is lost
    c.flush_network()
    a = c.engines["a"]
    assert a.repairs() == ["b"] and a.backlog() == 0
    assert c.hosts["a"].close() is False
    c.crash("a")
    c.tick(0.1)
    c.restart("a")
    _run(c, 60)
    assert c.engines["b"].keys() == [f"k{i}" for i in range(6)]


def test_b09_leave_reaches_a_member_believed_left() -> None:
    """``a`` left and came back (new incarnation) but its announcement to ``b`` was lost; ``b``
    then leaves: its LEAVE goes to every known member, ``a`` included, so ``a`` stops counting
    ``b`` and a write at ALL completes."""
    c = ManualCluster(["a", "b", "c"], EngineConfig())
    c.tick(0.5)
    c.flush_network()
    c.hosts["a"].leave(c.now)
    c.flush_network()
    c.crash("a")
    c.tick(1.0)
    c.restart("a", lose_state=True)
    c.queue[:] = [m for m in c.queue if not (m.src == "a" and m.dst == "b")]
    c.hosts["b"].leave(c.now)
    assert sorted(m.dst for m in c.queue if m.kind == "LEAVE") == ["a", "c"]
    c.flush_network()
    c.crash("b")
    _run(c, 20)
    assert c.engines["a"].peers() == ["c"] and c.engines["c"].peers() == ["a"]
    h = c.update("a", "w", GCounter, _inc(), consistency=ALL)
    _run(c, 6)
    assert _write_done(c, "a", h)


def test_b09_without_gossip_leave_only_pushes_pending_deltas() -> None:
    """Without ``gossip_membership`` (protocol.md §4.5) leaving pushes the pending deltas and
    nothing else: peers get the data and keep counting the node (a write at ALL then fails by
    timeout instead of hanging)."""
    c = ManualCluster(["a", "b", "c"], EngineConfig(gossip_membership=False))
    c.tick(0.5)
    c.flush_network()
    c.update("b", "k", GCounter, _inc())
    c.hosts["b"].leave(c.now)
    assert {m.dst for m in c.queue if m.kind == "DELTA"} == {"a", "c"}
    assert not [m for m in c.queue if m.kind == "LEAVE"]
    c.flush_network()
    c.crash("b")
    assert c.engines["a"].value("k") == 1 and c.engines["a"].peers() == ["b", "c"]
    h = c.update("a", "w", GCounter, _inc(), consistency=ALL, timeout=2.0)
    _run(c, 4)
    assert any(isinstance(e, OpFailed) and e.handle == h for _, e in c.events["a"])


def test_b10_a_node_restarting_among_members_that_all_left_is_not_isolated() -> None:
    """``c`` restarts believing every other member left, while they hold ``c``'s delayed LEAVE:
    its start announces "up" to every known member, left ones included, so the cluster
    reconnects and converges."""
    c = ManualCluster(["a", "b", "c"], EngineConfig())
    c.tick(1.0)
    c.flush_network()
    c.hosts["c"].leave(c.now)
    delayed = [m for m in c.queue if m.src == "c"]
    c.queue[:] = [m for m in c.queue if m.src != "c"]
    c.hosts["a"].leave(c.now)
    c.hosts["b"].leave(c.now)
    c.queue[:] = [m for m in c.queue if m.dst == "c"]
    c.flush_network()
    for n in "abc":
        c.crash(n)
    c.tick(1.0)
    c.restart("a")
    c.restart("b")
    for m in delayed:
        c.inject(m.dst, m.data)
    c.restart("c")
    _run(c, 30)
    c.update("a", "k", GCounter, _inc())
    _run(c, 10)
    for n in "abc":
        assert c.engines[n].member_count() == 3 and c.engines[n].value("k") == 1
    assert c.converged()


# ====================================================================== the rewrite, attacked


def test_a_duplicated_leave_after_the_node_came_back_changes_nothing() -> None:
    """A LEAVE duplicated by the network and delivered again after its sender wrote again
    carries the older "left": the sender stays counted."""
    c = ManualCluster(["a", "b", "c"], EngineConfig(ae_enabled=False))
    c.flush_network()
    c.hosts["b"].leave(c.now)
    dup = next(m for m in c.queue if m.kind == "LEAVE" and m.dst == "a")
    c.flush_network()
    assert c.engines["a"].peers() == ["c"]
    c.tick(0.1)
    c.update("b", "k", GCounter, _inc())  # b is back
    _run(c, 3)
    assert c.engines["a"].peers() == ["b", "c"]
    c.inject("a", dup.data)
    c.inject("a", dup.data)
    assert c.engines["a"].peers() == ["b", "c"] and c.rejected == 0
    h = c.update("a", "w", GCounter, _inc(), consistency=ALL)
    _run(c, 3)
    assert _write_done(c, "a", h)


def test_a_dead_peers_backlog_is_bounded_by_the_delta_buffer() -> None:
    """One-entry probes do not keep a dead peer's backlog forever: once it falls behind the
    delta buffer it is handed to a repair and the buffer is freed."""
    c = ManualCluster(
        ["a", "c"], EngineConfig(ae_enabled=False, gossip_membership=False, delta_buffer=8)
    )
    c.crash("c")
    for i in range(40):
        c.update("a", f"k{i}", GCounter, _inc())
        c.tick(0.5)
        c.flush_network()
    a = c.engines["a"]
    assert a.backlog() <= 8
    assert any(isinstance(e, PeerRepair) and e.peer == "c" for _, e in c.events["a"])


def test_a_probed_peer_gets_everything_once_back_and_close_is_then_clean() -> None:
    """A peer that was down long enough to get one-entry probes restarts with its data: the
    probe's ACK brings the rest of the backlog (nothing stays unsent), and the sender can then
    shut down cleanly."""
    c = ManualCluster(["a", "b"], EngineConfig(ae_enabled=False))
    c.flush_network()
    c.crash("b")
    for i in range(20):
        c.update("a", f"k{i}", GCounter, _inc())
        c.tick(0.01)
        c.flush_network()
    _run(c, 20)
    c.restart("b")
    _run(c, 10)
    assert c.engines["b"].keys() == sorted(f"k{i}" for i in range(20))
    assert c.engines["a"].backlog() == 0 and not c.engines["a"].repairs()
    assert c.hosts["a"].close() is True


def test_close_is_clean_again_after_a_crash_once_the_recovery_is_done() -> None:
    """After a crash the restart probes its (live) peers; once that is done close() records a
    clean shutdown, and the next start does not probe."""
    c = ManualCluster(["a", "b", "c"], EngineConfig(ae_enabled=False))
    c.flush_network()
    c.update("a", "k", GCounter, _inc())
    c.crash("a")  # before its delta left
    c.queue.clear()
    c.restart("a")
    _run(c, 5)
    assert c.engines["b"].value("k") == 1 and c.engines["c"].value("k") == 1
    assert c.hosts["a"].close() is True
    c.crash("a")
    n = len(c.events["a"])
    c.restart("a")
    assert not [e for _, e in c.events["a"][n:] if isinstance(e, PeerRepair)]


class _Lossy(NetworkConfig):
    def link(self, src: str, dst: str) -> LinkConfig:
        return LinkConfig(
            latency=Uniform(0.005, 0.05), loss=0.1, duplicate=0.05, reorder=0.1, reorder_delay=0.5
        )


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_leave_and_restart_churn_under_loss_and_partitions_converges(seed: int) -> None:
    """Leaves, crashes, restarts (some without their data, some with a skewed clock) on a lossy,
    duplicating, reordering network with partitions: once healed, the live nodes converge and
    each sees every live node "up"."""
    rng = random.Random(seed)
    names = ["a", "b", "c", "d", "e"]
    sim = Simulation(names, seed=seed, config=EngineConfig(), network=_Lossy())
    left: set[str] = set()
    for _ in range(120):
        r, live = rng.random(), sim.live()
        if r < 0.4:
            sim.update(rng.choice(live), f"k{rng.randrange(8)}", GCounter, _inc())
        elif r < 0.47 and len(live) > 2:
            n = rng.choice(live)
            sim.leave(n)
            left.add(n)
        elif r < 0.5 and len(live) > 2:
            n = rng.choice(live)
            sim.crash(n)
            left.discard(n)
        elif r < 0.6 and len(live) < len(names):
            n = rng.choice([x for x in names if x not in live])
            if rng.random() < 0.3:
                sim.set_skew(n, rng.choice([-2.0, 0.0, 3.0, 30.0]))
            sim.restart(n, lose_state=rng.random() < 0.3)
            left.discard(n)
        elif r < 0.65:
            if rng.random() < 0.5:
                sim.partition([n for n in names if rng.random() < 0.5], [])
            else:
                sim.heal()
        sim.run_for(rng.choice([0.01, 0.2, 1.0]))
    sim.heal()
    for n in names:
        if n not in sim.live() and n not in left:
            sim.restart(n)
    assert sim.quiesce(timeout=120)
    live = sim.live()
    for n in live:
        members = sim.engine(n).members()
        assert all(members[m]["status"] == "up" for m in live), (n, members)


# ---------------------------------------------------------------------- defects found


def test_recover_owes_no_repair_to_members_that_left() -> None:
    """protocol.md §4.5: a member whose entry says ``left`` is not repaired. A node restarting
    after a crash probes its live peers only, finishes, and can shut down cleanly."""
    c = ManualCluster(["a", "b", "c"], EngineConfig())
    c.tick(0.5)
    c.flush_network()
    c.hosts["b"].leave(c.now)
    c.flush_network()
    assert c.hosts["b"].close()
    c.crash("b")
    c.crash("a")  # not a clean shutdown: a recovers at restart
    c.tick(1.0)
    c.restart("a")
    _run(c, 30)
    a = c.engines["a"]
    assert a.peers() == ["c"]
    assert a.repairs() == []
    assert c.hosts["a"].close() is True


def test_a_departure_learned_by_gossip_cancels_the_repair_owed() -> None:
    """``a`` owes ``b`` a repair; ``b`` leaves and its LEAVE to ``a`` is lost, but its delta
    brings ``left``: ``a`` stops repairing ``b`` (it is repaired if it comes back) and can shut
    down cleanly."""
    c = ManualCluster(["a", "b", "c"], EngineConfig(ae_enabled=False, delta_buffer=2))
    c.flush_network()
    c.partition(["a", "c"], ["b"])
    for i in range(4):
        c.update("a", f"k{i}", GCounter, _inc())
        c.tick(0.01)
        c.flush_network()
    c.heal()
    a = c.engines["a"]
    assert a.repairs() == ["b"]
    c.hosts["b"].leave(c.now)
    c.queue[:] = [m for m in c.queue if not (m.kind == "LEAVE" and m.dst == "a")]
    c.flush_network()
    c.crash("b")
    _run(c, 20)
    assert a.members()["b"]["status"] == "left"
    assert a.repairs() == []
    assert c.hosts["a"].close() is True


def _stalled_probe() -> ManualCluster:
    """``a`` forwards deltas; its only peer ``c`` goes silent with a range outstanding whose
    first unacknowledged entry, at probe time, holds only ``c``'s own (forwarded) delta."""
    c = ManualCluster(
        ["a", "c"], EngineConfig(ae_enabled=False, gossip_membership=False, forward_deltas=True)
    )
    c.flush_network()
    blocked = [True]

    def pump(allow_one: bool = False) -> None:
        i = 0
        while i < len(c.queue):
            m = c.queue[i]
            if m.src == "a" and m.dst == "c":
                if allow_one:
                    allow_one = False
                    c.deliver(i)
                    continue
                if blocked[0]:
                    c.drop(i)
                    continue
            c.deliver(i)

    c.update("a", "y", GCounter, _inc())  # entry 1: lost to c
    c.tick(0.01)
    pump()
    c.update("c", "k", GCounter, _inc())  # entry 2: c's delta, forwarded (origin c only)
    c.tick(0.01)
    pump()
    c.tick(0.01)
    pump()
    c.update("a", "z", GCounter, _inc())  # entry 3
    c.tick(0.01)
    pump()
    for _ in range(20):  # c silent: one-entry probes
        c.tick(1.0)
        pump()
    c.tick(2.0)
    pump(allow_one=True)  # the probe (entry 1) arrives, c acks; the rest that follows is lost
    for _ in range(20):
        c.tick(1.0)
        pump()
    blocked[0] = False  # healed
    for _ in range(30):
        c.tick(1.0)
        pump()
    return c


def test_a_probe_that_skips_the_peers_own_delta_does_not_stall_the_stream() -> None:
    """Every delta-buffer entry is retransmitted until acknowledged: after the link heals the
    peer gets ``z`` and the sender's backlog drains, without waiting for another write."""
    c = _stalled_probe()
    assert c.engines["c"].value("z") == 1
    assert c.engines["a"].backlog() == 0


def test_a_forged_leave_cannot_remove_another_members_entry() -> None:
    """protocol.md §4.5: a LEAVE speaks for its sender only. A LEAVE from ``b`` whose map delta
    removes ``c``'s ``left`` entry (no entry, just a covering context) changes nothing about
    ``c``: ``c`` stays departed and a write at ALL completes."""
    c = ManualCluster(["a", "b", "c"], EngineConfig(ae_enabled=False))
    c.tick(0.5)
    c.flush_network()
    c.hosts["c"].leave(c.now)
    c.flush_network()
    assert c.hosts["c"].close()
    c.crash("c")
    a, b = c.engines["a"], c.engines["b"]
    assert a.peers() == ["b"]
    members = b.get("$members")
    assert isinstance(members, ORMap)
    removal = members.remove(b.actor, "c")
    assert removal.value() == {}  # names nobody
    c.inject("a", _forged(c, "b", Leave(removal)))
    assert a.members().get("c", {}).get("status") == "left"
    assert a.peers() == ["b"]
    h = c.update("a", "w", GCounter, _inc(), consistency=ALL)
    _run(c, 3)
    assert _write_done(c, "a", h)


def test_a_forged_future_entry_about_a_node_does_not_lock_it_out() -> None:
    """One corrupted message must not cut a node off: a ``$members`` entry for ``a`` stamped
    far beyond any clock (from a peer's DELTA) does not make every later message of ``a``
    refused; ``a``'s writes still reach its peers."""
    c = ManualCluster(["a", "b", "c"], EngineConfig())
    c.tick(0.5)
    c.flush_network()
    forged = ORMap()
    forged.update(
        "zz/9",
        "a",
        LWWRegister,
        lambda r, ctx: r.assign("zz/9", {"inc": 0, "status": "left"}, Timestamp(2**50, 0)),
    )
    c.inject("a", _forged(c, "b", Delta(77, 0, 1, (Entry("$members", forged),))))
    c.update("a", "k", GCounter, _inc())
    _run(c, 10)
    assert c.rejected == 0
    assert c.engines["b"].value("k") == 1 and c.converged()
