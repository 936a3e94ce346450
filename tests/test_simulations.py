"""The simulation scripts' tables and plots: no NaN cells, readable axes, every path reported.

The scripts are run end to end (quick sizes) by tests/test_experiments.py; these tests call
their table and plot functions directly on hand-made rows, so the cases are exact and fast.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

import pytest

SIMULATIONS = Path(__file__).resolve().parent.parent / "simulations"
sys.path.insert(0, str(SIMULATIONS))

import _common  # noqa: E402
import convergence_table  # noqa: E402
import partition_heal  # noqa: E402


def test_table_shows_missing_values_as_dash_and_groups_columns() -> None:
    text = _common.table(
        [[1, 2.5, None], [10, math.pi, 3]], ["n", "x", "y"], groups=[("", 1), ("values", 2)]
    )
    top, header, sep, *body = text.splitlines()
    assert "values" in top and header.split() == ["n", "x", "y"]
    assert body[0].split() == ["1", "2.50", "-"] and body[1].split() == ["10", "3.14", "3"]
    assert len({len(header), len(sep), *map(len, body)}) == 1  # aligned
    with pytest.raises(ValueError):
        _common.table([[1, 2]], ["a", "b"], groups=[("a", 1)])


@pytest.mark.parametrize(
    ("n", "text"), [(17, "17 B"), (17_835, "17.8 KB"), (1_401_578, "1.40 MB"), (math.nan, "-")]
)
def test_human_bytes(n: float, text: str) -> None:
    assert _common.human_bytes(n) == text


def _summary(n: int, mode: str, ref: float | None, formula: float | None) -> dict[str, Any]:
    return {
        "n": n,
        "mode": mode,
        "trials": 5,
        "mean": 8.2,
        "p50": 8,
        "p99": 9,
        "reference_mean": ref,
        "formula": formula,
        "delta_vs_reference": None if ref is None else 8.2 - ref,
    }


def test_convergence_table_labels_missing_references() -> None:
    """--quick sizes (100, 300): n=300 has no reference; the table says "-", never nan."""
    text = convergence_table._summary_table(
        [_summary(100, "push-pull", 6.54, 6.4), _summary(300, "pull", None, None)]
    )
    assert "nan" not in text.lower()
    row300 = next(line for line in text.splitlines() if line.lstrip().startswith("300"))
    assert row300.split()[-3:] == ["-", "-", "-"]
    assert '"-" = nothing to compare with' in text


def test_convergence_table_leaves_out_empty_columns() -> None:
    text = convergence_table._summary_table([_summary(300, "pull", None, None)])
    header = text.splitlines()[0]
    assert "reference" not in header and "formula" not in header and "Δ" not in header
    assert "left out, no reference at these sizes" in text and "nan" not in text.lower()


def _heal_rows(times: dict[str, float], noise: float = 0.0) -> list[dict[str, Any]]:
    rows = []
    for path, t in times.items():
        for i, (d, repairs) in enumerate(((1.0, 0), (30.0, 104 if path == "repair" else 0))):
            rows.append(
                {
                    "path": path,
                    "partition_s": d,
                    "nodes": 16,
                    "updates": int(d * 20),
                    "seeds": 3,
                    "reconverge_s": t + i * noise,
                    "worst_reconverge_s": t + i * noise,
                    "repair_bytes": 17_835.0 if repairs == 0 else 1_401_578.0,
                    "repairs_scheduled": repairs,
                }
            )
    return rows


def test_partition_plot_has_no_offset_labels_and_titled_axes() -> None:
    """Times equal but for float noise (the old constant 0.55 s, as sim.now - healed_at) made
    matplotlib label the axis "1e-12+5.5e-1"."""
    import matplotlib.pyplot as plt

    rows = _heal_rows({"auto": 0.55, "delta": 0.55, "repair": 0.55}, noise=-2.5e-15)
    fig = partition_heal.figure(rows, ["auto", "delta", "repair"], 16, 3)
    try:
        fig.canvas.draw()
        axes = fig.axes
        assert len(axes) == 2
        for ax in axes:
            assert ax.get_title() and ax.get_xlabel() and ax.get_ylabel()
            assert ax.get_xscale() == "log"
            assert ax.yaxis.get_offset_text().get_text() == ""
            assert ax.xaxis.get_offset_text().get_text() == ""
            assert len(ax.get_lines()) == 3  # one line per path
        assert "s" in axes[0].get_ylabel() and "MB" in axes[1].get_ylabel()
        assert axes[0].get_ylim()[0] == 0
    finally:
        plt.close(fig)


def test_partition_report_compares_the_paths() -> None:
    rows = _heal_rows({"auto": 0.1, "delta": 0.1, "repair": 0.05})
    text = partition_heal.report(rows, ["auto", "delta", "repair"], 16, 3)
    header = text.splitlines()[1].split()
    assert header.count("auto") == 3 and header.count("repair") == 3
    assert "1.40 MB" in text and "17.8 KB" in text
    assert "RFC 6298" in text and "0.55" not in text
    assert "auto never overflowed the default buffer" in text
    assert "At 1 s the 'repair' buffer had not overflowed" in text


def test_partition_summary_is_the_median_and_keeps_never() -> None:
    runs = [
        {"path": "auto", "partition_s": 5.0, "nodes": 16, "updates": 100, "repairs_scheduled": 0}
        | {"reconverge_s": t, "repair_bytes": b}
        for t, b in ((0.1, 3), (math.nan, 1), (0.05, 2))
    ]
    s = partition_heal.summarize(runs)
    assert s["reconverge_s"] == 0.1 and s["repair_bytes"] == 2
    assert math.isnan(s["worst_reconverge_s"])
    assert partition_heal._seconds(math.nan) == "never"
