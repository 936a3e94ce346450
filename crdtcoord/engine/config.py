"""Engine configuration and consistency levels."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from crdtcoord._exceptions import InvalidArgument
from crdtcoord._wire import DEFAULT_LIMITS, Limits

__all__ = ["ALL", "LOCAL", "MAJORITY", "Consistency", "EngineConfig", "at_least"]


@dataclass(frozen=True, slots=True)
class Consistency:
    """How many replicas (this one included) must have a write, or answer a read.

    ``LOCAL`` (the default) completes at once; ``at_least(n)``, ``MAJORITY`` (more than half of
    the known members, this node included) and ``ALL`` wait for acknowledgements or replies and
    fail with :class:`~crdtcoord.engine.ConsistencyTimeout` after the timeout.
    """

    kind: Literal["local", "n", "majority", "all"]
    n: int = 1

    def required(self, members: int) -> int:
        """Replicas needed when the cluster has ``members`` known members (self included)."""
        if self.kind == "local":
            return 1
        if self.kind == "n":
            return min(self.n, members) if members else self.n
        if self.kind == "majority":
            return members // 2 + 1
        return members

    def __str__(self) -> str:
        return f"at_least({self.n})" if self.kind == "n" else self.kind

    @staticmethod
    def parse(x: object) -> Consistency:
        """A level from its name (``"local"``, ``"majority"``, ``"all"``, ``"at_least(2)"``), a
        count of replicas (``2``), or a level; :class:`InvalidArgument` otherwise."""
        if isinstance(x, Consistency):
            return x
        if type(x) is int:
            return at_least(x)
        if isinstance(x, str):
            s = x.strip().lower()
            named = {"local": LOCAL, "majority": MAJORITY, "all": ALL}
            if s in named:
                return named[s]
            if s.startswith("at_least(") and s.endswith(")") and s[9:-1].isdigit():
                return at_least(int(s[9:-1]))
            if s.isdigit():
                return at_least(int(s))
        raise InvalidArgument(
            f"not a consistency level: {x!r} (use LOCAL, MAJORITY, ALL, at_least(n), or their"
            " names 'local', 'majority', 'all', 'at_least(n)')"
        )


LOCAL = Consistency("local")
MAJORITY = Consistency("majority")
ALL = Consistency("all")


def at_least(n: int) -> Consistency:
    """At least ``n`` replicas, this one included."""
    if type(n) is not int or n < 1:
        raise InvalidArgument("at_least(n) needs n >= 1")
    return Consistency("n", n)


@dataclass(frozen=True)
class EngineConfig:
    """Tuning of one replica. Times are seconds of the node's clock (the ``now`` it is given)."""

    cluster_id: str = "default"
    #: Digest anti-entropy: one push-pull round with one random peer every interval.
    ae_interval: float = 1.0
    #: Uniform jitter added to each interval, as a fraction of it (0 = synchronized rounds).
    ae_jitter: float = 0.1
    ae_mode: Literal["push", "pull", "push-pull"] = "push-pull"
    ae_enabled: bool = True
    #: Delta propagation: local deltas are batched this long, then pushed.
    push_deltas: bool = True
    delta_delay: float = 0.005
    #: The first delta after ``delta_delay`` without a flush leaves at once instead of waiting
    #: ``delta_delay`` (deltas within the window of the previous flush are still batched): low
    #: latency when updates are sparse, the same batching under load. Off in the engine (the
    #: simulator's timings are documented with it off); the runtime ``Node`` and ``crdtcoord
    #: serve`` turn it on.
    delta_idle_send: bool = False
    #: Peers each flush goes to: None = every known peer; k = k peers, round-robin.
    delta_fanout: int | None = None
    #: Re-push received deltas that inflated the local state (never back to their sender).
    #: None (the default): only when ``delta_fanout`` is set. With every peer as a target the
    #: origin reaches everyone itself (retrying until acknowledged), and forwarding would cost
    #: about n² messages per update for nothing.
    forward_deltas: bool | None = None
    #: Re-push states received by anti-entropy that inflated the local state. Off by default:
    #: it spreads a repair faster but multiplies its bytes, and would make a node that lost its
    #: disk re-broadcast the whole store once repaired.
    forward_repairs: bool = False
    #: A resend to a silent peer larger than this goes to anti-entropy (a root probe first).
    #: None (the default): never. Without forwarding a node's backlog holds its own updates
    #: only, and resending it never costs more than a descent that ships whole states.
    probe_bytes: int | None = None
    #: Retransmission timeout before the round trip to a peer is measured; the timeout backs
    #: off up to 4x this while a peer stays silent.
    retransmit_after: float = 0.5
    #: Lower bound of the measured retransmission timeout (smoothed RTT + 4 deviations).
    retransmit_min: float = 0.05
    #: Delta-buffer entries kept for slow peers; a peer behind that gets an anti-entropy repair.
    delta_buffer: int = 4096
    #: Byte budgets: per message (larger messages travel as chunks) and per repair round.
    max_message_bytes: int = 1024 * 1024
    max_round_bytes: int = 8 * 1024 * 1024
    #: Default timeout of writes and reads with a consistency level above LOCAL.
    op_timeout: float = 5.0
    #: Members learned by gossip (the reserved key "$members"); off = seeds only.
    gossip_membership: bool = True
    #: Remote HLC timestamps further ahead than this (ms) are flagged (not trusted blindly).
    max_clock_offset_ms: int = 500
    #: Operation ids remembered for idempotent retries.
    dedupe_window: int = 10_000
    limits: Limits = field(default=DEFAULT_LIMITS)

    @property
    def forwarding(self) -> bool:
        """Whether received deltas that inflated the state are forwarded (see forward_deltas)."""
        if self.forward_deltas is None:
            return self.delta_fanout is not None
        return self.forward_deltas

    def __post_init__(self) -> None:
        if self.ae_interval <= 0 or self.delta_delay < 0 or self.retransmit_after <= 0:
            raise InvalidArgument("intervals must be positive")
        if not 0 <= self.ae_jitter <= 1:
            raise InvalidArgument("ae_jitter is a fraction in [0, 1]")
        if self.max_message_bytes < 1024 or self.max_round_bytes < self.max_message_bytes:
            raise InvalidArgument("budgets: max_message_bytes >= 1024, max_round_bytes >= it")
        if self.delta_buffer < 1 or self.dedupe_window < 0 or self.op_timeout <= 0:
            raise InvalidArgument("delta_buffer >= 1, dedupe_window >= 0, op_timeout > 0")
        if not 0 < self.retransmit_min <= self.retransmit_after:
            raise InvalidArgument("need 0 < retransmit_min <= retransmit_after")
        if self.probe_bytes is not None and self.probe_bytes < 0:
            raise InvalidArgument("probe_bytes must be >= 0 or None")
        if self.delta_fanout is not None and self.delta_fanout < 1:
            raise InvalidArgument("delta_fanout must be >= 1 or None")
        if self.ae_mode not in ("push", "pull", "push-pull"):
            raise InvalidArgument(f"unknown ae_mode {self.ae_mode!r}")
        if not self.cluster_id or len(self.cluster_id.encode("utf-8")) > 255:
            raise InvalidArgument("cluster_id must be 1..255 bytes")
