"""Consensus plug-ins: what the few updates that must not diverge go through.

One async :class:`Consensus` protocol — leases with fencing tokens, idempotent decisions — and
three back-ends: :class:`LocalConsensus` (one process), :class:`RaftConsensus` (pysyncobj,
embedded in the nodes) and :class:`EtcdConsensus` (etcd's v3 JSON gateway over aiohttp). See
``docs/coordination.md`` for what each guarantees.
"""

from crdtcoord.consensus.base import (
    Consensus,
    ConsensusError,
    ConsensusUnavailable,
    Fence,
    Grant,
    LeaseLost,
    LeaseState,
    StaleToken,
    valid_until,
)
from crdtcoord.consensus.local import LocalConsensus
from crdtcoord.consensus.raft import RaftConsensus, raft_address

__all__ = [
    "Consensus",
    "ConsensusError",
    "ConsensusUnavailable",
    "EtcdConsensus",
    "Fence",
    "Grant",
    "LeaseLost",
    "LeaseState",
    "LocalConsensus",
    "RaftConsensus",
    "StaleToken",
    "raft_address",
    "valid_until",
]


def __getattr__(name: str) -> object:
    # (etcd needs aiohttp: imported when asked for, so the core never imports it)
    if name == "EtcdConsensus":
        from crdtcoord.consensus.etcd import EtcdConsensus

        return EtcdConsensus
    raise AttributeError(name)
