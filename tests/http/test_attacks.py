"""Attacks on the HTTP runtime (issue 7): real servers on 127.0.0.1, each test bounded in time.

Each test either failed before its fix (13 defects: 5xx on malformed auth headers and nested
JSON, a NaN timeout, slow bodies starving peers, a garbled response signature killing a link,
an unsigned address header redirecting traffic, replays after a restart, bad addresses, a HEAD
watch, a watcher blocking shutdown, writes during a graceful close, CLI tracebacks, the CLI
reading token files differently) or is a promise that was attacked and held.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from crdtcoord import GCounter, Timestamp
from crdtcoord.engine import MAJORITY, EngineConfig
from crdtcoord.engine.messages import Delta, Entry, encode_message
from crdtcoord.runtime import Node
from crdtcoord.storage import SqliteStorage
from crdtcoord_http import Client, ConfigError, HttpLimits, HttpTransport, TokenSet
from crdtcoord_http.demo import Cluster, free_port

SECRET = b"attack-secret-0123456789abcdef00"
TOKEN = "attack-token-0123456789abcdef"
FAST = EngineConfig(delta_delay=0.002, ae_interval=0.5, retransmit_after=0.2)
CLI = [sys.executable, "-m", "crdtcoord"]
PEER_HEADERS = ("x-crdtcoord-", "content-type")


# ---------------------------------------------------------------------- helpers


async def until(cond: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


def url(node: Node) -> str:
    return str(node.transport.url)  # type: ignore[attr-defined]


def port_of(node: Node) -> int:
    return int(node.transport.port)  # type: ignore[attr-defined]


def genuine_delta(sender: str = "n2", key: str = "k", n: int = 3) -> bytes:
    """A valid DELTA message of node ``sender`` (as it would arrive from that peer)."""
    c = GCounter()
    c.increment(f"{sender}/1", n)
    inc = int(time.time() * 1000) - 60_000
    return encode_message(
        "default", sender, inc, 1, 0, Timestamp(inc + 1, 0), Delta(1, 0, 1, (Entry(key, c),))
    )


async def raw_exchange(port: int, request: bytes, timeout: float = 3.0) -> bytes:
    """Send raw bytes, return what the server answers (until it closes or ``timeout``)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        out = b""
        with contextlib.suppress(TimeoutError):
            while True:
                chunk = await asyncio.wait_for(reader.read(65536), timeout)
                if not chunk:
                    break
                out += chunk
        return out
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/") else 0


class Loopback:
    """An aiohttp server on 127.0.0.1 with one catch-all handler (a proxy or a sink)."""

    def __init__(self, handler: Callable[[web.Request], Any]) -> None:
        self.app = web.Application(client_max_size=1 << 24)
        self.app.router.add_route("*", "/{path:.*}", handler)
        self.runner = web.AppRunner(self.app, access_log=None)
        self.url = ""

    async def start(self) -> Loopback:
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", 0).start()
        addr = self.runner.addresses[0]
        self.url = f"http://127.0.0.1:{addr[1]}"
        return self

    async def close(self) -> None:
        await self.runner.cleanup()


class Proxy:
    """A man in the middle on loopback: forwards peer requests to ``target``, records them, and
    lets a test rewrite the response (``tamper(body, headers) -> (body, headers)``)."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.tamper: Callable[[bytes, dict[str, str]], tuple[bytes, dict[str, str]]] | None = None
        self.server = Loopback(self.handle)
        self.session: aiohttp.ClientSession | None = None

    async def start(self) -> Proxy:
        self.session = aiohttp.ClientSession()
        await self.server.start()
        return self

    @property
    def url(self) -> str:
        return self.server.url

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower().startswith(PEER_HEADERS)}
        self.requests.append((headers, body))
        assert self.session is not None
        async with self.session.post(self.target + request.path, data=body, headers=headers) as r:
            out = await r.read()
            hs = {k: v for k, v in r.headers.items() if k.lower().startswith(PEER_HEADERS)}
            status = r.status
        if self.tamper is not None and out:
            out, hs = self.tamper(out, hs)
        return web.Response(status=status, body=out, headers=hs)

    async def close(self) -> None:
        await self.server.close()
        if self.session is not None:
            await self.session.close()


class Sink:
    """A loopback server that records every request it gets (an attacker's endpoint)."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self.server = Loopback(self.handle)

    async def handle(self, request: web.Request) -> web.Response:
        self.bodies.append(await request.read())
        return web.Response(status=204)


@pytest.fixture
async def nodes() -> AsyncIterator[list[Node]]:
    """Nodes a test starts; all closed at the end (bounded)."""
    made: list[Node] = []
    yield made
    for n in reversed(made):
        with contextlib.suppress(Exception):
            await asyncio.wait_for(n.close(drain=0.1), 10)


async def started(made: list[Node], node: Node) -> Node:
    made.append(node)
    await node.start()
    return node


# ---------------------------------------------------------------------- malformed auth headers


def _signed_looking(**override: bytes) -> bytes:
    h = {
        b"X-Crdtcoord-Node": b"n2",
        b"X-Crdtcoord-Timestamp": str(int(time.time() * 1000)).encode(),
        b"X-Crdtcoord-Nonce": b"a" * 32,
        b"X-Crdtcoord-Signature": b"b" * 64,
    }
    for k, v in override.items():
        h[b"X-Crdtcoord-" + k.encode()] = v
    return b"".join(k + b": " + v + b"\r\n" for k, v in h.items())


MALFORMED_AUTH = {
    # '¹²³'.isdigit() is True but int('¹²³') raises: check_headers lets it through
    "superscript-timestamp": (
        "POST /v1/messages",
        _signed_looking(Timestamp="¹²³".encode()),
    ),
    # 64 characters, but not ASCII: hmac.compare_digest(str, str) raises TypeError
    "non-ascii-signature": (
        "POST /v1/messages",
        _signed_looking(Signature="é".encode() * 64),
    ),
    # a header value that is not UTF-8 (aiohttp decodes it with surrogateescape):
    # TokenSet.check does token.encode() and raises UnicodeEncodeError
    "non-utf8-bearer-token": (
        "GET /v1/status",
        b"Authorization: Bearer \xff\xfe" + b"x" * 30 + b"\r\n",
    ),
}


async def test_malformed_auth_headers_never_get_a_5xx(nodes: list[Node], tmp_path: Path) -> None:
    (tmp_path / "tokens").write_text(f"ops:{TOKEN}\n")
    toks = TokenSet.load(tmp_path / "tokens", secret=SECRET)
    n1 = await started(
        nodes, Node("n1", transport=HttpTransport("127.0.0.1:0", secret=SECRET, tokens=toks))
    )
    before = n1.engine.digest()
    got = {}
    for name, (line, headers) in MALFORMED_AUTH.items():
        req = (
            line.encode()
            + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 3\r\n"
            + headers
            + b"\r\n\x93\x01\x02"
        )
        got[name] = status_of(await raw_exchange(port_of(n1), req))
    assert n1.engine.digest() == before  # (holds: nothing changed)
    assert all(400 <= s < 500 for s in got.values()), got


async def test_odd_signature_headers_and_nonce_reuse_get_401_and_change_nothing(
    nodes: list[Node],
) -> None:
    """Held: odd lengths, a 17-digit or padded timestamp, and a nonce reused by a genuine signer
    for another body are refused with 401 and the right reason; the state does not change."""
    from crdtcoord_http import Signer

    n1 = await started(
        nodes, Node("n1", transport=HttpTransport("127.0.0.1:0", secret=SECRET), config=FAST)
    )
    body = genuine_delta("n2", "k", 3)
    signer = Signer(SECRET)
    target = url(n1) + "/v1/messages"
    before = n1.engine.digest()
    async with aiohttp.ClientSession() as s:

        async def post(data: bytes, headers: dict[str, str]) -> tuple[int, str]:
            async with s.post(target, data=data, headers=headers) as r:
                return r.status, (await r.json())["error"] if r.status >= 400 else ""

        good = signer.sign_request("POST", "/v1/messages", "n2", body)
        for field, value, reason in (
            ("X-Crdtcoord-Signature", good["X-Crdtcoord-Signature"][:63], "bad_signature"),
            ("X-Crdtcoord-Signature", good["X-Crdtcoord-Signature"] + "0", "bad_signature"),
            ("X-Crdtcoord-Nonce", good["X-Crdtcoord-Nonce"][:31], "bad_signature"),
            ("X-Crdtcoord-Timestamp", "9" * 17, "bad_timestamp"),
            ("X-Crdtcoord-Timestamp", "-1", "bad_timestamp"),
            ("X-Crdtcoord-Timestamp", "0" + good["X-Crdtcoord-Timestamp"], "bad_signature"),
        ):
            assert await post(body, {**good, field: value}) == (401, reason), (field, value)
        assert n1.engine.digest() == before
        assert (await post(body, good))[0] in (200, 204)
        after = n1.engine.digest()
        other = genuine_delta("n2", "other", 1)
        reused = signer.sign_request("POST", "/v1/messages", "n2", other)
        reused["X-Crdtcoord-Nonce"] = good["X-Crdtcoord-Nonce"]  # same nonce, other body
        mac = signer._mac(  # (a member signing it properly)
            "req/v2", "POST", "/v1/messages", reused["X-Crdtcoord-Timestamp"],
            reused["X-Crdtcoord-Nonce"], "n2", "", "", hashlib.sha256(other).hexdigest(),
        )  # fmt: skip
        reused["X-Crdtcoord-Signature"] = mac
        assert await post(other, reused) == (401, "replayed")
        assert n1.engine.digest() == after and n1.value("other") is None


# ---------------------------------------------------------------------- client API bodies


async def test_a_deeply_nested_json_body_gets_400(nodes: list[Node]) -> None:
    n1 = await started(nodes, Node("n1", transport=HttpTransport("127.0.0.1:0")))
    deep = "[" * 100_000 + "]" * 100_000
    async with (
        aiohttp.ClientSession() as s,
        s.post(url(n1) + "/v1/keys/k", data='{"op": "set", "value": ' + deep + "}") as r,
    ):
        assert r.status == 400, r.status
    assert n1.value("k") is None


async def test_a_nan_timeout_is_refused(nodes: list[Node]) -> None:
    dead = free_port()
    n1 = await started(
        nodes,
        Node("n1", transport=HttpTransport("127.0.0.1:0", [f"n2=http://127.0.0.1:{dead}"])),
    )
    body = '{"op": "inc", "consistency": "majority", "timeout": NaN}'
    status: Any
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=3)) as s,
            s.post(url(n1) + "/v1/keys/k", data=body) as r,
        ):
            status = r.status
    except TimeoutError:
        status = "no answer in 3 s"
    assert status == 400, (status, n1.engine.pending_requests())


# ---------------------------------------------------------------------- slow bodies


async def test_unauthenticated_slow_bodies_do_not_starve_peers(nodes: list[Node]) -> None:
    lim = HttpLimits(max_inflight=4)
    n1 = await started(
        nodes,
        Node("n1", transport=HttpTransport("127.0.0.1:0", secret=SECRET, limits=lim), config=FAST),
    )
    slow: list[asyncio.StreamWriter] = []
    try:
        for i in range(4):  # anyone can produce these headers: the signature is checked later
            _, w = await asyncio.open_connection("127.0.0.1", port_of(n1))
            w.write(
                b"POST /v1/messages HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n"
                + _signed_looking(Nonce=b"%032d" % i)
                + b"\r\nab"
            )
            await w.drain()
            slow.append(w)
        n2 = await started(
            nodes,
            Node(
                "n2",
                transport=HttpTransport("127.0.0.1:0", [f"n1={url(n1)}"], secret=SECRET),
                config=FAST,
            ),
        )
        await n2.counter("c").inc(1)
        # longer than request_timeout (5 s): a read timeout would have freed the slots
        arrived = await until(lambda: n1.value("c") == 1, timeout=7)
        assert arrived, n1.transport.status()["refused"]
    finally:
        for w in slow:
            w.close()


# ---------------------------------------------------------------------- tampered responses


async def test_tampered_and_stale_signed_responses_are_rejected_and_change_nothing(
    nodes: list[Node],
) -> None:
    """A man in the middle flips a byte of signed responses, then serves an earlier genuine
    response (with its signature) for later requests: the sender refuses every one
    (bad_signature), takes none of their replies, and keeps working once the proxy is honest."""
    n2 = await started(
        nodes, Node("n2", transport=HttpTransport("127.0.0.1:0", secret=SECRET), config=FAST)
    )
    proxy = await Proxy(url(n2)).start()
    try:
        saved: list[tuple[bytes, dict[str, str]]] = []

        def tamper(body: bytes, hs: dict[str, str]) -> tuple[bytes, dict[str, str]]:
            if not saved:
                saved.append((body, hs))
                return body[:-1] + bytes([body[-1] ^ 1]), hs
            return saved[0]  # an earlier, genuinely signed response (another request's nonce)

        proxy.tamper = tamper
        n1 = await started(
            nodes,
            Node(
                "n1",
                transport=HttpTransport("127.0.0.1:0", [f"n2={proxy.url}"], secret=SECRET),
                config=FAST,
            ),
        )
        for _ in range(5):
            await n1.counter("c").inc(1)
            await asyncio.sleep(0.05)
        assert await until(lambda: n1.transport.status()["refused"].get("bad_signature", 0) >= 3)
        assert n1.transport.status()["replies_received"] == 0  # none taken
        assert n1.engine.incarnation_of("n2") is None  # nothing of n2 reached n1's engine
        proxy.tamper = None
        await n1.counter("c").inc(1, consistency=MAJORITY, timeout=5)
        assert n2.value("c") == 6
    finally:
        await proxy.close()


async def test_a_garbled_response_signature_does_not_kill_the_link(nodes: list[Node]) -> None:
    n2 = await started(
        nodes, Node("n2", transport=HttpTransport("127.0.0.1:0", secret=SECRET), config=FAST)
    )
    proxy = await Proxy(url(n2)).start()
    try:
        proxy.tamper = lambda body, hs: (body, {**hs, "X-Crdtcoord-Signature": "é" * 64})
        n1 = await started(
            nodes,
            Node(
                "n1",
                transport=HttpTransport("127.0.0.1:0", [f"n2={proxy.url}"], secret=SECRET),
                config=FAST,
            ),
        )
        for _ in range(5):
            await n1.counter("c").inc(1)
            await asyncio.sleep(0.05)
        await asyncio.sleep(1.0)
        proxy.tamper = None  # the path is honest again
        await n1.counter("c").inc(1)
        drained = await until(lambda: not any(n1.transport.status()["queues"].values()), 5)
        link = n1.transport._links["n2"]  # type: ignore[attr-defined]
        assert drained and not all(w.done() for w in link.workers), n1.transport.status()
    finally:
        await proxy.close()


# ---------------------------------------------------------------------- replays and addresses


async def _capture_a_request(made: list[Node], tmp_path: Path) -> tuple[Node, Node, Any]:
    """n1 (with a data dir) and n3 peered; n2 talks to n1 through a recording proxy (a passive
    sniffer). Returns n1, n3 and the last (headers, body) n2 sent to n1."""
    n1 = await started(
        made,
        Node(
            "n1",
            transport=HttpTransport("127.0.0.1:0", secret=SECRET),
            storage=SqliteStorage(tmp_path / "n1.db"),
            config=FAST,
        ),
    )
    n3 = await started(
        made,
        Node(
            "n3",
            transport=HttpTransport("127.0.0.1:0", [f"n1={url(n1)}"], secret=SECRET),
            config=FAST,
        ),
    )
    proxy = await Proxy(url(n1)).start()
    try:
        n2 = await started(
            made,
            Node(
                "n2",
                transport=HttpTransport("127.0.0.1:0", [f"n1={proxy.url}"], secret=SECRET),
                config=FAST,
            ),
        )
        await n2.counter("c").inc(5)
        assert await until(lambda: n1.value("c") == 5)
        await asyncio.sleep(0.2)
        return n1, n3, proxy.requests[-1]
    finally:
        await proxy.close()


async def test_a_sniffed_request_cannot_redirect_a_peer(nodes: list[Node], tmp_path: Path) -> None:
    _, n3, (headers, body) = await _capture_a_request(nodes, tmp_path)
    sink = Sink()
    await sink.server.start()
    try:
        forged = {**headers, "X-Crdtcoord-Addr": sink.server.url}
        async with (
            aiohttp.ClientSession() as s,
            s.post(url(n3) + "/v1/messages", data=body, headers=forged) as r,
        ):
            await r.read()
        await n3.counter("private").inc(1)
        await asyncio.sleep(1.0)
        assert not any(b"private" in b for b in sink.bodies), f"{len(sink.bodies)} leaked"
    finally:
        await sink.server.close()


async def test_a_replay_after_a_restart_is_refused(nodes: list[Node], tmp_path: Path) -> None:
    n1, _, (headers, body) = await _capture_a_request(nodes, tmp_path)
    await n1.close(drain=0.1)
    nodes.remove(n1)
    n1 = await started(
        nodes,
        Node(
            "n1",
            transport=HttpTransport("127.0.0.1:0", secret=SECRET),
            storage=SqliteStorage(tmp_path / "n1.db"),
            config=FAST,
        ),
    )
    before = n1.engine.digest()
    async with (
        aiohttp.ClientSession() as s,
        s.post(url(n1) + "/v1/messages", data=body, headers=headers) as r,
    ):
        status = r.status
    assert n1.engine.digest() == before  # idempotent: the replay changed no state
    assert status == 401, status


async def test_a_bad_address_header_is_not_a_5xx_after_applying(nodes: list[Node]) -> None:
    n1 = await started(nodes, Node("n1", transport=HttpTransport("127.0.0.1:0")))
    headers = {
        "Content-Type": "application/x-msgpack",
        "X-Crdtcoord-Node": "n2",
        "X-Crdtcoord-Addr": "http://127.0.0.1:99999",
    }
    async with (
        aiohttp.ClientSession() as s,
        s.post(url(n1) + "/v1/messages", data=genuine_delta(), headers=headers) as r,
    ):
        status = r.status
    assert status < 500, (status, n1.value("k"))


async def test_an_invalid_advertise_is_refused_or_harmless(nodes: list[Node]) -> None:
    n1 = await started(nodes, Node("n1", transport=HttpTransport("127.0.0.1:0"), config=FAST))
    try:
        t = HttpTransport("127.0.0.1:0", [f"n1={url(n1)}"], advertise="http://127.0.0.1:99999")
    except ConfigError:
        return  # refused at start: fine
    n3 = await started(nodes, Node("n3", transport=t, config=FAST))
    await n3.counter("c").inc(1, consistency=MAJORITY, timeout=4)


# ---------------------------------------------------------------------- the SSE watch


async def test_head_on_watch_sends_no_body(nodes: list[Node]) -> None:
    n1 = await started(nodes, Node("n1", transport=HttpTransport("127.0.0.1:0")))
    answer = await raw_exchange(
        port_of(n1), b"HEAD /v1/watch HTTP/1.1\r\nHost: x\r\n\r\n", timeout=1.0
    )
    head, _, rest = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 ") and rest == b"", rest[:80]


def test_sigterm_is_not_blocked_by_a_watcher_that_never_reads(tmp_path: Path) -> None:
    c = Cluster(1, tmp_path / "c")
    sock = None
    try:
        c.start()
        p = c.procs[0]
        sock = socket.create_connection(("127.0.0.1", p.port))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.sendall(b"GET /v1/watch HTTP/1.1\r\nHost: x\r\n\r\n")
        cl = Client(p.url)
        big = "x" * 100_000
        for i in range(40):  # ~4 MB of events the watcher never reads
            cl.op(f"k{i % 3}", "set", value=big + str(i))
        time.sleep(0.5)
        assert p.proc is not None
        t0 = time.monotonic()
        p.proc.send_signal(signal.SIGTERM)
        try:
            p.proc.wait(8)
        except subprocess.TimeoutExpired:
            pytest.fail("serve still running 8 s after SIGTERM")
        assert time.monotonic() - t0 < 8
    finally:
        if sock is not None:
            sock.close()
        c.stop()


def _first_event(base: str, since: str) -> tuple[str, dict[str, Any]]:
    req = urllib.request.Request(base + "/v1/watch?since=" + since)
    with urllib.request.urlopen(req, timeout=5) as r:
        event, data = "message", list[str]()
        for raw in r:
            line = raw.decode().rstrip("\r\n")
            if not line and data:
                return event, json.loads("\n".join(data))
            if line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:])
    raise AssertionError("no event")


def test_op_ids_and_feed_cursors_across_kill_9(tmp_path: Path) -> None:
    """Held: an op id retried after the node that applied it was killed -9 and restarted is
    applied once (majority and local); a Last-Event-ID from before the kill gets `compacted`
    with a snapshot holding every change, including one made after the restart."""
    c = Cluster(2, tmp_path / "c")
    try:
        c.start()
        n1 = c.procs[0]
        cl = Client(n1.url, timeout=5)
        assert cl.op("k", "inc", n=5, consistency="majority", op_id="once-1")["value"] == 5
        assert cl.op("k", "inc", n=1, op_id="once-2")["value"] == 6
        time.sleep(0.2)  # (a local write is durable within the batching window)
        cursor = cl.status()["feed"]["cursor"]
        cl.op("w", "set", value="before")
        time.sleep(0.2)
        event, data = _first_event(n1.url, cursor)
        assert event == "message" and data["key"] == "w"
        n1.kill9()
        n1.start()
        c.wait_ready(n1)
        assert cl.op("k", "inc", n=5, consistency="majority", op_id="once-1")["value"] == 6
        assert cl.op("k", "inc", n=1, op_id="once-2")["value"] == 6
        cl.op("w", "set", value="after")
        time.sleep(0.2)
        event, data = _first_event(n1.url, cursor)
        assert event == "compacted" and data["snapshot"] == {"k": 6, "w": "after"}, data
        assert Client(c.procs[1].url).get("k")["value"] == 6
    finally:
        c.stop()


# ---------------------------------------------------------------------- graceful shutdown


async def test_a_graceful_close_under_client_load_still_leaves(nodes: list[Node]) -> None:
    n1 = await started(nodes, Node("n1", transport=HttpTransport("127.0.0.1:0"), config=FAST))
    peers = [f"n1={url(n1)}"]
    n2 = await started(
        nodes, Node("n2", transport=HttpTransport("127.0.0.1:0", peers), config=FAST)
    )
    n3 = Node("n3", transport=HttpTransport("127.0.0.1:0", peers), config=FAST)
    await started(nodes, n3)
    assert await until(lambda: all(len(x.engine.peers()) == 2 for x in (n1, n2, n3)))
    stop = False
    statuses: dict[Any, int] = {}

    async def load(i: int) -> None:
        async with aiohttp.ClientSession() as s:
            j = 0
            while not stop:
                j += 1
                body = {"op": "inc", "op_id": f"{i}-{j}"}
                try:
                    async with s.post(url(n3) + "/v1/keys/k", json=body) as r:
                        await r.read()
                        statuses[r.status] = statuses.get(r.status, 0) + 1
                except aiohttp.ClientError:
                    await asyncio.sleep(0.01)

    tasks = [asyncio.create_task(load(i)) for i in range(2)]
    await asyncio.sleep(0.5)
    await n3.close(drain=1.0)
    nodes.remove(n3)
    stop = True
    await asyncio.gather(*tasks)
    await asyncio.sleep(0.5)
    entry = n1.engine.members().get("n3")
    assert isinstance(entry, dict) and entry.get("status") == "left", (entry, statuses)
    assert n1.engine.member_count() == 2
    assert 400 not in statuses, statuses


# ---------------------------------------------------------------------- restarts and stale peers


async def test_a_peer_back_on_the_same_port_with_a_new_incarnation_is_repaired(
    nodes: list[Node],
) -> None:
    """Held: n2 crashes (no LEAVE) and comes back on the same port without its state: n1
    sees the new incarnation, repairs it, and counts it for majority again."""
    n2 = await started(
        nodes, Node("n2", transport=HttpTransport("127.0.0.1:0", secret=SECRET), config=FAST)
    )
    port = port_of(n2)
    n1 = await started(
        nodes,
        Node(
            "n1",
            transport=HttpTransport("127.0.0.1:0", [f"n2={url(n2)}"], secret=SECRET),
            config=FAST,
        ),
    )
    await n1.counter("a").inc(2, consistency=MAJORITY, timeout=5)
    old = n1.engine.incarnation_of("n2")
    n2._closed = True  # a crash: no drain, no LEAVE
    await n2.transport.close()
    nodes.remove(n2)
    await asyncio.sleep(0.002)
    n2b = await started(
        nodes,
        Node("n2", transport=HttpTransport(f"127.0.0.1:{port}", secret=SECRET), config=FAST),
    )
    assert await until(lambda: n2b.value("a") == 2)
    assert (n1.engine.incarnation_of("n2") or 0) > (old or 0)
    await n1.counter("a").inc(1, consistency=MAJORITY, timeout=5)
    assert n2b.value("a") == 3


# ---------------------------------------------------------------------- the CLI


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args],
        capture_output=True,
        text=True,
        timeout=20,
        env={**os.environ, **(env or {})},
    )


def test_cli_bad_urls_are_usage_errors_and_bad_data_dirs_refusals(tmp_path: Path) -> None:
    afile = tmp_path / "a-file"
    afile.write_text("")
    runs = {
        "get --node http://[::1": cli("get", "k", "--node", "http://[::1"),
        "get --node :abc": cli("get", "k", "--node", "http://127.0.0.1:abc"),
        "serve --peer http://[::1": cli(
            "serve", "--id", "x", "--listen", "127.0.0.1:0", "--peer", "http://[::1"
        ),
        "serve --data-dir FILE": cli(
            "serve", "--id", "x", "--listen", "127.0.0.1:0", "--data-dir", str(afile)
        ),
    }
    # usage errors exit 2; a data dir the node cannot use is a refusal (1, like a data dir in
    # use by another process); never a traceback
    want = {k: 1 if "data-dir" in k else 2 for k in runs}
    bad = {k: (r.returncode, r.stderr.strip().splitlines()[-1:]) for k, r in runs.items()
           if r.returncode != want[k] or "Traceback" in r.stderr}  # fmt: skip
    assert not bad, bad
    assert "cannot use" in runs["serve --data-dir FILE"].stderr


async def test_cli_reads_a_token_file_like_the_server(nodes: list[Node], tmp_path: Path) -> None:
    f = tmp_path / "tokens"
    f.write_text(f"  # the operators' token\nops:{TOKEN}\n")
    toks = TokenSet.load(f, secret=SECRET)
    n1 = await started(
        nodes, Node("n1", transport=HttpTransport("127.0.0.1:0", secret=SECRET, tokens=toks))
    )
    await n1.counter("k").inc(7)
    env = {k: v for k, v in os.environ.items() if k != "CRDTCOORD_TOKEN"}
    proc = await asyncio.create_subprocess_exec(
        *CLI, "get", "k", "--node", url(n1), "--token-file", str(f),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 20)
    assert (proc.returncode, out.decode().strip()) == (0, "7"), err.decode()
