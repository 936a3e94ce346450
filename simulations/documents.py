"""Replicated Yjs documents under message loss: time to converge and bytes per edit.

8 replicas of one document receive concurrent edits (text inserts and deletes at random
positions, map sets) for 5 s of virtual time, 40 edits per second over the cluster, on links
that lose a growing share of messages (plus 10 % reordering). When the edits stop the clock
starts; a run ends when every replica has the same digest (state vector, delete set, pending
updates and root kinds; checked every 0.05 s). Three seeds per loss rate.

Bytes per edit is every message byte the engines sent, over the edits. Deltas are Yjs updates
(tens of bytes per edit); anti-entropy asks with the state vector and is answered with the
update the asker lacks, so loss costs retransmissions, never whole documents. "peak pending" is
the most updates any replica held at once because their dependencies had not arrived (sent out
of order or lost): they are kept, relayed and counted in the digest until they integrate.

Writes documents.csv (one row per run) and documents.png to the output folder.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
from typing import Any

from _common import human_bytes, out_dir, progress, table, write_csv

from crdtcoord import Document, Simulation
from crdtcoord.sim import NetworkConfig
from crdtcoord.sim.network import LinkConfig

NODES = 8
RATE = 40.0  # edits per second over the cluster
WORDS = ["a", "é", "☕", "日本", "ops "]


def run(loss: float, seed: int, seconds: float) -> dict[str, Any]:
    """One run: edits for ``seconds``, then until every replica agrees."""
    net = NetworkConfig(default=LinkConfig(loss=loss, reorder=0.1))
    sim = Simulation(NODES, seed=seed, network=net)
    rng = random.Random(f"docs:{seed}:{loss}")
    edits = 0
    peak = 0
    steps = int(seconds * RATE)
    for _ in range(steps):
        node = rng.choice(sim.names)
        r = rng.random()
        if r < 0.6:
            op: Any = Document.InsertText("t", rng.randrange(200), rng.choice(WORDS))
        elif r < 0.8:
            op = Document.DeleteText("t", rng.randrange(200), rng.randrange(1, 4))
        else:
            op = Document.SetKey("m", rng.choice("xyzw"), rng.randrange(1000))
        sim.update(node, "doc", Document, op)
        edits += 1
        sim.run_for(1.0 / RATE)
        peak = max(peak, *(_pending(sim, n) for n in sim.names))
    stop = sim.now
    converged = sim.quiesce(timeout=120, step=0.05)
    values = [sim.value(n, "doc") for n in sim.names]
    return {
        "loss": loss,
        "seed": seed,
        "edits": edits,
        "converged": converged and all(v == values[0] for v in values),
        "converge_s": round(sim.now - stop, 3) if converged else float("nan"),
        "bytes_per_edit": round(sim.stats.bytes_sent / edits, 1),
        "peak_pending": peak,
        "text_chars": len(sim.value(sim.names[0], "doc").get("t", "")),
    }


def _pending(sim: Simulation, node: str) -> int:
    state = sim.nodes[node].engine.live("doc")
    return state.stats().get("pending", 0) if isinstance(state, Document) else 0


def plot(rows: list[dict[str, Any]], path: Any) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    losses = sorted({r["loss"] for r in rows})

    def med(key: str) -> list[float]:
        return [statistics.median(r[key] for r in rows if r["loss"] == x) for x in losses]

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    pct = [100 * x for x in losses]
    ax1.plot(pct, med("converge_s"), marker="o")
    ax1.set_xlabel("messages lost (%)")
    ax1.set_ylabel("time to converge after the last edit (s)")
    ax1.set_title(f"{NODES} replicas of one document")
    ax1.set_ylim(bottom=0)
    ax2.plot(pct, med("bytes_per_edit"), marker="s", color="tab:green")
    ax2.set_xlabel("messages lost (%)")
    ax2.set_ylabel("bytes sent per edit (all nodes)")
    ax2.set_title("replication cost")
    ax2.set_ylim(bottom=0)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer loss rates, one seed, 2 s of edits")
    ap.add_argument("--out", help="output folder (default simulations/out)")
    args = ap.parse_args(argv)
    losses = [0.0, 0.2] if args.quick else [0.0, 0.05, 0.1, 0.2, 0.4]
    seeds = [1] if args.quick else [1, 2, 3]
    seconds = 2.0 if args.quick else 5.0
    rows = []
    bar = progress(len(losses) * len(seeds), "documents")
    for loss in losses:
        for seed in seeds:
            rows.append(run(loss, seed, seconds))
            bar.update(1)
    bar.close()
    folder = out_dir(args.out)
    write_csv(folder / "documents.csv", rows)
    plot(rows, folder / "documents.png")
    print(
        table(
            [
                [
                    f"{100 * r['loss']:.0f} %",
                    r["seed"],
                    r["edits"],
                    "yes" if r["converged"] else "NO",
                    r["converge_s"] if r["converged"] else None,
                    human_bytes(r["bytes_per_edit"]),
                    r["peak_pending"],
                ]
                for r in rows
            ],
            ["loss", "seed", "edits", "converged", "converge s", "per edit", "peak pending"],
        )
    )
    return 0 if all(r["converged"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
