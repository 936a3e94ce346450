"""Every code block in README.md and docs/*.md runs as pasted (or says why it cannot).

Python blocks of one file run in order in one fresh interpreter, like a reader pasting them into
a session. Shell blocks marked ``<!-- run: bash -->`` on the line before the fence run in bash,
with the project's ``.venv/bin`` first on ``PATH`` (so ``crdtcoord`` is the installed command);
every other shell block must carry a reason on that line: ``<!-- not run: why -->``. Blocks
without a language (diagrams, wire formats) are not code.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```\s*([\w-]*)\s*$")
NOT_RUN = re.compile(r"^<!--\s*not run:\s*(.*?)\s*-->\s*$")
RUN_BASH = re.compile(r"^<!--\s*run:\s*bash\s*-->\s*$")
PYTHON = {"python", "py"}
SHELL = {"sh", "bash", "shell", "console"}


@dataclass
class Block:
    path: Path
    line: int
    lang: str
    code: str
    not_run: str | None  # the reason, when the block is marked
    bash: bool = False  # marked to run in bash


def blocks(path: Path) -> list[Block]:
    out: list[Block] = []
    lines = path.read_text().splitlines()
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        start, lang = i, m.group(1).lower()
        j = i + 1
        while j < len(lines) and not lines[j].startswith("```"):
            j += 1
        prev = lines[start - 1] if start else ""
        mark = NOT_RUN.match(prev)
        code = "\n".join(lines[start + 1 : j])
        out.append(
            Block(path, start + 1, lang, code, mark and mark.group(1), bool(RUN_BASH.match(prev)))
        )
        i = j + 1
    return out


def _id(p: Path) -> str:
    return str(p.relative_to(ROOT))


def _runnable(path: Path) -> list[Block]:
    return [b for b in blocks(path) if b.lang in PYTHON and b.not_run is None]


@pytest.mark.parametrize("path", [p for p in DOCS if _runnable(p)], ids=_id)
def test_code_blocks_run_as_pasted(path: Path) -> None:
    runnable = _runnable(path)
    script = "\n\n".join(f"# --- {_id(b.path)}:{b.line}\n{b.code}" for b in runnable)
    proc = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, f"a code block of {_id(path)} failed:\n{proc.stderr[-4000:]}"


@pytest.mark.parametrize("path", DOCS, ids=_id)
def test_every_unrun_block_says_why(path: Path) -> None:
    for b in blocks(path):
        if b.not_run is not None:
            assert b.not_run, f"{_id(path)}:{b.line}: 'not run' needs a reason"
        if b.lang in SHELL and not b.bash:
            assert b.not_run is not None, (
                f"{_id(path)}:{b.line}: a shell block must run in a test or say why it cannot"
                " (<!-- not run: ... --> on the line before the fence)"
            )


def _bash_blocks() -> list[Block]:
    return [b for p in DOCS for b in blocks(p) if b.bash]


@pytest.mark.parametrize("block", _bash_blocks(), ids=lambda b: f"{_id(b.path)}:{b.line}")
def test_shell_walkthroughs_run_as_pasted(block: Block, tmp_path: Path) -> None:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}
    proc = subprocess.run(
        ["bash", "-c", block.code],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 0, (
        f"{_id(block.path)}:{block.line} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    )
    for line in block.code.splitlines():  # "cmd ...   # expected output" comments are checked
        if "  # " in line and not line.lstrip().startswith("#"):
            expected = line.split("  # ", 1)[1].strip()
            assert expected in proc.stdout, f"{expected!r} not in the output:\n{proc.stdout}"


def test_the_docs_have_code_to_run() -> None:
    total = sum(len(_runnable(p)) for p in DOCS)
    assert total >= 6  # README kernel, simulator and user-type examples; types; architecture
