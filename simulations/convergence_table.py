"""Rounds to full convergence vs cluster size, for push, pull and push-pull anti-entropy.

Every run is the real replication engine in the deterministic simulator: n replicas, one update
at one of them, synchronous anti-entropy rounds (interval 1 s, no jitter, 1 ms links), deltas off.
A run ends when every replica holds the update. The table puts the measured mean, p50 and p99
next to the published/reproduced reference (Demers et al. 1987; Karp et al. 2000) and the
closed-form predictors push ≈ log2 n + ln n + 1.1 and push-pull ≈ log3 n + log2 ln n.

Writes convergence_rounds.csv (one row per run), convergence_table.csv (summary) and
convergence_table.png to the output folder.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from typing import cast

from _common import out_dir, progress, table, write_csv

from crdtcoord.sim.experiments import REFERENCE_ROUNDS, Mode, convergence_rows, reference_formula


def _p(xs: list[int], q: float) -> int:
    s = sorted(xs)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--sizes", default="100,1000,10000", help="cluster sizes (default %(default)s)")
    ap.add_argument("--modes", default="push,pull,push-pull", help="anti-entropy modes")
    ap.add_argument(
        "--trials",
        type=int,
        default=None,
        help="runs per (size, mode); default 30 up to 1,000 replicas, 4 above",
    )
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", default=None, help="output folder (default simulations/out)")
    ap.add_argument("--quick", action="store_true", help="sizes 100,300 and 5 trials: seconds")
    args = ap.parse_args(argv)
    sizes = [100, 300] if args.quick else [int(x) for x in args.sizes.split(",")]
    modes = cast(list[Mode], args.modes.split(","))
    for m in modes:
        if m not in ("push", "pull", "push-pull"):
            ap.error(f"unknown mode {m!r}")
    per = (lambda n: 5) if args.quick else (lambda n: args.trials or (30 if n <= 1000 else 4))
    total = sum(per(n) for n in sizes) * len(modes)
    t0 = time.perf_counter()
    bar = progress(total, "simulating")
    rows = convergence_rows(sizes, modes, per, seed=args.seed, progress=bar.update)
    bar.close()
    elapsed = time.perf_counter() - t0
    out = out_dir(args.out)
    write_csv(out / "convergence_rounds.csv", rows)

    summary = []
    for n in sizes:
        for mode in modes:
            xs = [r["rounds"] for r in rows if r["n"] == n and r["mode"] == mode]
            ref = REFERENCE_ROUNDS.get((mode, n), math.nan)
            summary.append(
                {
                    "n": n,
                    "mode": mode,
                    "trials": len(xs),
                    "mean": statistics.fmean(xs),
                    "p50": _p(xs, 0.5),
                    "p99": _p(xs, 0.99),
                    "reference_mean": ref,
                    "formula": reference_formula(mode, n),
                    "delta_vs_reference": statistics.fmean(xs) - ref,
                }
            )
    write_csv(out / "convergence_table.csv", summary)
    print()
    print(
        table(
            [
                [
                    s["n"],
                    s["mode"],
                    s["trials"],
                    s["mean"],
                    s["p50"],
                    s["p99"],
                    s["reference_mean"],
                    s["formula"],
                    s["delta_vs_reference"],
                ]
                for s in summary
            ],
            ["n", "mode", "runs", "mean", "p50", "p99", "reference", "formula", "Δ vs ref"],
        )
    )
    print(f"\n{len(rows)} simulated runs in {elapsed:.1f} s")

    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    colors = {"push": "tab:red", "pull": "tab:blue", "push-pull": "tab:green"}
    for mode in modes:
        pts = [s for s in summary if s["mode"] == mode]
        ax.plot(
            [s["n"] for s in pts],
            [s["mean"] for s in pts],
            "o-",
            color=colors.get(mode),
            label=f"{mode} (crdtcoord engine)",
        )
        refs = [
            (n, REFERENCE_ROUNDS[(mode, n)])
            for n in (10, 100, 1000, 10000, 100000)
            if (mode, n) in REFERENCE_ROUNDS
        ]
        ax.plot(
            [n for n, _ in refs],
            [r for _, r in refs],
            "x--",
            color=colors.get(mode),
            alpha=0.5,
            label=f"{mode} (reference)",
        )
    ax.set_xscale("log")
    ax.set_xlabel("replicas (n)")
    ax.set_ylabel("rounds until every replica has the update")
    ax.set_title("Anti-entropy convergence: engine vs published reference")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "convergence_table.png", dpi=120)
    print(f"wrote {out / 'convergence_table.png'}")

    check = [s for s in summary if s["mode"] == "push-pull" and s["n"] == 1000]
    if check:
        ok = abs(check[0]["delta_vs_reference"]) <= 1.0
        print(
            "push-pull at n=1000 within one round of the reference (9.16): "
            f"{'yes' if ok else 'NO'} ({check[0]['mean']:.2f})"
        )
        return 0 if ok else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
