"""Merge reports: the result of a run as report.json, report.csv, report.md and report.xlsx.

A result (what `ppmerge.merge.runner.run_merge` returns) holds `rows`: one per merged model, sweep
point or reference row, each {"name", "kind", "params", "metrics": {task: {..., "main": x}},
"average", "best"}. The table has one row per result row, one column per task (the task's main
metric x100, 2 decimals) and Avg. (the mean of the main metrics x100).
"""
import json
import math

import numpy as np

from ppmerge.fileio import atomic_open, write_text

AVG = "Avg."


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
    records = []
    for row in result["rows"]:
        record = {"row": row["name"], "kind": row["kind"]}
        for task in tasks:
            record[task] = _cell(row["metrics"][task]["main"]) if task in row["metrics"] else None
        record[AVG] = _cell(row["average"])
        record["best"] = bool(row.get("best"))
        records.append(record)
    return pd.DataFrame.from_records(records, columns=["row", "kind", *tasks, AVG, "best"])


def markdown_table(result):
    """The results table in Markdown; the best sweep point is in bold."""
    table = results_table(result)
    columns = ["Model", *result["tasks"], AVG]
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join(["---"] + ["---:"] * (len(columns) - 1)) + "|"]
    for _, record in table.iterrows():
        cells = ["" if record[c] is None or (isinstance(record[c], float) and math.isnan(record[c]))
                 else f"{record[c]:.2f}" for c in [*result["tasks"], AVG]]
        name = f"**{record['row']}** (best)" if record["best"] else record["row"]
        lines.append("| " + " | ".join([name, *cells]) + " |")
    return "\n".join(lines) + "\n"


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
    if result.get("best") is not None:
        header += f"Best sweep point: {result['best']}\n\n"
    write_text(paths["md"], header + markdown_table(result))
    import pandas as pd

    with atomic_open(paths["xlsx"], "wb") as f:  # a file object: pandas checks a path's extension
        with pd.ExcelWriter(f, engine="openpyxl") as writer:
            table.to_excel(writer, sheet_name="results", index=False)
            metrics_long(result).to_excel(writer, sheet_name="metrics", index=False)
    return paths
