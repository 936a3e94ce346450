"""Deterministic discrete-event simulator driving real replication engines (see
:class:`Simulation`)."""

from crdtcoord.sim.network import Constant, Latency, LinkConfig, LogNormal, NetworkConfig, Uniform
from crdtcoord.sim.simulation import NodeHandle, SimStats, Simulation

__all__ = [
    "Constant",
    "Latency",
    "LinkConfig",
    "LogNormal",
    "NetworkConfig",
    "NodeHandle",
    "SimStats",
    "Simulation",
    "Uniform",
]
