"""Promises of "once", "never" and "no loss", checked through crashes and restarts, and against
replies that arrive late, from an earlier process, or for an earlier exchange. Each of the first
three tests failed on the engine before it was split into parts (issue: engine as parts)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgpack
import pytest

from crdtcoord import GCounter, ORSet, PNCounter
from crdtcoord.engine import (
    ALL,
    EngineConfig,
    Persist,
    ProtocolError,
    ReadDone,
    WriteDone,
    at_least,
)
from crdtcoord.host import MemoryStorage
from crdtcoord.sim import LinkConfig, NetworkConfig, Simulation, Uniform
from crdtcoord.testing.cluster import ManualCluster

QUIET = EngineConfig(ae_enabled=False, gossip_membership=False)


def inc(n: int = 1) -> Any:
    return lambda c, ctx: c.increment(ctx.replica, n)


def test_a_read_reply_meant_for_the_previous_process_does_not_count() -> None:
    """Defect 1: read handles restarted at 1 in every process and replies were matched by (op,
    key) only, so a reply to the old process's read completed the new one with state=None."""
    c = ManualCluster(["r", "p", "w"], QUIET)
    c.read("r", "k", consistency=at_least(2))
    for i in [i for i, m in enumerate(c.queue) if m.kind == "READ"][::-1]:
        c.deliver(i)
    old_replies = [m for m in c.queue if m.kind == "READ_REPLY"]
    c.queue.clear()
    c.crash("r")
    c.restart("r")  # keeps its data and incarnation; a new process
    c.update("w", "k", GCounter, inc(), consistency=at_least(2))
    for i in range(len(c.queue) - 1, -1, -1):
        if c.queue[i].dst == "r":
            c.drop(i)  # r does not hear of the write
    c.flush_network()
    assert [w.acked_by for _, w in c.events["w"] if isinstance(w, WriteDone)] == [("w", "p")]
    op = c.read("r", "k", consistency=at_least(2))
    new_reads = list(c.queue)
    c.queue.clear()
    c.inject("r", next(m for m in old_replies if m.src == "p").data)  # the late, old reply
    assert not [e for _, e in c.events["r"] if isinstance(e, ReadDone) and e.handle == op]
    c.queue.extend(new_reads)
    c.flush_network()
    (done,) = [e for _, e in c.events["r"] if isinstance(e, ReadDone) and e.handle == op]
    assert done.state is not None and done.state.value() == 1, done


def test_an_idempotent_retry_is_applied_once_across_a_restart() -> None:
    """Defect 2: the window of seen op ids lived only in memory."""
    c = ManualCluster(["a", "b"], QUIET)
    c.update("a", "k", PNCounter, inc(5), op_id="req-1")
    c.crash("a")
    c.restart("a")
    assert "req-1" in c.engines["a"].op_ids()
    c.update("a", "k", PNCounter, inc(5), op_id="req-1")  # the client's retry
    assert c.engines["a"].value("k") == 5
    c.update("a", "k", PNCounter, inc(5), op_id="req-2")
    assert c.engines["a"].value("k") == 10


def test_a_retry_at_a_consistency_level_waits_for_it_again() -> None:
    c = ManualCluster(["a", "b", "c"], QUIET)
    c.update("a", "k", GCounter, inc(2), op_id="req-1", consistency=ALL)
    c.queue.clear()  # the write was applied at a; its deltas (and so its acks) are lost
    c.crash("a")
    c.restart("a")
    op = c.update("a", "k", GCounter, inc(2), op_id="req-1", consistency=ALL)
    c.flush_network()
    done = [e for _, e in c.events["a"] if isinstance(e, WriteDone) and e.handle == op]
    assert done and sorted(done[0].acked_by) == ["a", "b", "c"]
    assert {c.engines[n].value("k") for n in "abc"} == {2}  # applied once, everywhere


@pytest.mark.parametrize(
    ("latency", "gap", "writes", "seed"),
    [(0.3, 0.31, 12, 1), (0.45, 0.13, 12, 2), (0.45, 0.7, 5, 1), (0.45, 0.7, 5, 2)],
)
def test_a_late_exchange_answer_does_not_cancel_a_needed_repair(
    latency: float, gap: float, writes: int, seed: int
) -> None:
    """Defect 3: AE_OK / "exchange done" cleared a peer's repair whatever exchange they
    answered; with a one-entry buffer on a slow link (no loss, no crash) keys never arrived.
    These timings lost a key on the old engine."""
    cfg = EngineConfig(ae_enabled=False, gossip_membership=False, delta_buffer=1)
    link = LinkConfig(latency=Uniform(latency * 0.8, latency * 1.2))
    sim = Simulation(["a", "b"], seed=seed, config=cfg, network=NetworkConfig(link))
    sim.run_for(0.5)
    for i in range(writes):
        sim.update("a", f"k{i}", GCounter, inc())
        sim.run_for(gap)
    sim.run_for(30)
    assert sim.engine("b").keys() == sim.engine("a").keys()
    assert sim.converged() and not sim.engine("a").repairs()


class DropLast(MemoryStorage):
    """A broken storage: forgets the last Persist of every write (it 'acknowledges' early)."""

    def write(self, batch: Sequence[Persist], meta: dict[str, int] | None = None) -> None:
        super().write(list(batch)[:-1], meta)


@pytest.mark.parametrize("broken", [False, True])
def test_what_is_acknowledged_survives_only_if_the_storage_keeps_it(broken: bool) -> None:
    """b acknowledges a write at ALL and crashes; a loses its disk. Only b's storage can bring
    the write back: a storage that drops the last Persist loses an acknowledged write, the real
    one does not. (The restart builds b only from its storage, never from the dead engine.)"""
    storage = (lambda n: DropLast() if n == "b" else MemoryStorage()) if broken else None
    c = ManualCluster(["a", "b"], EngineConfig(gossip_membership=False), storage=storage)
    c.update("a", "s", ORSet, lambda s, ctx: s.add(ctx.replica, "x"), consistency=ALL)
    c.flush_network()
    assert [e for _, e in c.events["a"] if isinstance(e, WriteDone)]  # acknowledged by b
    c.crash("a")
    c.crash("b")
    c.restart("b")
    c.restart("a", lose_state=True)
    assert c.quiesce()
    if broken:
        assert "s" not in c.engines["a"] and "s" not in c.engines["b"]  # the write is gone
    else:
        assert c.engines["a"].value("s") == c.engines["b"].value("s") == frozenset({"x"})


def test_a_node_restarted_with_its_data_keeps_its_incarnation_and_dots() -> None:
    sim = Simulation(["a", "b"], seed=3)
    sim.run_for(0.3)
    sim.update("a", "s", ORSet, lambda s, ctx: s.add(ctx.replica, "x"))
    sim.run_for(0.5)
    inc_before = sim.engine("a").incarnation
    sim.crash("a")
    sim.run_for(2.0)
    sim.restart("a")
    assert sim.engine("a").incarnation == inc_before
    sim.update("a", "s", ORSet, lambda s, ctx: s.remove(ctx.replica, "x"))
    sim.update("a", "s", ORSet, lambda s, ctx: s.add(ctx.replica, "y"))
    assert sim.quiesce()
    assert sim.value("b", "s") == frozenset({"y"})


def test_an_incarnation_beyond_the_clock_is_refused_before_it_is_recorded() -> None:
    """One corrupted (or forged) message with a huge incarnation must not lock a sender out."""
    c = ManualCluster(["a", "b"], QUIET)
    c.tick(1.0)
    c.update("a", "k", GCounter, inc())
    c.tick(0.01)
    genuine = c.queue.pop(0).data
    raw = msgpack.unpackb(genuine, raw=False, strict_map_key=False)
    raw[3] = 10**15  # incarnation: far beyond b's clock (1 s = 1000 ms + 500 ms offset)
    with pytest.raises(ProtocolError) as info:
        c.hosts["b"].receive(msgpack.packb(raw, use_bin_type=True), c.now)
    assert info.value.code == "future_incarnation"
    c.inject("b", genuine)  # the sender's genuine messages still count
    assert c.engines["b"].value("k") == 1
