"""``GET /metrics``: Prometheus text, from a registry of this node's own.

Counters kept by the engine and the transport are read at scrape time (a collector), so the hot
path pays nothing for them; the storage-write latency is a histogram observed after each write
(buckets from 50 µs: the default buckets start at 5 ms, too coarse for a group commit). Every
name starts with ``crdtcoord_``; see ``docs/operations.md`` for the list.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from crdtcoord.runtime import Node
    from crdtcoord_http.transport import HttpTransport

__all__ = ["Metrics"]

_KINDS = ("DELTA", "ACK", "AE_ROOT", "AE_OK", "AE_STEP", "READ", "READ_REPLY", "CHUNK", "LEAVE")
_WRITE_BUCKETS = (
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    1.0,
)


class _Collector(Collector):
    def __init__(self, node: Node, transport: HttpTransport) -> None:
        self.node = node
        self.t = transport

    def collect(self) -> Iterator[Metric]:
        node = self.node
        try:
            e = node.engine
        except Exception:
            return
        m: dict[str, int] = e.metrics
        labels = ["node"]
        me = [node.node_id]

        def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
            c = CounterMetricFamily(f"crdtcoord_{name}", doc, labels=labels)
            c.add_metric(me, value)
            return c

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            g = GaugeMetricFamily(f"crdtcoord_{name}", doc, labels=labels)
            g.add_metric(me, value)
            return g

        yield counter("ops", "Updates applied through this node's API", node.ops_applied)
        yield counter(
            "ops_deduplicated", "Retried op ids not applied again", m.get("deduplicated_ops", 0)
        )
        for direction in ("sent", "received"):
            msgs = CounterMetricFamily(
                f"crdtcoord_messages_{direction}",
                f"Engine messages {direction}, by kind",
                labels=[*labels, "kind"],
            )
            byts = CounterMetricFamily(
                f"crdtcoord_message_bytes_{direction}",
                f"Bytes of engine messages {direction}, by kind",
                labels=[*labels, "kind"],
            )
            for k in _KINDS:
                msgs.add_metric([*me, k], m.get(f"{direction}_{k}", 0))
                byts.add_metric([*me, k], m.get(f"bytes_{direction}_{k}", 0))
            yield msgs
            yield byts
        yield counter("messages_rejected", "Messages refused by the engine", m.get("rejected", 0))
        yield counter("retransmits", "Delta ranges resent", m.get("retransmits", 0))
        yield counter("ae_rounds", "Anti-entropy exchanges started", m.get("ae_rounds", 0))
        yield counter(
            "repairs_scheduled",
            "Peers handed to an anti-entropy repair",
            m.get("repairs_scheduled", 0),
        )
        yield counter("repairs_done", "Repairs that ended in sync", m.get("repairs_done", 0))
        yield counter("escalations", "Conflicts escalated", m.get("escalations", 0))
        esc = CounterMetricFamily(
            "crdtcoord_escalation_outcomes",
            "Escalated conflicts by outcome (decided, applied, retries, failed, undecided,"
            " dominated)",
            labels=[*labels, "outcome"],
        )
        for k, v in node.escalator.stats.as_dict().items():
            if k != "raised":
                esc.add_metric([*me, k], v)
        yield esc
        yield gauge("leases_held", "Leases held through this node", len(node.grants.held()))
        yield counter("leases_lost", "Grants this node's callers lost", len(node.grants.lost))
        yield gauge("keys", "Keys held", len(node.keys()))
        yield gauge("members", "Members counted for consistency levels", e.member_count())
        yield gauge("delta_backlog", "Delta-buffer entries not acknowledged", e.backlog())
        yield gauge(
            "pending_requests", "Ops waiting for their consistency level", e.pending_requests()
        )
        yield gauge("feed_lag", "Changes queued for the slowest feed subscriber", node.feed_lag())
        suspected = GaugeMetricFamily(
            "crdtcoord_peer_suspected",
            "1 if the peer was silent past the failure timeout",
            labels=[*labels, "peer"],
        )
        lag = GaugeMetricFamily(
            "crdtcoord_peer_lag",
            "Delta-buffer entries the peer has not acknowledged",
            labels=[*labels, "peer"],
        )
        phi = GaugeMetricFamily(
            "crdtcoord_peer_phi",
            "Phi-accrual suspicion level (8: suspected)",
            labels=[*labels, "peer"],
        )
        for p in node.peer_status():
            suspected.add_metric([*me, p["node"]], 1 if p["suspected"] else 0)
            lag.add_metric([*me, p["node"]], p["lag"])
            phi.add_metric([*me, p["node"]], p["phi"])
        yield suspected
        yield lag
        yield phi
        c = self.t.counters
        http = CounterMetricFamily(
            "crdtcoord_http_refused", "Requests refused, by reason", labels=[*labels, "reason"]
        )
        for reason, n in sorted(c.refused.items()):
            http.add_metric([*me, reason], n)
        yield http
        dropped = CounterMetricFamily(
            "crdtcoord_http_dropped",
            "Outgoing messages dropped, by cause",
            labels=[*labels, "cause"],
        )
        dropped.add_metric([*me, "queue_full"], c.dropped_queue_full)
        dropped.add_metric([*me, "after_retries"], c.dropped_after_retries)
        dropped.add_metric([*me, "no_address"], c.dropped_no_address)
        yield dropped
        yield counter("http_send_errors", "Connection-level send failures", c.send_errors)
        yield gauge("yjs_connections", "Open Yjs WebSocket connections", c.yjs_connections)
        yield gauge("yjs_rooms", "Documents with Yjs connections", c.yjs_rooms)
        yield counter("yjs_frames_in", "Yjs frames received", c.yjs_frames_in)
        yield counter("yjs_bytes_in", "Yjs bytes received", c.yjs_bytes_in)
        yield counter("yjs_frames_out", "Yjs frames sent", c.yjs_frames_out)
        yield counter("yjs_bytes_out", "Yjs bytes sent", c.yjs_bytes_out)


class Metrics:
    """The registry of one node (a registry per node: two nodes in one process do not clash)."""

    def __init__(self, node: Node, transport: HttpTransport) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Collector(node, transport))
        self.write_seconds = Histogram(
            "crdtcoord_storage_write_seconds",
            "Duration of one storage write (a group commit)",
            labelnames=["node"],
            buckets=_WRITE_BUCKETS,
            registry=self.registry,
        ).labels(node=node.node_id)
        node.write_observers.append(lambda n, s: self.write_seconds.observe(s))

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
