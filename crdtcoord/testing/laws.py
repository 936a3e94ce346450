"""CRDT law checks, usable on any type that follows the crdtcoord contract (yours included).

Each ``assert_*`` raises ``AssertionError`` with the states involved. They never mutate their
arguments (they work on copies). Run them under Hypothesis with the strategies in
:mod:`crdtcoord.testing.strategies`, e.g.::

    @given(related_states(MyType, 3))
    def test_laws(xs):
        check_laws(*xs)
"""

from __future__ import annotations

from typing import Any

from crdtcoord.codec import decode, digest, encode
from crdtcoord.testing.ops import Env, Op, apply_op
from crdtcoord.types import CRDTBase

__all__ = [
    "assert_associative",
    "assert_canonical",
    "assert_commutative",
    "assert_delta_mutator",
    "assert_idempotent",
    "assert_monotone",
    "assert_roundtrip",
    "check_laws",
    "joined",
    "leq",
]


def joined(*xs: CRDTBase) -> Any:
    """A fresh state: the join of ``xs`` left to right."""
    out = xs[0].copy()
    for x in xs[1:]:
        out.merge(x.copy())
    return out


def leq(a: CRDTBase, b: CRDTBase) -> bool:
    """Semilattice order: ``a <= b`` iff ``a ⊔ b == b``."""
    return bool(joined(b, a) == b)


def assert_idempotent(a: CRDTBase) -> None:
    """``a ⊔ a == a``, and merging an equal state reports no change."""
    x = a.copy()
    changed = x.merge(a.copy())
    assert x == a, f"merge is not idempotent:\n  a     = {a!r}\n  a ⊔ a = {x!r}"
    assert not changed, f"merging an equal state reported a change: {a!r}"


def assert_commutative(a: CRDTBase, b: CRDTBase) -> None:
    ab, ba = joined(a, b), joined(b, a)
    assert ab == ba, f"merge is not commutative:\n  a ⊔ b = {ab!r}\n  b ⊔ a = {ba!r}"


def assert_associative(a: CRDTBase, b: CRDTBase, c: CRDTBase) -> None:
    left = joined(joined(a, b), c)
    right = joined(a, joined(b, c))
    assert left == right, f"merge is not associative:\n  (a⊔b)⊔c = {left!r}\n  a⊔(b⊔c) = {right!r}"


def assert_monotone(a: CRDTBase, b: CRDTBase) -> None:
    """Merge only inflates: ``a <= a ⊔ b`` and ``b <= a ⊔ b``; the returned flag is exact."""
    x = a.copy()
    changed = x.merge(b.copy())
    assert leq(a, x) and leq(b, x), f"merge does not inflate:\n  a={a!r}\n  b={b!r}\n  a⊔b={x!r}"
    assert changed == (x != a), (
        f"merge reported changed={changed} but state {'did' if x != a else 'did not'} change"
    )


def assert_roundtrip(a: CRDTBase) -> None:
    """``decode(encode(a)) == a`` and re-encoding gives the same bytes."""
    blob = encode(a)
    b = decode(blob)
    assert type(b) is type(a) and b == a, f"codec round trip changed the state:\n  {a!r}\n  {b!r}"
    assert encode(b) == blob, "re-encoding a decoded state gave different bytes"


def assert_canonical(a: CRDTBase, b: CRDTBase) -> None:
    """Equal states from different merge orders encode to the same bytes and digest."""
    ab, ba = joined(a, b), joined(b, a)
    assert ab == ba
    assert encode(ab) == encode(ba), "equal states encode differently"
    assert digest(ab) == digest(ba)


def assert_delta_mutator(state: CRDTBase, op: Op, replica: str, env: Env, other: CRDTBase) -> None:
    """The delta an op returns has the op's effect: ``x ⊔ δ == op(x)``, and for any replica ``y``
    that has seen ``x``, ``y ⊔ δ == y ⊔ op(x)``. A refused op must change nothing."""
    after = state.copy()
    delta = apply_op(after, op, replica, env, check=True)
    if delta is None:
        return
    via_delta = joined(state, delta)
    assert via_delta == after, f"x ⊔ δ != op(x) for {op!r} at {replica!r}:\n  δ={delta!r}"
    y = joined(other, state)
    assert joined(y, delta) == joined(y, after), f"y ⊔ δ != y ⊔ op(x) for {op!r}"
    assert decode(encode(delta)) == delta, "delta does not survive the codec"


def check_laws(a: CRDTBase, b: CRDTBase, c: CRDTBase) -> None:
    """All merge laws and codec properties on three states of one type."""
    for x in (a, b, c):
        assert_idempotent(x)
        assert_roundtrip(x)
    assert_commutative(a, b)
    assert_associative(a, b, c)
    assert_monotone(a, b)
    assert_canonical(a, b)
