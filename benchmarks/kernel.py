"""Data-type kernel benchmark: mutator costs, ORSet delta vs full merge, codec throughput/size.

Side by side with pycrdt (Yjs), the CRDT library a Python user would otherwise reach for: a
``pycrdt.Map`` used as a set (element -> True), with its v1 update encoding and ``apply_update``.

Workload: elements are ``"item-%07d"`` strings; replicas ``"node-a"``, ``"node-b"``. Default size
100,000 elements (``--quick``: 10,000). Times are per operation, median and p99 over the stated
number of samples, after a warm-up; A/B pairs are alternated within one loop.
"""

from __future__ import annotations

import gc
import os
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))

import pycrdt
from _harness import Result, cli, finish, progress, stats_us, timed

from crdtcoord import (
    HLC,
    BoundedCounter,
    EWFlag,
    GCounter,
    GSet,
    Lease,
    LWWRegister,
    MVRegister,
    ORMap,
    ORSet,
    PNCounter,
    Timestamp,
    decode,
    encode,
)


def elem(i: int) -> str:
    return f"item-{i:07d}"


# ----------------------------------------------------------------------------- mutators


def bench_mutators(b, quick: bool) -> None:  # type: ignore[no-untyped-def]
    b.section("Per-op cost of each mutator (us/op; each sample = a batch of 100 ops)")
    samples = 40 if quick else 200
    batch = 100
    now = [1_000]
    hlc = HLC(lambda: now[0])
    counter = [0]

    def nxt() -> int:
        counter[0] += 1
        return counter[0]

    g, p, bc, gs, s, lww, mv, fl, m, lease = (
        GCounter(),
        PNCounter(),
        BoundedCounter(),
        GSet(),
        ORSet(),
        LWWRegister(),
        MVRegister(),
        EWFlag(),
        ORMap(),
        Lease(),
    )
    bc.increment("node-a", 10**12)

    def lease_cycle() -> None:
        now[0] += 1
        lease.acquire("node-a", "holder", hlc.now(), 1)
        now[0] += 2  # expires: next acquire is a fresh grant

    cases = [
        ("GCounter.increment", lambda: g.increment("node-a", 1)),
        ("PNCounter.decrement", lambda: p.decrement("node-a", 1)),
        ("BoundedCounter.increment", lambda: bc.increment("node-a", 1)),
        ("BoundedCounter.decrement", lambda: bc.decrement("node-a", 1)),
        ("BoundedCounter.transfer", lambda: bc.transfer("node-a", "node-b", 1)),
        ("GSet.add", lambda: gs.add("node-a", elem(nxt()))),
        ("ORSet.add (new element)", lambda: s.add("node-a", elem(nxt()))),
        ("ORSet.add (existing element)", lambda: s.add("node-a", elem(7))),
        ("ORSet.remove", lambda: s.remove("node-a", elem(nxt() - 1))),
        ("LWWRegister.assign (HLC)", lambda: lww.assign("node-a", nxt(), hlc)),
        ("MVRegister.assign", lambda: mv.assign("node-a", nxt())),
        ("EWFlag.enable", lambda: fl.enable("node-a")),
        (
            "ORMap.update (nested GCounter)",
            lambda: m.update(
                "node-a", "hits", GCounter, lambda c, ctx: c.increment(ctx.replica, 1)
            ),
        ),
        (
            "ORMap.update (new key, LWW)",
            lambda: m.update(
                "node-a", nxt(), LWWRegister, lambda r, ctx: r.assign(ctx.replica, 1, hlc)
            ),
        ),
        ("Lease.acquire (fresh grant)", lease_cycle),
    ]
    s.add("node-a", elem(7))
    for name, op in progress(cases, len(cases), "mutators"):
        for _ in range(batch):
            op()  # warm-up
        xs = []
        for _ in range(samples):
            t0 = time.perf_counter_ns()
            for _ in range(batch):
                op()
            xs.append(time.perf_counter_ns() - t0)
        p50, p99, _ = stats_us(xs, per=batch)
        b.add(Result(f"op_{name}", p50, "us", p50=p50, p99=p99, samples=samples * batch))


# ----------------------------------------------------------------------------- ORSet merges


def build_orset(n: int, replica: str) -> ORSet:
    s = ORSet()
    for i in range(n):
        s.add(replica, elem(i))
    return s


def build_ymap(n: int) -> pycrdt.Doc:
    doc = pycrdt.Doc()
    m = doc.get("set", type=pycrdt.Map)
    with doc.transaction():
        for i in range(n):
            m[elem(i)] = True
    return doc


def bench_merges(b, quick: bool) -> None:  # type: ignore[no-untyped-def]
    n = 10_000 if quick else 100_000
    k = f"{n // 1000}k"
    b.section(f"ORSet merge, {n:,} elements (crdtcoord) vs pycrdt Map used as a set")
    origin = build_orset(n, "node-a")
    blob = encode(origin)
    ydoc = build_ymap(n)
    yfull = ydoc.get_update()

    full_samples = 5 if quick else 12
    into_empty, into_synced, y_into_empty, y_into_synced = [], [], [], []
    for _ in progress(range(full_samples), full_samples, "full merges"):
        target, same = ORSet(), decode(blob)
        ye, ys = pycrdt.Doc(), pycrdt.Doc()
        ys.apply_update(yfull)
        gc.collect()
        into_empty.append(timed(lambda t=target: t.merge(origin)))
        into_synced.append(timed(lambda t=same: t.merge(origin)))
        y_into_empty.append(timed(lambda d=ye: d.apply_update(yfull)))
        y_into_synced.append(timed(lambda d=ys: d.apply_update(yfull)))

    def add(name: str, xs: list[int], unit_ms: bool = True, role: str | None = None) -> float:
        p50, p99, _ = stats_us(xs)
        if unit_ms:
            p50, p99 = p50 / 1000, p99 / 1000
        b.add(
            Result(
                name, p50, "ms" if unit_ms else "us", p50=p50, p99=p99, samples=len(xs), role=role
            )
        )
        return p50

    full_empty = add(f"orset_full_merge_{k}_into_empty", into_empty)
    full_synced = add(f"orset_full_merge_{k}_into_synced", into_synced)
    y_empty = add(f"pycrdt_full_update_{k}_into_empty", y_into_empty, role="baseline")
    y_synced = add(f"pycrdt_full_update_{k}_into_synced", y_into_synced, role="baseline")

    # One-element deltas into the large state, alternated with pycrdt's one-key update.
    target = decode(blob)
    ytarget = pycrdt.Doc()
    ytarget.apply_update(yfull)
    m = ydoc.get("set", type=pycrdt.Map)
    deltas_n = 300 if quick else 2000
    add_deltas, rem_deltas, yupdates = [], [], []
    for i in range(deltas_n):
        add_deltas.append(origin.add("node-b", elem(n + i)))
        sv = ydoc.get_state()
        m[elem(n + i)] = True
        yupdates.append(ydoc.get_update(sv))
    for i in range(deltas_n):
        rem_deltas.append(origin.remove("node-b", elem(i)))
    for d in add_deltas[:20]:
        target.merge(d)  # warm-up
    for u in yupdates[:20]:
        ytarget.apply_update(u)
    xs_add, xs_rem, xs_y = [], [], []
    for i in progress(range(20, deltas_n), deltas_n - 20, "delta joins"):
        xs_add.append(timed(lambda i=i: target.merge(add_deltas[i])))
        xs_y.append(timed(lambda i=i: ytarget.apply_update(yupdates[i])))
    for i in range(deltas_n):
        xs_rem.append(timed(lambda i=i: target.merge(rem_deltas[i])))
    delta_add = add(f"orset_delta_join_add_into_{k}", xs_add, unit_ms=False)
    add(f"orset_delta_join_remove_into_{k}", xs_rem, unit_ms=False)
    y_delta = add(f"pycrdt_delta_update_into_{k}", xs_y, unit_ms=False, role="baseline")
    assert "item-0000005" not in target and elem(n + 5) in target

    ratio = full_synced * 1000 / delta_add
    b.add(
        Result(
            f"orset_full_merge_vs_delta_join_{k}",
            ratio,
            "x",
            role="ratio",
            note="target >= 1000x" + (" (met)" if ratio >= 1000 else " (MISSED)"),
        )
    )
    b.add(
        Result(
            "orset_vs_pycrdt_delta_join",
            y_delta / delta_add,
            "x",
            role="ratio",
            note="pycrdt time / crdtcoord time, >1 means crdtcoord faster",
        )
    )
    b.add(
        Result(
            "orset_vs_pycrdt_full_merge_into_empty",
            y_empty / full_empty,
            "x",
            role="ratio",
            note="pycrdt time / crdtcoord time",
        )
    )
    b.add(
        Result(
            "orset_vs_pycrdt_full_merge_into_synced",
            y_synced / full_synced,
            "x",
            role="ratio",
            note="pycrdt time / crdtcoord time",
        )
    )


# ----------------------------------------------------------------------------- codec


def bench_codec(b, quick: bool) -> None:  # type: ignore[no-untyped-def]
    n = 10_000 if quick else 100_000
    k = f"{n // 1000}k"
    b.section(f"Codec throughput and size, {n:,}-element states")
    s = build_orset(n, "node-a")
    for i in range(0, n, 10):
        s.add("node-b", elem(i))  # some elements with a second writer
    gs = GSet()
    for i in range(n):
        gs.add("node-a", elem(i))
    m = ORMap()
    hlc = HLC(lambda: 1_000)
    for i in range(n // 10):
        m.update("node-a", elem(i), LWWRegister, lambda r, ctx, i=i: r.assign(ctx.replica, i, hlc))
    ydoc = build_ymap(n)
    cases = [("orset", s, n), ("gset", gs, n), ("ormap_lww", m, n // 10)]
    reps = 3 if quick else 9
    for name, state, count in cases:
        blob = encode(state)
        enc = [timed(lambda state=state: encode(state)) for _ in range(reps)]
        dec = [timed(lambda blob=blob: decode(blob)) for _ in range(reps)]
        mb = len(blob) / 1e6
        enc_s = stats_us(enc)[0] / 1e6
        dec_s = stats_us(dec)[0] / 1e6
        b.add(Result(f"encode_{name}_{k}", mb / enc_s, "MB/s", samples=reps))
        b.add(Result(f"decode_{name}_{k}", mb / dec_s, "MB/s", samples=reps))
        b.add(Result(f"bytes_per_element_{name}", len(blob) / count, "B"))
    yblob = ydoc.get_update()
    b.add(Result("bytes_per_element_pycrdt_map", len(yblob) / n, "B", role="baseline"))
    b.add(
        Result(
            "orset_vs_pycrdt_bytes",
            (len(yblob) / n) / (len(encode(s)) / n),
            "x",
            role="ratio",
            note="pycrdt bytes / crdtcoord bytes",
        )
    )
    sizes = {"gcounter_3": GCounter(), "lease": Lease()}
    for r in ("node-a", "node-b", "node-c"):
        sizes["gcounter_3"].increment(r, 123456)
    sizes["lease"].acquire("node-a", "holder-1", Timestamp(1_700_000_000_000), 10_000)
    for name, x in sizes.items():
        b.add(Result(f"bytes_{name}", len(encode(x)), "B"))


def main() -> None:
    args, b = cli("kernel", __doc__)
    bench_mutators(b, args.quick)
    bench_merges(b, args.quick)
    bench_codec(b, args.quick)
    finish(args, b)


if __name__ == "__main__":
    main()
