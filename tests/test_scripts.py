"""The README's demo and the benchmarks still run (numbers are asserted by make bench only)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_demo_converges() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "crdtcoord.demo", "--seed", "3"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    assert "digests equal: True; quota never below 0: True" in out


def test_kernel_benchmark_quick(tmp_path: Path) -> None:
    target = tmp_path / "kernel.json"
    subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "kernel.py"), "--quick", "--json", str(target)],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    data = json.loads(target.read_text())
    assert data["benchmark"] == "kernel" and data["quick"] is True
    names = {r["name"] for r in data["results"]}
    for needed in (
        "orset_delta_join_add_into_10k",
        "orset_full_merge_10k_into_synced",
        "orset_full_merge_vs_delta_join_10k",
        "pycrdt_delta_update_into_10k",
        "encode_orset_10k",
        "bytes_per_element_orset",
        "op_ORSet.add (new element)",
    ):
        assert needed in names, needed
    assert all(r["value"] > 0 for r in data["results"])


def test_cli_inspect(tmp_path: Path) -> None:
    from crdtcoord import ORSet, encode

    s = ORSet()
    s.add("a", "x")
    f = tmp_path / "state.bin"
    f.write_bytes(encode(s))
    run = [sys.executable, "-m", "crdtcoord.cli", "inspect"]
    out = subprocess.run([*run, str(f)], capture_output=True, text=True, check=True).stdout
    assert "type:   ORSet" in out and "frozenset({'x'})" in out
    hexfile = tmp_path / "state.hex"
    hexfile.write_text(encode(s).hex())
    out = subprocess.run([*run, "--hex", str(hexfile)], capture_output=True, text=True, check=True)
    assert "ORSet" in out.stdout
    f.write_bytes(b"\x93\x05\x09\xc0")
    bad = subprocess.run([*run, str(f)], capture_output=True, text=True)
    assert bad.returncode == 2 and "unsupported version 9 of ORSet" in bad.stderr


def test_sim_benchmark_quick(tmp_path: Path) -> None:
    target = tmp_path / "sim.json"
    subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "sim.py"), "--quick", "--json", str(target)],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    data = json.loads(target.read_text())
    names = {r["name"]: r for r in data["results"]}
    assert names["sim_20_rounds_1000_replicas"]["value"] > 0
    assert "all informed after" in names["sim_20_rounds_1000_replicas"]["note"]
