"""Replicated pycrdt (Yjs) documents: a crdtcoord type, and y-protocols sessions for Yjs clients.

* :class:`Document` — a pycrdt ``Doc`` replicated by the engine like any other key (deltas are v1
  updates, anti-entropy by state vector, validated before they touch the live document).
* :func:`parse_update` — the strict v1 reader every update goes through.
* :mod:`crdtcoord.documents.sync` — the sans-I/O y-protocols (sync + awareness) session a
  WebSocket endpoint drives for stock Yjs clients (``y-websocket``).

See ``docs/documents.md`` for the guarantees.
"""

from crdtcoord.documents._v1 import (
    ParsedUpdate,
    UpdateError,
    encode_state_vector,
    parse_state_vector,
    parse_update,
)
from crdtcoord.documents.document import (
    REMOTE,
    ROOT_KINDS,
    Document,
    InvalidUpdate,
    check_doc_value,
)

__all__ = [
    "REMOTE",
    "ROOT_KINDS",
    "Document",
    "InvalidUpdate",
    "ParsedUpdate",
    "UpdateError",
    "check_doc_value",
    "encode_state_vector",
    "parse_state_vector",
    "parse_update",
]
