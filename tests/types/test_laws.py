"""Lattice laws, the delta-mutator law and codec properties for all ten types, under Hypothesis."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crdtcoord.testing import (
    Env,
    assert_associative,
    assert_canonical,
    assert_commutative,
    assert_delta_mutator,
    assert_idempotent,
    assert_monotone,
    assert_roundtrip,
    check_laws,
    ops,
    related_states,
    run_history,
)
from crdtcoord.testing.strategies import REPLICAS, histories
from crdtcoord.types import ALL_TYPES

TYPES = pytest.mark.parametrize("kind", ALL_TYPES, ids=lambda t: t.__name__)


def test_all_ten_types_are_covered() -> None:
    assert len(ALL_TYPES) == 10
    assert len({t.TYPE_TAG for t in ALL_TYPES}) == 10


@TYPES
def test_merge_laws_on_states_of_one_system(kind: type) -> None:
    @given(related_states(kind, 3))
    def check(xs: list) -> None:
        check_laws(*xs)

    check()


@TYPES
def test_merge_laws_on_independent_systems(kind: type) -> None:
    """States from unrelated histories (same replica ids reused): still a join, deterministic."""

    @given(related_states(kind, 1), related_states(kind, 1), related_states(kind, 1))
    def check(a: list, b: list, c: list) -> None:
        assert_idempotent(a[0])
        assert_commutative(a[0], b[0])
        assert_associative(a[0], b[0], c[0])
        assert_monotone(a[0], b[0])
        assert_canonical(a[0], b[0])

    check()


@TYPES
def test_delta_mutators(kind: type) -> None:
    @given(
        histories(kind),
        related_states(kind, 1),
        st.sampled_from(REPLICAS),
        st.lists(ops(kind), min_size=1, max_size=4),
    )
    def check(hist: tuple, other: list, replica: str, op_list: list) -> None:
        steps, skews = hist
        env = Env(skews)
        state = run_history(kind, REPLICAS, steps, env, check_refusals=False).states[replica]
        for op in op_list:
            assert_delta_mutator(state, op, replica, env, other[0])
            op_result = state.copy()
            try:
                op.apply(op_result, replica, env)
                state = op_result
            except Exception:
                pass

    check()


@TYPES
def test_copy_is_independent(kind: type) -> None:
    @given(related_states(kind, 2))
    def check(xs: list) -> None:
        a, b = xs
        snapshot = a.copy()
        c = a.copy()
        c.merge(b)
        assert a == snapshot
        if c != a:
            assert c != snapshot

    check()


@TYPES
def test_roundtrip_of_deltas_and_bottom(kind: type) -> None:
    assert_roundtrip(kind())
    assert kind().is_bottom()

    @given(related_states(kind, 1))
    def check(xs: list) -> None:
        assert_roundtrip(xs[0])

    check()
