"""Clocks and causality metadata: hybrid logical clocks, version vectors, dots and contexts."""

from crdtcoord.clocks.dots import Dot, DotContext
from crdtcoord.clocks.hlc import HLC, Timestamp
from crdtcoord.clocks.vv import Causality, VersionVector

__all__ = ["HLC", "Causality", "Dot", "DotContext", "Timestamp", "VersionVector"]
