"""A riak-style generic convergence state machine for any CRDT type.

Replicas apply random ops; the deltas they return travel through a lossy, duplicating,
reordering "network"; full states are also exchanged through the codec. Invariants after every
step: each replica's state survives the codec and only ever inflates. At the end every remaining
delta is flooded to every replica (in reverse order) and all replicas are fully synced: they must
all be equal, equal to the join of everything, and — for types with a sequential model — show the
model's value::

    TestORSetConverges = convergence_machine(ORSet).TestCase
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from crdtcoord.codec import decode, encode
from crdtcoord.testing.laws import leq
from crdtcoord.testing.ops import Decrement, Env, Increment, Op, apply_op
from crdtcoord.testing.strategies import REPLICAS, ops
from crdtcoord.types import CRDTBase, GCounter, GSet, PNCounter

__all__ = ["convergence_machine"]

Model = Callable[[Any, Op], Any]


def _counter_model(total: Any, op: Op) -> Any:
    if isinstance(op, Increment):
        return total + op.n
    if isinstance(op, Decrement):
        return total - op.n
    return total


def _gset_model(acc: Any, op: Op) -> Any:
    return acc | {op.element}  # type: ignore[attr-defined]


#: Sequential models (initial value, step) for types whose value is order-insensitive.
MODELS: dict[type[CRDTBase], tuple[Any, Model]] = {
    GCounter: (0, _counter_model),
    PNCounter: (0, _counter_model),
    GSet: (frozenset(), _gset_model),
}


def convergence_machine(
    kind: type[CRDTBase], replicas: Sequence[str] = REPLICAS
) -> type[RuleBasedStateMachine]:
    """Build the convergence machine for ``kind``; use ``.TestCase`` in a test module."""
    names = list(replicas)

    class Convergence(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.env = Env()
            self.states: dict[str, CRDTBase] = {r: kind() for r in names}
            self.previous: dict[str, CRDTBase] = {r: kind() for r in names}
            self.in_flight: list[tuple[str, CRDTBase]] = []  # (destination, delta)
            self.all_deltas: list[CRDTBase] = []
            init, step = MODELS.get(kind, (None, None))
            self.model: Any = init
            self.model_step = step

        @rule(replica=st.sampled_from(names), op=ops(kind, replicas=names))
        def apply(self, replica: str, op: Op) -> None:
            delta = apply_op(self.states[replica], op, replica, self.env, check=True)
            if delta is None:
                return
            if self.model_step is not None:
                self.model = self.model_step(self.model, op)
            self.all_deltas.append(delta)
            for dest in names:
                if dest != replica:
                    self.in_flight.append((dest, delta.copy()))

        @precondition(lambda self: self.in_flight)
        @rule(data=st.data(), keep=st.booleans())
        def deliver(self, data: st.DataObject, keep: bool) -> None:
            i = data.draw(st.integers(0, len(self.in_flight) - 1))
            dest, delta = self.in_flight[i] if keep else self.in_flight.pop(i)
            self.states[dest].merge(decode(encode(delta)))

        @precondition(lambda self: self.in_flight)
        @rule(data=st.data())
        def drop(self, data: st.DataObject) -> None:
            self.in_flight.pop(data.draw(st.integers(0, len(self.in_flight) - 1)))

        @rule(src=st.sampled_from(names), dst=st.sampled_from(names))
        def sync(self, src: str, dst: str) -> None:
            self.states[dst].merge(decode(encode(self.states[src])))

        @rule(ms=st.sampled_from([1, 50, 500]))
        def tick(self, ms: int) -> None:
            self.env.advance(ms)

        @invariant()
        def inflates_and_roundtrips(self) -> None:
            for r, s in self.states.items():
                assert leq(self.previous[r], s), f"replica {r} lost information"
                assert decode(encode(s)) == s
                self.previous[r] = s.copy()

        def teardown(self) -> None:
            # Flood every delta to every replica, newest first: each replica must then be exactly
            # the join of all deltas, whatever was lost, duplicated or reordered before.
            for dest, delta in reversed(self.in_flight):
                self.states[dest].merge(delta)
            for d in reversed(self.all_deltas):
                for s in self.states.values():
                    s.merge(d)
            expected = kind()
            for d in self.all_deltas:
                expected.merge(d)
            for r, s in self.states.items():
                assert s == expected, f"replica {r} did not converge:\n  {s!r}\n  {expected!r}"
                assert encode(s) == encode(expected)
            if self.model_step is not None:
                assert expected.value() == self.model, (
                    f"{expected.value()!r} != model {self.model!r}"
                )

    Convergence.__name__ = f"{kind.__name__}Convergence"
    Convergence.__qualname__ = Convergence.__name__
    return Convergence
