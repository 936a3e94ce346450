"""The HTTP transport in one process: real aiohttp servers on 127.0.0.1, real sockets.

What is checked: nodes converge over HTTP (signed and in protected mode); every refusal happens
with the right status and reason and changes nothing (unsigned, wrong secret, replayed, skewed,
a client token on the peer route, oversized, malformed); the client API (tokens, ops, 409 on a
wrong type, op ids applied once, quorum reads, the SSE feed with resume and compaction); metrics;
backpressure; TLS and mutual TLS.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import shutil
import ssl
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from crdtcoord.engine import MAJORITY, EngineConfig
from crdtcoord.runtime import Node
from crdtcoord_http import ConfigError, HttpLimits, HttpTransport, Signer, TokenSet

SECRET = b"0123456789abcdef0123456789abcdef"
TOKEN = "client-token-0123456789"
FAST = EngineConfig(delta_delay=0.002, ae_interval=0.5, retransmit_after=0.2)


def tokens(tmp_path: Path) -> TokenSet:
    f = tmp_path / "tokens"
    f.write_text(f"# clients\nops:{TOKEN}\n")
    return TokenSet.load(f, secret=SECRET)


async def start_cluster(
    n: int, *, secret: bytes | None = SECRET, toks: TokenSet | None = None, **kw: Any
) -> list[Node]:
    first = Node(
        "n1",
        transport=HttpTransport("127.0.0.1:0", secret=secret, tokens=toks, **kw),
        config=FAST,
    )
    await first.start()
    nodes = [first]
    for i in range(2, n + 1):
        t = HttpTransport(
            "127.0.0.1:0", [str(first.transport.url)], secret=secret, tokens=toks, **kw
        )
        node = Node(f"n{i}", transport=t, config=FAST)
        await node.start()
        nodes.append(node)
    await until(lambda: all(len(x.engine.peers()) == n - 1 for x in nodes))
    return nodes


async def until(cond: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


async def stop(nodes: list[Node]) -> None:
    for x in nodes:
        await x.close(drain=0.5)


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def url(node: Node) -> str:
    return str(node.transport.url)  # type: ignore[attr-defined]


# ---------------------------------------------------------------------- replication


async def test_three_signed_nodes_converge_and_replies_ride_in_responses() -> None:
    nodes = await start_cluster(3)
    try:
        for i, x in enumerate(nodes):
            await x.counter("hits").inc(i + 1)
        await nodes[0].set("s").add("e", consistency=MAJORITY)
        await until(lambda: all(x.counter("hits").value() == 6 for x in nodes))
        await until(lambda: all(x.set("s").value() == {"e"} for x in nodes))
        st = nodes[0].transport.status()
        assert st["secured"] and st["replies_received"] > 0  # ACKs came back in responses
        assert st["refused"] == {}
    finally:
        await stop(nodes)


async def test_protected_mode_nodes_converge_on_loopback() -> None:
    nodes = await start_cluster(2, secret=None)
    try:
        await nodes[1].register("cfg").set({"a": 1})
        await until(lambda: nodes[0].register("cfg").value() == {"a": 1})
    finally:
        await stop(nodes)


def test_protected_mode_refuses_a_public_address_and_says_why() -> None:
    with pytest.raises(ConfigError, match="protected mode"):
        HttpTransport("0.0.0.0:0")
    with pytest.raises(ConfigError, match="loopback"):
        HttpTransport("127.0.0.1:0", ["http://10.1.2.3:7000"])
    HttpTransport("0.0.0.0:0", secret=SECRET)  # fine with a secret


def test_a_token_file_holding_the_secret_is_refused(tmp_path: Path) -> None:
    f = tmp_path / "tokens"
    f.write_text(SECRET.decode() + "\n")
    with pytest.raises(ConfigError, match="cluster secret"):
        TokenSet.load(f, secret=SECRET)


async def test_start_returns_once_the_peers_given_by_url_are_known() -> None:
    """Else a MAJORITY right after start would be counted among the peers known so far (1)."""
    a = Node("a", transport=HttpTransport("127.0.0.1:0"), config=FAST)
    await a.start()
    b = Node("b", transport=HttpTransport("127.0.0.1:0", [url(a)]), config=FAST)
    await b.start()
    try:
        assert b.engine.peers() == ["a"] and b.engine.member_count() == 2
        await b.counter("c").inc(2, consistency=MAJORITY)
        assert a.value("c") == 2
    finally:
        await b.close(drain=0.3)
        await a.close(drain=0.3)


async def test_a_watch_ends_with_disconnected_when_the_node_stops() -> None:
    from crdtcoord_http import Client, ClientError

    (a,) = await start_cluster(1, secret=None)
    got: list[Any] = []

    def follow() -> None:
        try:
            for ch in Client(url(a)).watch("k"):
                got.append(ch)
        except ClientError as e:
            got.append(e.code)

    task = asyncio.get_running_loop().run_in_executor(None, follow)
    await asyncio.sleep(0.3)
    await a.register("k").set(1)
    await until(lambda: len(got) == 1)
    await a.close(drain=0.1)
    await asyncio.wait_for(task, 10)
    assert got[0]["value"] == 1 and got[1] == "disconnected"


async def test_a_taken_port_is_a_clear_error() -> None:
    a = Node("a", transport=HttpTransport("127.0.0.1:0"))
    await a.start()
    try:
        port = a.transport.port  # type: ignore[attr-defined]
        b = Node("b", transport=HttpTransport(f"127.0.0.1:{port}"))
        with pytest.raises(ConfigError, match="port is taken"):
            await b.start()
    finally:
        await a.close()


# ---------------------------------------------------------------------- refusals


def signed(body: bytes, *, secret: bytes = SECRET, node: str = "n9") -> dict[str, str]:
    h = Signer(secret).sign_request("POST", "/v1/messages", node, body)
    h["Content-Type"] = "application/x-msgpack"
    return h


async def a_real_message(nodes: list[Node]) -> bytes:
    """A genuine message from n2 to n1, captured at n2's transport."""
    captured: list[bytes] = []
    t = nodes[1].transport
    orig = t.send

    def spy(peer: str, data: bytes, kind: Any) -> None:
        if peer == "n1":
            captured.append(data)
        orig(peer, data, kind)

    t.send = spy  # type: ignore[method-assign]
    try:
        await nodes[1].counter("spy").inc()
        await until(lambda: bool(captured))
    finally:
        t.send = orig  # type: ignore[method-assign]
    return captured[0]


async def test_every_refusal_has_its_status_and_reason_and_changes_nothing(
    session: aiohttp.ClientSession,
) -> None:
    nodes = await start_cluster(2)
    n1 = nodes[0]
    try:
        msg = await a_real_message(nodes)
        await until(lambda: n1.counter("spy").value() == 1)
        await asyncio.sleep(0.1)
        before = n1.engine.digest()
        target = url(n1) + "/v1/messages"

        async def post(body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
            data: Any = io.BytesIO(body) if len(body) > 1 << 20 else body
            async with session.post(target, data=data, headers=headers) as r:
                return r.status, (await r.json() if r.status >= 400 else {})

        assert (await post(msg, {}))[1]["error"] == "unsigned"
        status, err = await post(msg, signed(msg, secret=b"x" * 32))
        assert (status, err["error"]) == (401, "bad_signature")
        h = signed(msg)
        h["X-Crdtcoord-Timestamp"] = str(int((time.time() - 3600) * 1000))
        assert (await post(msg, h))[1]["error"] == "clock_skew"
        status, err = await post(msg, {"Authorization": f"Bearer {TOKEN}"})
        assert (status, err["error"]) == (401, "unsigned")  # a client token never signs
        tampered = signed(msg)
        status, err = await post(msg + b"\x00", tampered)
        assert (status, err["error"]) == (401, "bad_signature")
        big = b"\x00" * (FAST.max_message_bytes + 10_000)
        status, err = await post(big, signed(big))
        assert (status, err["error"]) == (413, "too_large")
        junk = b"\x93\x01\x02"
        status, err = await post(junk, signed(junk))
        assert (status, err["error"]) == (400, "malformed")
        assert n1.engine.digest() == before
        # a genuine message once, then replayed with the same signature
        h = signed(msg)
        assert (await post(msg, h))[0] in (200, 204)
        status, err = await post(msg, h)
        assert (status, err["error"]) == (401, "replayed")
        refused = n1.transport.status()["refused"]
        for reason in ("unsigned", "bad_signature", "clock_skew", "too_large", "malformed"):
            assert refused.get(reason, 0) >= 1, reason
    finally:
        await stop(nodes)


async def test_an_unsigned_request_is_refused_before_its_body_is_read() -> None:
    """The 401 comes back although the announced 100 MB body is never sent."""
    nodes = await start_cluster(1)
    try:
        host, port = "127.0.0.1", nodes[0].transport.port  # type: ignore[attr-defined]
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(
            b"POST /v1/messages HTTP/1.1\r\nHost: x\r\nContent-Length: 100000000\r\n"
            b"Content-Type: application/x-msgpack\r\n\r\n"
        )
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), 5)
        assert line.startswith(b"HTTP/1.1 401")
        writer.close()
    finally:
        await stop(nodes)


# ---------------------------------------------------------------------- client API


async def test_the_client_api_needs_a_token_and_applies_ops(
    tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    nodes = await start_cluster(2, toks=tokens(tmp_path))
    base = url(nodes[0])
    auth = {"Authorization": f"Bearer {TOKEN}"}
    try:
        async with session.get(base + "/v1/health") as r:
            assert r.status == 200 and (await r.json())["node"] == "n1"
        async with session.get(base + "/v1/status") as r:
            assert r.status == 401 and (await r.json())["error"] == "no_token"
        async with session.get(base + "/v1/status", headers={"Authorization": "Bearer nope"}) as r:
            assert r.status == 401 and (await r.json())["error"] == "bad_token"
        async with session.get(base + f"/v1/status?token={TOKEN}") as r:
            assert r.status == 200 and (await r.json())["node"] == "n1"
        op = {"op": "inc", "n": 5, "op_id": "job-1", "consistency": "majority"}
        for i in range(3):  # a retried op id is applied once, and the answer says so
            async with session.post(base + "/v1/keys/jobs", json=op, headers=auth) as r:
                assert r.status == 200, await r.text()
                got = await r.json()
                assert (got["value"], got["applied"]) == (5, i == 0)
        typo = {"op": "inc", "consitency": "majority"}
        async with session.post(base + "/v1/keys/jobs", json=typo, headers=auth) as r:
            assert r.status == 400 and (await r.json())["error"] == "unknown_field"
        async with session.get(base + "/v1/nope", headers=auth) as r:
            assert r.status == 404 and (await r.json())["error"] == "no_such_route"
        async with session.delete(base + "/v1/keys/jobs", headers=auth) as r:
            assert r.status == 405 and (await r.json())["error"] == "method_not_allowed"
        assert nodes[0].value("jobs") == 5
        async with session.post(
            base + "/v1/keys/jobs", json={"op": "add", "element": "x"}, headers=auth
        ) as r:
            assert r.status == 409 and (await r.json())["error"] == "wrong_type"
        async with session.post(
            base + "/v1/keys/a%2Fb", json={"op": "set", "value": [1, "two"]}, headers=auth
        ) as r:
            assert r.status == 200 and (await r.json())["type"] == "LWWRegister"
        async with session.get(base + "/v1/keys/missing", headers=auth) as r:
            assert r.status == 404
        async with session.post(base + "/v1/keys/k", data=b"{nope", headers=auth) as r:
            assert r.status == 400 and (await r.json())["error"] == "bad_json"
        async with session.post(base + "/v1/keys/k", json={"op": "explode"}, headers=auth) as r:
            assert r.status == 400 and "unknown op" in (await r.json())["detail"]
        await until(lambda: nodes[1].value("jobs") == 5 and nodes[1].value("a/b") == [1, "two"])
        n2 = url(nodes[1])
        async with session.get(n2 + "/v1/keys/jobs?consistency=majority", headers=auth) as r:
            assert r.status == 200 and (await r.json())["value"] == 5
        async with session.get(base + "/v1/keys?prefix=a", headers=auth) as r:
            assert (await r.json())["keys"] == ["a/b"]
        refused = nodes[0].transport.status()["refused"]
        assert refused["no_token"] >= 1 and refused["bad_token"] >= 1
    finally:
        await stop(nodes)


async def test_a_node_with_a_secret_and_no_tokens_closes_its_client_api(
    session: aiohttp.ClientSession,
) -> None:
    nodes = await start_cluster(1)
    try:
        async with session.get(url(nodes[0]) + "/v1/status") as r:
            assert r.status == 401 and (await r.json())["error"] == "no_client_tokens"
    finally:
        await stop(nodes)


async def read_events(resp: aiohttp.ClientResponse, n: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    event = "message"
    while len(out) < n:
        line = (await asyncio.wait_for(resp.content.readline(), 5)).decode().rstrip("\n")
        if line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            item = json.loads(line[5:])
            item["event"] = event
            out.append(item)
            event = "message"
    return out


async def test_the_sse_feed_follows_resumes_and_says_compacted(
    tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    nodes = await start_cluster(2, toks=tokens(tmp_path))
    auth = {"Authorization": f"Bearer {TOKEN}"}
    base = url(nodes[0])
    try:
        async with session.get(base + "/v1/watch?prefix=cfg/", headers=auth) as resp:
            assert resp.headers["Content-Type"].startswith("text/event-stream")
            await nodes[1].register("cfg/a").set(1)
            await nodes[1].register("other").set(1)
            await until(lambda: nodes[0].value("other") == 1)
            await nodes[0].register("cfg/b").set(2)
            got = await read_events(resp, 2)
        assert [(g["key"], g["value"]) for g in got] == [("cfg/a", 1), ("cfg/b", 2)]
        assert got[0]["origin"] == "n2" and got[1]["origin"] is None
        headers = {**auth, "Last-Event-ID": got[0]["cursor"]}
        async with session.get(base + "/v1/watch?prefix=cfg/", headers=headers) as resp:
            again = await read_events(resp, 1)
        assert again[0]["cursor"] == got[1]["cursor"]
        stale = f"{nodes[0].incarnation - 1}-5"
        async with session.get(base + f"/v1/watch?prefix=cfg/&since={stale}", headers=auth) as resp:
            (c,) = await read_events(resp, 1)
        assert c["event"] == "compacted" and c["snapshot"] == {"cfg/a": 1, "cfg/b": 2}
        async with session.get(base + "/v1/watch?since=garbage", headers=auth) as resp:
            assert resp.status == 400
    finally:
        await stop(nodes)


async def test_metrics_are_prometheus_text(tmp_path: Path, session: aiohttp.ClientSession) -> None:
    nodes = await start_cluster(2, toks=tokens(tmp_path))
    try:
        await nodes[0].counter("c").inc()
        await until(lambda: nodes[1].value("c") == 1)
        async with session.get(
            url(nodes[0]) + "/metrics", headers={"Authorization": f"Bearer {TOKEN}"}
        ) as r:
            assert r.status == 200 and r.headers["Content-Type"].startswith("text/plain")
            text = await r.text()
        for line in (
            'crdtcoord_messages_sent_total{kind="DELTA",node="n1"}',
            'crdtcoord_message_bytes_received_total{kind="ACK",node="n1"}',
            "crdtcoord_storage_write_seconds_bucket",
            'crdtcoord_peer_suspected{node="n1",peer="n2"} 0.0',
            'crdtcoord_ops_total{node="n1"} 1.0',
        ):
            assert line in text, line
    finally:
        await stop(nodes)


# ---------------------------------------------------------------------- backpressure


async def test_an_overloaded_node_answers_503_and_the_sender_backs_off() -> None:
    busy = HttpTransport("127.0.0.1:0", secret=SECRET, limits=HttpLimits(max_inflight=0))
    a = Node("a", transport=busy, config=FAST)
    await a.start()
    b = Node("b", transport=HttpTransport("127.0.0.1:0", [f"a={busy.url}"], secret=SECRET))
    await b.start()
    try:
        for _ in range(20):
            await b.counter("c").inc()
            await asyncio.sleep(0.01)
        await until(lambda: b.transport.status()["paused_by_peer"] >= 1)
        sent = b.transport.status()["sent"]
        await asyncio.sleep(0.5)
        # paused for Retry-After (1 s): no new request meanwhile
        assert b.transport.status()["sent"] - sent <= 4
        assert busy.status()["refused"]["overloaded"] >= 1
        assert a.value("c") is None
    finally:
        await b.close(drain=0.1)
        await a.close(drain=0.1)


# ---------------------------------------------------------------------- TLS


def make_pki(d: Path) -> dict[str, Path]:
    """A CA and certificates for 127.0.0.1 issued by it (openssl, started by the test)."""
    if shutil.which("openssl") is None:
        if os.environ.get("CI"):
            raise AssertionError("openssl is required in CI")
        pytest.skip("openssl not installed")

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=d)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
        "-days", "2", "-subj", "/CN=test-ca")  # fmt: skip
    (d / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1\n")
    out = {"ca": d / "ca.pem"}
    for name in ("n1", "n2", "rogue"):
        run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out",
            f"{name}.csr", "-subj", f"/CN={name}")  # fmt: skip
        ca = ("ca.pem", "ca.key") if name != "rogue" else ("rogue-ca.pem", "rogue-ca.key")
        if name == "rogue":
            run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "rogue-ca.key",
                "-out", "rogue-ca.pem", "-days", "2", "-subj", "/CN=rogue-ca")  # fmt: skip
        run("x509", "-req", "-in", f"{name}.csr", "-CA", ca[0], "-CAkey", ca[1],
            "-CAcreateserial", "-out", f"{name}.pem", "-days", "2",
            "-extfile", "ext.cnf")  # fmt: skip
        out[name] = d / f"{name}.pem"
        out[name + "_key"] = d / f"{name}.key"
    return out


def contexts(pki: dict[str, Path], name: str) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(pki[name], pki[name + "_key"])
    server.load_verify_locations(pki["ca"])
    server.verify_mode = ssl.CERT_REQUIRED
    client = ssl.create_default_context(cafile=str(pki["ca"]))
    client.load_cert_chain(pki[name], pki[name + "_key"])
    return server, client


async def test_mutual_tls_nodes_converge_and_a_foreign_certificate_is_refused(
    tmp_path: Path,
) -> None:
    pki = make_pki(tmp_path)
    s1, c1 = contexts(pki, "n1")
    s2, c2 = contexts(pki, "n2")
    toks = tokens(tmp_path)
    tokfile = tmp_path / "tokens"
    a = Node("n1", transport=HttpTransport("127.0.0.1:0", secret=SECRET, ssl_server=s1,
             ssl_client=c1, tokens=toks), config=FAST)  # fmt: skip
    await a.start()
    assert str(a.transport.url).startswith("https://")  # type: ignore[attr-defined]
    b = Node("n2", transport=HttpTransport("127.0.0.1:0", [url(a)], secret=SECRET, ssl_server=s2,
             ssl_client=c2), config=FAST)  # fmt: skip
    await b.start()
    try:
        await b.counter("c").inc(3)
        await until(lambda: a.value("c") == 3)
        from crdtcoord_http import Client

        loop = asyncio.get_running_loop()
        tls = Client.tls(str(pki["ca"]), str(pki["n2"]), str(pki["n2_key"]))
        health = await loop.run_in_executor(None, Client(url(a), ssl_context=tls).health)
        assert health["node"] == "n1"
        cli = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "crdtcoord", "get", "c", "--node", url(a),
            "--tls-ca", str(pki["ca"]), "--tls-cert", str(pki["n2"]),
            "--tls-key", str(pki["n2_key"]), "--token-file", str(tokfile),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(cli.communicate(), 30)
        assert (cli.returncode, out.decode().strip()) == (0, "3"), err.decode()
        rogue = ssl.create_default_context(cafile=str(pki["ca"]))
        rogue.load_cert_chain(pki["rogue"], pki["rogue_key"])
        async with aiohttp.ClientSession() as s:
            with pytest.raises(aiohttp.ClientError):
                async with s.get(url(a) + "/v1/health", ssl=rogue) as r:
                    await r.read()
            no_cert = ssl.create_default_context(cafile=str(pki["ca"]))
            with pytest.raises(aiohttp.ClientError):
                async with s.get(url(a) + "/v1/health", ssl=no_cert) as r:
                    await r.read()
    finally:
        await b.close(drain=0.3)
        await a.close(drain=0.3)
