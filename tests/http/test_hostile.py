"""Hostile bodies over real HTTP (Hypothesis): random bytes, random msgpack, and genuine messages
with bytes flipped. Unsigned they get 401; signed, 400 with a reason code or acceptance, never a
5xx; a replay of a signed request gets 401; and a refused body changes nothing."""

from __future__ import annotations

import asyncio
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from crdtcoord import GCounter, Timestamp
from crdtcoord.engine.messages import Ack, Delta, Entry, encode_message
from crdtcoord.runtime import Node
from crdtcoord_http import HttpTransport, Signer

SECRET = b"hostile-secret-0123456789abcdef"


class Background:
    """A node running on an event loop in a thread (Hypothesis drives the test synchronously)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.node = Node("n1", transport=HttpTransport("127.0.0.1:0", secret=SECRET))
        self.call(self.node.start())
        self.url = str(self.node.transport.url) + "/v1/messages"  # type: ignore[attr-defined]

    def call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)

    def digest(self) -> bytes:
        async def d() -> bytes:
            return self.node.engine.digest()

        result: bytes = self.call(d())
        return result

    def close(self) -> None:
        self.call(self.node.close(drain=0.1))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture(scope="module")
def node() -> Iterator[Background]:
    b = Background()
    try:
        yield b
    finally:
        b.close()


def post(url: str, body: bytes, headers: dict[str, str]) -> int:
    req = urllib.request.Request(url, data=body, method="POST", headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return int(r.status)
    except urllib.error.HTTPError as e:
        return int(e.code)


def genuine() -> list[bytes]:
    """Real messages of another node (n2) to n1."""
    c = GCounter()
    c.increment("n2/1", 3)
    inc = int(time.time() * 1000) - 60_000
    ts = Timestamp(inc + 1, 0)
    return [
        encode_message("default", "n2", inc, 1, 0, ts, Delta(1, 0, 1, (Entry("k", c),))),
        encode_message("default", "n2", inc, 2, 0, ts, Ack(1, 0, 1)),
    ]


GENUINE = genuine()

bodies = st.one_of(
    st.binary(min_size=1, max_size=300),
    st.recursive(
        st.none()
        | st.integers(-(2**63), 2**64 - 1)
        | st.binary(max_size=20)
        | st.text(max_size=10),
        lambda xs: st.lists(xs, max_size=9),
        max_leaves=30,
    ).map(lambda x: msgpack.packb(x, use_bin_type=True)),
    st.sampled_from(GENUINE),
    st.tuples(st.sampled_from(GENUINE), st.integers(0, 10_000), st.integers(0, 255)).map(
        lambda t: t[0][: t[1] % len(t[0])] + bytes([t[2]]) + t[0][t[1] % len(t[0]) + 1 :]
    ),
)


@given(body=bodies)
def test_hostile_bodies_are_refused_cleanly(node: Background, body: bytes) -> None:
    before = node.digest()
    assert post(node.url, body, {"Content-Type": "application/x-msgpack"}) == 401
    assert node.digest() == before
    headers = Signer(SECRET).sign_request("POST", "/v1/messages", "n2", body)
    status = post(node.url, body, headers)
    assert status in (200, 204, 400), status
    if status == 400:
        assert node.digest() == before
    after = node.digest()
    assert post(node.url, body, headers) == 401  # the same signed request again: a replay
    assert node.digest() == after
