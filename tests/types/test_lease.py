"""Semantics of Lease: grants, renewals, expiry, release, conflicts, decisions, fencing tokens."""

from __future__ import annotations

import pytest
from hypothesis import given

from crdtcoord import InvalidArgument, Lease, LeaseHeld, NotLeaseHolder, Timestamp
from crdtcoord.testing import related_states


def t(ms: int) -> Timestamp:
    return Timestamp(ms, 0)


def test_acquire_renew_expire_reacquire() -> None:
    lease = Lease()
    lease.acquire("n1", "svc-a", t(1000), ttl_ms=500)
    assert (lease.holder_at(t(1200)), lease.token, lease.epoch) == ("svc-a", 1, 1)
    with pytest.raises(LeaseHeld) as info:
        lease.acquire("n2", "svc-b", t(1400), 500)
    assert info.value.holder == "svc-a" and info.value.token == 1
    lease.renew("n1", "svc-a", t(1400), 500)
    assert lease.expiry == t(1900) and lease.token == 1
    assert lease.holder_at(t(1900)) is None  # expiry is exclusive
    with pytest.raises(NotLeaseHolder, match="expired"):
        lease.renew("n1", "svc-a", t(2000), 500)
    lease.acquire("n2", "svc-b", t(2000), 500)
    assert (lease.holder, lease.token, lease.epoch) == ("svc-b", 2, 2)


def test_release_beats_a_concurrent_renewal() -> None:
    a = Lease()
    a.acquire("n1", "h", t(0), 1000)
    b = a.copy()
    a.release("n1", "h", t(10))
    b.renew("n2", "h", t(20), 5000)
    a.merge(b)
    b.merge(a)
    assert a == b and a.holder is None and a.token == 1


def test_concurrent_grants_conflict_and_a_decision_dominates_both() -> None:
    base = Lease()
    x, y = base.copy(), base.copy()
    x.acquire("n1", "alice", t(100), 1000)
    y.acquire("n2", "bob", t(120), 1000)
    assert x.token == y.token == 1  # same token: the lease alone cannot tell them apart
    assert Lease.conflicts(x, y) and Lease.conflicts(y, x)
    merged = x.copy()
    merged.merge(y)
    decision = merged.copy()
    decision.force("arbiter", "alice", t(130), 1000, min_token=42)
    for s in (x, y):
        s.merge(decision)
        assert (s.holder, s.token) == ("alice", 42)
    assert not Lease.conflicts(x, y)


def test_no_conflict_without_overlap_or_with_one_holder() -> None:
    a, b = Lease(), Lease()
    a.acquire("n1", "alice", t(0), 100)
    b.acquire("n2", "bob", t(100), 100)  # starts when alice's term ends
    assert not Lease.conflicts(a, b)
    c = Lease()
    c.acquire("n3", "alice", t(50), 100)
    assert not Lease.conflicts(a, c)


@given(related_states(Lease, 3))
def test_fencing_token_never_decreases_across_merges(xs: list) -> None:
    acc = Lease()
    seen = 0
    for x in xs:
        acc.merge(x)
        assert acc.token >= max(seen, x.token)
        seen = acc.token


@pytest.mark.parametrize("bad", ["", "\ud800", "x" * 256, 7, None])
def test_holder_names_follow_replica_id_rules(bad: object) -> None:
    lease = Lease()
    with pytest.raises(InvalidArgument):
        lease.acquire("n1", bad, t(0), 100)  # type: ignore[arg-type]
    assert lease.is_bottom()
