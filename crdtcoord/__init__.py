"""crdtcoord: distributed coordination without a central bottleneck.

Coordination state lives in convergent replicated data types, applied locally at memory speed and
replicated peer to peer; the rare updates that must not diverge escalate to a consensus plug-in.
This package re-exports the public API; everything else is internal.
"""

from crdtcoord._exceptions import (
    ClockSkewError,
    CodecError,
    CrdtcoordError,
    CrdtError,
    IncompatibleMerge,
    InsufficientRights,
    InvalidArgument,
    LeaseHeld,
)
from crdtcoord._wire import Limits, Reader
from crdtcoord.clocks import HLC, Causality, Dot, DotContext, Timestamp, VersionVector
from crdtcoord.codec import decode, decode_op, digest, encode, encode_op
from crdtcoord.documents import Document, InvalidUpdate
from crdtcoord.engine import (
    ALL,
    LOCAL,
    MAJORITY,
    Consistency,
    ConsistencyTimeout,
    Engine,
    EngineConfig,
    ProtocolError,
    at_least,
)
from crdtcoord.sim import Simulation
from crdtcoord.types import (
    CRDT,
    BoundedCounter,
    CRDTBase,
    EWFlag,
    GCounter,
    GSet,
    Lease,
    LeaseInfo,
    LWWRegister,
    MVRegister,
    NotLeaseHolder,
    Op,
    ORMap,
    ORSet,
    PNCounter,
    UpdateContext,
    register_type,
)

__version__ = "0.1.0"

__all__ = [
    "ALL",
    "CRDT",
    "CRDTBase",
    "HLC",
    "LOCAL",
    "MAJORITY",
    "BoundedCounter",
    "Causality",
    "ClockSkewError",
    "CodecError",
    "Consistency",
    "ConsistencyTimeout",
    "CrdtError",
    "CrdtcoordError",
    "Document",
    "Dot",
    "DotContext",
    "Engine",
    "EngineConfig",
    "EWFlag",
    "GCounter",
    "GSet",
    "IncompatibleMerge",
    "InsufficientRights",
    "InvalidArgument",
    "InvalidUpdate",
    "LWWRegister",
    "Lease",
    "LeaseHeld",
    "LeaseInfo",
    "Limits",
    "MVRegister",
    "NotLeaseHolder",
    "ORMap",
    "ORSet",
    "Op",
    "PNCounter",
    "ProtocolError",
    "Reader",
    "Simulation",
    "Timestamp",
    "UpdateContext",
    "VersionVector",
    "at_least",
    "decode",
    "decode_op",
    "digest",
    "encode",
    "encode_op",
    "register_type",
]
