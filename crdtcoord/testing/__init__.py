"""The testing kit shipped with crdtcoord (needs hypothesis: ``pip install crdtcoord[testing]``).

* :mod:`~crdtcoord.testing.strategies` — Hypothesis strategies for elements, values, ops,
  histories and reachable states of every built-in type;
* :mod:`~crdtcoord.testing.laws` — merge laws (commutative, associative, idempotent, monotone),
  the delta-mutator law, codec round trip and canonical bytes, for any type;
* :mod:`~crdtcoord.testing.machines` — a generic convergence state machine over a lossy network,
  and a replication-engine machine (faults, partitions, crashes) over a hand-driven cluster;
* :mod:`~crdtcoord.testing.cluster` — :class:`ManualCluster`, engines whose every message waits
  in a visible queue until a test delivers, drops or duplicates it;
* :mod:`~crdtcoord.testing.ops` — ops as data and a replay environment with skewed clocks.
"""

from crdtcoord.testing.cluster import ManualCluster, Message
from crdtcoord.testing.laws import (
    assert_associative,
    assert_canonical,
    assert_commutative,
    assert_delta_mutator,
    assert_idempotent,
    assert_monotone,
    assert_roundtrip,
    check_laws,
    joined,
    leq,
)
from crdtcoord.testing.machines import convergence_machine, replication_machine
from crdtcoord.testing.ops import Env, Op, Step, apply_op, run_history
from crdtcoord.testing.strategies import (
    elements,
    histories,
    ops,
    register_op_strategy,
    related_states,
    states,
    values,
)

__all__ = [
    "Env",
    "ManualCluster",
    "Message",
    "Op",
    "Step",
    "apply_op",
    "assert_associative",
    "assert_canonical",
    "assert_commutative",
    "assert_delta_mutator",
    "assert_idempotent",
    "assert_monotone",
    "assert_roundtrip",
    "check_laws",
    "convergence_machine",
    "elements",
    "histories",
    "joined",
    "leq",
    "ops",
    "register_op_strategy",
    "related_states",
    "replication_machine",
    "run_history",
    "states",
    "values",
]
