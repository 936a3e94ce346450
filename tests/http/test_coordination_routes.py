"""The coordination routes over real HTTP on 127.0.0.1 (two in-process nodes sharing one
in-process consensus): leases, elections, barriers, semaphores and rate limiters answer as
``docs/coordination.md`` says, across nodes; every malformed request gets a 4xx with a JSON
reason and changes nothing."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest

from crdtcoord.consensus import LocalConsensus
from crdtcoord.engine import EngineConfig
from crdtcoord.runtime import Node
from crdtcoord_http import HttpTransport

FAST = EngineConfig(delta_delay=0.002, ae_interval=0.5, retransmit_after=0.2)


async def until(cond: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


def url(node: Node) -> str:
    return str(node.transport.url)  # type: ignore[attr-defined]


@pytest.fixture
async def pair() -> AsyncIterator[tuple[Node, Node, aiohttp.ClientSession]]:
    cons = LocalConsensus(shared=True)
    n1 = Node("n1", transport=HttpTransport("127.0.0.1:0"), config=FAST, consensus=cons)
    await n1.start()
    n2 = Node(
        "n2",
        transport=HttpTransport("127.0.0.1:0", [f"n1={url(n1)}"]),
        config=FAST,
        consensus=cons,
    )
    await n2.start()
    assert await until(lambda: len(n1.engine.peers()) == 1 and len(n2.engine.peers()) == 1)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as s:
        yield n1, n2, s
    for n in (n2, n1):
        with contextlib.suppress(Exception):
            await asyncio.wait_for(n.close(drain=0.1), 10)


async def call(
    s: aiohttp.ClientSession, node: Node, method: str, path: str, body: Any = None
) -> tuple[int, Any]:
    async with s.request(method, url(node) + path, json=body) as r:
        return r.status, await r.json()


async def test_leases_over_http(pair: tuple[Node, Node, aiohttp.ClientSession]) -> None:
    n1, n2, s = pair
    st, g = await call(s, n1, "POST", "/v1/leases/db/acquire", {"holder": "a", "ttl": 5})
    assert st == 200 and g["holder"] == "a" and g["token"] >= 1
    st, held = await call(s, n2, "POST", "/v1/leases/db/acquire", {"holder": "b", "ttl": 5})
    assert st == 409 and held["holder"] == "a" and held["token"] == g["token"]
    st, shown = await call(s, n2, "GET", "/v1/leases/db")
    assert st == 200 and shown["holder"] == "a" and shown["source"] == "consensus"
    st, out = await call(s, n2, "POST", "/v1/leases/db/release", {"holder": "b"})
    assert st == 200 and out["released"] is False  # not b's to release
    st, out = await call(s, n1, "POST", "/v1/leases/db/release", {"holder": "a"})
    assert st == 200 and out["released"] is True
    st, g2 = await call(s, n2, "POST", "/v1/leases/db/acquire", {"holder": "b", "ttl": 5})
    assert st == 200 and g2["holder"] == "b" and g2["token"] > g["token"]  # a newer fence


async def test_elections_over_http(pair: tuple[Node, Node, aiohttp.ClientSession]) -> None:
    n1, n2, s = pair
    st, won = await call(s, n1, "POST", "/v1/elections/e/campaign", {"candidate": "a", "ttl": 5})
    assert st == 200 and won == {"leader": "a", "term": won["term"]} and won["term"] >= 1
    body = {"candidate": "b", "ttl": 5, "timeout": 0.3}
    st, lost = await call(s, n2, "POST", "/v1/elections/e/campaign", body)
    assert st == 504 and lost["error"] == "timeout"
    assert await until(lambda: n2.election("e").leader() == "a")
    st, shown = await call(s, n2, "GET", "/v1/elections/e")
    assert st == 200 and shown["leader"] == "a" and shown["term"] == won["term"]
    st, out = await call(s, n1, "POST", "/v1/elections/e/resign", {"candidate": "a"})
    assert st == 200 and out["resigned"] is True
    body["timeout"] = 5
    st, won2 = await call(s, n2, "POST", "/v1/elections/e/campaign", body)
    assert st == 200 and won2["leader"] == "b" and won2["term"] > won["term"]


async def test_barriers_over_http(pair: tuple[Node, Node, aiohttp.ClientSession]) -> None:
    n1, n2, s = pair
    parts = ["a", "b", "c"]
    for who, node in (("a", n1), ("b", n2)):
        body = {"who": who, "participants": parts}
        st, out = await call(s, node, "POST", "/v1/barriers/go/arrive", body)
        assert st == 200 and who in out["arrived"] and out["open"] is False
    st, out = await call(s, n1, "GET", "/v1/barriers/go?participants=a,b,c&wait=0.2")
    assert st == 200 and out["open"] is False
    waiting = asyncio.ensure_future(
        call(s, n1, "GET", "/v1/barriers/go?participants=a,b,c&wait=10")
    )
    await asyncio.sleep(0.1)
    st, out = await call(
        s, n2, "POST", "/v1/barriers/go/arrive", {"who": "c", "participants": parts}
    )
    assert st == 200 and out["open"] is True
    st, out = await waiting
    assert st == 200 and out == {"arrived": parts, "open": True}  # opened on the other node


async def test_semaphores_over_http(pair: tuple[Node, Node, aiohttp.ClientSession]) -> None:
    n1, n2, s = pair
    st, out = await call(s, n1, "POST", "/v1/semaphores/q/acquire", {"permits": 3, "n": 2})
    assert st == 200 and out["acquired"] == 2
    assert await until(lambda: n2.value("sem/q") == 1)
    body = {"permits": 3, "n": 2, "timeout": 0.5}
    st, out = await call(s, n2, "POST", "/v1/semaphores/q/acquire", body)
    assert st == 409 and out["error"] == "unavailable" and "only 1" in out["detail"]
    st, out = await call(s, n2, "POST", "/v1/semaphores/q/acquire", {"n": 1, "timeout": 5})
    assert st == 200  # a right moved from n1 on demand
    assert await until(lambda: n1.value("sem/q") == 0 and n2.value("sem/q") == 0)
    # a release beyond what the node holds would mint permits: refused, nothing changes
    st, out = await call(s, n2, "POST", "/v1/semaphores/q/release", {"n": 2})
    assert st == 400 and "holds 1" in out["detail"]
    assert n2.value("sem/q") == 0
    st, out = await call(s, n1, "POST", "/v1/semaphores/q/release", {"n": 2})
    assert st == 200 and out["available"] == 2
    st, out = await call(s, n1, "POST", "/v1/semaphores/q/acquire", {"permits": 4})
    assert st == 400 and "3 permits" in out["detail"]


async def test_rate_limits_over_http(pair: tuple[Node, Node, aiohttp.ClientSession]) -> None:
    n1, n2, s = pair
    body = {"limit": 4, "window": 30}
    answers = [await call(s, n, "POST", "/v1/ratelimits/api", body) for n in (n1, n2, n1, n2)]
    assert all(st == 200 and a["admitted"] for st, a in answers)
    assert await until(lambda: n1.rate_limiter("api", 4, 30).used() == 4)
    st, a = await call(s, n1, "POST", "/v1/ratelimits/api", body)
    assert st == 200 and a["admitted"] is False and 0 < a["retry_after"] <= 30


async def test_an_http_leader_is_kept_by_its_client(
    pair: tuple[Node, Node, aiohttp.ClientSession],
) -> None:
    """A campaign again by the leading candidate is a check-in (it does not resign itself);
    a leader whose client stops checking in lapses after its ttl; a campaign whose client left
    never takes the lead."""
    n1, n2, s = pair
    body = {"candidate": "a", "ttl": 0.6}
    st, won = await call(s, n1, "POST", "/v1/elections/e/campaign", body)
    assert st == 200
    for _ in range(4):  # checking in for 1.2 s (two ttls)
        await asyncio.sleep(0.3)
        st, again = await call(s, n1, "POST", "/v1/elections/e/campaign", body)
        assert st == 200 and again == won
    assert n1.election("e").leader() == "a"
    # the client goes quiet: the lead lapses (resigned by the node) within about a ttl
    assert await until(lambda: n1.election("e").leader() is None, 3)
    # a campaign whose client leaves while it waits: it must not win later
    st, _ = await call(s, n1, "POST", "/v1/elections/f/campaign", {"candidate": "x", "ttl": 5})
    assert st == 200
    with contextlib.suppress(asyncio.TimeoutError):
        async with s.post(url(n2) + "/v1/elections/f/campaign",
                          json={"candidate": "orphan", "ttl": 5, "timeout": 30},
                          timeout=aiohttp.ClientTimeout(total=0.5)) as r:  # fmt: skip
            await r.read()
    await asyncio.sleep(0.5)  # (the node notices the closed connection)
    st, out = await call(s, n1, "POST", "/v1/elections/f/resign", {"candidate": "x"})
    assert out == {"resigned": True}
    await asyncio.sleep(0.5)
    assert n2.election("f").leader() in (None, "x")  # never the orphan
    st, shown = await call(s, n2, "GET", "/v1/elections/f")
    assert shown["leader"] != "orphan"


BAD: list[tuple[str, Any]] = [
    ("/v1/leases/l/acquire", {"holder": 5}),
    ("/v1/leases/l/acquire", {"holder": "a", "ttl": "NaN"}),
    ("/v1/leases/l/acquire", {"holder": "a", "ttl": -1}),
    ("/v1/leases/l/acquire", {"holder": "a", "mode": "weird"}),
    ("/v1/leases/l/acquire", [1, 2]),
    ("/v1/leases/l/acquire", {"holder": "a", "x": 1}),
    ("/v1/elections/e/campaign", {"candidate": ""}),
    ("/v1/elections/e/campaign", {"candidate": "a", "ttl": "soon"}),
    ("/v1/elections/e/campaign", {"candidate": "a", "ttl": 0}),
    ("/v1/elections/e/campaign", {"candidate": "a", "timeout": {"a": 1}}),
    ("/v1/elections/e/campaign", {"candidate": "a", "ttl": True}),
    ("/v1/barriers/b/arrive", {"who": "a", "participants": "a,b", "n": "x"}),
    ("/v1/barriers/b/arrive", {"who": "a", "participants": [1, 2]}),
    ("/v1/barriers/b/arrive", {"who": 3}),
    ("/v1/barriers/b/arrive", {"who": "a", "expires_ms": -5}),
    ("/v1/semaphores/s/acquire", {"n": 1}),  # no permits on first use
    ("/v1/semaphores/s/acquire", {"permits": 0}),
    ("/v1/semaphores/s/acquire", {"permits": 2, "n": 0}),
    ("/v1/semaphores/s/acquire", {"permits": 2, "n": "lots"}),
    ("/v1/semaphores/s/acquire", {"permits": 2, "n": 10**30}),
    ("/v1/semaphores/s/acquire", {"permits": 2, "timeout": float("inf")}),
    ("/v1/semaphores/s/release", {"permits": 2, "n": 1}),  # holds none
    ("/v1/ratelimits/r", {}),
    ("/v1/ratelimits/r", {"limit": -3}),
    ("/v1/ratelimits/r", {"limit": 3, "window": 0}),
    ("/v1/ratelimits/r", {"limit": 3, "n": 2.5}),
    ("/v1/ratelimits/r", {"limit": "3"}),
    ("/v1/ratelimits/r", {"limit": 1, "n": 2}),  # could never be admitted
    ("/v1/leases/l/acquire", {"holder": "a", "ttl": 10**400}),  # (too large for a float)
    ("/v1/elections/e/campaign", {"candidate": "a", "timeout": 10**400}),
    ("/v1/semaphores/s/acquire", {"permits": 2, "timeout": 10**400}),
    ("/v1/ratelimits/r", {"limit": 3, "window": 10**400}),
    ("/v1/barriers/b/arrive", {"who": "a"}),  # neither participants nor n: refused first
    ("/v1/barriers/b/arrive", {"who": "a", "participants": ["a"], "n": 2}),
]


async def test_malformed_coordination_requests_get_4xx_and_change_nothing(
    pair: tuple[Node, Node, aiohttp.ClientSession],
) -> None:
    n1, _, s = pair
    before = {k: n1.value(k) for k in n1.keys()}  # noqa: SIM118
    for path, body in BAD:
        st, out = await call(s, n1, "POST", path, body)  # (inf goes as "Infinity")
        assert 400 <= st < 500, (path, body, st, out)
        assert isinstance(out.get("error"), str) and out.get("detail"), (path, body, out)
    for path in (
        "/v1/barriers/b?n=zz",
        "/v1/barriers/b?wait=forever",
        "/v1/barriers/b?wait=-1",
        "/v1/barriers/b?n=%C2%B2",  # a Unicode digit
        "/v1/leases/a%00b",
    ):
        st, out = await call(s, n1, "GET", path)
        assert st == 400 and out["error"], (path, out)
    for raw in (b"{", b"\xff\xfe", b"[" * 100_000):
        for path in ("/v1/elections/e/campaign", "/v1/semaphores/s/acquire", "/v1/ratelimits/r"):
            async with s.post(url(n1) + path, data=raw) as r:
                assert r.status == 400, (path, raw[:5], r.status)
    await asyncio.sleep(0.2)
    assert {k: n1.value(k) for k in n1.keys()} == before  # noqa: SIM118


async def test_lease_and_election_keys_read_and_watch_as_json(
    pair: tuple[Node, Node, aiohttp.ClientSession],
) -> None:
    """A lease's value (a record with hybrid timestamps) is JSON on GET and in the change feed:
    a watch over a prefix holding leases keeps delivering (it used to break the stream)."""
    n1, _, s = pair
    async with s.get(url(n1) + "/v1/watch?prefix=") as feed:
        st, g = await call(s, n1, "POST", "/v1/leases/db/acquire", {"holder": "a", "ttl": 5})
        assert st == 200
        await call(s, n1, "POST", "/v1/elections/e/campaign", {"candidate": "c", "ttl": 5})
        await call(s, n1, "POST", "/v1/keys/after", {"op": "inc"})
        seen: set[str] = set()
        async with asyncio.timeout(10):
            while "after" not in seen:
                line = (await feed.content.readline()).decode()
                if line.startswith("data: "):
                    seen.add(json.loads(line[6:])["key"])
        assert {"lease/db", "lease/election/e", "after"} <= seen
    st, out = await call(s, n1, "GET", "/v1/keys/lease/db")
    assert st == 200 and out["value"]["holder"] == "a" and out["value"]["token"] == g["token"]
    assert isinstance(out["value"]["expiry"], int)


async def test_a_barrier_is_defined_by_its_first_arrival(
    pair: tuple[Node, Node, aiohttp.ClientSession],
) -> None:
    """The first arrival fixes participants and n for every replica: later callers may omit
    them, a caller that gives others is refused, and nobody can make it open early."""
    n1, n2, s = pair
    parts = {"participants": ["a", "b", "c"]}
    st, out = await call(s, n1, "POST", "/v1/barriers/d/arrive", {"who": "a", **parts})
    assert st == 200 and out["open"] is False
    assert await until(lambda: n2.barrier("d").definition() is not None)
    st, out = await call(s, n2, "POST", "/v1/barriers/d/arrive", {"who": "b"})  # (omitted)
    assert st == 200 and out == {"arrived": ["a", "b"], "open": False}
    st, out = await call(s, n2, "POST", "/v1/barriers/d/arrive", {"who": "z", "n": 1})
    assert st == 400 and "defined as" in out["detail"]
    st, out = await call(s, n1, "POST", "/v1/barriers/d/arrive", {"who": "zed"})
    assert st == 400 and "not a participant" in out["detail"]
    st, out = await call(s, n1, "GET", "/v1/barriers/d?n=1")  # (cannot open it early)
    assert st == 200 and out["open"] is False
    assert await until(lambda: n1.barrier("d").arrived() == {"a", "b"})
    st, out = await call(s, n1, "POST", "/v1/barriers/d/arrive", {"who": "c"})
    assert st == 200 and out["open"] is True
    assert await until(lambda: n2.barrier("d").is_open())
