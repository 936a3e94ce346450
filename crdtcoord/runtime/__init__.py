"""The asyncio runtime: :class:`Node` (one replica with a clock, a transport and a storage),
typed handles on its keys, the change feed, and the transport protocol with an in-process
transport. The networked transport is ``crdtcoord_http.HttpTransport``."""

from crdtcoord.runtime.documents import DocumentHandle
from crdtcoord.runtime.feed import Change, ChangeFeed, Compacted, Subscription
from crdtcoord.runtime.handles import (
    BoundedCounterHandle,
    CounterHandle,
    FlagHandle,
    Handle,
    MapHandle,
    PNCounterHandle,
    RegisterHandle,
    SetHandle,
)
from crdtcoord.runtime.node import Node, NotRunning, wall_ms
from crdtcoord.runtime.transport import LocalNetwork, LocalTransport, NodePort, Transport

__all__ = [
    "BoundedCounterHandle",
    "Change",
    "ChangeFeed",
    "Compacted",
    "CounterHandle",
    "DocumentHandle",
    "FlagHandle",
    "Handle",
    "LocalNetwork",
    "LocalTransport",
    "MapHandle",
    "Node",
    "NodePort",
    "NotRunning",
    "PNCounterHandle",
    "RegisterHandle",
    "SetHandle",
    "Subscription",
    "Transport",
    "wall_ms",
]
