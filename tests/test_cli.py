"""The ``crdtcoord`` command, run as a subprocess: clean help, --version, inspect's input errors."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

import crdtcoord
from crdtcoord import ORSet, encode

CLI = [sys.executable, "-m", "crdtcoord.cli"]
#: reST that must not reach a terminal: ``literals``, :role:`targets`, `links`_, directives.
REST = re.compile(r"``|:[a-z]+:`|`_|^\.\. ", re.MULTILINE)


def run(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args],
        input=stdin.decode() if stdin is not None else None,
        capture_output=True,
        text=True,
        timeout=120,
    )


def state_bytes() -> bytes:
    s = ORSet()
    s.add("a", "x")
    return encode(s)


COMMANDS = [
    "demo",
    "inspect",
    "serve",
    "get",
    "inc",
    "dec",
    "add",
    "remove",
    "set",
    "status",
    "watch",
]


@pytest.mark.parametrize("command", [[]] + [[c] for c in COMMANDS])
def test_help_is_plain_text(command: list[str]) -> None:
    r = run(*command, "--help")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("usage: crdtcoord")
    assert not REST.search(r.stdout), r.stdout
    assert "--help" in r.stdout


def test_top_level_help_lists_commands_and_version() -> None:
    out = run("--help").stdout
    assert all(c in out for c in COMMANDS) and "--version" in out


def test_version() -> None:
    r = run("--version")
    assert r.returncode == 0
    assert r.stdout.strip() == f"crdtcoord {crdtcoord.__version__}"


def test_no_command_is_a_usage_error() -> None:
    r = run()
    assert r.returncode == 2 and "usage: crdtcoord" in r.stderr


def test_inspect_binary_and_hex(tmp_path: Path) -> None:
    blob = state_bytes()
    f = tmp_path / "state.bin"
    f.write_bytes(blob)
    r = run("inspect", str(f))
    assert r.returncode == 0 and "type:   ORSet" in r.stdout, r.stderr
    h = tmp_path / "state.hex"
    h.write_text(blob.hex() + "\n")
    r = run("inspect", "--hex", str(h))
    assert r.returncode == 0 and "frozenset({'x'})" in r.stdout, r.stderr
    r = run("inspect", "--hex", "-", stdin=blob.hex().encode())
    assert r.returncode == 0 and "type:   ORSet" in r.stdout, r.stderr


def test_inspect_hex_text_without_hex_flag_says_so(tmp_path: Path) -> None:
    h = tmp_path / "state.hex"
    h.write_text(state_bytes().hex() + "\n")
    r = run("inspect", str(h))
    assert r.returncode == 2
    assert "looks like hex text; pass --hex" in r.stderr, r.stderr
    assert "msgpack" not in r.stderr and "codec" not in r.stderr
    r = run("inspect", "-", stdin=state_bytes().hex().encode())
    assert r.returncode == 2 and "stdin: this looks like hex text; pass --hex" in r.stderr


def test_inspect_binary_with_hex_flag_says_so(tmp_path: Path) -> None:
    f = tmp_path / "state.bin"
    f.write_bytes(state_bytes())
    r = run("inspect", "--hex", str(f))
    assert r.returncode == 2
    assert "is not hex text; drop --hex" in r.stderr, r.stderr
    assert "codec" not in r.stderr


def test_inspect_missing_file(tmp_path: Path) -> None:
    r = run("inspect", str(tmp_path / "absent.bin"))
    assert r.returncode == 2
    assert (
        r.stderr.strip()
        == f"crdtcoord inspect: {tmp_path / 'absent.bin'}: No such file or directory"
    )


def test_inspect_garbage_is_a_codec_error_not_a_hex_hint(tmp_path: Path) -> None:
    f = tmp_path / "state.bin"
    f.write_bytes(b"\x93\x05\x09\xc0")
    r = run("inspect", str(f))
    assert r.returncode == 2 and "unsupported version 9 of ORSet" in r.stderr
    assert "hex" not in r.stderr


def test_simulated_demo_subcommand_runs() -> None:
    r = run("demo", "--sim", "--seed", "3")
    assert r.returncode == 0, r.stderr
    assert "digests equal: True" in r.stdout
