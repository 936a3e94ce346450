"""Shared helpers for the simulation scripts: output folder, CSV, a plotting backend, progress."""

from __future__ import annotations

import csv
import os
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import matplotlib

matplotlib.use("Agg")  # files only, no screen needed

OUT = Path(__file__).resolve().parent / "out"


def out_dir(arg: str | None) -> Path:
    d = Path(arg) if arg else OUT
    d.mkdir(parents=True, exist_ok=True)
    return d


def write_csv(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    if not rows:
        return
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    print(f"wrote {path}")


def table(
    rows: Iterable[Sequence[Any]],
    header: Sequence[str],
    groups: Sequence[tuple[str, int]] | None = None,
) -> str:
    """Right-aligned text columns; floats with two decimals, None (no value) as "-".

    ``groups`` puts titles above runs of columns: (title, number of columns), covering them all.
    """
    rows = [[_fmt(x) for x in r] for r in rows]
    widths = [
        max(len(str(h)), *(len(r[i]) for r in rows)) if rows else len(str(h))
        for i, h in enumerate(header)
    ]
    spans: list[tuple[str, int, int]] = []  # (title, first column, column count)
    if groups:
        if sum(n for _, n in groups) != len(header):
            raise ValueError("groups must cover every column")
        first = 0
        for title, n in groups:
            spans.append((title, first, n))
            short = len(title) - (sum(widths[first : first + n]) + 2 * (n - 1))
            if short > 0:
                widths[first + n - 1] += short  # widen the group's last column to fit its title
            first += n
    line = "  ".join(str(h).rjust(w) for h, w in zip(header, widths, strict=True))
    sep = "  ".join("-" * w for w in widths)
    body = ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    top = []
    if spans:
        cells = [t.center(sum(widths[f : f + n]) + 2 * (n - 1)) for t, f, n in spans]
        top = ["  ".join(cells).rstrip()]
    return "\n".join([*top, line, sep, *body])


def human_bytes(n: float) -> str:
    """Bytes as a short decimal figure: 850 B, 17.8 KB, 1.40 MB (1 KB = 1,000 B)."""
    if n != n:  # NaN: nothing measured
        return "-"
    if n < 1e3:
        return f"{n:,.0f} B"
    if n < 1e6:
        return f"{n / 1e3:,.1f} KB"
    return f"{n / 1e6:,.2f} MB"


def _fmt(x: Any) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:,.2f}"
    if isinstance(x, int) and not isinstance(x, bool):
        return f"{x:,}"
    return str(x)


def progress(total: int, desc: str) -> Any:
    """A tqdm progress bar (stderr); disabled when not on a terminal unless FORCE_PROGRESS."""
    from tqdm import tqdm

    disable = not (sys.stderr.isatty() or os.environ.get("FORCE_PROGRESS"))
    return tqdm(total=total, desc=desc, unit="run", disable=disable, leave=False)
