"""The deterministic simulator: reproducibility, faults, partitions, crashes, skew, scale."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crdtcoord import GCounter, ORSet
from crdtcoord.engine import EngineConfig
from crdtcoord.sim import Constant, LinkConfig, NetworkConfig, Simulation, Uniform

ROOT = Path(__file__).resolve().parents[2]
LOSSY = NetworkConfig(
    LinkConfig(latency=Uniform(0.001, 0.02), loss=0.1, duplicate=0.1, reorder=0.2)
)


def _scenario(seed: int) -> Simulation:
    sim = Simulation(6, seed=seed, network=LOSSY, skews={"n00002": 0.3, "n00004": -0.2})
    sim.run_for(0.5)
    for i, n in enumerate(sim.names):
        sim.update(n, "hits", GCounter, lambda c, ctx: c.increment(ctx.replica, 1))
        sim.update(n, "members", ORSet, lambda s, ctx, i=i: s.add(ctx.replica, i))
        sim.run_for(0.05)
    sim.partition(sim.names[:3], sim.names[3:])
    sim.update("n00000", "members", ORSet, lambda s, ctx: s.remove(ctx.replica, 4))
    sim.update("n00005", "members", ORSet, lambda s, ctx: s.add(ctx.replica, 4))
    sim.run_for(3.0)
    sim.heal()
    sim.crash("n00001")
    sim.run_for(1.0)
    sim.restart("n00001")
    assert sim.quiesce(timeout=30)
    return sim


def test_same_seed_same_run() -> None:
    a, b = _scenario(7), _scenario(7)
    assert a.trace_digest() == b.trace_digest()
    assert a.digests() == b.digests()
    assert a.stats == b.stats
    assert _scenario(8).trace_digest() != a.trace_digest()


def test_runs_do_not_depend_on_hash_randomization() -> None:
    code = (
        "import sys; sys.path[:0] = ['.', 'transports']\n"
        "from tests.sim.test_simulation import _scenario\n"
        "print(_scenario(11).trace_digest())\n"
    )
    outs = set()
    for hashseed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hashseed}
        out = subprocess.run(
            [sys.executable, "-c", code],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        outs.add(out.stdout.strip())
    assert len(outs) == 1


def test_faults_partition_heal_converge_with_add_wins() -> None:
    sim = _scenario(3)
    engines = sim.engines
    assert {e.value("hits") for e in engines.values()} == {6}
    # n00005's add of 4 was concurrent with n00000's remove: add wins everywhere.
    assert {e.value("members") for e in engines.values()} == {frozenset(range(6))}
    assert sim.stats.messages_dropped > 0 and sim.stats.messages_duplicated > 0


def test_partitioned_sides_diverge_then_converge() -> None:
    cfg = EngineConfig(ae_interval=0.5)
    sim = Simulation(4, seed=1, config=cfg)
    sim.run_for(0.2)
    sim.partition(["n00000", "n00001"], ["n00002", "n00003"])
    sim.update("n00000", "k", GCounter, lambda c, ctx: c.increment(ctx.replica, 1))
    sim.update("n00003", "k", GCounter, lambda c, ctx: c.increment(ctx.replica, 2))
    sim.run_for(5.0)
    assert sim.converged(["n00000", "n00001"]) and sim.converged(["n00002", "n00003"])
    assert not sim.converged()
    sim.heal()
    assert sim.quiesce(timeout=10)
    assert {e.value("k") for e in sim.engines.values()} == {3}


def test_crash_with_state_loss_restarts_under_a_new_incarnation() -> None:
    sim = Simulation(3, seed=2)
    sim.run_for(0.2)
    sim.update("n00000", "s", ORSet, lambda s, ctx: s.add(ctx.replica, "x"))
    sim.run_for(1.0)
    sim.crash("n00000")
    before = sim.engine("n00000").incarnation
    sim.restart("n00000", lose_state=True)
    # a lost data dir comes back under the wall clock (ms) as its incarnation: larger than any
    # earlier one, without remembering it
    assert sim.engine("n00000").incarnation == 1200 > before
    sim.update("n00000", "s", ORSet, lambda s, ctx: s.add(ctx.replica, "y"))
    assert sim.quiesce(timeout=10)
    assert sim.engine("n00001").value("s") == frozenset({"x", "y"})


def test_hostile_bytes_are_counted_and_change_nothing() -> None:
    sim = Simulation(2, seed=4)
    sim.run_for(0.5)
    sim.update("n00000", "k", GCounter, lambda c, ctx: c.increment(ctx.replica, 1))
    assert sim.quiesce()
    before = sim.digests()
    for junk in (b"", b"\xc1", b"\x99" * 9):
        sim.inject("n00000", "n00001", junk)
    sim.run_for(0.01)
    assert sim.stats.rejected == 3 and sim.digests() == before


def test_clock_skew_is_per_node() -> None:
    sim = Simulation(2, seed=5, skews={"n00001": 2.5})
    sim.run_for(1.0)
    assert sim.engine("n00001").now == pytest.approx(sim.engine("n00000").now + 2.5, abs=1.0)


def test_push_pull_rounds_grow_logarithmically() -> None:
    cfg = EngineConfig(ae_jitter=0.0, push_deltas=False, gossip_membership=False)
    net = NetworkConfig(LinkConfig(latency=Constant(0.001)))
    rounds = {}
    for n in (50, 1500):
        sim = Simulation(n, seed=1, config=cfg, network=net, record_events=False)
        sim.run_until(0.5)
        sim.update(sim.names[0], "k", GCounter, lambda c, ctx: c.increment(ctx.replica, 1))
        r = 0
        while sum(1 for e in sim.engines.values() if "k" in e) < n:
            r += 1
            sim.run_until(r + 0.5)
            assert r < 30
        rounds[n] = r
    assert 3 <= rounds[50] <= 8 and 6 <= rounds[1500] <= 13
    assert rounds[1500] > rounds[50]


@given(
    st.lists(st.floats(-3.0, 3.0, allow_nan=False), min_size=3, max_size=3), st.integers(0, 10**6)
)
@settings(max_examples=25, deadline=None)
def test_any_clock_skews_converge(skews: list[float], seed: int) -> None:
    names = ["x", "y", "z"]
    sim = Simulation(names, seed=seed, network=LOSSY, skews=dict(zip(names, skews, strict=True)))
    sim.run_for(0.3)
    for n in names:
        sim.update(n, "k", GCounter, lambda c, ctx: c.increment(ctx.replica, 1))
    assert sim.quiesce(timeout=30)
    assert {e.value("k") for e in sim.engines.values()} == {3}
