"""``crdtcoord demo``: three real nodes on loopback converge; one is killed -9 and restarted.

Each node is a ``crdtcoord serve`` process with its own SQLite data dir. One client thread per
node increments a shared counter at ``majority`` (each increment carries an op id) and adds to a
shared set, through the node's JSON API. Midway, one node is killed with SIGKILL while its client
keeps trying, then restarted from its data dir. At the end every node must show the same value,
and that value must hold every increment a majority acknowledged (an increment whose request was
cut by the kill is *indefinite*: it may or may not have been applied, and the summary says how
many there were).
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crdtcoord_http.client import Client, ClientError

__all__ = ["Cluster", "main"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Proc:
    """One ``crdtcoord serve`` process."""

    node: str
    port: int
    data: Path
    peers: list[str]
    proc: subprocess.Popen[bytes] | None = None
    log: Path | None = None
    starts: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, extra: list[str] | None = None) -> None:
        self.starts += 1
        assert self.log is not None
        cmd = [
            sys.executable,
            "-m",
            "crdtcoord",
            "serve",
            "--id",
            self.node,
            "--listen",
            f"127.0.0.1:{self.port}",
            "--data-dir",
            str(self.data),
            *(a for p in self.peers for a in ("--peer", p)),
            *(extra or []),
        ]
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill9(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self, timeout: float = 10.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


class Cluster:
    """``n`` serve processes on free loopback ports, each peered with the first."""

    def __init__(self, n: int, root: Path, extra: list[str] | None = None) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.extra = extra or []
        ports = [free_port() for _ in range(n)]
        self.procs: list[Proc] = []
        for i in range(n):
            node = f"n{i + 1}"
            peers = [f"n{j + 1}=http://127.0.0.1:{ports[j]}" for j in range(n) if j != i]
            p = Proc(node, ports[i], root / node, peers, log=root / f"{node}.log")
            self.procs.append(p)

    def start(self, timeout: float = 20.0) -> None:
        for p in self.procs:
            p.start(self.extra)
        for p in self.procs:
            self.wait_ready(p, timeout)

    def wait_ready(self, p: Proc, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        c = Client(p.url, timeout=1.0)
        while True:
            if not p.alive():
                raise RuntimeError(f"{p.node} exited: {self.tail(p)}")
            try:
                c.health()
                return
            except ClientError:
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"{p.node} not ready in {timeout} s: {self.tail(p)}"
                    ) from None
                time.sleep(0.05)

    def tail(self, p: Proc, n: int = 5) -> str:
        try:
            assert p.log is not None
            return " | ".join(p.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        for p in self.procs:
            p.stop()


@dataclass
class Load:
    """One client thread's counts."""

    node: str
    acked: int = 0
    indefinite: int = 0
    refused: int = 0
    added: list[str] = field(default_factory=list)
    last_error: str = ""


def _worker(p: Proc, load: Load, stop: threading.Event, rng: random.Random) -> None:
    c = Client(p.url, timeout=3.0)
    i = 0
    while not stop.is_set():
        i += 1
        op_id = f"{p.node}-{p.starts}-{i}"
        try:
            c.op("hits", "inc", n=1, consistency="majority", op_id=op_id, timeout=2.0)
            load.acked += 1
            if i % 25 == 0:
                el = f"{p.node}-{i}"
                c.op("seen", "add", element=el, op_id=op_id + "-a")
                load.added.append(el)
        except ClientError as e:
            if e.status == 0 and "refused" in str(e).lower():
                load.refused += 1  # never reached the node: not applied
            else:
                load.indefinite += 1
            load.last_error = e.code
            time.sleep(0.1)
        time.sleep(rng.uniform(0.0, 0.004))


def _snapshot(cluster: Cluster) -> list[dict[str, Any]]:
    rows = []
    for p in cluster.procs:
        row: dict[str, Any] = {"node": p.node, "alive": p.alive(), "starts": p.starts}
        if p.alive():
            c = Client(p.url, timeout=0.5)
            try:
                st = c.status()
                row["incarnation"] = st["incarnation"]
                row["peers_up"] = sum(
                    1 for x in st["peers"] if not x["suspected"] and not x["left"]
                )
                row["backlog"] = st["backlog"]
                try:
                    row["hits"] = c.get("hits")["value"]
                except ClientError:
                    row["hits"] = 0
                try:
                    row["seen"] = len(c.get("seen")["value"])
                except ClientError:
                    row["seen"] = 0
            except ClientError:
                row["alive"] = "starting"
        rows.append(row)
    return rows


def _table(rows: list[dict[str, Any]], phase: str, loads: list[Load]) -> Any:
    from rich.table import Table

    t = Table(title=f"crdtcoord demo: {phase}", title_justify="left")
    for col in ("node", "process", "incarnation", "peers up", "hits", "set size", "backlog"):
        t.add_column(col, justify="right" if col not in ("node", "process") else "left")
    t.add_column("client acked/indefinite/refused", justify="right")
    for r, ld in zip(rows, loads, strict=True):
        alive = r["alive"]
        proc = (
            "[red]KILLED (-9)[/red]"
            if alive is False
            else ("[yellow]starting[/yellow]" if alive == "starting" else "[green]up[/green]")
        )
        if r["starts"] > 1 and alive is True:
            proc = "[green]up (restarted)[/green]"
        t.add_row(
            r["node"],
            proc,
            str(r.get("incarnation", "-")),
            str(r.get("peers_up", "-")),
            str(r.get("hits", "-")),
            str(r.get("seen", "-")),
            str(r.get("backlog", "-")),
            f"{ld.acked} / {ld.indefinite} / {ld.refused}",
        )
    return t


def main(seed: int = 7, quick: bool = False) -> int:
    """Run the demo; 0 if every node converged on a value holding every acknowledged update."""
    from rich.console import Console
    from rich.live import Live

    console = Console()
    tty = console.is_terminal
    if not tty:
        console = Console(width=120)  # (a CI log: wide enough for the table)
    rng = random.Random(seed)
    root = Path(tempfile.mkdtemp(prefix="crdtcoord-demo-"))
    cluster = Cluster(3, root)
    phase_s = 2.0 if quick else 4.0
    console.print(
        f"Starting 3 nodes (crdtcoord serve) on loopback; data dirs and logs in {root}"
        " (removed at the end unless the demo fails or CRDTCOORD_DEMO_KEEP=1)",
        highlight=False,
    )
    ok = False
    loads = [Load(p.node) for p in cluster.procs]
    stop = threading.Event()
    threads: list[threading.Thread] = []
    try:
        cluster.start()
        threads = [
            threading.Thread(
                target=_worker, args=(p, ld, stop, random.Random(rng.random())), daemon=True
            )
            for p, ld in zip(cluster.procs, loads, strict=True)
        ]
        for th in threads:
            th.start()
        victim = cluster.procs[2]
        phases = [
            ("concurrent increments at majority on all three nodes", phase_s, None),
            (f"{victim.node} killed with SIGKILL mid-load", phase_s, "kill"),
            (f"{victim.node} restarted from its data dir", phase_s, "restart"),
            ("load stopped: converging", 0.0, "stop"),
        ]
        last_print = 0.0
        with (
            Live(console=console, auto_refresh=False, transient=False) if tty else _NoLive() as live
        ):
            for phase, seconds, action in phases:
                if action == "kill":
                    victim.kill9()
                elif action == "restart":
                    victim.start()
                    cluster.wait_ready(victim)
                elif action == "stop":
                    stop.set()
                    for th in threads:
                        th.join(10)
                deadline = time.monotonic() + (seconds or 20.0)
                while time.monotonic() < deadline:
                    rows = _snapshot(cluster)
                    if tty:
                        live.update(_table(rows, phase, loads), refresh=True)
                    elif time.monotonic() - last_print > 1.0:
                        last_print = time.monotonic()
                        hits = [r.get("hits", "-") for r in rows]
                        console.print(f"[{phase}] hits per node: {hits}", markup=False)
                    if action == "stop":
                        vals = {(r.get("hits"), r.get("seen")) for r in rows}
                        if len(vals) == 1 and all(r.get("backlog") == 0 for r in rows):
                            break
                    time.sleep(0.2)
            rows = _snapshot(cluster)
            if tty:
                live.update(_table(rows, "final", loads), refresh=True)
            else:
                console.print(_table(rows, "final", loads))
        acked = sum(ld.acked for ld in loads)
        indefinite = sum(ld.indefinite for ld in loads)
        refused = sum(ld.refused for ld in loads)
        added = {el for ld in loads for el in ld.added}
        values = [r.get("hits") for r in rows]
        seen_sizes = [r.get("seen") for r in rows]
        final = values[0] if isinstance(values[0], int) else -1
        converged = len(set(values)) == 1 and len(set(seen_sizes)) == 1
        nothing_lost = isinstance(final, int) and acked <= final <= acked + indefinite
        set_ok = all(isinstance(s, int) and s >= len(added) for s in seen_sizes)
        ok = converged and nothing_lost and set_ok
        console.print()
        console.print("[bold]What was shown[/bold]")
        console.print(
            f"- 3 crdtcoord serve processes replicated a counter and a set over HTTP; "
            f"{victim.node} was killed with SIGKILL mid-load and restarted from its SQLite "
            "data dir (same incarnation: it kept its state).",
            highlight=False,
        )
        console.print(
            f"- clients got {acked} increments acknowledged at majority, {indefinite} indefinite"
            f" (cut by the kill), {refused} refused (node down)",
            highlight=False,
        )
        console.print(
            f"- every node shows hits = {values} -> "
            + ("converged" if converged else "NOT converged")
            + (
                f"; holds every acknowledged increment ({acked} <= {final} <= {acked + indefinite})"
                if nothing_lost
                else "; LOST acknowledged updates"
            ),
            highlight=False,
        )
        console.print(
            f"- set sizes {seen_sizes}, {len(added)} acknowledged additions"
            + (" all present" if set_ok else " MISSING some"),
            highlight=False,
        )
        console.print("[green]demo passed[/green]" if ok else "[red]demo FAILED[/red]")
    except RuntimeError as e:
        console.print(f"[red]demo failed: {e}[/red]")
    finally:
        stop.set()
        cluster.stop()
        if ok and not os.environ.get("CRDTCOORD_DEMO_KEEP"):
            shutil.rmtree(root, ignore_errors=True)
        elif not ok:
            console.print(f"logs kept in {root}", highlight=False)
    return 0 if ok else 1


class _NoLive:
    """Stands in for rich's Live when the output is not a terminal (CI logs)."""

    def __enter__(self) -> _NoLive:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def update(self, *a: Any, **k: Any) -> None:
        pass


if __name__ == "__main__":
    sys.exit(main())
