"""Sweep benchmark: an 11-point `scaling_factor` sweep of task_arithmetic in one tools/merge.py
process against 11 separate tools/merge.py calls, one per point.

    python bench/sweep_bench.py [--quick]

Tiny GPT models (the gpt-tiny preset: a seeded base, each "fine-tuned" model the base plus noise with
its own head) and a small generated task pool. Both arms evaluate every point on the same tasks and
examples and save no model. The one-process sweep loads the models, tokenizes the eval splits and
builds the model skeletons once; the separate calls pay that (and interpreter + paddle start-up)
every time. Reports both wall times and their ratio (goal <= 0.6), and checks that both arms give the
same per-point averages."""
import argparse
import json
import os
import shutil
import sys
import tempfile

import yaml

import benchlib
from model_pool import write_pool
from ppmerge.cli import run_tool

GOAL = 0.6


def tiny_base_backbone(model_cfg, seed=0):
    """A seeded gpt-tiny backbone as numpy (the real model's keys, without the score head)."""
    from ppmerge.runtime import import_paddle

    paddle = import_paddle()
    from ppmerge.models import build_model

    paddle.seed(seed)
    model = build_model(model_cfg, 2)
    return {k: v.numpy() for k, v in model.state_dict().items() if not k.startswith("score.")}


def sweep_config(pool, data_root, tasks, max_examples, model_cfg, out_dir, values=None):
    """A task_arithmetic config over the pool; `values` makes it a Sweep over scaling_factor."""
    return {
        "Global": {"device": "cpu", "seed": 0},
        "ModelPool": {"base": pool["base"], "models": dict(pool["models"])},
        "Merge": {"method": "task_arithmetic", "scaling_factor": 0.3},
        "Sweep": {"grid": {"Merge.scaling_factor": list(values)}} if values else None,
        "TaskPool": {"tasks": list(tasks), "data_root": data_root, "layout": "glue", "split": "dev",
                     "batch_size": 32, "max_examples": max_examples, "model": dict(model_cfg)},
        "Output": {"dir": out_dir, "save_model": False},
    }


def averages(out_dir):
    """{scaling_factor: average of the tasks' main metrics} from a run's report.json."""
    with open(os.path.join(out_dir, "report.json")) as f:
        report = json.load(f)
    return {round(float(row["params"]["scaling_factor"]), 6): row["average"] for row in report["rows"]}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--points", type=int, default=11, help="scaling factors 0.0 ... 1.0 (default 11)")
    parser.add_argument("--tasks", nargs="+", default=["SST2", "MRPC", "RTE"])
    parser.add_argument("--max-examples", type=int, default=128, help="eval examples per task")
    parser.add_argument("--quick", action="store_true", help="2 points, 1 task, 16 examples")
    args = parser.parse_args(argv)
    if args.quick:
        args.points, args.tasks, args.max_examples = 2, ["SST2"], 16
    values = [round(i / (args.points - 1), 6) for i in range(args.points)] if args.points > 1 else [0.3]

    from ppmerge.data import write_glue_suite

    info = benchlib.machine_info()
    model_cfg = {"name": "gpt-tiny"}
    folder = tempfile.mkdtemp(prefix="ppmerge_sweep_bench_")
    merge_py = os.path.join(benchlib.ROOT, "tools", "merge.py")
    try:
        data_root = os.path.join(folder, "glue")
        write_glue_suite(data_root, layout="glue", seed=0)
        pool = write_pool(os.path.join(folder, "models"), tiny_base_backbone(model_cfg), args.tasks, seed=0,
                          delta=0.02)

        one_dir = os.path.join(folder, "one_process")
        cfg_path = os.path.join(folder, "sweep.yaml")
        with open(cfg_path, "w") as f:
            yaml.safe_dump(sweep_config(pool, data_root, args.tasks, args.max_examples, model_cfg, one_dir, values),
                           f, sort_keys=False)
        one = benchlib.run_child([benchlib.PYTHON, merge_py, "-c", cfg_path, "--device", "cpu"])
        one.pop("stdout")
        one_avgs = averages(one_dir)

        single_path = os.path.join(folder, "single.yaml")
        separate = {"wall_s": 0.0, "calls": []}
        separate_avgs = {}
        for value in values:
            out_dir = os.path.join(folder, f"point_{value}")
            with open(single_path, "w") as f:
                yaml.safe_dump(sweep_config(pool, data_root, args.tasks, args.max_examples, model_cfg, out_dir),
                               f, sort_keys=False)
            run = benchlib.run_child([benchlib.PYTHON, merge_py, "-c", single_path, "--device", "cpu",
                                      "-o", f"Merge.scaling_factor={value}"])
            separate["wall_s"] += run["wall_s"]
            separate["calls"].append(run["wall_s"])
            separate_avgs.update(averages(out_dir))
    finally:
        shutil.rmtree(folder, ignore_errors=True)

    ratio = benchlib.ratio(one["wall_s"], separate["wall_s"])
    same = bool(one_avgs) and all(abs(one_avgs.get(v, float("nan")) - separate_avgs.get(v, float("inf"))) < 1e-6
                                  for v in values)
    result = {"bench": "sweep", "points": len(values), "values": values, "tasks": args.tasks,
              "max_examples": args.max_examples, "one_process": one, "separate": separate, "ratio": ratio,
              "goal": GOAL, "meets_goal": bool(ratio <= GOAL), "averages_one_process": one_avgs,
              "averages_separate": separate_avgs, "averages_identical": same, "machine": info}
    lines = [f"sweep_bench: {len(values)} scaling_factor points, tasks {', '.join(args.tasks)}, "
             f"{args.max_examples} examples each; load avg {info['loadavg_start'][0]}",
             f"  one process        {one['wall_s']:7.1f} s",
             f"  {len(values)} separate calls  {separate['wall_s']:7.1f} s "
             f"({benchlib.median(separate['calls']):.1f} s median per call)",
             f"  ratio {ratio:.2f} (goal <= {GOAL}); same averages per point: {same}"]
    benchlib.emit(result, lines)
    return 0


if __name__ == "__main__":
    sys.exit(run_tool(main))
