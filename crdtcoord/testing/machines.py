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
from crdtcoord.testing.ops import Env, apply_op
from crdtcoord.testing.strategies import REPLICAS, ops
from crdtcoord.types import CRDTBase, GCounter, GSet, Op, PNCounter

__all__ = ["convergence_machine", "replication_machine"]

Model = Callable[[Any, Op], Any]


def _counter_model(total: Any, op: Op) -> Any:
    if isinstance(op, GCounter.Increment | PNCounter.Increment):
        return total + op.n
    if isinstance(op, PNCounter.Decrement):
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


# ----------------------------------------------------------------------------- replication machine


def replication_machine(
    keys: dict[str, type[CRDTBase]] | None = None,
    nodes: Sequence[str] = ("a", "b", "c"),
    config: Any = None,
) -> type[RuleBasedStateMachine]:
    """A stateful test of the replication engine over a hand-driven network.

    Any interleaving of updates, deliveries, losses, duplicates, reorders, partitions, heals,
    ticks, crashes and restarts (with or without state loss) must, once healed and quiet, leave
    every replica with the same digest; no acknowledged update is ever lost; replicas never hold
    anything that no update produced; and every engine's incremental digest index always agrees
    with a digest recomputed from scratch.
    """
    from crdtcoord._exceptions import CrdtError
    from crdtcoord.engine import EngineConfig, at_least
    from crdtcoord.testing.cluster import ManualCluster
    from crdtcoord.types import LWWRegister, ORMap, ORSet, PNCounter

    key_types = keys or {"count": PNCounter, "set": ORSet, "map": ORMap, "reg": LWWRegister}
    names = list(nodes)
    cfg = config or EngineConfig(
        ae_interval=1.0, ae_jitter=0.2, delta_buffer=8, retransmit_after=0.3
    )

    class Replication(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.cluster = ManualCluster(names, cfg)
            # (node, key, delta, op handle, incarnation at the time)
            self.updates: list[tuple[str, str, CRDTBase, int, int]] = []
            self.lost_state: set[tuple[str, int]] = set()  # (node, incarnation) that lost state

        @precondition(lambda self: len(self.cluster.down) < len(names))
        @rule(data=st.data(), key=st.sampled_from(sorted(key_types)), strong=st.booleans())
        def update(self, data: st.DataObject, key: str, strong: bool) -> None:
            live = [n for n in names if n not in self.cluster.down]
            node = data.draw(st.sampled_from(live))
            kind = key_types[key]
            actors = [self.cluster.engines[n].actor for n in names]
            op = data.draw(ops(kind, replicas=actors))
            eng = self.cluster.engines[node]
            before = eng.digest()
            captured: list[CRDTBase] = []

            def fn(state: Any, ctx: Any) -> CRDTBase:
                delta = op.apply(state, ctx)
                captured.append(delta.copy())
                return delta

            try:
                handle = self.cluster.update(
                    node, key, kind, fn, consistency=at_least(2) if strong else at_least(1)
                )
            except CrdtError:
                assert eng.digest() == before, "a refused update changed the replica"
                return
            self.updates.append((node, key, captured[0], handle, self.cluster.incarnation(node)))

        @precondition(lambda self: self.cluster.queue)
        @rule(data=st.data(), keep=st.booleans())
        def deliver(self, data: st.DataObject, keep: bool) -> None:
            self.cluster.deliver(data.draw(st.integers(0, len(self.cluster.queue) - 1)), keep=keep)

        @precondition(lambda self: self.cluster.queue)
        @rule(data=st.data())
        def drop(self, data: st.DataObject) -> None:
            self.cluster.drop(data.draw(st.integers(0, len(self.cluster.queue) - 1)))

        @rule(dt=st.sampled_from([0.01, 0.1, 0.5, 1.0]))
        def tick(self, dt: float) -> None:
            self.cluster.tick(dt)

        @rule(data=st.data())
        def partition(self, data: st.DataObject) -> None:
            side = data.draw(st.sets(st.sampled_from(names), min_size=1, max_size=len(names) - 1))
            self.cluster.partition(sorted(side), [n for n in names if n not in side])

        @rule()
        def heal(self) -> None:
            self.cluster.heal()

        @precondition(lambda self: len(self.cluster.down) < len(names) - 1)
        @rule(node=st.sampled_from(names))
        def crash(self, node: str) -> None:
            self.cluster.crash(node)

        @precondition(lambda self: self.cluster.down)
        @rule(data=st.data(), lose=st.booleans())
        def restart(self, data: st.DataObject, lose: bool) -> None:
            node = data.draw(st.sampled_from(sorted(self.cluster.down)))
            if lose:
                self.lost_state.add((node, self.cluster.incarnation(node)))
            self.cluster.restart(node, lose_state=lose)

        @invariant()
        def digest_index_is_exact(self) -> None:
            for eng in self.cluster.engines.values():
                assert eng.recompute_digest() == eng.digest(), "incremental digest index drifted"

        def _acked(self) -> set[tuple[str, int, int]]:
            """Writes acknowledged by at least one *other* replica that never lost its state."""
            done: set[tuple[str, int, int]] = set()
            for node, inc, op_id, who in self.cluster.acks:
                if any(p != node and (p, i) not in self.lost_state for p, i in who.items()):
                    done.add((node, inc, op_id))
            return done

        def teardown(self) -> None:
            c = self.cluster
            c.heal()
            for n in sorted(c.down):
                c.restart(n)
            assert c.quiesce(rounds=80), "replicas did not converge after heal"
            acked = self._acked()
            final = c.engines[names[0]]
            for node, key, delta, handle, inc in self.updates:
                state = final.get(key)
                survived = (node, inc) not in self.lost_state or (node, inc, handle) in acked
                if survived:
                    assert state is not None and leq(delta, state), (
                        f"update at {node} to {key!r} was lost: {delta!r}"
                    )
            for key in final.keys(prefix=""):
                everything = key_types[key]()
                for _, k, delta, _, _ in self.updates:
                    if k == key:
                        everything.merge(delta)
                state = final.get(key)
                assert state is not None and leq(state, everything), (
                    f"{key!r} holds data no update produced"
                )
                if not self.lost_state:
                    # nothing was lost to amnesia: the converged state is exactly the merge of
                    # every update ever made
                    assert state == everything, f"{key!r} != the merge of its updates"

    Replication.__name__ = "ReplicationMachine"
    return Replication
