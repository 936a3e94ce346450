"""Node.js environment for the Yjs interop tests (stdlib + pytest only).

``require_node()`` skips the calling test when ``node``/``npm`` are missing,
except on CI (``CI=true``), where a missing toolchain is a hard failure.

``node_modules()`` runs ``npm ci`` from ``package-lock.json`` into
``tests/interop/node_modules`` (git-ignored) and writes a stamp file holding
the lockfile hash there, so ``npm ci`` runs again only when the lockfile
changes (or node_modules was removed / left half-installed).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
CLIENT_SCRIPT = HERE / "yjs_client.mjs"

NPM_CI_TIMEOUT_S = 300.0
STAMP_NAME = ".crdtcoord-lock.sha256"
# Packages yjs_client.mjs imports; their presence is checked besides the stamp.
REQUIRED_PACKAGES = ("yjs", "y-websocket", "y-protocols", "ws")


class NodeEnvError(RuntimeError):
    """npm ci failed, timed out, or the lockfile is missing."""


def _on_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() == "true"


def node_executable() -> str | None:
    return shutil.which("node")


def npm_executable() -> str | None:
    return shutil.which("npm")


def require_node() -> str:
    """Return the path of ``node``; skip the test if node/npm are missing.

    With ``CI=true`` a missing toolchain fails the test instead of skipping,
    so the interop suite cannot silently disappear from CI.
    """
    node, npm = node_executable(), npm_executable()
    missing = [name for name, path in (("node", node), ("npm", npm)) if path is None]
    if missing:
        msg = (
            f"Yjs interop tests need Node.js: {' and '.join(missing)} not found on PATH. "
            "Install Node.js >= 18 (with npm)"
        )
        if _on_ci():
            pytest.fail(msg + " (CI=true, so this is an error rather than a skip).", pytrace=False)
        pytest.skip(msg + ".")
    assert node is not None
    return node


def lockfile_hash(root: Path = HERE) -> str:
    lock = root / "package-lock.json"
    if not lock.is_file():
        raise NodeEnvError(
            f"{lock} is missing; run `npm install` in {root} and commit the lockfile"
        )
    h = hashlib.sha256()
    h.update(lock.read_bytes())
    # package.json too: `npm ci` refuses to run if the two are out of sync,
    # and an edit to it should trigger that check rather than be ignored.
    pkg = root / "package.json"
    if pkg.is_file():
        h.update(b"\0")
        h.update(pkg.read_bytes())
    return h.hexdigest()


def _installed(modules: Path, digest: str) -> bool:
    stamp = modules / STAMP_NAME
    try:
        if stamp.read_text(encoding="utf-8").strip() != digest:
            return False
    except OSError:
        return False
    return all((modules / name / "package.json").is_file() for name in REQUIRED_PACKAGES)


def node_modules(root: Path = HERE, *, timeout: float = NPM_CI_TIMEOUT_S) -> Path:
    """Make sure ``npm ci`` has been run in ``root``; return its node_modules.

    Re-runs ``npm ci`` only if the lockfile (or package.json) hash differs
    from the stamp stored in node_modules. Raises NodeEnvError on failure
    (npm missing, non-zero exit, or timeout).
    """
    root = Path(root).resolve()
    modules = root / "node_modules"
    digest = lockfile_hash(root)
    if _installed(modules, digest):
        return modules

    npm = npm_executable()
    if npm is None:
        raise NodeEnvError("npm not found on PATH")
    # Concurrent callers (pytest-xdist workers) serialise on a lock file.
    # It lives in the temp dir: `npm ci` deletes node_modules, and a file in
    # the source tree would show up in `git status`.
    key = hashlib.sha256(str(root).encode()).hexdigest()[:16]
    lock_path = Path(tempfile.gettempdir()) / f"crdtcoord-npm-ci-{key}.lock"
    with _file_lock(lock_path):
        if _installed(modules, digest):  # another worker did it meanwhile
            return modules
        stamp = modules / STAMP_NAME
        if stamp.exists():
            stamp.unlink()  # never leave a valid stamp over a partial install
        cmd = [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"]
        env = dict(os.environ)
        env.setdefault("npm_config_update_notifier", "false")
        try:
            proc = subprocess.run(
                cmd,
                cwd=root,
                env=env,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired as exc:
            raise NodeEnvError(f"`npm ci` in {root} timed out after {timeout:.0f}s") from exc
        if proc.returncode != 0:
            lines = (proc.stderr + proc.stdout).strip().splitlines()
            if len(lines) > 40:  # npm appends its usage text on EUSAGE: keep head + tail
                lines = [*lines[:25], "...", *lines[-10:]]
            output = "\n".join(lines)
            raise NodeEnvError(
                f"`npm ci` in {root} failed with exit code {proc.returncode}:\n{output}"
            )
        modules.mkdir(exist_ok=True)
        stamp.write_text(digest + "\n", encoding="utf-8")
    if not _installed(modules, digest):
        raise NodeEnvError(
            f"`npm ci` in {root} succeeded but {REQUIRED_PACKAGES} are not all installed"
        )
    return modules


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """Exclusive advisory lock on ``path`` (fcntl on POSIX, no-op elsewhere)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - non-POSIX
        yield
        return
    with open(path, "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
