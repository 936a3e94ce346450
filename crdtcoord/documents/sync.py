"""y-protocols (sync + awareness) for stock Yjs clients, sans I/O: a :class:`Room` per document.

A WebSocket endpoint (``crdtcoord_http``: ``ws://HOST:PORT/v1/yjs/{name}``) opens one
:class:`Session` per connection and feeds it the binary frames it receives; the session answers
through the ``send`` callable it was given. Frames (``y-websocket``):

=====  ================  ======================================================================
type   name              payload
=====  ================  ======================================================================
0      sync              sub-type 0 *step1* (state vector), 1 *step2* or 2 *update* (v1 update)
1      awareness         ``n x (client id, clock, JSON state)``; a ``null`` state removes it
2      auth              server to client only (permission denied)
3      query awareness   none; answered with every known state
=====  ================  ======================================================================

On open the room sends its own step1 and the known awareness states; a client's step1 is answered
with step2 (everything the client lacks), then each pending update as an update of its own. A
client's updates are applied through the node (validated, persisted, replicated to peers); every
committed change of the document, from anywhere, is sent to the room's sessions as an update —
never back to the session it came from, and a local edit only once it is written. Awareness is
validated, kept per room (at most :data:`MAX_ROOM_AWARENESS` states and
:data:`MAX_ROOM_AWARENESS_BYTES` bytes; a client id belongs to the connection that announced it
first: another cannot change or remove it) and sent to every session (the sender too:
``y-websocket`` drops a connection that hears nothing for 30 s). Presence is local to a node: it
is not replicated to peers.

Any frame that breaks the protocol (unknown type, bad lengths, invalid JSON, trailing bytes, a v2
or malformed update, an update that does not integrate) raises :class:`ProtocolViolation`; the
endpoint closes that connection (code 4400, which ``y-websocket`` does not retry) and nothing
changed.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from crdtcoord._exceptions import CodecError
from crdtcoord.documents._v1 import UpdateError, parse_state_vector, write_var_uint
from crdtcoord.documents._v1 import _Reader as _V1Reader
from crdtcoord.documents.document import Document

__all__ = [
    "MSG_AUTH",
    "MSG_AWARENESS",
    "MSG_QUERY_AWARENESS",
    "MSG_SYNC",
    "SYNC_STEP1",
    "SYNC_STEP2",
    "SYNC_UPDATE",
    "Frame",
    "ProtocolViolation",
    "Room",
    "RoomHost",
    "Session",
    "decode_frame",
    "encode_awareness",
    "encode_sync",
]

MSG_SYNC, MSG_AWARENESS, MSG_AUTH, MSG_QUERY_AWARENESS = 0, 1, 2, 3
SYNC_STEP1, SYNC_STEP2, SYNC_UPDATE = 0, 1, 2
#: Awareness entries in one frame, and bytes of one state, at most.
MAX_AWARENESS_ENTRIES = 1024
MAX_AWARENESS_STATE = 64 * 1024
#: Awareness states a room keeps, and their total bytes, at most (a frame beyond either is
#: refused: the connection is closed with 4400).
MAX_ROOM_AWARENESS = 4096
MAX_ROOM_AWARENESS_BYTES = 4 * 1024 * 1024


class ProtocolViolation(CodecError):
    """A frame that is not valid y-protocols (or carries an update that is refused)."""


@dataclass(frozen=True, slots=True)
class Frame:
    """One decoded frame: its type, sync sub-type (sync frames only) and payload."""

    type: int
    sub: int | None
    payload: bytes
    #: awareness entries ``(client id, clock, JSON text)`` (awareness frames only)
    entries: tuple[tuple[int, int, str], ...] = ()


def _read_bytes(r: _V1Reader) -> bytes:
    return r.take(r.uint())


def decode_frame(frame: bytes | bytearray | memoryview) -> Frame:
    """Decode one frame strictly: :class:`ProtocolViolation` on anything else."""
    if not isinstance(frame, bytes | bytearray | memoryview):
        raise ProtocolViolation(f"frames are binary, got {type(frame).__name__}")
    r = _V1Reader(bytes(frame))
    try:
        kind = r.uint()
        if kind == MSG_SYNC:
            sub = r.uint()
            if sub not in (SYNC_STEP1, SYNC_STEP2, SYNC_UPDATE):
                raise ProtocolViolation(f"unknown sync message type {sub}")
            payload = _read_bytes(r)
            out = Frame(kind, sub, payload)
        elif kind == MSG_AWARENESS:
            payload = _read_bytes(r)
            out = Frame(kind, None, payload, _awareness_entries(payload))
        elif kind == MSG_QUERY_AWARENESS:
            out = Frame(kind, None, b"")
        elif kind == MSG_AUTH:
            raise ProtocolViolation("auth messages go from server to client only")
        else:
            raise ProtocolViolation(f"unknown message type {kind}")
        if r.pos != r.end:
            raise ProtocolViolation(f"{r.end - r.pos} bytes after the end of the message")
        return out
    except UpdateError as exc:
        raise ProtocolViolation(str(exc)) from None


def _awareness_entries(payload: bytes) -> tuple[tuple[int, int, str], ...]:
    r = _V1Reader(payload)
    n = r.uint()
    if n > MAX_AWARENESS_ENTRIES:
        raise ProtocolViolation(
            f"{n} awareness entries in one message (at most {MAX_AWARENESS_ENTRIES})"
        )
    out = []
    for _ in range(n):
        client = r.uint()
        clock = r.uint()
        text = r.string()
        if len(text) > MAX_AWARENESS_STATE:
            raise ProtocolViolation("awareness state too large")
        try:
            json.loads(text)
        except (ValueError, RecursionError):
            raise ProtocolViolation("awareness state is not JSON") from None
        out.append((client, clock, text))
    if r.pos != r.end:
        raise ProtocolViolation("bytes after the awareness entries")
    return tuple(out)


def _var_bytes(b: bytes) -> bytes:
    return write_var_uint(len(b)) + b


def encode_sync(sub: int, payload: bytes) -> bytes:
    """A sync frame: step1 (state vector), step2 or update (v1 update)."""
    return write_var_uint(MSG_SYNC) + write_var_uint(sub) + _var_bytes(payload)


def encode_awareness(entries: list[tuple[int, int, str]]) -> bytes:
    """An awareness frame with ``(client id, clock, JSON text)`` entries."""
    body = bytearray(write_var_uint(len(entries)))
    for client, clock, text in entries:
        body += write_var_uint(client) + write_var_uint(clock) + _var_bytes(text.encode())
    return write_var_uint(MSG_AWARENESS) + _var_bytes(bytes(body))


class RoomHost(Protocol):
    """What a room needs from the node: the live document if it exists (a connection alone
    never creates one), and a way to apply client updates (validated, persisted and
    replicated, creating the document; raises if refused)."""

    def peek(self) -> Document | None: ...

    def apply_client_update(self, update: bytes) -> None: ...


@dataclass(eq=False)
class Session:
    """One Yjs client connection in a room."""

    room: Room
    send: Callable[[bytes], None]
    #: awareness client ids this connection announced (removed when it closes)
    clients: set[int] = field(default_factory=set)
    frames: int = 0
    closed: bool = False

    def receive(self, data: bytes) -> None:
        """Handle one frame; :class:`ProtocolViolation` means close the connection."""
        if self.closed:
            return
        self.frames += 1
        self.room.receive(self, decode_frame(data))

    def close(self) -> None:
        self.room.leave(self)


class Room:
    """The y-protocols side of one document on one node (see the module documentation)."""

    def __init__(self, host: RoomHost) -> None:
        self.host = host
        self.sessions: list[Session] = []
        #: awareness: client id -> (clock, JSON text)
        self.awareness: dict[int, tuple[int, str]] = {}
        self._outbox: list[tuple[bytes, Session | None, int]] = []
        self._owners: dict[int, Session] = {}  # awareness client id -> its connection
        self._bytes = 0  # awareness bytes kept
        self._from: Session | None = None
        self._doc: Document | None = None
        self.refused = 0

    # ------------------------------------------------------------------ wiring

    def attach(self) -> Document | None:
        """(Re)bind to the node's live document, if it exists: its updates feed this room."""
        doc = self.host.peek()
        if doc is not None and (doc is not self._doc or doc.on_update is None):
            doc.on_update = self._on_update
            self._doc = doc
        return doc

    def detach(self) -> None:
        if self._doc is not None and self._doc.on_update == self._on_update:
            self._doc.on_update = None
        self._doc = None

    def _on_update(self, update: bytes, local_seq: int) -> None:
        self._outbox.append((update, self._from, local_seq))

    def committed(self) -> None:
        """The document's changes so far are durable: send them to the sessions."""
        if self._doc is None:
            doc = self.host.peek()
            if doc is None:
                return
            # created meanwhile (by a peer or this node's program): everything, then follow it
            self.attach()
            self._outbox.clear()
            frame = encode_sync(SYNC_UPDATE, doc.update_since(None))
            for s in self.sessions:
                if not s.closed:
                    s.send(frame)
            return
        # a local edit goes out only once committed (taken, then written before this call):
        # a client must never hold an edit its node could forget in a crash
        taken = self._doc.taken_seq
        out = [e for e in self._outbox if e[2] <= taken]
        self._outbox = [e for e in self._outbox if e[2] > taken]
        for update, origin, _seq in out:
            frame = encode_sync(SYNC_UPDATE, update)
            for s in self.sessions:
                if s is not origin and not s.closed:
                    s.send(frame)

    # ------------------------------------------------------------------ sessions

    def open(self, send: Callable[[bytes], None]) -> Session:
        """A new connection: it gets the room's step1 and the awareness states."""
        doc = self.attach()
        s = Session(self, send)
        self.sessions.append(s)
        send(encode_sync(SYNC_STEP1, doc.causal_summary() if doc is not None else b"\x00"))
        if self.awareness:
            send(self._all_awareness())
        return s

    def leave(self, s: Session) -> None:
        if s.closed:
            return
        s.closed = True
        if s in self.sessions:
            self.sessions.remove(s)
        gone = []
        for client in s.clients:
            cur = self.awareness.pop(client, None)
            self._owners.pop(client, None)
            if cur is not None:
                self._bytes -= len(cur[1])
                gone.append((client, cur[0] + 1, "null"))
        if gone:
            frame = encode_awareness(gone)
            for other in self.sessions:
                other.send(frame)
        if not self.sessions:
            self.detach()

    def _all_awareness(self) -> bytes:
        return encode_awareness([(c, clock, text) for c, (clock, text) in self.awareness.items()])

    # ------------------------------------------------------------------ frames

    def receive(self, s: Session, f: Frame) -> None:
        if f.type == MSG_SYNC:
            if f.sub == SYNC_STEP1:
                try:
                    parse_state_vector(f.payload)
                except UpdateError as exc:
                    raise ProtocolViolation(f"invalid state vector: {exc}") from None
                doc = self.attach()
                answer = doc.update_since(f.payload) if doc is not None else b"\x00\x00"
                s.send(encode_sync(SYNC_STEP2, answer))
                for u in doc.pending_updates() if doc is not None else ():
                    s.send(encode_sync(SYNC_UPDATE, u))  # (each apart: see update_since)
            else:
                self._apply(s, f.payload)
        elif f.type == MSG_AWARENESS:
            self._awareness(s, f)
        elif f.type == MSG_QUERY_AWARENESS:
            s.send(self._all_awareness())

    def _apply(self, s: Session, update: bytes) -> None:
        if update == b"\x00\x00":
            return
        existed = self.attach() is not None
        self._from = s
        try:
            self.host.apply_client_update(update)
        except CodecError as exc:
            self.refused += 1
            raise ProtocolViolation(f"update refused: {exc}") from None
        finally:
            self._from = None
        if not existed and self.attach() is not None:
            self._outbox.append((update, s, 0))  # (the update that created the document)

    def _awareness(self, s: Session, f: Frame) -> None:
        changed = []
        for client, clock, text in f.entries:
            owner = self._owners.get(client)
            if owner is not None and owner is not s:
                continue  # (another connection's client: not this one's to change)
            cur = self.awareness.get(client)
            if cur is not None and clock < cur[0]:
                continue  # (an older state)
            if text == "null":
                if self.awareness.pop(client, None) is not None:
                    self._bytes -= len(cur[1]) if cur is not None else 0
                s.clients.discard(client)
                self._owners.pop(client, None)
            else:
                grow = len(text) - (len(cur[1]) if cur is not None else 0)
                if cur is None and len(self.awareness) >= MAX_ROOM_AWARENESS:
                    raise ProtocolViolation("too many awareness states in this document")
                if self._bytes + grow > MAX_ROOM_AWARENESS_BYTES:
                    raise ProtocolViolation("too many awareness bytes in this document")
                self.awareness[client] = (clock, text)
                self._bytes += grow
                s.clients.add(client)
                self._owners[client] = s
            changed.append((client, clock, text))
        if changed:
            frame = encode_awareness(changed)
            for other in self.sessions:  # (the sender too: its watchdog needs to hear)
                other.send(frame)
