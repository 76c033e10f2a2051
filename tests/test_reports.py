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


# ----------------------------------------------------------------------------- paste-ready contents

MAIN_METRIC = {"CoLA": "Mcc", "MNLI": "Accuracy", "STSB": "PearsonAndSpearman"}


def curve_result():
    rng = np.random.default_rng(1)
    values = [0.1, 0.3, 0.5, 0.7]
    rows = [row("base", "base", [0.05, 0.34, 0.1]), row("finetuned", "finetuned", [0.6, 0.8, 0.85])]
    for v in values:
        rows.append(row(f"scaling_factor={v}", "sweep", rng.uniform(0, 1, 3), sweep_values={"Merge.scaling_factor": v}))
    best = max(rows[2:], key=lambda r: r["average"])
    best["best"] = True
    return {"method": "task_arithmetic", "params": {"scaling_factor": 0.3, "sparsify": None}, "tasks": TASKS,
            "best": best["name"], "rows": rows, "sweep": [["Merge.scaling_factor", values]],
            "main_metric": MAIN_METRIC, "timings": {}, "config": {}}


def test_markdown_names_metrics_and_parameters(tmp_path):
    single = {"method": "ties_merging", "params": {"threshold": 20, "merge_func": "sum", "sparsify": None,
                                                   "scaling_factor": [0.3, 0.5]},
              "tasks": TASKS, "best": None, "sweep": None, "main_metric": MAIN_METRIC, "timings": {}, "config": {},
              "rows": [row("ties_merging", "merged", [0.3, 0.6, 0.7])]}
    md = open(write_reports(single, str(tmp_path))["md"]).read()
    assert "| Model | CoLA (mcc) | MNLI (acc) | STSB (corr) | Avg. |" in md
    assert "CoLA: Matthews correlation coefficient" in md and "STSB: mean of Pearson and Spearman" in md
    assert ("Parameters of `ties_merging`: `threshold=20`, `merge_func=sum`, `sparsify=null`, "
            "`scaling_factor=[0.3, 0.5]`.") in md
    sweep_md = open(write_reports(curve_result(), str(tmp_path / "sweep"))["md"]).read()
    assert "Swept: `scaling_factor` over [0.1, 0.3, 0.5, 0.7]." in sweep_md
    assert "Fixed parameters of `task_arithmetic`: `sparsify=null`." in sweep_md
    assert "Best sweep point (highest Avg.): scaling_factor=" in sweep_md


def test_xlsx_has_numeric_columns_for_swept_keys(tmp_path):
    import openpyxl

    result = grid_result()
    for r in result["rows"]:
        if r["kind"] == "sweep":
            a, b = (float(part.split("=")[1]) for part in r["name"].split(", "))
            r["sweep_values"] = {"Merge.scaling_factor.0": a, "Merge.scaling_factor.1": b}
    paths = write_reports(result, str(tmp_path))
    sheet = openpyxl.load_workbook(paths["xlsx"])["results"]
    header = [c.value for c in sheet[1]]
    assert header[-2:] == ["scaling_factor.0", "scaling_factor.1"]
    column = header.index("scaling_factor.1") + 1
    for i, r in enumerate(result["rows"], start=2):
        cell = sheet.cell(row=i, column=column)
        if r["kind"] == "sweep":
            assert cell.data_type == "n" and cell.value == r["sweep_values"]["Merge.scaling_factor.1"]
        else:
            assert cell.value is None
    csv = pd.read_csv(paths["csv"])
    assert csv["scaling_factor.0"].dtype == np.float64


def test_sweep_curve_marks_best_and_reference_rows():
    from ppmerge.evaluation.plots import sweep_figure

    result = curve_result()
    fig = sweep_figure(result)
    (ax,) = fig.axes
    lines = {line.get_label(): line for line in ax.get_lines()}
    base = result["rows"][0]["average"] * 100
    assert any(label.startswith("base Avg.") for label in lines)
    (base_line,) = [line for label, line in lines.items() if label.startswith("base Avg.")]
    assert list(base_line.get_ydata()) == pytest.approx([base, base])
    best = next(r for r in result["rows"] if r["best"])
    (star,) = [line for label, line in lines.items() if label.startswith("best:")]
    assert star.get_marker() == "*"
    assert list(star.get_xdata()) == [best["sweep_values"]["Merge.scaling_factor"]]
    assert list(star.get_ydata()) == pytest.approx([100 * best["average"]])
    assert "CoLA (mcc)" in lines and "Avg." in lines and ax.get_xlabel() == "scaling_factor"


def test_grid_has_a_panel_per_task_named_axes_and_labelled_colorbars():
    import matplotlib.patches

    from ppmerge.evaluation.plots import cross_task_figure, sweep_figure

    result = grid_result()
    result["main_metric"] = MAIN_METRIC
    result["pool"] = [{"name": "RTE"}, {"name": "MRPC"}]
    fig = sweep_figure(result)
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title() for ax in panels] == ["Avg.", "CoLA (mcc)", "MNLI (acc)", "STSB (corr)"]
    for ax in panels:
        assert ax.get_ylabel() == "scaling_factor.0 (RTE)" and ax.get_xlabel() == "scaling_factor.1 (MRPC)"
        (box,) = [p for p in ax.patches if isinstance(p, matplotlib.patches.Rectangle) and p.get_edgecolor()[0] == 1]
        best = [r for r in result["rows"] if r["kind"] == "sweep"].index(next(r for r in result["rows"] if r["best"]))
        i, j = divmod(best, 3)
        assert box.get_xy() == (j - 0.5, i - 0.5)
        # the heatmap shows this panel's numbers
        image = ax.get_images()[0]
        task = ax.get_title().split(" ")[0]
        sweep = [r for r in result["rows"] if r["kind"] == "sweep"]
        want = [100 * (r["average"] if task == "Avg." else r["metrics"][task]["main"]) for r in sweep]
        np.testing.assert_allclose(np.asarray(image.get_array()).ravel(), want)
    colorbars = sorted(ax.get_ylabel() for ax in fig.axes if not ax.get_title() and ax.get_ylabel())
    assert colorbars == sorted(["Avg. of the main metrics x100", "CoLA mcc x100", "MNLI acc x100", "STSB corr x100"])
    cross = cross_task_figure(result)
    assert "task's main metric x100" in [ax.get_ylabel() for ax in cross.axes]
