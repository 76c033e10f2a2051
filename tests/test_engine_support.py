"""Helpers (no tests) shared by the engine, tool and script tests: the tiny config on one generated task."""
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "configs", "gpt", "finetune_gpt_tiny_glue.yaml")


def task_overrides(task_name, base_dir, output_dir):
    """-o overrides that point the tiny config at one task of a generated suite (glue layout)."""
    from ppmerge.data import get_task, task_root

    task = get_task(task_name)
    root = task_root(task.name, base_dir, "glue")
    return [f"Data.Train.dataset.name={task.name}", f"Data.Train.dataset.root={root}",
            f"Data.Eval.dataset.name={task.name}", f"Data.Eval.dataset.root={root}",
            f"Model.num_classes={task.num_classes}", f"Model.loss.train.name={task.loss}",
            f"Model.loss.eval.name={task.loss}", f"Model.metric.eval.name={task.metric}",
            f"Engine.save_load.output_dir={output_dir}", "Engine.logging_freq=1000"]


def tiny_config(task_name, base_dir, output_dir, extra=()):
    from ppmerge.config import load_config

    return load_config(TINY, task_overrides(task_name, base_dir, output_dir) + list(extra))
