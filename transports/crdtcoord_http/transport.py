"""The HTTP transport: engine messages as msgpack bodies on ``POST /v1/messages``.

Sending: each peer has a bounded queue and a few worker tasks sharing one pooled keep-alive
connection set. A message that fails to go (connection refused, timeout, 5xx) is retried a
bounded number of times with exponential backoff and jitter, then dropped — the protocol
retransmits what matters and anti-entropy repairs the rest; a full queue drops its oldest
message for the same reason. A ``429`` or ``503`` with ``Retry-After`` pauses the peer's queue
for that long: senders slow down instead of hammering an overloaded node.

Replies ride back in the HTTP response: messages the receiving node sends to the requesting
peer while it handles the request (an ACK, an anti-entropy answer, a read reply) are returned in
the response body (a msgpack array of messages) instead of a request of their own, signed with the
cluster secret and bound to the request's nonce.

Receiving: the server checks, in this order and before the body is decoded — the route, the peer
signature headers (401), the declared length (413), then reads the body, checks the signature
over it and the nonce (401), and hands the bytes to the node; a message the engine refuses gets
``400`` with the protocol's reason code and changes nothing. See ``docs/operations.md`` for every
route and who may call it.

Peers are given as URLs (``http://10.0.0.2:7000``, their node id is asked from
``GET /v1/health``) or as ``id=URL``. More are learned from the ``$members`` gossip (each node
advertises its URL) and from the signed ``X-Crdtcoord-Addr`` header of requests.
"""

from __future__ import annotations

import asyncio
import io
import logging
import random
import socket
import ssl
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import aiohttp
import msgpack
from aiohttp import web

from crdtcoord._net import is_loopback
from crdtcoord.engine import Kind, ProtocolError
from crdtcoord.runtime.transport import NodePort
from crdtcoord_http.auth import (
    HEADER_ADDR,
    HEADER_NODE,
    HEADER_NONCE,
    HEADER_SIGNATURE,
    AuthError,
    ConfigError,
    Signer,
    TokenSet,
)

if TYPE_CHECKING:
    from crdtcoord_http.metrics import Metrics

__all__ = ["HttpLimits", "HttpTransport", "PeerSpec", "is_loopback", "parse_listen"]

log = logging.getLogger("crdtcoord.http")

MESSAGES_PATH = "/v1/messages"
MSGPACK = "application/x-msgpack"


@dataclass(frozen=True)
class HttpLimits:
    """Sizes, queues and timeouts of the HTTP transport (defaults suit a LAN cluster)."""

    #: Largest request body accepted (None: the engine's max_message_bytes plus 4 KiB).
    max_body: int | None = None
    #: Messages queued per peer before the oldest is dropped.
    queue_per_peer: int = 2048
    #: Requests in flight per peer (each worker holds one keep-alive connection).
    inflight_per_peer: int = 4
    #: Requests the server handles at once before answering 503 + Retry-After.
    max_inflight: int = 256
    #: Deferred storage writes pending before the server answers 503 (the disk is behind).
    max_pending_writes: int = 100_000
    #: Client API requests per second per token (burst: one second's worth); 429 beyond.
    client_rate: float = 1000.0
    #: Seconds: connecting, a whole request, and the skew window of signatures.
    connect_timeout: float = 2.0
    request_timeout: float = 5.0
    skew: float = 30.0
    #: Attempts per message on connection errors, and the backoff between them.
    attempts: int = 3
    backoff_base: float = 0.05
    backoff_max: float = 2.0
    #: Server-sent-event streams open at once (more get 503).
    max_watchers: int = 256
    #: Yjs WebSocket connections open at once (more are closed with 1013, try again later).
    max_yjs_sessions: int = 1024
    #: Largest Yjs WebSocket frame (a 5 MB paste is one frame); larger closes with 1009.
    max_yjs_frame: int = 64 << 20
    #: Frames queued for one Yjs client before it is disconnected as too slow (1013).
    yjs_send_queue: int = 4096


@dataclass
class PeerSpec:
    """A configured peer: its URL, and its node id once known."""

    url: str
    node: str | None = None

    @classmethod
    def parse(cls, spec: str) -> PeerSpec:
        node, sep, url = spec.partition("=")
        if not sep:
            node, url = "", spec
        url = url.rstrip("/")
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as e:  # a port out of range, a bad IPv6 literal
            raise ConfigError(f"peer {spec!r}: {e}") from None
        if parts.scheme not in ("http", "https") or not parts.hostname or not port:
            raise ConfigError(
                f"peer {spec!r}: expected http(s)://HOST:PORT or ID=http(s)://HOST:PORT"
            )
        if parts.path not in ("", "/"):
            raise ConfigError(f"peer {spec!r}: a peer URL has no path")
        return cls(url, node or None)


def parse_listen(listen: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6) -> (host, port)."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ConfigError(f"--listen {listen!r}: expected HOST:PORT, e.g. 127.0.0.1:7000")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    p = int(port)
    if p > 65535:
        raise ConfigError(f"--listen {listen!r}: port out of range")
    return host, p


class _Link:
    """The sending side towards one peer."""

    __slots__ = ("backoff_until", "failures", "node", "queue", "url", "wake", "workers")

    def __init__(self, node: str, url: str | None) -> None:
        self.node = node
        self.url = url
        self.queue: deque[tuple[bytes, Kind, int]] = deque()
        self.wake = asyncio.Event()
        self.failures = 0
        self.backoff_until = 0.0
        self.workers: list[asyncio.Task[None]] = []


@dataclass
class _Counters:
    sent: int = 0
    sent_bytes: int = 0
    replies_received: int = 0
    replies_sent: int = 0
    received: int = 0
    received_bytes: int = 0
    send_errors: int = 0
    retries: int = 0
    dropped_queue_full: int = 0
    dropped_after_retries: int = 0
    dropped_no_address: int = 0
    paused_by_peer: int = 0
    refused: dict[str, int] = field(default_factory=dict)  # reason -> count (4xx given)
    #: Yjs WebSockets: open connections and rooms now; frames and bytes since the start
    yjs_connections: int = 0
    yjs_rooms: int = 0
    yjs_frames_in: int = 0
    yjs_bytes_in: int = 0
    yjs_frames_out: int = 0
    yjs_bytes_out: int = 0

    def refuse(self, reason: str) -> None:
        self.refused[reason] = self.refused.get(reason, 0) + 1


class HttpTransport:
    """aiohttp server and client of one node (see the module documentation).

    ``listen``: ``HOST:PORT`` to bind (port 0 picks a free one). ``peers``: URLs or ``id=URL``.
    ``secret``: the cluster secret (peer signatures); without it the node runs in *protected
    mode*: it refuses to listen on anything but loopback. ``tokens``: client bearer tokens for
    the JSON API (without a secret and without tokens the API is open, on loopback only).
    ``advertise``: the URL peers should use (default: the listen address; required when
    listening on a wildcard address). ``ssl_server``/``ssl_client``: TLS contexts (mutual TLS
    when the server context requires client certificates).
    """

    def __init__(
        self,
        listen: str = "127.0.0.1:0",
        peers: Iterable[str] = (),
        *,
        secret: bytes | None = None,
        tokens: TokenSet | None = None,
        advertise: str | None = None,
        ssl_server: ssl.SSLContext | None = None,
        ssl_client: ssl.SSLContext | None = None,
        limits: HttpLimits | None = None,
        metrics: bool = True,
    ) -> None:
        self.host, self.port = parse_listen(listen)
        self.secret = secret
        self.signer = Signer(secret, skew=(limits or HttpLimits()).skew) if secret else None
        self.tokens = tokens
        self.limits = limits or HttpLimits()
        self.ssl_server = ssl_server
        self.ssl_client = ssl_client
        self._specs = [PeerSpec.parse(p) for p in peers]
        if self.signer is None and not is_loopback(self.host):
            raise ConfigError(
                f"refusing to listen on {self.host}: without a cluster secret a node runs in"
                " protected mode and listens on loopback only (127.0.0.1 or ::1). Give every"
                " node the same secret (--secret-file) to listen on other addresses."
            )
        if self.signer is None:
            for s in self._specs:
                h = urlsplit(s.url).hostname or ""
                if not is_loopback(h):
                    raise ConfigError(
                        f"peer {s.url}: without a cluster secret (protected mode) peers must be"
                        " on loopback; give every node the same secret (--secret-file)"
                    )
        scheme = "https" if ssl_server is not None else "http"
        if advertise is None and self.host in ("0.0.0.0", "::", ""):
            advertise_host: str | None = None  # decided at start (needs the port)
        else:
            advertise_host = self.host
        if advertise is not None:
            try:
                advertise = PeerSpec.parse(advertise).url
            except ConfigError:
                raise ConfigError(
                    f"--advertise {advertise!r}: expected http(s)://HOST:PORT"
                ) from None
        self._advertise = advertise
        self._advertise_host = advertise_host
        self._scheme = scheme
        self._node: NodePort | None = None
        self._links: dict[str, _Link] = {}
        self._urls: dict[str, str] = {}  # node id -> URL
        for s in self._specs:
            if s.node is not None:
                self._urls[s.node] = s.url
        self._session: aiohttp.ClientSession | None = None
        self._runner: web.AppRunner | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._resolving: dict[asyncio.Task[None], str] = {}
        self._capture: tuple[str, list[bytes]] | None = None
        self._inflight = 0
        self._closing = False
        self.counters = _Counters()
        self.metrics: Metrics | None = None
        self._want_metrics = metrics
        self.url: str | None = None  # this node's URL once listening
        self._max_reply = 64 * 1024 * 1024  # reply bodies read at most (set at start)

    # ------------------------------------------------------------------ Transport protocol

    def seeds(self) -> list[str]:
        return [s.node for s in self._specs if s.node is not None]

    def advertise(self) -> str | None:
        return self._advertise or self.url

    async def start(self, node: NodePort) -> None:
        """Bind the server, open the client pool, and resolve the peers given as bare URLs."""
        from crdtcoord_http.server import build_app

        self._node = node
        lim = self.limits
        cfg = getattr(node, "config", None)
        self._max_reply = 4 * (int(getattr(cfg, "max_message_bytes", 1 << 20)) + 4096)
        if self._want_metrics and hasattr(node, "write_observers"):
            from crdtcoord_http.metrics import Metrics

            self.metrics = Metrics(node, self)  # type: ignore[arg-type]
        app = build_app(self, node)
        self._runner = web.AppRunner(
            app, access_log=None, handle_signals=False, shutdown_timeout=1.0
        )
        await self._runner.setup()
        site = web.TCPSite(
            self._runner, self.host, self.port, ssl_context=self.ssl_server, reuse_address=True
        )
        try:
            await site.start()
        except OSError as e:
            await self._runner.cleanup()
            self._runner = None
            raise ConfigError(
                f"cannot listen on {self.host}:{self.port}: {e.strerror or e}"
                + (" (the port is taken: another node running?)" if e.errno == 98 else "")
            ) from None
        port = self.port
        for addr in self._runner.addresses:
            if isinstance(addr, tuple) and len(addr) >= 2:
                port = int(addr[1])
                break
        self.port = port
        host = self._advertise_host or socket.getfqdn()
        shown = f"[{host}]" if ":" in host else host
        self.url = f"{self._scheme}://{shown}:{port}"
        connector = aiohttp.TCPConnector(
            limit=0,
            limit_per_host=lim.inflight_per_peer + 1,
            ssl=self.ssl_client if self.ssl_client is not None else True,
            keepalive_timeout=30,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(
                total=lim.request_timeout, sock_connect=lim.connect_timeout
            ),
            skip_auto_headers=("User-Agent",),
        )
        self._resolving = {
            asyncio.ensure_future(self._resolve(s)): s.url for s in self._specs if s.node is None
        }
        for t in self._resolving:
            self._tasks.add(t)
            t.add_done_callback(self._tasks.discard)

    async def wait_peers(self, timeout: float) -> bool:
        """Wait (at most ``timeout`` s) until every peer given by URL has told its node id;
        returns whether all did (a peer that is down is resolved later, in the background)."""
        pending = [t for t in self._resolving if not t.done()]
        if not pending:
            return True
        _, not_done = await asyncio.wait(pending, timeout=timeout)
        for t in not_done:
            log.warning(
                "peer %s not reachable yet; still trying in the background", self._resolving[t]
            )
        return not not_done

    def send(self, peer: str, data: bytes, kind: Kind) -> None:
        cap = self._capture
        if cap is not None and cap[0] == peer:
            cap[1].append(data)  # a reply to the request being handled: rides in its response
            return
        if self._closing or self._session is None:
            return
        link = self._links.get(peer)
        if link is None:
            link = self._link(peer)
        q = link.queue
        if len(q) >= self.limits.queue_per_peer:
            q.popleft()
            self.counters.dropped_queue_full += 1
        q.append((data, kind, 0))
        link.wake.set()

    def learn(self, peer: str, address: str) -> None:
        """Record ``peer``'s URL (from ``$members``, where the peer advertised it itself)."""
        if not isinstance(address, str) or not isinstance(peer, str) or peer == self._node_id():
            return
        try:
            url = PeerSpec.parse(address).url
        except ConfigError:
            return
        if self.signer is None and not is_loopback(urlsplit(url).hostname or ""):
            return  # protected mode: loopback peers only
        if self._urls.get(peer) == url:
            return
        self._urls[peer] = url
        link = self._links.get(peer)
        if link is not None:
            link.url = url
            link.wake.set()

    async def close(self) -> None:
        """Stop accepting, drop what is queued, close the connections."""
        self._closing = True
        for link in self._links.values():
            for w in link.workers:
                w.cancel()
        for t in list(self._tasks):
            t.cancel()
        tasks = [w for link in self._links.values() for w in link.workers] + list(self._tasks)
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    def status(self) -> dict[str, Any]:
        c = self.counters
        return {
            "kind": "http",
            "url": self.url,
            "secured": self.signer is not None,
            "tls": self.ssl_server is not None,
            "client_auth": "tokens"
            if self.tokens is not None
            else ("none (loopback only)" if self.signer is None else "disabled (no token file)"),
            "inflight": self._inflight,
            "queues": {p: len(link.queue) for p, link in sorted(self._links.items())},
            "sent": c.sent,
            "sent_bytes": c.sent_bytes,
            "received": c.received,
            "received_bytes": c.received_bytes,
            "replies_sent": c.replies_sent,
            "replies_received": c.replies_received,
            "send_errors": c.send_errors,
            "retries": c.retries,
            "dropped": {
                "queue_full": c.dropped_queue_full,
                "after_retries": c.dropped_after_retries,
                "no_address": c.dropped_no_address,
            },
            "paused_by_peer": c.paused_by_peer,
            "refused": dict(sorted(c.refused.items())),
            "yjs": {
                "connections": c.yjs_connections,
                "rooms": c.yjs_rooms,
                "frames_in": c.yjs_frames_in,
                "bytes_in": c.yjs_bytes_in,
                "frames_out": c.yjs_frames_out,
                "bytes_out": c.yjs_bytes_out,
            },
        }

    # ------------------------------------------------------------------ sending

    def _node_id(self) -> str | None:
        return self._node.node_id if self._node is not None else None

    def _spawn(self, coro: Any) -> None:
        t = asyncio.ensure_future(coro)
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)

    def _link(self, peer: str) -> _Link:
        link = self._links[peer] = _Link(peer, self._urls.get(peer))
        link.workers = [
            asyncio.ensure_future(self._worker(link)) for _ in range(self.limits.inflight_per_peer)
        ]
        return link

    async def _worker(self, link: _Link) -> None:
        lim = self.limits
        while not self._closing:
            if not link.queue or link.url is None:
                link.wake.clear()
                if link.url is None and len(link.queue) >= lim.queue_per_peer:
                    self.counters.dropped_no_address += len(link.queue)
                    link.queue.clear()
                await link.wake.wait()
                continue
            wait = link.backoff_until - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
                continue
            data, kind, attempt = link.queue.popleft()
            try:
                ok = await self._post(link, data)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # a worker must survive anything a peer can send back
                log.warning("sending to %s failed unexpectedly: %r", link.node, e)
                self.counters.refuse("send_exception")
                ok = None
            if ok is None:  # connection-level failure: back off, retry a bounded number of times
                link.failures += 1
                self.counters.send_errors += 1
                delay = min(lim.backoff_max, lim.backoff_base * (2 ** min(link.failures, 16)))
                link.backoff_until = time.monotonic() + delay * random.uniform(0.5, 1.5)
                if attempt + 1 < lim.attempts:
                    self.counters.retries += 1
                    link.queue.appendleft((data, kind, attempt + 1))
                else:
                    self.counters.dropped_after_retries += 1
            else:
                link.failures = 0

    async def _post(self, link: _Link, data: bytes) -> bool | None:
        """Send one message; True if delivered, False if refused for good, None to retry."""
        session, node = self._session, self._node
        if session is None or node is None or link.url is None:
            return None
        headers = {"Content-Type": MSGPACK}
        addr = self._advertise or self.url or ""
        if self.signer is not None:
            headers.update(
                self.signer.sign_request(
                    "POST", MESSAGES_PATH, node.node_id, data, to=link.node, addr=addr
                )
            )
        else:
            headers[HEADER_NODE] = node.node_id
            if addr:
                headers[HEADER_ADDR] = addr
        try:
            payload: Any = data if len(data) <= 1 << 20 else io.BytesIO(data)  # (aiohttp warns)
            async with session.post(link.url + MESSAGES_PATH, data=payload, headers=headers) as r:
                if (r.content_length or 0) > self._max_reply:
                    raise aiohttp.ClientPayloadError("reply body over the limit")
                body = await r.content.read(self._max_reply + 1)
                if len(body) > self._max_reply:
                    raise aiohttp.ClientPayloadError("reply body over the limit")
                status = r.status
                retry_after = r.headers.get("Retry-After")
                sig = r.headers.get(HEADER_SIGNATURE)
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            log.debug("send to %s failed: %s", link.node, e)
            return None
        self.counters.sent += 1
        self.counters.sent_bytes += len(data)
        if status in (429, 503):
            self.counters.paused_by_peer += 1
            try:
                pause = min(30.0, max(0.0, float(retry_after or 1)))
            except ValueError:
                pause = 1.0
            link.backoff_until = time.monotonic() + pause
            return False  # (the engine retransmits what matters)
        if status >= 400:
            self.counters.refuse(f"peer_{status}")
            if status >= 500:
                return None
            log.warning("%s refused a message: %s %s", link.node, status, body[:200])
            return False
        if status == 200 and body:
            if self.signer is not None:
                try:
                    self.signer.verify_response(headers[HEADER_NONCE], body, sig)
                except AuthError as e:
                    self.counters.refuse(e.reason)
                    return True
            self._take_replies(body)
        return True

    def _take_replies(self, body: bytes) -> None:
        node = self._node
        if node is None:
            return
        try:
            msgs = msgpack.unpackb(body, raw=False, max_bin_len=len(body))
        except Exception:
            self.counters.refuse("bad_reply_body")
            return
        if not isinstance(msgs, list) or not all(isinstance(m, bytes) for m in msgs):
            self.counters.refuse("bad_reply_body")
            return
        for m in msgs:
            self.counters.replies_received += 1
            try:
                node.receive(m)
            except ProtocolError as e:
                self.counters.refuse(e.code)
            except Exception as e:  # the node closed meanwhile
                log.debug("reply not taken: %s", e)
                return

    async def _resolve(self, spec: PeerSpec) -> None:
        """Ask a peer given by URL for its node id (GET /v1/health), retrying with backoff."""
        delay = 0.1
        failures = 0
        while not self._closing:
            try:
                assert self._session is not None
                async with self._session.get(spec.url + "/v1/health") as r:
                    info = await r.json(content_type=None) if r.status == 200 else None
                    if r.status != 200:
                        self._resolve_failed(spec, failures, f"HTTP {r.status}")
            except aiohttp.ClientSSLError as e:
                info = None
                self._resolve_failed(spec, failures, f"TLS: {e}")
            except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as e:
                info = None
                self._resolve_failed(spec, failures, str(e) or type(e).__name__)
            failures += 1
            node = self._node
            if isinstance(info, dict) and isinstance(info.get("node"), str) and node is not None:
                cluster = info.get("cluster")
                mine = getattr(getattr(node, "config", None), "cluster_id", None)
                if mine is not None and cluster != mine:
                    log.error(
                        "peer %s is in cluster %r, this node in %r: ignored",
                        spec.url,
                        cluster,
                        mine,
                    )
                    self.counters.refuse("peer_wrong_cluster")
                elif info["node"] != node.node_id:
                    spec.node = info["node"]
                    self.learn(info["node"], spec.url)
                    self._urls[info["node"]] = spec.url
                    node.add_peer(info["node"])
                    return
                else:
                    return  # a URL of this node itself
            await asyncio.sleep(delay * random.uniform(0.5, 1.5))
            delay = min(delay * 2, 5.0)

    def _resolve_failed(self, spec: PeerSpec, failures: int, why: str) -> None:
        """Log a peer that cannot be resolved: at the first failure and then every 20th (a
        TLS or cluster misconfiguration must not be silent)."""
        if failures % 20 == 0:
            log.warning("cannot reach peer %s (attempt %d): %s", spec.url, failures + 1, why)

    # ------------------------------------------------------------------ receiving (server side)

    def take(self, sender: str, data: bytes) -> list[bytes]:
        """Hand one authenticated message to the node; returns the replies it produced for
        ``sender`` (they go back in the response). :class:`ProtocolError` if refused."""
        node = self._node
        assert node is not None
        replies: list[bytes] = []
        self._capture = (sender, replies)
        try:
            node.receive(data)
        finally:
            self._capture = None
        self.counters.received += 1
        self.counters.received_bytes += len(data)
        self.counters.replies_sent += len(replies)
        return replies

    def heard_address(self, node: str, addr: str | None) -> None:
        """A request names its sender's URL (signed, with a secret): learn it if the sender is
        new, and add it as a peer. A known URL is changed only by the sender's own ``$members``
        entry, never by a header."""
        if not addr or node == self._node_id() or self._node is None or node in self._urls:
            return
        try:
            self.learn(node, addr)
            if node in self._urls:
                self._node.add_peer(node)
        except Exception as e:  # (the message was applied: never a 5xx for what follows)
            log.warning("address %r of %s not learned: %r", addr, node, e)
