"""The sans-I/O replication engine: a replica as a pure state machine (see :class:`Engine`)."""

from crdtcoord.engine.config import ALL, LOCAL, MAJORITY, Consistency, EngineConfig, at_least
from crdtcoord.engine.effects import (
    Changed,
    ConsistencyTimeout,
    Effect,
    EntryRefused,
    Escalation,
    Event,
    OpFailed,
    PeerRepair,
    Persist,
    ReadDone,
    Send,
    TypeConflict,
    WriteDone,
)
from crdtcoord.engine.engine import Engine
from crdtcoord.engine.membership import MEMBERS_KEY
from crdtcoord.engine.messages import PROTOCOL_VERSION, Kind, ProtocolError
from crdtcoord.engine.propagation import PeerStream
from crdtcoord.engine.store import expiring_key, key_expiry
from crdtcoord.engine.tree import FANOUT, LEAF_MAX, MAX_LEVEL
from crdtcoord.types import UpdateContext

__all__ = [
    "ALL",
    "FANOUT",
    "LEAF_MAX",
    "MAX_LEVEL",
    "LOCAL",
    "MAJORITY",
    "MEMBERS_KEY",
    "PROTOCOL_VERSION",
    "Changed",
    "Consistency",
    "ConsistencyTimeout",
    "Effect",
    "Engine",
    "EngineConfig",
    "Escalation",
    "Event",
    "Kind",
    "OpFailed",
    "PeerRepair",
    "PeerStream",
    "Persist",
    "ProtocolError",
    "ReadDone",
    "Send",
    "TypeConflict",
    "EntryRefused",
    "UpdateContext",
    "WriteDone",
    "at_least",
    "expiring_key",
    "key_expiry",
]
