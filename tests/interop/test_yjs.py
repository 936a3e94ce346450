"""Real Yjs (Node.js: yjs, y-websocket, y-protocols, ws from the lockfile) against crdtcoord
nodes on 127.0.0.1: clients on different nodes edit text and maps concurrently and every client
and every node ends with identical content; garbage frames close that socket and change
nothing; on a secured cluster clients pass their bearer token as ``params: {token}``."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from crdtcoord.engine import EngineConfig
from crdtcoord.runtime import Node
from crdtcoord_http import HttpTransport, TokenSet
from tests.interop.node_env import CLIENT_SCRIPT, node_modules, require_node

FAST = EngineConfig(delta_delay=0.002, ae_interval=0.5, retransmit_after=0.2)
SECRET = b"interop-cluster-secret-0123456789"
TOKEN = "interop-client-token"

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def node_bin() -> str:
    node = require_node()
    node_modules()
    return node


async def started_pair(secured: bool) -> tuple[Node, Node]:
    kw: dict[str, Any] = {}
    if secured:
        kw = {"secret": SECRET, "tokens": TokenSet({TOKEN: "interop"})}
    n1 = Node("n1", transport=HttpTransport("127.0.0.1:0", **kw), config=FAST)
    await n1.start()
    n2 = Node(
        "n2",
        transport=HttpTransport("127.0.0.1:0", [f"n1={n1.transport.url}"], **kw),  # type: ignore[attr-defined]
        config=FAST,
    )
    await n2.start()
    return n1, n2


@contextlib.asynccontextmanager
async def cluster(secured: bool = False) -> AsyncIterator[tuple[Node, Node]]:
    n1, n2 = await started_pair(secured)
    try:
        yield n1, n2
    finally:
        for n in (n2, n1):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(n.close(drain=0.1), 10)


def ws_base(node: Node) -> str:
    return str(node.transport.url).replace("http://", "ws://") + "/v1/yjs"  # type: ignore[attr-defined]


class Client:
    """One ``yjs_client.mjs`` process (a stock y-websocket provider)."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @classmethod
    async def start(cls, node_bin: str, url: str, room: str, name: str, *args: str) -> Client:
        proc = await asyncio.create_subprocess_exec(
            node_bin,
            str(CLIENT_SCRIPT),
            "--url",
            url,
            "--room",
            room,
            "--name",
            name,
            "--timeout",
            "60",
            *args,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        return cls(proc)

    async def line(self, timeout: float = 60) -> str:
        assert self.proc.stdout is not None
        raw = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        if not raw:
            err = await self.stderr()
            raise AssertionError(f"client exited ({self.proc.returncode}): {err[-2000:]}")
        return raw.decode().strip()

    async def command(self, cmd: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(cmd.encode() + b"\n")
        await self.proc.stdin.drain()

    async def dump(self) -> dict[str, Any]:
        await self.command("dump")
        return json.loads(await self.line())  # type: ignore[no-any-return]

    async def stderr(self) -> str:
        assert self.proc.stderr is not None
        with contextlib.suppress(asyncio.TimeoutError):
            return (await asyncio.wait_for(self.proc.stderr.read(), 5)).decode()
        return ""

    async def quit(self) -> int:
        with contextlib.suppress(Exception):
            await self.command("quit")
        try:
            return await asyncio.wait_for(self.proc.wait(), 15)
        except TimeoutError:
            self.proc.kill()
            return await self.proc.wait()


async def converge(nodes: list[Node], clients: list[Client], timeout: float = 30) -> list[Any]:
    """Dumps of every client and the value at every node, once they all agree (or timeout)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while True:
        dumps = [await c.dump() for c in clients]
        values = [n.document("notes").value() for n in nodes]
        seen = [(d["text"], d["map"]) for d in dumps] + [
            (v.get("text"), v.get("map")) for v in values
        ]
        if all(s == seen[0] for s in seen) or loop.time() > end:
            return seen
        await asyncio.sleep(0.2)


async def test_yjs_clients_on_two_nodes_edit_concurrently_and_everything_converges(
    node_bin: str,
) -> None:
    async with cluster() as (n1, n2):
        await n1.document("notes").insert_text("text", 0, "from python: ")
        clients = [
            await Client.start(
                node_bin, ws_base(n1), "notes", "c1", "--edits", "60", "--seed", "1"
            ),
            await Client.start(
                node_bin, ws_base(n2), "notes", "c2", "--edits", "60", "--seed", "2"
            ),
            await Client.start(
                node_bin, ws_base(n2), "notes", "c3", "--edits", "30", "--seed", "3"
            ),
        ]
        try:
            assert [await c.line() for c in clients] == ["ready"] * 3
            await n2.document("notes").set("map", "python", "naïve")  # (while they edit)
            assert [await c.line() for c in clients] == ["edited"] * 3
            seen = await converge([n1, n2], clients)
            assert all(s == seen[0] for s in seen), seen
            text, mapping = seen[0]
            assert len(text) > 60 and mapping["python"] == "naïve"  # (clients delete too)
            assert {k.split("-")[0] for k in mapping if "-" in k} >= {"c1", "c2", "c3"}
            assert isinstance(mapping["nested-c1"], dict)
        finally:
            codes = [await c.quit() for c in clients]
        assert codes == [0, 0, 0]


async def test_garbage_frames_close_that_socket_and_change_nothing(node_bin: str) -> None:
    async with cluster() as (n1, _n2):
        doc = n1.document("notes")
        await doc.insert_text("text", 0, "untouched")
        live = doc.live()
        before = (live.doc.get_state(), live.doc.get_update(), live.content_digest())
        c = await Client.start(
            node_bin, ws_base(n1), "notes", "g", "--mode", "garbage", "--garbage-wait", "2"
        )
        try:
            assert await c.line() == "ready"
            results = []
            while True:
                try:
                    results.append(json.loads(await c.line(30)))
                except AssertionError:
                    break  # (the client exits when done)
                if len(results) == 14:
                    break
        finally:
            await c.quit()
        assert len(results) == 14
        for r in results:
            assert r["closed"] and r["code"] == 4400, r  # (refused, never a reconnect loop)
            assert r["provider_connected"], r  # the well-behaved connection is unaffected
        live = doc.live()
        assert (live.doc.get_state(), live.doc.get_update(), live.content_digest()) == before
        assert doc.value() == {"text": "untouched"}


async def test_on_a_secured_cluster_clients_pass_their_token_as_a_query_parameter(
    node_bin: str,
) -> None:
    async with cluster(secured=True) as (n1, n2):
        denied = await Client.start(node_bin, ws_base(n1), "notes", "nobody", "--timeout", "5")
        assert await denied.proc.wait() == 4  # closed with 4401: y-websocket does not retry
        assert "4401" in await denied.stderr()
        clients = [
            await Client.start(
                node_bin,
                ws_base(n),
                "notes",
                f"t{i}",
                "--token",
                TOKEN,
                "--edits",
                "20",
                "--seed",
                str(i),
            )
            for i, n in enumerate((n1, n2))
        ]
        try:
            assert [await c.line() for c in clients] == ["ready", "ready"]
            assert [await c.line() for c in clients] == ["edited", "edited"]
            seen = await converge([n1, n2], clients)
            assert all(s == seen[0] for s in seen), seen
        finally:
            for c in clients:
                await c.quit()
