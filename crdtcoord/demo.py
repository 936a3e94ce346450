"""``make demo``: three replicas update concurrently and converge, with nothing central.

Each replica holds the same four keys (a PN-counter, an OR-set, an escrow quota and a lease). They
update concurrently; their deltas travel through a deliberately bad network (shuffled, duplicated,
20% lost) and through the real codec; then one round of full-state anti-entropy repairs whatever
was lost. The script prints the digests before and after: they differ, then they are equal.
Run it with ``python -m crdtcoord.demo [--seed N]``.
"""

from __future__ import annotations

import argparse
import random
import sys
from collections.abc import Callable
from typing import Any

from crdtcoord import (
    HLC,
    BoundedCounter,
    InsufficientRights,
    Lease,
    LeaseHeld,
    ORSet,
    PNCounter,
    decode,
    digest,
    encode,
)
from crdtcoord.types import CRDTBase

REPLICAS = ("a", "b", "c")
KEYS: dict[str, Callable[[], CRDTBase]] = {
    "requests": PNCounter,
    "members": ORSet,
    "quota": lambda: BoundedCounter(lower=0),
    "scheduler-lease": Lease,
}


def _fingerprint(store: dict[str, Any]) -> str:
    return "".join(digest(store[k]).hex()[:4] for k in sorted(store))


def _show(stores: dict[str, dict[str, Any]], title: str) -> None:
    print(f"\n{title}")
    print(f"  {'replica':8} {'requests':>8}  {'members':>7} {'quota':>5}  {'lease':20} digest")
    for r, store in stores.items():
        lease = store["scheduler-lease"].value()
        who = f"{lease.holder} (token {lease.token})" if lease and lease.holder else "-"
        members = len(store["members"].value())
        print(
            f"  {r:8} {store['requests'].value():>8}  {members:>7} "
            f"{store['quota'].value():>5}  {who:20} {_fingerprint(store)}"
        )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--seed", type=int, default=7, help="seed of the network's misbehaviour")
    args = ap.parse_args(argv)
    rnd = random.Random(args.seed)

    now = [1_700_000_000_000]
    skew = {"a": 0, "b": 180, "c": -120}  # ms: clocks disagree, HLCs keep causality anyway

    def physical(r: str) -> Callable[[], int]:
        return lambda: now[0] + skew[r]

    clocks = {r: HLC(physical(r)) for r in REPLICAS}
    stores: dict[str, dict[str, Any]] = {
        r: {k: make() for k, make in KEYS.items()} for r in REPLICAS
    }
    network: list[tuple[str, str, bytes]] = []  # (destination, key, encoded delta)

    def emit(origin: str, key: str, delta: CRDTBase) -> None:
        for dest in REPLICAS:
            if dest != origin:
                network.append((dest, key, encode(delta)))

    print("crdtcoord demo: 3 replicas, concurrent updates, a lossy network, convergence")
    # Set-up, synced once: a quota of 6 units, granted to a, who hands 2 to b and 2 to c.
    setup = [stores["a"]["quota"].increment("a", 6)]
    setup += [stores["a"]["quota"].transfer("a", r, 2) for r in ("b", "c")]
    for r in ("b", "c"):
        for d in setup:
            stores[r]["quota"].merge(d)

    refused = 0
    claims: dict[str, Lease] = {}
    for step in range(12):
        r = REPLICAS[step % 3]
        s = stores[r]
        now[0] += 40
        emit(r, "requests", s["requests"].increment(r, rnd.randint(1, 5)))
        if step % 4 == 3:
            emit(r, "requests", s["requests"].decrement(r, 1))
        emit(r, "members", s["members"].add(r, f"{r}{step}"))
        if step == 7:
            emit(r, "members", s["members"].remove(r, "a0"))
        try:
            emit(r, "quota", s["quota"].decrement(r, 1))
        except InsufficientRights:
            refused += 1  # out of local rights: refused on the spot, no round trip to anyone
        if step in (3, 4):  # a and b both claim the lease before hearing from each other
            lease = s["scheduler-lease"]
            assert isinstance(lease, Lease)
            try:
                emit(r, "scheduler-lease", lease.acquire(r, f"worker-{r}", clocks[r].now(), 60_000))
                claims[r] = lease.copy()
            except LeaseHeld as exc:
                print(f"  lease: {r} sees it held ({exc})")
    print(f"  quota: {refused} decrements refused locally once a replica's rights ran out")

    _show(stores, "Before delivery: every replica has only its own updates")

    rnd.shuffle(network)
    duplicated = network + rnd.sample(network, len(network) // 4)
    lost = 0
    for dest, key, blob in duplicated:
        if rnd.random() < 0.2:
            lost += 1
            continue
        stores[dest][key].merge(decode(blob))
    _show(stores, f"After the network: {len(duplicated)} deltas shuffled/duplicated, {lost} lost")

    def anti_entropy() -> None:
        """One round: every pair exchanges full states through the codec."""
        for x in REPLICAS:
            for y in REPLICAS:
                if x != y:
                    for k in KEYS:
                        stores[y][k].merge(decode(encode(stores[x][k])))

    anti_entropy()
    _show(stores, "After one anti-entropy round: converged")

    if Lease.conflicts(claims["a"], claims["b"]):
        print(
            "\n  The two lease claims were concurrent and overlap (same token, two holders):"
            "\n  escalate. A decision (here: the earliest claim) is written with a higher token,"
            "\n  and it dominates both claims on every replica."
        )
        winner = min(claims.values(), key=lambda c: c.value().granted_at)  # type: ignore[union-attr]
        lease = stores["c"]["scheduler-lease"]
        assert isinstance(lease, Lease) and winner.holder is not None
        emit("c", "scheduler-lease", lease.force("c", winner.holder, clocks["c"].now(), 60_000))
        anti_entropy()
        _show(stores, "After the decision flowed back")

    prints = {_fingerprint(s) for s in stores.values()}
    quota_ok = all(s["quota"].value() >= 0 for s in stores.values())
    print(f"\n  digests equal: {len(prints) == 1}; quota never below 0: {quota_ok}")
    return 0 if len(prints) == 1 and quota_ok else 1


if __name__ == "__main__":
    sys.exit(main())
