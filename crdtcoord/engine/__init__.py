"""The sans-I/O replication engine: a replica as a pure state machine (see :class:`Engine`)."""

from crdtcoord.engine.config import ALL, LOCAL, MAJORITY, Consistency, EngineConfig, at_least
from crdtcoord.engine.effects import (
    Changed,
    ConsistencyTimeout,
    Effect,
    Escalation,
    Event,
    OpFailed,
    PeerRepair,
    Persist,
    ReadDone,
    Send,
    WriteDone,
)
from crdtcoord.engine.messages import (
    FANOUT,
    LEAF_MAX,
    MAX_LEVEL,
    PROTOCOL_VERSION,
    Kind,
    ProtocolError,
)
from crdtcoord.engine.replica import MEMBERS_KEY, Engine
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
    "Persist",
    "ProtocolError",
    "ReadDone",
    "Send",
    "UpdateContext",
    "WriteDone",
    "at_least",
]
