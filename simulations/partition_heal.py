"""Time to re-converge after partitions of growing length.

16 replicas (deltas and anti-entropy on, 1 s rounds with jitter, 1-10 ms links, 1% loss) are
split in two halves for L seconds while updates keep arriving on both sides (20 per second over
200 keys). At the heal, the clock starts: the run ends when every replica has the same digest.
Two delta-buffer sizes are compared: a large buffer lets acknowledged delta streams catch up;
a small one overflows during long partitions and hands the peers to anti-entropy repair.

Writes partition_heal.csv and partition_heal.png to the output folder.
"""

from __future__ import annotations

import argparse
import sys

from _common import out_dir, progress, table, write_csv

from crdtcoord.sim.experiments import partition_heal


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--durations", default="1,2,5,10,30,60,120", help="partition lengths in seconds"
    )
    ap.add_argument("--buffers", default="4096,32", help="delta-buffer sizes to compare")
    ap.add_argument("--nodes", type=int, default=16)
    ap.add_argument("--seeds", type=int, default=3, help="runs per point (median reported)")
    ap.add_argument("--out", default=None, help="output folder (default simulations/out)")
    ap.add_argument("--quick", action="store_true", help="two short partitions, one seed: seconds")
    args = ap.parse_args(argv)
    durations = [1.0, 5.0] if args.quick else [float(x) for x in args.durations.split(",")]
    buffers = [int(x) for x in args.buffers.split(",")]
    seeds = 1 if args.quick else args.seeds
    out = out_dir(args.out)

    rows = []
    bar = progress(len(durations) * len(buffers) * seeds, "partitions")
    for buf in buffers:
        for d in durations:
            runs = []
            for s in range(seeds):
                runs.append(partition_heal(d, nodes=args.nodes, seed=s, delta_buffer=buf))
                bar.update(1)
            runs.sort(key=lambda r: r["reconverge_s"])
            med = runs[len(runs) // 2]
            rows.append(
                {**med, "delta_buffer": buf, "worst_reconverge_s": runs[-1]["reconverge_s"]}
            )
    bar.close()
    write_csv(out / "partition_heal.csv", rows)
    print()
    print(
        table(
            [
                [
                    r["delta_buffer"],
                    r["partition_s"],
                    r["updates"],
                    r["reconverge_s"],
                    r["worst_reconverge_s"],
                    r["repair_bytes"],
                    r["repairs_scheduled"],
                ]
                for r in rows
            ],
            [
                "buffer",
                "partition s",
                "updates",
                "re-converge s (median)",
                "worst",
                "bytes after heal",
                "repairs",
            ],
        )
    )

    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.2))
    for buf in buffers:
        pts = [r for r in rows if r["delta_buffer"] == buf]
        a.plot(
            [r["partition_s"] for r in pts],
            [r["reconverge_s"] for r in pts],
            "o-",
            label=f"delta buffer {buf}",
        )
        b.plot(
            [r["partition_s"] for r in pts],
            [r["repair_bytes"] / 1e3 for r in pts],
            "o-",
            label=f"delta buffer {buf}",
        )
    for ax in (a, b):
        ax.set_xscale("log")
        ax.set_xlabel("partition length (s)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    a.set_ylabel("seconds to re-converge after heal")
    a.set_title("Re-convergence time")
    b.set_ylabel("kB sent after the heal")
    b.set_title("Repair traffic")
    fig.tight_layout()
    fig.savefig(out / "partition_heal.png", dpi=120)
    print(f"wrote {out / 'partition_heal.png'}")
    return 0 if all(r["reconverge_s"] == r["reconverge_s"] for r in rows) else 1  # NaN = never


if __name__ == "__main__":
    sys.exit(main())
