"""Replication-engine benchmark: the cost of an update through the engine, next to the bare
mutator; re-convergence after a partition on each path (forced) and on the engine's own choice;
what a digest repair ships compared with the states that differ.

Workloads (all in one run, A and B alternated where they are compared):

* ``Engine.update`` of a GCounter increment (callback and op), an ORSet add of a new element,
  each next to the bare mutator; the engine's effects are drained after every update, as a host
  does, and a flush (tick) happens every 2,000 updates (about every 5 ms at this rate). Also the
  amortized cost of update + flush (the batched deltas are joined at flush).
* Partition heal: 16 replicas, 1-10 ms links, 1% loss, split in halves for L seconds while 20
  updates/s land on 200 keys; bytes and time from the heal until every replica has the same
  digest, for the engine's defaults ("auto") and both paths forced ("delta": a buffer that never
  overflows; "repair": a 32-entry buffer that overflows into Merkle repairs). Median of 3 seeds.
* Repair: two replicas of a 100,000-key store (``--quick``: 10,000) where 10% of the keys were
  updated at one side: bytes of one anti-entropy exchange vs the encoded differing states alone.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(__file__))

from _harness import Result, cli, finish, progress, stats_us

from crdtcoord import GCounter, ORSet
from crdtcoord.engine import Engine, EngineConfig
from crdtcoord.sim.experiments import partition_heal, repair_bytes


def bench_updates(b: Any, quick: bool) -> None:
    b.section("Engine.update vs the bare mutator (us/op, one sample per update)")
    n = 6_000 if quick else 30_000
    flush_every = 2_000
    cfg = EngineConfig(gossip_membership=False, ae_enabled=False)
    eng = Engine("a", config=cfg)
    eng.start(0.0)
    pc = time.perf_counter_ns
    bare_g = GCounter()
    bare_s = ORSet()
    inc_fn = lambda c, ctx: c.increment(ctx.replica, 1)  # noqa: E731
    inc_op = GCounter.Increment(1)
    counter = [0]

    def add_fn(s: ORSet, ctx: Any) -> ORSet:
        counter[0] += 1
        return s.add(ctx.replica, counter[0])

    now = [0.0]  # the driver's clock (read outside the timed calls, as a host does)
    cases: dict[str, Any] = {
        "bare GCounter.increment": lambda: bare_g.increment("a/1", 1),
        "Engine.update GCounter increment (callback)": lambda: eng.update(
            "hits", GCounter, inc_fn, now[0]
        ),
        "Engine.update GCounter.Increment (op)": lambda: eng.update(
            "hits", GCounter, inc_op, now[0]
        ),
        "bare ORSet.add (new element)": lambda: bare_s.add("a/1", next_elem()),
        "Engine.update ORSet add (new element)": lambda: eng.update("set", ORSet, add_fn, now[0]),
    }
    elem = [0]

    def next_elem() -> int:
        elem[0] += 1
        return elem[0]

    samples: dict[str, list[int]] = {k: [] for k in cases}
    for _ in range(200):  # warm-up
        for f in cases.values():
            f()
        eng.poll()
    for i in progress(range(n), n, "updates"):
        for name, f in cases.items():  # A and B alternate
            t = pc()
            f()
            samples[name].append(pc() - t)
            eng.poll()
        if i % flush_every == flush_every - 1:
            now[0] += 0.01
            eng.tick(now[0])
            eng.poll()
    med: dict[str, float] = {}
    for name, xs in samples.items():
        p50, p99, _ = stats_us(xs)
        med[name] = p50
        b.add(Result(name, p50, "us", p50=p50, p99=p99, samples=len(xs)))

    # amortized: N updates plus the flushes that join their batched deltas
    m = 20_000 if quick else 100_000
    t0 = pc()
    for i in range(m):
        eng.update("hits", GCounter, inc_op, eng.now)
        eng.poll()
        if i % flush_every == flush_every - 1:
            eng.tick(eng.now + 0.01)
            eng.poll()
    amortized = (pc() - t0) / m / 1000
    b.add(Result("Engine.update op, amortized with flushes", amortized, "us", samples=m))

    r_fn = med["Engine.update GCounter increment (callback)"] / med["bare GCounter.increment"]
    r_op = med["Engine.update GCounter.Increment (op)"] / med["bare GCounter.increment"]
    r_set = med["Engine.update ORSet add (new element)"] / med["bare ORSet.add (new element)"]
    inc = med["Engine.update GCounter increment (callback)"]
    verdict = "met" if inc <= 2.0 and r_fn <= 2.0 else "MISSED"
    b.add(
        Result(
            "engine_increment_vs_bare",
            r_fn,
            "x",
            role="ratio",
            note=f"target: median <= 2 us and <= 2x bare ({inc:.2f} us, {r_fn:.2f}x: {verdict})",
        )
    )
    b.add(Result("engine_op_increment_vs_bare", r_op, "x", role="ratio"))
    b.add(Result("engine_orset_add_vs_bare", r_set, "x", role="ratio"))


def bench_partition(b: Any, quick: bool) -> None:
    b.section("Re-convergence after a partition: the engine's choice vs each path forced")
    durations = [5.0] if quick else [5.0, 30.0, 120.0]
    seeds = 1 if quick else 3
    paths = ("auto", "delta", "repair")
    total = len(durations) * len(paths) * seeds
    bar = progress(range(total), total, "partitions")
    for d in durations:
        res: dict[str, tuple[float, float]] = {}
        for p in paths:
            runs = []
            for s in range(seeds):
                runs.append(partition_heal(d, seed=s, path=p))
                next(bar, None)
            t = statistics.median(r["reconverge_s"] for r in runs)
            by = statistics.median(r["repair_bytes"] for r in runs)
            res[p] = (t, by)
            b.add(Result(f"heal_{int(d)}s_{p}_reconverge", t, "s", samples=seeds))
            b.add(Result(f"heal_{int(d)}s_{p}_bytes", by / 1e3, "KB", samples=seeds))
        cheaper = min(res["delta"][1], res["repair"][1])
        ok = res["auto"][0] <= 0.2 and res["auto"][1] <= cheaper
        b.add(
            Result(
                f"heal_{int(d)}s_auto_vs_cheaper_path_bytes",
                res["auto"][1] / cheaper,
                "x",
                role="ratio",
                note="target: median re-convergence <= 0.2 s and bytes <= the cheaper path"
                + (" (met)" if ok else " (MISSED)"),
            )
        )
    for _ in bar:
        pass


def bench_repair(b: Any, quick: bool) -> None:
    b.section("Anti-entropy vs the differing states themselves (10% of the keys differ)")
    keys = 10_000 if quick else 100_000
    differing = keys // 10
    cases = [
        ("repair", "a", True),  # started by the node that owes the peer data
        ("round_started_by_newer", "a", False),  # a periodic round, either side may start it
        ("round_started_by_older", "b", False),
    ]
    for name, initiator, repair in cases:
        r = repair_bytes(keys, differing, initiator=initiator, repair=repair)
        states = r["differing_state_bytes"]  # encoded as the newer side holds them
        ratio = r["state_bytes"] / states
        note = f"{r['keys_shipped']} states for {differing} differing keys"
        if repair:
            note += "; target: never more than the differing states" + (
                " (met)" if r["state_bytes"] <= states else " (MISSED)"
            )
        b.add(Result(f"{name}_bytes", r["repair_bytes"] / 1e3, "KB"))
        b.add(Result(f"{name}_states_vs_differing", ratio, "x", role="ratio", note=note))
        b.add(Result(f"{name}_tree_bytes", r["tree_bytes"] / 1e3, "KB", note="branches, leaves"))
    b.add(Result("differing_states_bytes", states / 1e3, "KB", role="baseline"))
    b.add(Result("full_state_sync_bytes", r["full_state_bytes"] / 1e3, "KB", role="baseline"))


def main() -> None:
    args, b = cli("engine", __doc__)
    bench_updates(b, args.quick)
    bench_partition(b, args.quick)
    bench_repair(b, args.quick)
    finish(args, b)


if __name__ == "__main__":
    main()
