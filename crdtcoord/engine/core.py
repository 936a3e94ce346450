"""What every engine part shares: identity, configuration, the clocks, the effect list, counters,
and sending (message ids, clock stamping, fragmentation of large messages into CHUNKs).

A part never touches another part's state; it gets a :class:`Core` and, where it needs another
part's service, a callable or a reference handed to it by the :class:`~crdtcoord.engine.Engine`.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from crdtcoord.clocks.hlc import HLC, Timestamp
from crdtcoord.engine.config import EngineConfig
from crdtcoord.engine.effects import Effect, Send
from crdtcoord.engine.messages import Chunk, Kind, Message, encode_message

__all__ = ["Core", "Identity"]

_ID_SPACE = (1 << 62) - 1


@dataclass(frozen=True, slots=True)
class Identity:
    """Who this engine is: node id, incarnation, and this process start's random id.

    ``process`` is drawn anew at every start (OS randomness, or the simulator's seeded RNG); every
    id that matches a reply to a request — delta streams, exchange ids, read handles, chunk
    transfers — derives from it, so a reply meant for an earlier process never matches.
    """

    node_id: str
    incarnation: int
    process: int

    @property
    def actor(self) -> str:
        """The replica id this node uses in CRDT dots: a new incarnation never reuses dots."""
        return f"{self.node_id}/{self.incarnation}"


class Core:
    """Shared plumbing of one engine (see the module documentation)."""

    def __init__(
        self,
        identity: Identity,
        config: EngineConfig,
        rng: random.Random,
        clock_ms: Callable[[], int] | None,
    ) -> None:
        self.id = identity
        self.node_id = identity.node_id
        self.actor = identity.actor
        self.config = config
        self.rng = rng
        ids = random.Random(identity.process)
        #: message ids start at a random point per process: an exchange id (the msg_id of its
        #: AE_ROOT) never matches a reply meant for an earlier process of this node
        self._msg_id = ids.randrange(1 << 20, 1 << 30)
        self._handle = ids.randrange(1 << 40, 1 << 61)
        self._xfer = ids.randrange(1 << 40, 1 << 61)
        self.now = 0.0
        #: has the timer clock been read yet? (the first reading sets it, whatever its value)
        self.clock_set = False
        self._clock_ms = clock_ms
        self.hlc = HLC(self.physical_ms, max_offset=config.max_clock_offset_ms, strict=False)
        self.effects: list[Effect] = []
        #: how many times the driver polled the effects (a generation for per-poll state)
        self.polls = 0
        self.metrics: dict[str, int] = {}
        self._chunk_overhead = 0

    # ------------------------------------------------------------------ time

    def physical_ms(self) -> int:
        """The node's physical clock in ms: the injected wall clock, else ``now`` in ms."""
        if self._clock_ms is not None:
            return self._clock_ms()
        return int(self.now * 1000)

    def advance(self, now: float) -> None:
        """Move the timer clock forward (the first reading sets it, whatever its value)."""
        if now > self.now or not self.clock_set:
            self.now = now
            self.clock_set = True

    # ------------------------------------------------------------------ effects and ids

    def count(self, name: str, n: int = 1) -> None:
        self.metrics[name] = self.metrics.get(name, 0) + n

    def emit(self, effect: Effect) -> None:
        self.effects.append(effect)

    def next_handle(self) -> int:
        """A fresh operation handle (unique per process start)."""
        self._handle += 1
        return self._handle

    # ------------------------------------------------------------------ sending

    def encode(self, body: Message, reply_to: int = 0) -> tuple[int, bytes]:
        """Stamp and encode a message; returns its msg_id and bytes."""
        self._msg_id += 1
        data = encode_message(
            self.config.cluster_id,
            self.node_id,
            self.id.incarnation,
            self._msg_id,
            reply_to,
            self.hlc.now(),
            body,
        )
        return self._msg_id, data

    def send(self, peer: str, body: Message, reply_to: int = 0) -> int:
        """Send one message (as CHUNKs if it is too large); returns its msg_id."""
        msg_id, data = self.encode(body, reply_to)
        self.emit_bytes(peer, data, body.KIND)
        return msg_id

    def emit_bytes(self, peer: str, data: bytes, kind: Kind) -> None:
        """Emit an encoded message, fragmenting it into CHUNKs above ``max_message_bytes``."""
        limit = self.config.max_message_bytes
        if len(data) <= limit:
            self.effects.append(Send(peer, data, kind))
            self.count(f"sent_{kind.name}")
            self.count("bytes_sent", len(data))
            self.count(f"bytes_sent_{kind.name}", len(data))
            return
        size = limit - self.chunk_overhead()
        parts = [data[i : i + size] for i in range(0, len(data), size)]
        self._xfer += 1
        xfer = self._xfer & _ID_SPACE
        for i, part in enumerate(parts):
            self.send(peer, Chunk(xfer, i, len(parts), part))

    def chunk_overhead(self) -> int:
        """Bytes a CHUNK envelope of this node can take around its fragment (largest ids,
        clock, bin header): fragments are sized so that every CHUNK fits the budget."""
        if not self._chunk_overhead:
            big = 2**63 - 1
            self._chunk_overhead = 16 + len(
                encode_message(
                    self.config.cluster_id,
                    self.node_id,
                    self.id.incarnation,
                    big,
                    big,
                    Timestamp(big, big),
                    Chunk(big, 1 << 20, 1 << 20, b""),
                )
            )
        return self._chunk_overhead
