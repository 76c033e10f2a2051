"""PNG plots of a merge result (matplotlib, Agg backend, each file written atomically).

  - sweep.png: a one-key sweep as curves (Avg. thick, one thin line per task) over the swept value;
    a two-key sweep as a heatmap of Avg. over the grid.
  - cross_task.png: the cross-task matrix (fine-tuned model x task, main metric x100).
"""
import os

import numpy as np

from ppmerge.fileio import atomic_path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path):
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")


def _heatmap(ax, matrix, row_labels, col_labels, title):
    image = ax.imshow(matrix, cmap="viridis", aspect="auto")
    middle = np.nanmean([np.nanmin(matrix), np.nanmax(matrix)]) if np.isfinite(matrix).any() else 0.0
    ax.set_xticks(range(len(col_labels)), labels=col_labels, rotation=45, ha="right")
    ax.set_yticks(range(len(row_labels)), labels=row_labels)
    for i in range(matrix.shape[0]):
        for j in range(matrix.shape[1]):
            if np.isfinite(matrix[i, j]):
                ax.text(j, i, f"{matrix[i, j]:.1f}", ha="center", va="center", fontsize=7,
                        color="k" if matrix[i, j] > middle else "w")  # readable on light and dark cells
    ax.set_title(title)
    return image


def plot_sweep(result, path):
    """Plot the sweep rows of `result`; returns the path, or None if there is no sweep."""
    axes = result.get("sweep") or []
    rows = [r for r in result["rows"] if r["kind"] == "sweep"]
    if not axes or not rows or not result["tasks"]:
        return None
    plt = _pyplot()
    tasks = result["tasks"]
    if len(axes) == 1:
        key, values = axes[0]
        x = np.arange(len(values)) if not all(isinstance(v, (int, float)) for v in values) else np.array(values, float)
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for task in tasks:
            ax.plot(x, [100 * r["metrics"][task]["main"] for r in rows], marker=".", linewidth=1, label=task)
        ax.plot(x, [100 * r["average"] for r in rows], marker="o", linewidth=3, color="k", label="Avg.")
        ax.set_xlabel(key)
        ax.set_ylabel("main metric x100")
        ax.set_title(f"{result['method']}: sweep over {key}")
        ax.legend(fontsize=7, ncol=2)
        ax.grid(alpha=0.3)
    else:
        (key_a, values_a), (key_b, values_b) = axes
        grid = np.array([100 * r["average"] for r in rows], float).reshape(len(values_a), len(values_b))
        fig, ax = plt.subplots(figsize=(1.0 + 0.8 * len(values_b), 1.0 + 0.6 * len(values_a)))
        image = _heatmap(ax, grid, [str(v) for v in values_a], [str(v) for v in values_b],
                         f"{result['method']}: Avg. x100")
        ax.set_ylabel(key_a)
        ax.set_xlabel(key_b)
        fig.colorbar(image, ax=ax)
    _save(fig, path)
    plt.close(fig)
    return path


def plot_cross_task(result, path):
    """Heatmap of the cross-task rows (model x task); returns the path, or None if there are none."""
    rows = [r for r in result["rows"] if r["kind"] == "cross_task"]
    if not rows:
        return None
    plt = _pyplot()
    tasks = result["tasks"]
    matrix = np.array([[100 * r["metrics"][t]["main"] for t in tasks] for r in rows], float)
    fig, ax = plt.subplots(figsize=(1.5 + 0.7 * len(tasks), 1.0 + 0.5 * len(rows)))
    image = _heatmap(ax, matrix, [r["model"] for r in rows], tasks, "cross-task: model (row) on task (column)")
    fig.colorbar(image, ax=ax)
    _save(fig, path)
    plt.close(fig)
    return path


def write_plots(result, out_dir):
    """Write every plot that applies to `result`; return {name: path}."""
    written = {}
    for name, plot in (("sweep", plot_sweep), ("cross_task", plot_cross_task)):
        path = plot(result, os.path.join(out_dir, f"{name}.png"))
        if path:
            written[name] = path
    return written
