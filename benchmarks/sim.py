"""Simulator scale benchmark: 20 anti-entropy rounds of 10,000 replicas (--quick: 1,000).

Workload: n real engines in one process, full static membership, push-pull anti-entropy every
1 s (no jitter), 1-5 ms links, deltas off. One update at t=0.5 spreads (about 12 rounds at
n=10,000), the remaining rounds are in sync (one message pair per exchange). Reported: wall time
for the 20 rounds, simulated replica-rounds and messages per wall second, peak memory. There is
no side-by-side baseline: no other simulator runs this engine; the number to watch is the rate.
"""

from __future__ import annotations

import os
import resource
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))

from _harness import Result, cli, finish

from crdtcoord import GCounter
from crdtcoord.engine import EngineConfig
from crdtcoord.sim import LinkConfig, NetworkConfig, Simulation, Uniform


def main() -> None:
    args, b = cli("sim", __doc__)
    n = 1_000 if args.quick else 10_000
    rounds = 20
    b.section(f"{rounds} rounds of {n:,} replicas (push-pull anti-entropy, real engines)")
    cfg = EngineConfig(ae_jitter=0.0, push_deltas=False, gossip_membership=False)
    t0 = time.perf_counter()
    sim = Simulation(
        n,
        seed=1,
        config=cfg,
        network=NetworkConfig(LinkConfig(latency=Uniform(0.001, 0.005))),
        record_events=False,
    )
    built = time.perf_counter()
    sim.run_until(0.5)
    sim.update(sim.names[0], "rumor", GCounter, lambda c, ctx: c.increment(ctx.replica, 1))
    informed_at = None
    for r in range(1, rounds + 1):
        sim.run_until(r + 0.5)
        if informed_at is None and all("rumor" in e for e in sim.engines.values()):
            informed_at = r
        print(
            f"  round {r:2}: {sim.stats.messages_sent:>10,} messages so far",
            file=sys.stderr,
            flush=True,
        )
    done = time.perf_counter()
    wall = done - built
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    b.add(Result(f"sim_build_{n}_engines", built - t0, "s"))
    b.add(
        Result(
            f"sim_{rounds}_rounds_{n}_replicas",
            wall,
            "s",
            note=f"all informed after {informed_at} rounds",
        )
    )
    b.add(Result("sim_replica_rounds_per_s", n * rounds / wall, "1/s"))
    b.add(
        Result(
            "sim_messages_per_s",
            sim.stats.messages_sent / wall,
            "1/s",
            note=f"{sim.stats.messages_sent:,} messages",
        )
    )
    b.add(Result("sim_bytes_per_replica_round", sim.stats.bytes_sent / (n * rounds), "B"))
    b.add(Result("sim_peak_rss", rss_mb, "MB"))
    finish(args, b)


if __name__ == "__main__":
    main()
