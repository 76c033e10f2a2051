"""Reports and plots from a hand-made result (no models): numbers agree across formats, plots exist."""
import json
import os

import numpy as np
import pandas as pd
import pytest

from ppmerge.evaluation.plots import write_plots
from ppmerge.evaluation.reports import average, write_reports

TASKS = ["CoLA", "MNLI", "STSB"]


def row(name, kind, values, **extra):
    metrics = {t: {"main": v, "accuracy": v} for t, v in zip(TASKS, values)}
    return {"name": name, "kind": kind, "params": {}, "metrics": metrics, "average": average(metrics, TASKS),
            "best": False, **extra}


def grid_result():
    rng = np.random.default_rng(0)
    a_values, b_values = [0.2, 0.4], [0.5, 1.0, 1.5]
    rows = [row("base", "base", [0.1, 0.33, 0.2])]
    for a in a_values:
        for b in b_values:
            rows.append(row(f"scaling_factor.0={a}, scaling_factor.1={b}", "sweep", rng.uniform(0, 1, 3)))
    best = max(rows[1:], key=lambda r: r["average"])
    best["best"] = True
    rows += [row(f"cross_task:{t}", "cross_task", rng.uniform(0, 1, 3), model=t) for t in TASKS]
    return {"method": "cabs", "params": {}, "tasks": TASKS, "best": best["name"], "rows": rows,
            "sweep": [["Merge.scaling_factor.0", a_values], ["Merge.scaling_factor.1", b_values]],
            "timings": {"total": 1.0}, "config": {"Merge": {"method": "cabs"}}}


def test_formats_agree_and_plots_are_written(tmp_path):
    result = grid_result()
    paths = write_reports(result, str(tmp_path))
    plots = write_plots(result, str(tmp_path))
    assert sorted(plots) == ["cross_task", "sweep"]
    for path in list(paths.values()) + list(plots.values()):
        assert os.path.getsize(path) > 0
    with open(plots["sweep"], "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]

    saved = json.load(open(paths["json"]))
    csv = pd.read_csv(paths["csv"])
    sheet = pd.read_excel(paths["xlsx"], sheet_name="results")
    long = pd.read_excel(paths["xlsx"], sheet_name="metrics")
    md = open(paths["md"]).read()
    for i, r in enumerate(saved["rows"]):
        want = [round(100 * r["metrics"][t]["main"], 2) for t in TASKS] + [round(100 * np.mean(
            [r["metrics"][t]["main"] for t in TASKS]), 2)]
        assert list(csv.loc[i, TASKS + ["Avg."]]) == pytest.approx(want)
        assert list(sheet.loc[i, TASKS + ["Avg."]]) == pytest.approx(want)
        assert " | ".join(f"{v:.2f}" for v in want) in md
        assert bool(csv.loc[i, "best"]) == r["best"]
    assert f"| **{saved['best']}** (best) |" in md
    assert len(long) == sum(2 * len(TASKS) for _ in saved["rows"])


def test_evaluation_off_gives_empty_cells_and_no_plot(tmp_path):
    result = {"method": "simple_average", "params": {}, "tasks": [], "best": None, "sweep": None,
              "rows": [{"name": "simple_average", "kind": "merged", "params": {}, "metrics": {}, "average": None,
                        "best": False}], "timings": {}, "config": {}}
    paths = write_reports(result, str(tmp_path))
    assert write_plots(result, str(tmp_path)) == {}
    assert "| simple_average |  |" in open(paths["md"]).read()
    assert pd.read_csv(paths["csv"])["Avg."].isna().all()
