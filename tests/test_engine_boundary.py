"""Code outside ``crdtcoord/engine/`` uses the engine's public API only: no access to a private
attribute of an engine part from anywhere else (library, drivers, testing kit, tests, scripts,
benchmarks, notebooks). Experiments and tests that need to look inside get public inspection
methods instead (``backlog()``, ``peer_stream()``, ``repairs()``, ``recompute_digest()``...)."""

from __future__ import annotations

import ast
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ENGINE = ROOT / "crdtcoord" / "engine"


def _private_engine_attributes() -> set[str]:
    """Every ``self._name`` an engine part assigns."""
    names: set[str] = set()
    for path in ENGINE.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.ctx, ast.Store)
                and isinstance(node.value, ast.Name)
                and node.value.id == "self"
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
            ):
                names.add(node.attr)
    return names


def _sources() -> list[tuple[str, str]]:
    out = []
    for top in ("crdtcoord", "transports", "tests", "simulations", "benchmarks"):
        for path in (ROOT / top).rglob("*.py"):
            if ENGINE not in path.parents:
                out.append((str(path.relative_to(ROOT)), path.read_text()))
    for nb in (ROOT / "notebooks").glob("*.ipynb"):
        cells = json.loads(nb.read_text())["cells"]
        code = "\n".join(
            line
            for c in cells
            if c["cell_type"] == "code"
            for line in "".join(c["source"]).splitlines()
            if not line.lstrip().startswith(("%", "!"))  # IPython magics
        )
        out.append((str(nb.relative_to(ROOT)), code))
    return out


def test_nothing_outside_the_engine_touches_its_private_attributes() -> None:
    private = _private_engine_attributes()
    assert {"_store", "_log", "_peers", "_repairs", "_core"} <= private  # the scan sees them
    offenders = []
    for name, text in _sources():
        for node in ast.walk(ast.parse(text)):
            if (
                isinstance(node, ast.Attribute)
                and node.attr in private
                and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))
            ):
                offenders.append(f"{name}:{node.lineno}: .{node.attr}")
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id in ("getattr", "setattr")
                and len(node.args) >= 2
                and isinstance(node.args[1], ast.Constant)
                and node.args[1].value in private
            ):
                offenders.append(
                    f"{name}:{node.lineno}: {node.func.id}(..., {node.args[1].value!r})"
                )
    assert not offenders, "private engine attributes used outside engine/:\n" + "\n".join(offenders)
