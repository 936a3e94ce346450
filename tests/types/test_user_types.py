"""A user-defined type is first class: registered wire tag, ops as data, codec, testing kit."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Self

import pytest
from hypothesis import given
from hypothesis.stateful import run_state_machine_as_test

from crdtcoord import (
    CodecError,
    CRDTBase,
    InvalidArgument,
    Op,
    Reader,
    UpdateContext,
    decode,
    decode_op,
    encode,
    encode_op,
    register_type,
)
from crdtcoord.testing import check_laws, convergence_machine, related_states


@register_type(tag=201)
class MinRegister(CRDTBase):
    """Keeps the smallest integer ever offered (None before the first offer)."""

    __slots__ = ("n",)

    @dataclass(frozen=True, slots=True)
    class Offer(Op):
        n: int
        FIELDS = ("int",)

        def apply(self, state: MinRegister, ctx: UpdateContext) -> MinRegister:
            return state.offer(self.n)

    OPS = (Offer,)

    def __init__(self, n: int | None = None) -> None:
        self.n = n

    def offer(self, n: int) -> MinRegister:
        delta = MinRegister(n)
        self.merge(delta)
        return delta

    def value(self) -> int | None:
        return self.n

    def merge(self, other: Self) -> bool:
        self._check_mergeable(other)
        if other.n is not None and (self.n is None or other.n < self.n):
            self.n = other.n
            return True
        return False

    def copy(self) -> Self:
        return type(self)(self.n)

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.n == self.n  # type: ignore[attr-defined]

    def stats(self) -> dict[str, int]:
        return {"elements": int(self.n is not None), "metadata": 0}

    def to_payload(self) -> Any:
        return self.n

    @classmethod
    def from_payload(cls, payload: Any, version: int, reader: Reader, depth: int) -> Self:
        return cls(None if payload is None else reader.integer(payload, "n", -(2**63)))


@given(related_states(MinRegister, 3))
def test_laws_hold_for_a_user_type(xs: list[MinRegister]) -> None:
    check_laws(*xs)


def test_convergence_machine_runs_on_a_user_type() -> None:
    run_state_machine_as_test(convergence_machine(MinRegister))


def test_user_type_and_its_ops_travel_through_the_codec() -> None:
    r = MinRegister()
    r.apply(MinRegister.Offer(4), "a")
    assert decode(encode(r)) == r
    assert decode_op(encode_op(MinRegister.Offer(-3))) == MinRegister.Offer(-3)
    with pytest.raises(CodecError):
        decode_op(encode_op(MinRegister.Offer(1))[:-1] + b"\xc3")  # True is not an int


def test_registration_rules() -> None:
    with pytest.raises(InvalidArgument, match=r"128\.\.255"):
        register_type(tag=5)
    with pytest.raises(InvalidArgument, match="already used"):
        register_type(tag=201)(type("Other", (CRDTBase,), {}))
