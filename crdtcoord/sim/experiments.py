"""Convergence experiments on the simulator, shared by ``simulations/`` and the notebook.

Every experiment runs the real :class:`~crdtcoord.engine.Engine` in the deterministic simulator;
nothing here models the protocol separately. Results are plain dicts (one per measurement) so a
script can write them as CSV and a notebook can plot them.

Reference values are from the project's theory notes (Demers et al. 1987; Karp et al. 2000,
reproduced by simulation there): rounds until every one of ``n`` sites has an update that started
at one site, when every site contacts one uniformly random other site per round.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any, Literal

from crdtcoord.codec import encode
from crdtcoord.engine import EngineConfig, Persist
from crdtcoord.host import MemoryStorage, Storage
from crdtcoord.host.host import CLEAN
from crdtcoord.sim.network import Constant, LinkConfig, NetworkConfig, Uniform
from crdtcoord.sim.simulation import Simulation
from crdtcoord.types import CRDTBase, GCounter

__all__ = [
    "PATHS",
    "REFERENCE_ROUNDS",
    "Mode",
    "convergence_rows",
    "partition_heal",
    "preloaded",
    "reference_formula",
    "repair_bytes",
    "rounds_to_converge",
    "steady_state_bytes",
]

Mode = Literal["push", "pull", "push-pull"]
Progress = Callable[[int], None] | None

#: Mean rounds to full dissemination, from the reference simulation table (theory notes §1.3).
REFERENCE_ROUNDS: dict[tuple[Mode, int], float] = {
    ("push", 10): 6.05,
    ("push", 100): 12.29,
    ("push", 1000): 18.10,
    ("push", 10000): 23.57,
    ("push", 100000): 29.20,
    ("pull", 10): 5.05,
    ("pull", 100): 9.79,
    ("pull", 1000): 13.73,
    ("pull", 10000): 17.54,
    ("pull", 100000): 21.00,
    ("push-pull", 10): 3.46,
    ("push-pull", 100): 6.54,
    ("push-pull", 1000): 9.16,
    ("push-pull", 10000): 11.64,
    ("push-pull", 100000): 14.06,
}


def reference_formula(mode: Mode, n: int) -> float:
    """Closed-form predictors: push ≈ log2 n + ln n + 1.1; push-pull ≈ log3 n + log2 ln n;
    pull has no simple form in the notes, so its reference is the table value (or NaN)."""
    if mode == "push":
        return math.log2(n) + math.log(n) + 1.1
    if mode == "push-pull":
        return math.log(n, 3) + math.log2(math.log(n))
    return REFERENCE_ROUNDS.get((mode, n), math.nan)


def _rounds_config(mode: Mode) -> EngineConfig:
    # Synchronous rounds as in the reference model: no jitter, anti-entropy only (no delta
    # push, which would flood the update in a few hops), static full membership.
    return EngineConfig(
        ae_interval=1.0,
        ae_jitter=0.0,
        ae_mode=mode,
        push_deltas=False,
        gossip_membership=False,
    )


def rounds_to_converge(n: int, mode: Mode, seed: int, *, max_rounds: int = 200) -> int:
    """Rounds of anti-entropy until all ``n`` replicas hold an update made at one of them.

    Latency is a constant 1 ms, so each 5-message exchange completes well inside its 1 s round
    and, as in the reference model, a replica informed during a round passes it on next round.
    """
    sim = Simulation(
        n,
        seed=seed,
        config=_rounds_config(mode),
        network=NetworkConfig(LinkConfig(latency=Constant(0.001))),
        record_events=False,
    )
    sim.run_until(0.5)
    origin = sim.names[seed % n]
    sim.update(origin, "rumor", GCounter, lambda c, ctx: c.increment(ctx.replica, 1))
    engines = list(sim.engines.values())
    for r in range(1, max_rounds + 1):
        sim.run_until(r + 0.5)
        if all("rumor" in e for e in engines):
            return r
    raise RuntimeError(f"no convergence within {max_rounds} rounds (n={n}, mode={mode})")


def convergence_rows(
    sizes: Iterable[int],
    modes: Iterable[Mode],
    trials: Callable[[int], int],
    *,
    seed: int = 0,
    progress: Progress = None,
) -> list[dict[str, Any]]:
    """One row per (n, mode, trial): the rounds it took."""
    rows = []
    for n in sizes:
        for mode in modes:
            for t in range(trials(n)):
                rounds = rounds_to_converge(n, mode, seed=seed * 1_000_003 + t)
                rows.append({"n": n, "mode": mode, "trial": t, "rounds": rounds})
                if progress:
                    progress(1)
    return rows


def _store(keys: int) -> dict[str, CRDTBase]:
    out: dict[str, CRDTBase] = {}
    for i in range(keys):
        c = GCounter()
        c.increment("writer/1", i + 1)
        out[f"key-{i:07d}"] = c
    return out


def preloaded(node: str, states: dict[str, CRDTBase], incarnation: int = 1) -> Storage:
    """A MemoryStorage that already holds ``states`` for ``node`` (as if it had persisted them)."""
    st = MemoryStorage()
    st.create(node, incarnation)
    st.write([Persist(k, v) for k, v in states.items()], {CLEAN: 1})
    return st


def _pair(store: dict[str, CRDTBase], seed: int) -> Simulation:
    cfg = EngineConfig(ae_interval=1.0, ae_jitter=0.0, push_deltas=False, gossip_membership=False)
    sim = Simulation(
        ["a", "b"],
        seed=seed,
        config=cfg,
        network=NetworkConfig(LinkConfig(latency=Uniform(0.001, 0.003))),
        storage=lambda name: preloaded(name, store),
    )
    for name in ("a", "b"):
        sim.engine(name).digest()  # digest the store before measuring
    return sim


def steady_state_bytes(keys: int, *, rounds: int = 5, seed: int = 0) -> dict[str, Any]:
    """Two replicas in sync: bytes on the wire per anti-entropy round, versus what a naive
    full-state sync would ship per round (every state, once per direction)."""
    store = _store(keys)
    full = sum(len(encode(s)) + len(k) for k, s in store.items())
    sim = _pair(store, seed)
    sim.run_until(0.5)
    start = sim.stats.bytes_sent
    msgs = sim.stats.messages_sent
    sim.run_until(rounds + 0.5)
    per_round = (sim.stats.bytes_sent - start) / rounds
    return {
        "keys": keys,
        "bytes_per_round": per_round,
        "messages_per_round": (sim.stats.messages_sent - msgs) / rounds,
        "full_state_bytes_per_round": 2 * full,
        "ratio": 2 * full / per_round,
    }


def repair_bytes(
    keys: int, differing: int, *, seed: int = 0, initiator: str = "a", repair: bool = False
) -> dict[str, Any]:
    """Bytes one anti-entropy exchange ships when ``differing`` of ``keys`` keys differ (updated
    at replica ``a`` only), versus a full-state sync of the whole store. The exchange is started
    by ``initiator`` ("a": the newer side; "b": the older one), as a periodic round, or with
    ``repair`` as a repair (started by a node that owes the peer data)."""
    store = _store(keys)
    full = sum(len(encode(s)) + len(k) for k, s in store.items())
    sim = _pair(store, seed)
    stride = max(1, keys // max(differing, 1))
    changed = {f"key-{(i * stride) % keys:07d}" for i in range(differing)}
    for key in sorted(changed):
        sim.update("a", key, GCounter, GCounter.Increment(1))
    a = sim.engine("a")
    # what differs, encoded as the newer side holds it: the least any repair must ship
    differing_bytes = sum(len(encode(a.get(k))) for k in changed)  # type: ignore[arg-type, misc]
    other = "b" if initiator == "a" else "a"
    sim.run_until(0.5 if not repair else 0.4)
    sim.engine(other).stop_anti_entropy()  # one exchange, started by the initiator
    start = sim.stats.bytes_sent
    if repair:
        sim.engine(initiator).stop_anti_entropy()
        sim.recover(initiator)  # as after a crash: it probes its peer with a repair exchange
    sim.run_until(1.5)
    used = sim.stats.bytes_sent - start
    converged = sim.converged()
    m = {k: sum(e.metrics.get(k, 0) for e in sim.engines.values()) for k in _AE_PARTS}
    return {
        "keys": keys,
        "differing": differing,
        "repair_bytes": used,
        "bytes_per_differing_key": used / max(differing, 1),
        "full_state_bytes": 2 * full,
        "ratio": 2 * full / used if used else math.inf,
        "converged_in_one_round": converged,
        "state_bytes": m["ae_state_bytes"],  # encoded states shipped (both directions)
        "differing_state_bytes": differing_bytes,
        "tree_bytes": m["ae_tree_bytes"],  # tree items (branches and leaf key lists)
        "keys_shipped": m["ae_keys_shipped"],
    }


#: How a heal is repaired: ``auto`` (the engine's defaults pick per peer: resend the buffered
#: deltas while the buffer holds them, repair by anti-entropy once it overflowed), or one path
#: forced — ``delta`` (a buffer that never overflows) or ``repair`` (a 32-entry buffer that
#: overflows into Merkle repairs once a partition outlasts about 32 updates per node: ~26 s in
#: the default experiment).
PATHS: dict[str, dict[str, Any]] = {
    "auto": {},
    "delta": {"delta_buffer": 1_000_000},
    "repair": {"delta_buffer": 32},
}


_AE_PARTS = ("ae_state_bytes", "ae_tree_bytes", "ae_keys_shipped")


def partition_heal(
    duration: float,
    *,
    nodes: int = 16,
    seed: int = 0,
    update_rate: float = 20.0,
    keys: int = 200,
    path: str = "auto",
    loss: float = 0.01,
    **config: Any,
) -> dict[str, Any]:
    """Split ``nodes`` replicas in two for ``duration`` seconds while both sides keep updating,
    heal, and measure the time and bytes until every replica has the same digest again.
    ``path`` picks the repair path (see :data:`PATHS`); ``config`` overrides engine settings."""
    cfg = EngineConfig(ae_interval=1.0, ae_jitter=0.2, **{**PATHS[path], **config})
    net = NetworkConfig(LinkConfig(latency=Uniform(0.001, 0.010), loss=loss))
    sim = Simulation(nodes, seed=seed, config=cfg, network=net, record_events=False, stagger=True)
    names = sim.names
    rnd = sim.rng
    sim.run_until(1.0)
    half = nodes // 2
    sim.partition(names[:half], names[half:])
    t_end = sim.now + duration
    step = 1.0 / update_rate
    t = sim.now
    while t < t_end:
        t += step
        sim.run_until(t)
        node = names[rnd.randrange(nodes)]
        key = f"k{rnd.randrange(keys)}"
        sim.update(node, key, GCounter, lambda c, ctx: c.increment(ctx.replica, 1))
    sim.run_until(t_end)
    sim.heal()
    healed_at = sim.now
    bytes_before = sim.stats.bytes_sent
    step = 0.05
    limit = healed_at + 120.0
    while not sim.converged():
        sim.run_for(step)
        if sim.now > limit:
            break
    return {
        "partition_s": duration,
        "nodes": nodes,
        "reconverge_s": sim.now - healed_at if sim.converged() else math.nan,
        "repair_bytes": sim.stats.bytes_sent - bytes_before,
        # peers that fell behind a delta buffer (during the partition or after) and were repaired
        "repairs_scheduled": sum(
            e.metrics.get("repairs_scheduled", 0) for e in sim.engines.values()
        ),
        "updates": int(duration * update_rate),
        "path": path,
    }
