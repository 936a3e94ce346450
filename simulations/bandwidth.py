"""Anti-entropy bandwidth: in-sync cost vs store size, and repair cost vs differing keys.

1. Steady state: two replicas hold the same store of 1k ... 100k keys (G-Counters). Bytes per
   anti-entropy round (both replicas initiate one exchange per round) against a naive full-state
   sync, which would ship every state both ways every round.
2. Repair: in a store of 100k keys (--quick: 10k), d keys are updated at one replica only; one
   exchange repairs them. Bytes on the wire against a full-state sync of the store.

Writes bandwidth_steady.csv, bandwidth_repair.csv and bandwidth.png to the output folder.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from _common import out_dir, progress, table, write_csv

from crdtcoord.sim.experiments import repair_bytes, steady_state_bytes


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--sizes", default="1000,10000,100000", help="store sizes for the steady state")
    ap.add_argument("--store", type=int, default=100_000, help="store size for the repair runs")
    ap.add_argument("--differing", default="1,10,100,1000,10000", help="differing keys to repair")
    ap.add_argument("--out", default=None, help="output folder (default simulations/out)")
    ap.add_argument("--quick", action="store_true", help="small stores: seconds")
    args = ap.parse_args(argv)
    sizes = [1000, 5000] if args.quick else [int(x) for x in args.sizes.split(",")]
    store = 5000 if args.quick else args.store
    diffs = (
        [1, 10, 100]
        if args.quick
        else [int(x) for x in args.differing.split(",") if int(x) <= store]
    )
    out = out_dir(args.out)

    bar = progress(len(sizes) + len(diffs), "measuring")
    steady = []
    for n in sizes:
        steady.append(steady_state_bytes(n))
        bar.update(1)
    repair = []
    for d in diffs:
        repair.append(repair_bytes(store, d))
        bar.update(1)
    bar.close()
    write_csv(out / "bandwidth_steady.csv", steady)
    write_csv(out / "bandwidth_repair.csv", repair)

    print("\nIn sync: bytes per anti-entropy round (2 replicas, each starts one exchange)")
    print(
        table(
            [
                [
                    s["keys"],
                    s["bytes_per_round"],
                    s["messages_per_round"],
                    s["full_state_bytes_per_round"],
                    s["ratio"],
                ]
                for s in steady
            ],
            ["keys", "bytes/round", "msgs/round", "full-state bytes/round", "full / ours"],
        )
    )
    print(f"\nRepair: one exchange, {store:,}-key store, d keys differ")
    print(
        table(
            [
                [
                    r["differing"],
                    r["repair_bytes"],
                    r["bytes_per_differing_key"],
                    r["full_state_bytes"],
                    r["ratio"],
                    r["converged_in_one_round"],
                ]
                for r in repair
            ],
            ["d", "repair bytes", "bytes/key", "full-state bytes", "full / ours", "repaired"],
        )
    )

    import matplotlib.pyplot as plt

    def panel(
        ax: Any, xs: list[int], ours: list[float], full: list[float], ours_label: str
    ) -> None:
        ax.loglog(xs, ours, "o-", label=ours_label)
        ax.loglog(xs, full, "s--", label="full-state sync")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.2))
    panel(
        a,
        [s["keys"] for s in steady],
        [s["bytes_per_round"] for s in steady],
        [s["full_state_bytes_per_round"] for s in steady],
        "crdtcoord digest anti-entropy",
    )
    a.set(
        xlabel="keys in the store",
        ylabel="bytes per round (in sync)",
        title="Steady state: constant, whatever the store size",
    )
    panel(
        b,
        [r["differing"] for r in repair],
        [r["repair_bytes"] for r in repair],
        [r["full_state_bytes"] for r in repair],
        "crdtcoord Merkle descent",
    )
    b.set(
        xlabel="differing keys", ylabel="bytes to repair", title=f"Repair in a {store:,}-key store"
    )
    fig.tight_layout()
    fig.savefig(out / "bandwidth.png", dpi=120)
    print(f"wrote {out / 'bandwidth.png'}")
    constant = (
        max(s["bytes_per_round"] for s in steady) - min(s["bytes_per_round"] for s in steady) <= 16
    )
    print(f"in-sync rounds constant-size across store sizes: {'yes' if constant else 'NO'}")
    return 0 if constant and all(r["converged_in_one_round"] for r in repair) else 1


if __name__ == "__main__":
    sys.exit(main())
