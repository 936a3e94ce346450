"""The chunking part: reassembly of messages that arrived as CHUNK fragments.

(Fragmenting outgoing messages is :meth:`Core.emit_bytes`.) Fragments are buffered per
``(sender, transfer id)`` within a byte budget — at most two transfers per sender, a third
evicts that sender's oldest, incomplete transfers expire after 30 s — and a complete transfer is
decoded as one message, which must pass every check on its own.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from crdtcoord.engine.core import Core
from crdtcoord.engine.messages import Chunk, Envelope, ProtocolError

__all__ = ["REASSEMBLY_TTL", "Chunking"]

REASSEMBLY_TTL = 30.0
_MAX_TRANSFERS_PER_SENDER = 2
_DONE_KEPT = 1024


@dataclass(slots=True)
class _Transfer:
    total: int
    parts: dict[int, bytes]
    size: int
    expires: float


class Chunking:
    """Incoming CHUNK reassembly of one engine."""

    def __init__(self, core: Core) -> None:
        self._core = core
        self._open: dict[tuple[str, int], _Transfer] = {}
        self._bytes = 0
        #: transfers completed lately: a late duplicate fragment of one is dropped, never
        #: mistaken for a new transfer (which could evict live ones)
        self._done: OrderedDict[tuple[str, int], None] = OrderedDict()

    def check(self, env: Envelope, chunk: Chunk) -> None:
        """Refuse a fragment before anything is stored if it breaks the reassembly budget."""
        limit = self._core.config.limits.max_bytes
        t = self._open.get((env.sender, chunk.xfer))
        if t is not None and t.total != chunk.total:
            raise ProtocolError("malformed", "chunk count changed within one transfer")
        big = chunk.total * len(chunk.fragment) > 2 * limit
        if t is None and big and chunk.index < chunk.total - 1:
            raise ProtocolError(
                "too_large", f"a transfer of {chunk.total} fragments is over the limit"
            )
        if self._bytes + len(chunk.fragment) > limit:
            raise ProtocolError("too_large", "reassembly buffer full")

    def add(self, env: Envelope, chunk: Chunk) -> bytes | None:
        """Store a checked fragment; returns the whole message once every fragment is in."""
        slot = (env.sender, chunk.xfer)
        if slot in self._done:
            self._core.count("chunks_duplicate")
            return None
        t = self._open.get(slot)
        if t is None:
            mine = [s for s in self._open if s[0] == env.sender]
            if len(mine) >= _MAX_TRANSFERS_PER_SENDER:  # one sender cannot hog the buffer
                oldest = min(mine, key=lambda s: self._open[s].expires)
                self._bytes -= self._open.pop(oldest).size
            t = self._open[slot] = _Transfer(chunk.total, {}, 0, self._core.now + REASSEMBLY_TTL)
        if chunk.index in t.parts:
            return None
        t.parts[chunk.index] = chunk.fragment
        t.size += len(chunk.fragment)
        self._bytes += len(chunk.fragment)
        if len(t.parts) < t.total:
            return None
        del self._open[slot]
        self._bytes -= t.size
        self._done[slot] = None
        while len(self._done) > _DONE_KEPT:
            self._done.popitem(last=False)
        return b"".join(t.parts[i] for i in range(t.total))

    def pending_bytes(self) -> int:
        return self._bytes

    def next_deadline(self) -> float | None:
        return min((t.expires for t in self._open.values()), default=None)

    def tick(self, now: float) -> None:
        for slot in [s for s, t in self._open.items() if now >= t.expires]:
            self._bytes -= self._open.pop(slot).size
