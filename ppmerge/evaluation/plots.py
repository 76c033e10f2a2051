"""PNG plots of a merge result (matplotlib, Agg backend, each file written atomically), made to be pasted.

  - sweep.png, one swept key: the swept value on x (numeric values to scale, others as categories),
    Avg. thick black, one thin line per task, the best point starred and annotated, and the base and
    fine-tuned rows' Avg. (when the run has them) as dashed horizontal reference lines.
  - sweep.png, two swept keys (e.g. CABS's lamb1 x lamb2): one heatmap panel for Avg. and one per task,
    axes named by the swept keys and, for a per-model value (`scaling_factor.0`), the model it weights
    (pool order), the best cell outlined, every colorbar labelled with its metric; reference rows in
    the title.
  - cross_task.png: the cross-task matrix (fine-tuned model x task, main metric x100), colorbar labelled.
`sweep_figure(result)` / `cross_task_figure(result)` return the matplotlib figure (None if it does not
apply); `write_plots` saves them.
"""
import os
import re

import numpy as np

from ppmerge.fileio import atomic_path

AVG = "Avg."
REFERENCE_STYLES = {"base": ("tab:gray", "--"), "finetuned": ("tab:red", ":")}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path):
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")


def _metric_tag(result, task):
    from ppmerge.evaluation.reports import metric_tag

    return metric_tag(result, task)


def model_names(result):
    """The pool's model names in pool order (what a per-model parameter index refers to)."""
    pool = result.get("pool")
    if pool:
        return [entry["name"] if isinstance(entry, dict) else str(entry) for entry in pool]
    models = ((result.get("config") or {}).get("ModelPool") or {}).get("models")
    if isinstance(models, dict):
        return list(models)
    return list(result.get("tasks") or [])


def axis_label(result, key):
    """`Merge.scaling_factor.0` → `scaling_factor.0 (RTE)`: the swept key and, for a list index, the model."""
    name = key[len("Merge."):] if key.startswith("Merge.") else key
    match = re.search(r"\.(\d+)$", name)
    names = model_names(result)
    if match and int(match.group(1)) < len(names):
        return f"{name} ({names[int(match.group(1))]})"
    return name


def _reference_rows(result):
    """{kind: row} of the base / fine-tuned rows that have an average."""
    return {r["kind"]: r for r in result["rows"] if r["kind"] in REFERENCE_STYLES and r.get("average") is not None}


def _heatmap(ax, matrix, row_labels, col_labels, title, colorbar_label, fig):
    image = ax.imshow(matrix, cmap="viridis", aspect="auto")
    middle = np.nanmean([np.nanmin(matrix), np.nanmax(matrix)]) if np.isfinite(matrix).any() else 0.0
    ax.set_xticks(range(len(col_labels)), labels=col_labels, rotation=45, ha="right")
    ax.set_yticks(range(len(row_labels)), labels=row_labels)
    for i in range(matrix.shape[0]):
        for j in range(matrix.shape[1]):
            if np.isfinite(matrix[i, j]):
                ax.text(j, i, f"{matrix[i, j]:.1f}", ha="center", va="center", fontsize=7,
                        color="k" if matrix[i, j] > middle else "w")  # readable on light and dark cells
    ax.set_title(title, fontsize=9)
    fig.colorbar(image, ax=ax, label=colorbar_label)
    return image


def _is_number(value):
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def _curve(result, rows, plt):
    tasks = result["tasks"]
    key, values = result["sweep"][0]
    numeric = all(_is_number(v) for v in values)
    x = np.array(values, float) if numeric else np.arange(len(values))
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    for task in tasks:
        tag = _metric_tag(result, task)
        ax.plot(x, [100 * r["metrics"][task]["main"] for r in rows], marker=".", linewidth=1,
                label=f"{task} ({tag})" if tag else task)
    avg = np.array([100 * r["average"] for r in rows])
    ax.plot(x, avg, marker="o", linewidth=3, color="k", label=AVG)
    best = next((i for i, r in enumerate(rows) if r.get("best")), int(np.argmax(avg)))
    ax.plot([x[best]], [avg[best]], marker="*", markersize=18, color="gold", markeredgecolor="k", linestyle="none",
            label=f"best: {values[best]} ({avg[best]:.2f})", zorder=5)
    ax.annotate(f"best {avg[best]:.2f}", (x[best], avg[best]), textcoords="offset points", xytext=(8, 8), fontsize=8)
    for kind, row in _reference_rows(result).items():
        color, style = REFERENCE_STYLES[kind]
        ax.axhline(100 * row["average"], color=color, linestyle=style, linewidth=1.5,
                   label=f"{kind} {AVG} ({100 * row['average']:.2f})")
    if not numeric:
        ax.set_xticks(x, labels=[str(v) for v in values])
    ax.set_xlabel(axis_label(result, key))
    ax.set_ylabel("main metric x100")
    ax.set_title(f"{result['method']}: sweep over {axis_label(result, key)}")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the plot, never over a curve
    ax.grid(alpha=0.3)
    return fig


def _grid(result, rows, plt):
    tasks = result["tasks"]
    (key_a, values_a), (key_b, values_b) = result["sweep"]
    shape = (len(values_a), len(values_b))
    panels = [(AVG, np.array([100 * r["average"] for r in rows], float), "Avg. of the main metrics x100")]
    for task in tasks:
        tag = _metric_tag(result, task) or "main metric"
        panels.append((f"{task} ({tag})", np.array([100 * r["metrics"][task]["main"] for r in rows], float),
                       f"{task} {tag} x100"))
    best = next((i for i, r in enumerate(rows) if r.get("best")), int(np.nanargmax(panels[0][1])))
    columns = min(len(panels), 3)
    lines = -(-len(panels) // columns)
    width, height = 1.6 + 0.8 * len(values_b), 1.2 + 0.6 * len(values_a)
    fig, axes = plt.subplots(lines, columns, figsize=(columns * width, lines * height), squeeze=False)
    label_a, label_b = axis_label(result, key_a), axis_label(result, key_b)
    for ax, (title, values, bar_label) in zip(axes.ravel(), panels):
        _heatmap(ax, values.reshape(shape), [str(v) for v in values_a], [str(v) for v in values_b], title,
                 bar_label, fig)
        i, j = divmod(best, shape[1])
        ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=2.5))
        ax.set_ylabel(label_a)
        ax.set_xlabel(label_b)
    for ax in axes.ravel()[len(panels):]:
        ax.axis("off")
    references = ", ".join(f"{kind} {AVG} {100 * row['average']:.2f}" for kind, row in _reference_rows(result).items())
    fig.suptitle(f"{result['method']}: {label_a} x {label_b} (best outlined in red"
                 + (f"; {references}" if references else "") + ")", fontsize=10)
    fig.tight_layout()
    return fig


def sweep_figure(result):
    """The sweep's figure (curve for one key, heatmap panels for two), or None without a sweep."""
    axes = result.get("sweep") or []
    rows = [r for r in result["rows"] if r["kind"] == "sweep"]
    if not axes or not rows or not result["tasks"]:
        return None
    plt = _pyplot()
    return _curve(result, rows, plt) if len(axes) == 1 else _grid(result, rows, plt)


def plot_sweep(result, path):
    """Plot the sweep rows of `result`; returns the path, or None if there is no sweep."""
    fig = sweep_figure(result)
    if fig is None:
        return None
    _save(fig, path)
    _pyplot().close(fig)
    return path


def cross_task_figure(result):
    """Heatmap of the cross-task rows (model x task), or None if there are none."""
    rows = [r for r in result["rows"] if r["kind"] == "cross_task"]
    if not rows:
        return None
    plt = _pyplot()
    tasks = result["tasks"]
    matrix = np.array([[100 * r["metrics"][t]["main"] for t in tasks] for r in rows], float)
    fig, ax = plt.subplots(figsize=(1.5 + 0.7 * len(tasks), 1.0 + 0.5 * len(rows)))
    columns = [f"{t} ({_metric_tag(result, t)})" if _metric_tag(result, t) else t for t in tasks]
    _heatmap(ax, matrix, [r["model"] for r in rows], columns, "cross-task: model (row) on task (column)",
             "task's main metric x100", fig)
    ax.set_ylabel("fine-tuned model")
    ax.set_xlabel("evaluated on")
    return fig


def plot_cross_task(result, path):
    """Heatmap of the cross-task rows (model x task); returns the path, or None if there are none."""
    fig = cross_task_figure(result)
    if fig is None:
        return None
    _save(fig, path)
    _pyplot().close(fig)
    return path


def write_plots(result, out_dir):
    """Write every plot that applies to `result`; return {name: path}."""
    written = {}
    for name, plot in (("sweep", plot_sweep), ("cross_task", plot_cross_task)):
        path = plot(result, os.path.join(out_dir, f"{name}.png"))
        if path:
            written[name] = path
    return written
