"""The replicated data types, one module each; all share the :class:`CRDT` contract."""

from crdtcoord.types._base import (
    CRDT,
    USER_TAGS,
    CRDTBase,
    Op,
    UpdateContext,
    register_type,
    registered_types,
)
from crdtcoord.types.bounded_counter import BoundedCounter
from crdtcoord.types.ewflag import EWFlag
from crdtcoord.types.gcounter import GCounter
from crdtcoord.types.gset import GSet
from crdtcoord.types.lease import Lease, LeaseInfo, NotLeaseHolder
from crdtcoord.types.lww_register import LWWRegister
from crdtcoord.types.mvregister import MVRegister
from crdtcoord.types.ormap import ORMap
from crdtcoord.types.orset import ORSet
from crdtcoord.types.pncounter import PNCounter

#: The ten built-in types, in wire-tag order.
ALL_TYPES: tuple[type[CRDTBase], ...] = (
    GCounter,
    PNCounter,
    BoundedCounter,
    GSet,
    ORSet,
    LWWRegister,
    MVRegister,
    EWFlag,
    ORMap,
    Lease,
)

__all__ = [
    "ALL_TYPES",
    "CRDT",
    "BoundedCounter",
    "CRDTBase",
    "EWFlag",
    "GCounter",
    "GSet",
    "LWWRegister",
    "Lease",
    "LeaseInfo",
    "MVRegister",
    "NotLeaseHolder",
    "ORMap",
    "ORSet",
    "Op",
    "PNCounter",
    "USER_TAGS",
    "UpdateContext",
    "register_type",
    "registered_types",
]
