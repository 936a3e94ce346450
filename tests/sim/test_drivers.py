"""Driver agreement: one scripted scenario through the simulator and the hand-driven cluster
ends in identical states (same digests), because both drive the same engine."""

from __future__ import annotations

from typing import Any

from crdtcoord import GCounter, LWWRegister, ORMap, ORSet
from crdtcoord.engine import EngineConfig
from crdtcoord.sim import LinkConfig, NetworkConfig, Simulation
from crdtcoord.testing.cluster import ManualCluster

NAMES = ("a", "b", "c")
SCRIPT: list[tuple[str, str, Any, Any]] = [
    ("a", "hits", GCounter, lambda c, ctx: c.increment(ctx.replica, 2)),
    ("b", "hits", GCounter, lambda c, ctx: c.increment(ctx.replica, 5)),
    ("c", "set", ORSet, lambda s, ctx: s.add(ctx.replica, "x")),
    ("a", "set", ORSet, lambda s, ctx: s.add(ctx.replica, "y")),
    (
        "b",
        "cfg",
        ORMap,
        lambda m, ctx: m.update(ctx, "k", GCounter, lambda g, c: g.increment(c.replica, 1)),
    ),
    ("c", "set", ORSet, lambda s, ctx: s.remove(ctx.replica, "x")),
]


def test_simulator_and_manual_driver_agree() -> None:
    cfg = EngineConfig(ae_jitter=0.0)
    sim = Simulation(
        NAMES,
        seed=9,
        config=cfg,
        network=NetworkConfig(LinkConfig(loss=0.3, duplicate=0.2, reorder=0.3)),
    )
    sim.run_for(0.5)
    for node, key, kind, fn in SCRIPT:
        sim.update(node, key, kind, fn)
        sim.run_for(
            0.001
        )  # the same causal order as below: each update sees the previous ones locally
    assert sim.quiesce(timeout=30)

    manual = ManualCluster(NAMES, cfg)
    for node, key, kind, fn in SCRIPT:
        manual.update(node, key, kind, fn)
    assert manual.quiesce()

    for n in NAMES:
        for key in ("hits", "set", "cfg"):
            assert manual.engines[n].key_digest(key) == sim.engine(n).key_digest(key), (n, key)
    assert {e.value("hits") for e in sim.engines.values()} == {7}


def test_lww_registers_agree_across_drivers() -> None:
    cfg = EngineConfig(ae_jitter=0.0, gossip_membership=False)
    sim = Simulation(NAMES, seed=2, config=cfg)
    sim.run_for(0.5)
    sim.update("a", "r", LWWRegister, lambda r, ctx: r.assign(ctx.replica, 1, ctx.hlc))
    assert sim.quiesce()
    assert {e.value("r") for e in sim.engines.values()} == {1}
