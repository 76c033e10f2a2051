"""Merge reports: the result of a run as report.json, report.csv, report.md and report.xlsx.

A result (what `ppmerge.merge.runner.run_merge` returns) holds `rows`: one per merged model, sweep
point or reference row, each {"name", "kind", "params", "metrics": {task: {..., "main": x}},
"average", "best"}. The table has one row per result row, one column per task (the task's main
metric x100, 2 decimals), Avg. (the mean of the main metrics x100), and for a sweep one numeric
column per swept key (`scaling_factor.0`, ...: the point's value).

report.md is made to be pasted: the metric of each column in its header (`CoLA (mcc)`) and spelled
out below the table, the method's parameters of a single run (or the fixed ones and the swept keys
of a sweep), the best sweep point.
"""
import json
import math

import numpy as np

from ppmerge.fileio import atomic_open, write_text

AVG = "Avg."

# metric class (TaskSpec.metric) -> (short column tag, what the main value is)
METRIC_TEXT = {
    "Accuracy": ("acc", "accuracy"),
    "Mcc": ("mcc", "Matthews correlation coefficient"),
    "AccuracyAndF1": ("acc+f1", "mean of accuracy and F1 (positive class)"),
    "PearsonAndSpearman": ("corr", "mean of Pearson and Spearman correlations"),
    "ExactMatch": ("acc", "accuracy of the generated answer"),
    "GeneratedSpearman": ("spearman", "Spearman correlation of the generated score"),
}


def metric_tag(result, task):
    """The short name of `task`'s main metric (`mcc`, `acc`, ...), or '' when unknown."""
    metric = (result.get("main_metric") or {}).get(task)
    return METRIC_TEXT.get(metric, (str(metric).lower(), ""))[0] if metric else ""


def sweep_columns(result):
    """[(result key `Merge.x.0`, column name `x.0`)] of the swept keys (empty without a sweep)."""
    return [(key, key[len("Merge."):] if key.startswith("Merge.") else key) for key, _ in result.get("sweep") or []]


def average(metrics, tasks):
    """Mean of the tasks' main metric (None if a task is missing)."""
    values = [metrics[t]["main"] for t in tasks if t in metrics]
    return float(np.mean(values)) if values and len(values) == len(tasks) else None


def _cell(value):
    return None if value is None else round(100.0 * value, 2)


def results_table(result):
    """pandas DataFrame: index = row names, columns = tasks + Avg. (x100, 2 decimals), plus kind and best."""
    import pandas as pd

    tasks = result["tasks"]
    swept = sweep_columns(result)
    records = []
    for row in result["rows"]:
        record = {"row": row["name"], "kind": row["kind"]}
        for task in tasks:
            record[task] = _cell(row["metrics"][task]["main"]) if task in row["metrics"] else None
        record[AVG] = _cell(row["average"])
        record["best"] = bool(row.get("best"))
        values = row.get("sweep_values") or {}
        for key, column in swept:  # numbers stay numbers (numeric cells in the xlsx)
            value = values.get(key)
            record[column] = value.item() if isinstance(value, np.generic) else value
        records.append(record)
    return pd.DataFrame.from_records(records, columns=["row", "kind", *tasks, AVG, "best", *(c for _, c in swept)])


def markdown_table(result):
    """The results table in Markdown; the best sweep point is in bold."""
    table = results_table(result)
    columns = ["Model", *(f"{t} ({metric_tag(result, t)})" if metric_tag(result, t) else t for t in result["tasks"]),
               AVG]
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join(["---"] + ["---:"] * (len(columns) - 1)) + "|"]
    for _, record in table.iterrows():
        cells = ["" if record[c] is None or (isinstance(record[c], float) and math.isnan(record[c]))
                 else f"{record[c]:.2f}" for c in [*result["tasks"], AVG]]
        name = f"**{record['row']}** (best)" if record["best"] else record["row"]
        lines.append("| " + " | ".join([name, *cells]) + " |")
    return "\n".join(lines) + "\n"


def _value_text(value):
    """A parameter value as written in a config (null, true, 0.3, [1, 2], {name: dare})."""
    if isinstance(value, str):
        return value
    return json.dumps(value, default=_json_default)


def markdown_notes(result):
    """The text under the table: what each column is, the parameters, the best point."""
    lines = []
    tasks = result["tasks"]
    if tasks:
        described = []
        for task in tasks:
            metric = (result.get("main_metric") or {}).get(task)
            text = METRIC_TEXT.get(metric, ("", metric or "main metric"))[1]
            described.append(f"{task}: {text}")
        lines.append("Columns: each task's main metric x100 on its evaluation split (" + "; ".join(described)
                     + f"); {AVG}: their mean.")
    method = result.get("method", "")
    params = result.get("params") or {}
    swept = dict(result.get("sweep") or [])
    fixed = {k: v for k, v in params.items() if f"Merge.{k}" not in swept}
    if swept:
        lines.append("Swept: " + "; ".join(f"`{k[len('Merge.'):] if k.startswith('Merge.') else k}` over "
                                           f"{_value_text(v)}" for k, v in swept.items()) + ".")
    if fixed:
        title = "Fixed parameters" if swept else "Parameters"
        lines.append(f"{title} of `{method}`: " + ", ".join(f"`{k}={_value_text(v)}`" for k, v in fixed.items()) + ".")
    elif method and not swept:
        lines.append(f"`{method}` has no parameters.")
    if result.get("best") is not None:
        lines.append(f"Best sweep point (highest {AVG}): {result['best']}.")
    return "\n\n".join(line for line in lines if line) + ("\n" if lines else "")


def metrics_long(result):
    """Every metric value of every row as a long table: row, task, metric, value."""
    import pandas as pd

    records = [{"row": row["name"], "kind": row["kind"], "task": task, "metric": key, "value": value}
               for row in result["rows"] for task, values in row["metrics"].items()
               for key, value in values.items()]
    return pd.DataFrame.from_records(records, columns=["row", "kind", "task", "metric", "value"])


def _json_default(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def write_reports(result, out_dir):
    """Write report.json / .csv / .md / .xlsx into out_dir (each atomically); return their paths."""
    import os

    paths = {ext: os.path.join(out_dir, f"report.{ext}") for ext in ("json", "csv", "md", "xlsx")}
    write_text(paths["json"], json.dumps(result, indent=2, default=_json_default) + "\n")
    table = results_table(result)
    write_text(paths["csv"], table.to_csv(index=False))
    header = f"# Merge: {result['method']}\n\n"
    if result.get("pool_order"):
        header += f"Model pool (order): {result['pool_order']}\n\n"
    if result.get("splits"):
        header += "Eval splits: " + ", ".join(f"{t} {s}" for t, s in result["splits"].items()) + "\n\n"
    write_text(paths["md"], header + markdown_table(result) + "\n" + markdown_notes(result))
    import pandas as pd

    with atomic_open(paths["xlsx"], "wb") as f:  # a file object: pandas checks a path's extension
        with pd.ExcelWriter(f, engine="openpyxl") as writer:
            table.to_excel(writer, sheet_name="results", index=False)
            metrics_long(result).to_excel(writer, sheet_name="metrics", index=False)
    return paths
