"""Tiny benchmark harness: warm-up, many samples, median/p99, side-by-side ratios, JSON output.

Conventions (see the project's BENCHMARKS.md): ``perf_counter_ns``; medians and p99 of many
samples, never one run's mean; A and B alternated in the same run; ratios reported next to the
absolute numbers; ``--quick`` finishes in seconds; ``--json FILE`` writes one object.

Targets are stated for the full-size workload, so a ``--quick`` run reports them as "not
evaluated at --quick size" instead of met or MISSED (a smaller workload says nothing about a
full-size target), unless the benchmark marks a target ``any_size``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")

#: What a ``--quick`` run says in place of a target's verdict.
NOT_EVALUATED = "not evaluated at --quick size"
#: The verdict a benchmark puts at the end of a note's parenthesis: ``"target >= 1000x (met)"``,
#: ``"(6.0 us, 2.0x: MISSED)"``.
_VERDICT = re.compile(r"\b(?:met|MISSED)(?=\))")


@dataclass
class Result:
    name: str
    value: float
    unit: str
    p50: float | None = None
    p99: float | None = None
    samples: int | None = None
    role: str | None = None
    note: str | None = None
    #: whether the result meets its target; None when it has none or it was not evaluated
    met: bool | None = None

    def row(self) -> str:
        extra = ""
        if self.p99 is not None:
            extra = f"  p99 {self.p99:,.2f}  n={self.samples}"
        role = f" [{self.role}]" if self.role else ""
        note = f"  ({self.note})" if self.note else ""
        return f"  {self.name:48} {self.value:>14,.2f} {self.unit:6}{extra}{role}{note}"


@dataclass
class Bench:
    name: str
    quick: bool
    results: list[Result] = field(default_factory=list)

    def add(self, r: Result, *, any_size: bool = False) -> Result:
        """Record and print a result. A target verdict in its note (``met`` or ``MISSED`` before
        a closing parenthesis) stands at full size; a ``--quick`` run says "not evaluated"
        instead, unless ``any_size`` says the target holds for the small workload too."""
        note = r.note or ""
        verdict = _VERDICT.search(note)
        if verdict and self.quick and not any_size:
            r.note, r.met = _VERDICT.sub(NOT_EVALUATED, note), None
        elif verdict:
            r.met = verdict.group() == "met"
        self.results.append(r)
        print(r.row(), flush=True)
        return r

    def target(self, r: Result, goal: float, *, any_size: bool = False) -> Result:
        """Add a result that should reach ``goal`` (value >= goal), the verdict in its note."""
        verdict = f"target >= {goal:,g}{r.unit} ({'met' if r.value >= goal else 'MISSED'})"
        r.note = f"{verdict}; {r.note}" if r.note else verdict
        return self.add(r, any_size=any_size)

    def section(self, title: str) -> None:
        print(f"\n{title}", flush=True)

    def to_json(self) -> dict[str, Any]:
        return {
            "benchmark": self.name,
            "quick": self.quick,
            "machine": {
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
                "platform": platform.platform(),
            },
            "results": [
                {k: v for k, v in asdict(r).items() if v is not None} for r in self.results
            ],
        }


def stats_us(samples_ns: list[int], per: int = 1) -> tuple[float, float, float]:
    """(median, p99, mean) in microseconds per operation."""
    xs = sorted(s / per / 1000 for s in samples_ns)
    p99 = xs[min(len(xs) - 1, round(0.99 * (len(xs) - 1)))]
    return statistics.median(xs), p99, statistics.fmean(xs)


def timed(fn: Callable[[], Any]) -> int:
    t0 = time.perf_counter_ns()
    fn()
    return time.perf_counter_ns() - t0


def progress(it: Iterable[T], total: int, label: str) -> Iterator[T]:
    """A minimal progress bar on stderr (only when stderr is a terminal or FORCE_PROGRESS)."""
    show = sys.stderr.isatty() or os.environ.get("FORCE_PROGRESS")
    for i, x in enumerate(it, 1):
        if show and (i == total or i % max(1, total // 50) == 0):
            done = int(30 * i / total)
            sys.stderr.write(f"\r  {label:30} [{'#' * done}{'.' * (30 - done)}] {i}/{total}")
            sys.stderr.flush()
        yield x
    if show:
        sys.stderr.write("\r" + " " * 80 + "\r")


def cli(name: str, doc: str | None) -> tuple[argparse.Namespace, Bench]:
    ap = argparse.ArgumentParser(description=doc)
    ap.add_argument("--quick", action="store_true", help="small sizes, few samples (seconds)")
    ap.add_argument("--json", metavar="FILE", help="write results as JSON to FILE")
    args = ap.parse_args()
    if args.quick:
        print(f"{name}: --quick run, small sizes; full-size targets are not evaluated", flush=True)
    return args, Bench(name, args.quick)


def finish(args: argparse.Namespace, bench: Bench) -> None:
    if args.json:
        with open(args.json, "w") as f:
            json.dump(bench.to_json(), f, indent=2)
        print(f"\nwrote {args.json}")
