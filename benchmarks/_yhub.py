"""Baseline for ``benchmarks/documents.py``: one document shared through a ``pycrdt-websocket``
hub, measured from real client processes.

**Set-up.** A hub process runs ``pycrdt.websocket.WebsocketServer`` (default options: no
YStore, rooms cleaned up when empty) behind an aiohttp WebSocket endpoint on 127.0.0.1 (an
ephemeral port; compression off; every connection wrapped in :class:`Channel`, the adapter
a user of aiohttp writes, its sends under a lock as ``pycrdt.websocket.HttpxWebsocket``'s
are). Three client processes each hold a ``pycrdt.Doc`` and join the room ``/bench-room``
with ``pycrdt.Provider`` over aiohttp ``ws_connect``. One client writes, the other two
receive. Every process is started here (``subprocess``, this file as the entry point) and
always stopped at the end.

**Workload** (:func:`write_edits` and :func:`apply_edit`, which the crdtcoord side reuses):
edit ``i`` sets ``doc.get("edits", type=Map)[f"e{i}"] = i`` in its own transaction (an
update of 29-33 bytes); ids are consecutive over the whole run. The writer's time of edit
``i`` is ``time.monotonic_ns()`` right after its transaction commits. A receiver's arrival
time is ``time.monotonic_ns()`` in its ``Map.observe`` callback, when the edit becomes
visible in its doc (:func:`ids_in` reads the ids from the event's keys). CLOCK_MONOTONIC is
system-wide on Linux, so the difference is a valid cross-process latency.

Why a Y.Map and not appends to a Y.Text: in pycrdt 0.14.13 an append at the end of a Y.Text
costs O(items in the text) at the writer and when applied at every other replica (writer
10 µs at 1k appends, 100 µs at 10k, 900 µs at 60k; applying one remotely 9 -> 117 µs from 1k
to 20k), and a prepend is O(1) to make and apply but its ``TextEvent.delta`` costs O(n) (45 ->
330 µs). A run would then measure how long the document had grown, differently per phase and
per system. A Map entry costs the same at any size (measured flat from 1k to 20k entries).

Phases, in this order, all in one run with the same processes:

1. warm-up: ``rate`` edits/s for ``warmup`` seconds (discarded);
2. **latency**: ``rate`` edits/s for ``duration`` s, paced on an absolute schedule (an edit
   that falls behind is made at once). Latency p50/p99 over every (edit, receiver) pair;
   **bytes per edit** at the hub (WebSocket message payloads in + out, and with RFC 6455
   frame headers); **hub CPU per edit** (``time.process_time_ns`` of the hub process between
   a snapshot before the phase and one after both receivers have every edit plus 0.3 s for
   their echoes to reach the hub, divided by the edits); every process's CPU per edit
   (``/proc/<pid>/task/*/schedstat``) while the writer ran;
3. **saturation**: the writer runs flat out for ``sustained_seconds`` but with at most
   ``window`` edits that the hub has not yet broadcast back to it (the hub echoes every
   update to its sender too; the writer counts those echoes), so the backlog stays bounded
   whatever the hub's speed. Edits delivered per second at each receiver over the last 3/4
   of the phase (the lower of the two is reported), hub CPU per edit and the hub's CPU
   share (CPU time / wall time while the writer ran: near 1.0 would mean the hub's one
   thread is the bottleneck), the machine's CPU share and run-queue wait;
4. **sustained**: paced runs of ``sustained_seconds`` at the saturated rate, then up or down
   by ``ramp_step`` of it (up to 150% while runs pass, or down to the first pass, not below
   50%); the highest passing rate is the sustained throughput. A run passes when both
   receivers get every edit and the median latency of the last quarter of its edits is at
   most 20 ms: no backlog is left standing at the end (one that grows at 1% of the rate
   reaches 50 ms in 5 s; one built early and then drained passes, as it does not grow).

pycrdt's ``Provider`` streams every doc change, remote ones included, so each receiver sends
every update it gets back to the hub, which applies it as a no-op (no rebroadcast): per edit
the hub receives 3 messages (writer + 2 echoes) and sends 3 (to the 3 clients, the writer
included). Those are part of the hub's real cost and are counted.

The client processes (:func:`_client`, also the clients of ``benchmarks/documents.py``) count
the WebSocket messages they send and receive (``counts``: payloads, and with frame headers). A
flat-out writer can also be acknowledged end to end instead of by the server's echo
(``acks="receivers"``: the receivers report their progress to the writer over UDP on loopback,
only while asked to), for a server that never sends an update back to its sender.
:func:`sustained_ramp` is phase 4 on its own, for any system with a ``_Run``-like ``phase``.

``run_hub_baseline()`` returns a dict (units in the key names); ``python
benchmarks/_yhub.py [--quick]`` prints it as JSON on stdout, progress on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import os
import queue
import resource
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

_HERE = os.path.dirname(os.path.abspath(__file__))
_ON_PATH = any(os.path.abspath(p or os.curdir) == _HERE for p in sys.path)
if not _ON_PATH:  # imported from elsewhere than benchmarks/
    sys.path.insert(0, _HERE)
from _harness import stats_us  # noqa: E402

if not _ON_PATH:
    sys.path.remove(_HERE)
if TYPE_CHECKING:
    from pycrdt import Map
if __name__ == "__main__":
    # benchmarks/http.py would shadow the standard library's http package, which aiohttp
    # (imported only inside the hub and client processes) needs
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

ROOM = "/bench-room"
#: the Y.Map every edit goes to
ROOT = "edits"
#: a paced run passes when the median latency of its last quarter is at most this
LATE_P50_MAX_MS = 20.0
#: protocol lines between this module's processes start with this marker on stdout
_MARK = "@@yhub "
_SETTLE_S = 0.3


def key(i: int) -> str:
    """The Map key of edit ``i``: ``"e<i>"``."""
    return f"e{i}"


def apply_edit(edits: Map, i: int) -> None:
    """Make edit ``i`` on ``edits`` (``doc.get(ROOT, type=Map)``), one transaction."""
    edits[key(i)] = i


def ids_in(keys: Iterable[str]) -> list[int]:
    """The edit ids among a ``MapEvent``'s keys."""
    return [int(k[1:]) for k in keys if k[:1] == "e" and k[1:].isdigit()]


async def write_edits(
    apply: Callable[[int], object],
    *,
    first: int,
    rate: float,
    duration: float,
    window: int = 0,
    acked: Callable[[], int] | None = None,
    progress: asyncio.Event | None = None,
) -> list[int]:
    """Make edits ``first, first+1, ...`` for ``duration`` seconds; return the
    ``time.monotonic_ns()`` right after each ``apply(i)``.

    ``rate > 0``: paced on an absolute schedule (edit ``k`` is due ``k / rate`` s after the
    start; one that falls behind is made at once). ``rate == 0``: flat out, with at most
    ``window`` edits not yet acknowledged (``acked()`` counts edits acknowledged since id 0;
    ``progress`` is set whenever it grows). The event loop gets a turn after every edit, so
    a provider can send it before the next one."""
    if rate <= 0 and (window <= 0 or acked is None or progress is None):
        raise ValueError("a flat-out writer needs window, acked and progress")
    times: list[int] = []
    i = first
    t0 = time.monotonic_ns()
    end = t0 + int(duration * 1e9)
    period = 1e9 / rate if rate > 0 else 0.0
    while True:
        now = time.monotonic_ns()
        if now >= end:
            break
        if rate > 0:
            due = t0 + int((i - first) * period)
            if due > now:
                await asyncio.sleep(min(due, end) / 1e9 - now / 1e9)
                continue
        else:
            assert acked is not None and progress is not None
            if i - acked() >= window:
                progress.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(progress.wait(), (end - now) / 1e9)
                continue
        apply(i)
        times.append(time.monotonic_ns())
        i += 1
        await asyncio.sleep(0)
    return times


def collect_arrivals(readers: Any) -> list[dict[Any, Any]]:
    """Each reader's arrival time per edit id (the readers' ``dump`` replies)."""
    out = []
    for r in readers:
        d = r.call(30, cmd="dump")
        out.append(dict(zip(d["ids"], d["ts"], strict=True)))
    return out


def latency_summary(
    first: int, times: Sequence[int], arrivals: Sequence[dict[int, int]]
) -> dict[str, Any]:
    """Latency of edits ``first..first+len(times)-1`` at each receiver (``arrivals``: id ->
    arrival ns), in ms: p50, p99, max over every (edit, receiver) pair; the median of the
    first and last quarter of the edits (backlog growth); missing deliveries."""
    lags: list[int] = []
    early: list[int] = []
    late: list[int] = []
    missing = 0
    n = len(times)
    for got in arrivals:
        for k, t in enumerate(times):
            a = got.get(first + k)
            if a is None:
                missing += 1
                continue
            lags.append(a - t)
            if k < n // 4:
                early.append(a - t)
            elif k >= n - n // 4:
                late.append(a - t)
    out: dict[str, Any] = {"samples": len(lags), "missing": missing}
    if lags:
        p50, p99, mean = stats_us(lags)
        out |= {
            "p50_ms": p50 / 1000,
            "p99_ms": p99 / 1000,
            "mean_ms": mean / 1000,
            "max_ms": max(lags) / 1e6,
        }
    if early and late:
        out["early_p50_ms"] = statistics.median(early) / 1e6
        out["late_p50_ms"] = statistics.median(late) / 1e6
    return out


def delivered_rate(times: Sequence[int], arrivals: dict[int, int], skip: float = 0.25) -> float:
    """Edits per second a receiver got between ``skip`` of the way through the writer's run
    and its end."""
    if len(times) < 2:
        return 0.0
    t0 = times[0] + int(skip * (times[-1] - times[0]))
    t1 = times[-1]
    got = sum(1 for a in arrivals.values() if t0 <= a <= t1)
    return got / ((t1 - t0) / 1e9)


# --- the processes ------------------------------------------------------------------------


def _reply(obj: Any) -> None:
    sys.stdout.write(_MARK + json.dumps(obj, separators=(",", ":")) + "\n")
    sys.stdout.flush()


async def _commands() -> AsyncIterator[dict[str, Any]]:
    """JSON commands, one a line on stdin, until EOF (the parent's end)."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 20)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        if line.strip():
            yield json.loads(line)


def _frame(n: int, masked: bool) -> int:
    """Bytes of a WebSocket frame with an ``n``-byte payload (RFC 6455; clients mask)."""
    return n + (2 if n < 126 else 4 if n < 65536 else 10) + (4 if masked else 0)


class _Counts:
    def __init__(self) -> None:
        self.msgs_in = self.msgs_out = 0
        self.bytes_in = self.bytes_out = 0
        self.frames_in = self.frames_out = 0

    def recv(self, m: bytes) -> None:
        self.msgs_in += 1
        self.bytes_in += len(m)
        self.frames_in += _frame(len(m), True)

    def send(self, m: bytes) -> None:
        self.msgs_out += 1
        self.bytes_out += len(m)
        self.frames_out += _frame(len(m), False)

    def snap(self) -> dict[str, int]:
        ru = resource.getrusage(resource.RUSAGE_SELF)
        return {
            **vars(self),
            "cpu_ns": time.process_time_ns(),
            "user_ns": round(ru.ru_utime * 1e9),
            "sys_ns": round(ru.ru_stime * 1e9),
            "wall_ns": time.monotonic_ns(),
        }


class Channel:
    """An aiohttp WebSocket (client or server side) as a ``pycrdt.Channel``; ``on_send`` and
    ``on_recv`` see every binary message."""

    def __init__(
        self,
        ws: Any,
        path: str,
        on_send: Callable[[bytes], None] | None = None,
        on_recv: Callable[[bytes], None] | None = None,
    ) -> None:
        self._ws = ws
        self._path = path
        self._on_send = on_send
        self._on_recv = on_recv
        self._lock = asyncio.Lock()

    @property
    def path(self) -> str:
        return self._path

    def __aiter__(self) -> Channel:
        return self

    async def __anext__(self) -> bytes:
        return await self.recv()

    async def send(self, message: bytes) -> None:
        if self._on_send is not None:
            self._on_send(message)
        async with self._lock:
            await self._ws.send_bytes(message)

    async def recv(self) -> bytes:
        from aiohttp import WSMsgType

        while True:
            msg = await self._ws.receive()
            if msg.type == WSMsgType.BINARY:
                data: bytes = msg.data
                if self._on_recv is not None:
                    self._on_recv(data)
                return data
            if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
                raise StopAsyncIteration


async def _hub() -> None:
    from aiohttp import web
    from pycrdt.websocket import WebsocketServer

    counts = _Counts()
    closing = False

    def on_error(exc: Exception, log: Any) -> bool:
        if not closing:
            print(f"yhub: hub error: {exc!r}", file=sys.stderr, flush=True)
        return True

    server = WebsocketServer(exception_handler=on_error)

    async def handle(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(compress=False, max_msg_size=0)
        await ws.prepare(request)
        await server.serve(Channel(ws, request.path, counts.send, counts.recv))
        return ws

    async with server:
        app = web.Application()
        app.router.add_get("/{room}", handle)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        try:
            await web.TCPSite(runner, "127.0.0.1", 0).start()
            _reply({"port": runner.addresses[0][1], "pid": os.getpid()})
            async for cmd in _commands():
                if cmd["cmd"] == "snap":
                    _reply(counts.snap())
        finally:
            closing = True
            await runner.cleanup()


class _ClientCounts:
    """WebSocket messages a client sent and received: payload bytes, and with RFC 6455 frame
    headers (a client masks what it sends)."""

    def __init__(self) -> None:
        self.msgs_out = self.msgs_in = 0
        self.bytes_out = self.bytes_in = 0
        self.frames_out = self.frames_in = 0

    def send(self, m: bytes) -> None:
        self.msgs_out += 1
        self.bytes_out += len(m)
        self.frames_out += _frame(len(m), True)

    def recv(self, m: bytes) -> None:
        self.msgs_in += 1
        self.bytes_in += len(m)
        self.frames_in += _frame(len(m), False)


class _Acks(asyncio.DatagramProtocol):
    """The writer's end of the receivers' progress reports (``acks="receivers"``): each
    datagram is a receiver's highest edit id so far."""

    def __init__(self, progress: asyncio.Event) -> None:
        self.progress = progress
        self.reports: dict[Any, int] = {}

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.reports[addr] = max(self.reports.get(addr, -1), int(data))
        self.progress.set()

    def acked(self, receivers: int) -> int:
        """Edits every one of ``receivers`` receivers reported (ids are consecutive from 0)."""
        if len(self.reports) < receivers:
            return 0
        return min(self.reports.values()) + 1


async def _client(url: str, kind: str) -> None:
    """A pycrdt client process (``kind``: ``writer`` or ``reader``) of the document at the
    WebSocket ``url`` (the hub's room, or a crdtcoord node's ``/v1/yjs/{name}``).

    A flat-out writer keeps at most ``window`` edits unacknowledged. ``acks="echo"`` (the
    hub): an edit is acknowledged when the server's broadcast of it comes back to the writer.
    ``acks="receivers"`` (a server that never sends an update back to its sender, as a
    crdtcoord node): when every receiver has it; receivers report their progress to the
    writer's UDP port on 127.0.0.1 (``acks`` command) only while asked to."""
    import socket

    import aiohttp
    from pycrdt import Doc, Map, MapEvent, Provider

    loop = asyncio.get_running_loop()
    doc = Doc()
    edits = doc.get(ROOT, type=Map)
    echoed = 0
    progress = asyncio.Event()
    arrivals: dict[int, int] = {}
    max_id = -1
    counts = _ClientCounts()
    acks = _Acks(progress)
    if kind == "writer":
        udp, _ = await loop.create_datagram_endpoint(lambda: acks, local_addr=("127.0.0.1", 0))
        ack_port = udp.get_extra_info("sockname")[1]
    report_to: tuple[str, int] | None = None
    report_sock: socket.socket | None = None
    report_due = False

    def report() -> None:
        nonlocal report_due
        report_due = False
        if report_sock is not None and report_to is not None:
            with contextlib.suppress(OSError):
                report_sock.sendto(str(max_id).encode(), report_to)

    def on_recv(m: bytes) -> None:  # the writer: the hub's broadcast of one of its edits
        nonlocal echoed
        counts.recv(m)
        if m[:2] == b"\x00\x02":
            echoed += 1
            progress.set()

    def on_change(ev: MapEvent) -> None:
        nonlocal max_id, report_due
        t = time.monotonic_ns()
        for i in ids_in(ev.keys):
            arrivals.setdefault(i, t)
            max_id = max(max_id, i)
        if report_to is not None and not report_due:
            report_due = True  # (one report for the changes of this turn of the loop)
            loop.call_soon(report)

    next_id = 0
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(url, compress=0, max_msg_size=0) as ws,
    ):
        channel = Channel(ws, ROOM, counts.send, on_recv if kind == "writer" else counts.recv)
        async with Provider(doc, channel) as provider:
            await asyncio.wait_for(provider.synced.wait(), 15)
            if kind == "reader":
                edits.observe(on_change)
            ready: dict[str, Any] = {"ready": True, "pid": os.getpid()}
            if kind == "writer":
                ready["ack_port"] = ack_port
            _reply(ready)
            async for cmd in _commands():
                if cmd["cmd"] == "write":
                    receivers = cmd.get("receivers", 2)
                    acked: Callable[[], int] = (
                        functools.partial(acks.acked, receivers)
                        if cmd.get("acks", "echo") == "receivers"
                        else lambda: echoed
                    )
                    times = await write_edits(
                        functools.partial(apply_edit, edits),
                        first=next_id,
                        rate=cmd["rate"],
                        duration=cmd["duration"],
                        window=cmd.get("window", 0),
                        acked=acked,
                        progress=progress,
                    )
                    _reply({"first": next_id, "times": times})
                    next_id += len(times)
                elif cmd["cmd"] == "acks":  # a receiver: report progress to this port (0: stop)
                    if cmd["port"]:
                        report_to = ("127.0.0.1", cmd["port"])
                        if report_sock is None:
                            report_sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                        report()  # (the writer learns where this receiver is now)
                    else:
                        report_to = None
                    _reply({"ok": True})
                elif cmd["cmd"] == "wait":
                    deadline = time.monotonic() + cmd["timeout"]
                    while max_id < cmd["upto"] and time.monotonic() < deadline:
                        await asyncio.sleep(0.005)
                    _reply({"ok": max_id >= cmd["upto"], "max_id": max_id})
                elif cmd["cmd"] == "dump":
                    _reply({"ids": list(arrivals), "ts": list(arrivals.values())})
                    arrivals.clear()
                elif cmd["cmd"] == "counts":
                    _reply(vars(counts))


# --- the orchestrator (this process) ------------------------------------------------------


def _log(msg: str) -> None:
    print(f"yhub: {msg}", file=sys.stderr, flush=True)


class _Child:
    """A process running this file in a role; JSON lines on stdin/stdout, stderr inherited."""

    def __init__(self, name: str, *args: str) -> None:
        self.name = name
        self.proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
            start_new_session=True,  # a Ctrl-C reaches us only; we stop the children
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith(_MARK):
                self._lines.put(line[len(_MARK) :])
            else:
                sys.stderr.write(f"[{self.name}] {line}")
        self._lines.put(None)

    def read(self, timeout: float) -> dict[str, Any]:
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"{self.name}: no reply within {timeout:.0f} s") from None
        if line is None:
            raise RuntimeError(f"{self.name} exited (status {self.proc.wait()})")
        out: dict[str, Any] = json.loads(line)
        return out

    def call(self, wait: float = 10.0, **cmd: Any) -> dict[str, Any]:
        """Send ``cmd``; its reply within ``wait`` seconds."""
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(json.dumps(cmd) + "\n")
            self.proc.stdin.flush()
        except OSError as e:
            raise RuntimeError(f"{self.name} exited (status {self.proc.wait()})") from e
        return self.read(wait)

    def stop(self, timeout: float = 3.0) -> None:
        """EOF on its stdin asks it to leave (after its current command); terminated if it
        has not within ``timeout``, killed 2 s later."""
        with contextlib.suppress(OSError):
            if self.proc.stdin is not None:
                self.proc.stdin.close()
        for end in (self.proc.terminate, self.proc.kill):
            try:
                self.proc.wait(timeout)
                return
            except subprocess.TimeoutExpired:
                end()
                timeout = 2.0
        self.proc.wait()


def _delta(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
    return {k: b[k] - a[k] for k in a}


def _schedstat(pid: int) -> tuple[int, int]:
    """(ns on a CPU, ns runnable but waiting for one) of all threads of ``pid`` (Linux)."""
    run = wait = 0
    with contextlib.suppress(OSError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            with (
                contextlib.suppress(OSError, ValueError),
                open(f"/proc/{pid}/task/{tid}/schedstat") as f,
            ):
                r, w, _ = f.read().split()
                run, wait = run + int(r), wait + int(w)
    return run, wait


class _Run:
    def __init__(self, hub: _Child, writer: _Child, readers: list[_Child]) -> None:
        self.hub, self.writer, self.readers = hub, writer, readers
        self.roles = {"hub": hub, "writer": writer}
        self.roles |= {f"receiver{k}": r for k, r in enumerate(readers, 1)}

    def _sched(self) -> dict[str, tuple[int, int]]:
        return {k: _schedstat(c.proc.pid) for k, c in self.roles.items()}

    def phase(
        self, rate: float, duration: float, window: int = 0, drain: float = 10.0
    ) -> dict[str, Any]:
        """One writer run: the writer's times, the arrivals, the hub's counters from before
        the run to after the drain (``hub``) and while the writer ran (``hub_writing``), and
        every process's CPU and run-queue wait while the writer ran (``sched``, ns)."""
        a = self.hub.call(cmd="snap")
        s0 = self._sched()
        w = self.writer.call(
            duration + 30, cmd="write", rate=rate, duration=duration, window=window
        )
        s1 = self._sched()
        mid = self.hub.call(cmd="snap")
        first, times = w["first"], w["times"]
        last = first + len(times) - 1
        delivered = all(
            r.call(drain + 10, cmd="wait", upto=last, timeout=drain)["ok"] for r in self.readers
        )
        time.sleep(_SETTLE_S)  # the receivers' echoes reach the hub
        b = self.hub.call(cmd="snap")
        arrivals = collect_arrivals(self.readers)
        return {
            "first": first,
            "times": times,
            "arrivals": arrivals,
            "delivered": delivered,
            "hub": _delta(a, b),
            "hub_writing": _delta(a, mid),
            "sched": {k: (s1[k][0] - s0[k][0], s1[k][1] - s0[k][1]) for k in s0},
            "sched_wall_ns": mid["wall_ns"] - a["wall_ns"],
        }


def _per_edit(hub: dict[str, int], edits: int) -> dict[str, float]:
    e = max(1, edits)
    return {
        "bytes_per_edit": (hub["bytes_in"] + hub["bytes_out"]) / e,
        "wire_bytes_per_edit": (hub["frames_in"] + hub["frames_out"]) / e,
        "hub_msgs_in_per_edit": hub["msgs_in"] / e,
        "hub_msgs_out_per_edit": hub["msgs_out"] / e,
        "hub_cpu_us_per_edit": hub["cpu_ns"] / e / 1000,
    }


def _cpu_use(p: dict[str, Any], edits: int) -> dict[str, Any]:
    """Per process, while the writer ran: CPU µs per edit, and the machine's CPU share and
    run-queue wait share (time runnable but waiting for a CPU / wall time, summed)."""
    wall = max(1, p["sched_wall_ns"])
    sched: dict[str, tuple[int, int]] = p["sched"]
    return {
        "cpu_us_per_edit_by_process": {k: v[0] / max(1, edits) / 1000 for k, v in sched.items()},
        "machine_cpu_share": sum(v[0] for v in sched.values()) / wall / (os.cpu_count() or 1),
        "runqueue_wait_share": sum(v[1] for v in sched.values()) / wall,
    }


def sustained_ramp(
    phase: Callable[..., dict[str, Any]],
    saturated: float,
    seconds: float,
    *,
    ramp_step: float = 0.1,
    log: Callable[[str], None] = print,
) -> tuple[float, list[dict[str, Any]]]:
    """The sustained throughput (edits/s) and its runs: paced runs of ``seconds`` (``phase(rate,
    seconds, drain=...)``, a ``_Run.phase``) at ``saturated``, then up by ``ramp_step`` of it
    while runs pass (to 150%), or down to the first pass (not below 50%; 0 if none passes)."""
    checks: list[dict[str, Any]] = []

    def check(f: float) -> bool:
        r = max(1, round(f * saturated))
        p = phase(r, seconds, drain=max(3.0, seconds))
        lat = latency_summary(p["first"], p["times"], p["arrivals"])
        late = lat.get("late_p50_ms", float("inf"))
        growth = late - lat.get("early_p50_ms", 0.0)
        sent = len(p["times"]) / seconds
        ok = bool(
            p["delivered"] and lat["missing"] == 0 and sent >= 0.95 * r and late <= LATE_P50_MAX_MS
        )
        checks.append(
            {
                "rate_edits_per_s": r,
                "sent_edits_per_s": sent,
                "delivered_edits_per_s": min(delivered_rate(p["times"], a) for a in p["arrivals"]),
                "latency_p50_ms": lat.get("p50_ms"),
                "latency_p99_ms": lat.get("p99_ms"),
                "late_quarter_p50_ms": late,
                "lag_growth_ms": growth,
                "passed": ok,
            }
        )
        log(
            f"paced {r} edits/s: p50 {lat.get('p50_ms', 0):.1f} ms, p99"
            f" {lat.get('p99_ms', 0):.1f} ms, last quarter p50 {late:.1f} ms (growth"
            f" {growth:+.1f} ms): {'kept up' if ok else 'backlog at the end or edits late'}"
        )
        return ok

    sustained = 0.0
    f = 1.0
    if check(f):
        sustained = f * saturated
        while f + ramp_step <= 1.5 + 1e-9:
            f += ramp_step
            if not check(f):
                break
            sustained = f * saturated
    else:
        while f - ramp_step >= 0.5 - 1e-9:
            f -= ramp_step
            if check(f):
                sustained = f * saturated
                break
    return sustained, checks


def run_hub_baseline(
    rate: float = 100.0,
    duration: float = 20.0,
    sustained_seconds: float = 5.0,
    *,
    warmup: float = 1.0,
    window: int = 64,
    ramp_step: float = 0.1,
) -> dict[str, Any]:
    """Measure the pycrdt-websocket hub (see the module docstring); every process is stopped
    before this returns or raises. Latencies in ms, CPU in µs, rates in edits/s."""
    import pycrdt
    import pycrdt.websocket

    started = time.monotonic()
    children: list[_Child] = []
    try:
        hub = _Child("hub", "_hub")
        children.append(hub)
        url = f"ws://127.0.0.1:{hub.read(20)['port']}{ROOM}"
        readers = [_Child(f"receiver{k}", "_client", url, "reader") for k in (1, 2)]
        writer = _Child("writer", "_client", url, "writer")
        children += [*readers, writer]
        for c in children[1:]:
            c.read(30)
        _log(f"hub and 3 clients up at {url} ({time.monotonic() - started:.1f} s)")
        run = _Run(hub, writer, readers)

        run.phase(rate, warmup)
        _log(f"latency: {rate:g} edits/s for {duration:g} s")
        p = run.phase(rate, duration)
        lat = latency_summary(p["first"], p["times"], p["arrivals"])
        edits = len(p["times"])
        out: dict[str, Any] = {
            "rate_edits_per_s": rate,
            "duration_s": duration,
            "edits": edits,
            "latency_samples": lat["samples"],
            "latency_missing": lat["missing"],
            "latency_p50_ms": lat.get("p50_ms"),
            "latency_p99_ms": lat.get("p99_ms"),
            "latency_mean_ms": lat.get("mean_ms"),
            "latency_max_ms": lat.get("max_ms"),
            **_per_edit(p["hub"], edits),
            **_cpu_use(p, edits),
        }
        _log(
            f"  p50 {lat.get('p50_ms', 0):.2f} ms, p99 {lat.get('p99_ms', 0):.2f} ms,"
            f" hub {out['hub_cpu_us_per_edit']:.0f} us CPU/edit"
        )

        _log(f"saturation: flat out, window {window}, for {sustained_seconds:g} s")
        p = run.phase(0, sustained_seconds, window=window)
        edits = len(p["times"])
        rates = [delivered_rate(p["times"], a) for a in p["arrivals"]]
        w = p["hub_writing"]
        sat = _per_edit(p["hub"], edits)
        lat = latency_summary(p["first"], p["times"], p["arrivals"])
        saturated = min(rates)
        use = _cpu_use(p, edits)
        out |= {
            "saturated_window": window,
            "saturated_edits": edits,
            "saturated_missing": lat["missing"],
            "saturated_delivered_edits_per_s": saturated,
            "saturated_delivered_per_receiver_edits_per_s": rates,
            "saturated_latency_p50_ms": lat.get("p50_ms"),
            "saturated_hub_cpu_us_per_edit": sat["hub_cpu_us_per_edit"],
            "saturated_bytes_per_edit": sat["bytes_per_edit"],
            "saturated_hub_cpu_share": w["cpu_ns"] / max(1, w["wall_ns"]),
            **{f"saturated_{k}": v for k, v in use.items()},
        }
        _log(
            f"  {saturated:.0f} edits/s delivered, hub {sat['hub_cpu_us_per_edit']:.0f} us"
            f" CPU/edit, hub CPU share {out['saturated_hub_cpu_share']:.2f},"
            f" machine CPU share {use['machine_cpu_share']:.2f}"
        )

        sustained, checks = sustained_ramp(
            run.phase, saturated, sustained_seconds, ramp_step=ramp_step, log=_log
        )
        out |= {
            "sustained_edits_per_s": round(sustained),
            "sustained_checks": checks,
            "sustained_seconds": sustained_seconds,
            "elapsed_s": time.monotonic() - started,
            "cpus": os.cpu_count(),
            "versions": {
                "pycrdt": pycrdt.__version__,
                "pycrdt-websocket": pycrdt.websocket.__version__,
            },
        }
        return out
    finally:
        for c in reversed(children):  # the clients first, then the hub
            c.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="a few seconds per phase")
    ap.add_argument("--rate", type=float, default=100.0, help="edits/s of the latency phase")
    ap.add_argument("--duration", type=float, help="seconds of the latency phase")
    ap.add_argument("--sustained-seconds", type=float, help="seconds of each throughput run")
    args = ap.parse_args()
    duration = args.duration or (3.0 if args.quick else 20.0)
    sustained = args.sustained_seconds or (1.5 if args.quick else 5.0)
    res = run_hub_baseline(
        args.rate,
        duration,
        sustained,
        warmup=0.5 if args.quick else 1.0,
        ramp_step=0.2 if args.quick else 0.1,
    )
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_hub":
        asyncio.run(_hub())
    elif len(sys.argv) > 1 and sys.argv[1] == "_client":
        asyncio.run(_client(sys.argv[2], sys.argv[3]))
    else:
        main()
