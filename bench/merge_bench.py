"""Merge benchmark: each data-free method end to end through tools/merge.py against the I/O bound.

    python bench/merge_bench.py [--size tiny|small|medium] [--n 7] [--quick]

Writes a base and N fine-tuned state dicts of GPT-2 shapes (medium: 24 layers, hidden 1024, vocab
50257, 355M parameters, 1.42 GB fp32 each) as .pdparams in a temporary folder, then runs, each in a
fresh process: the I/O bound (bench/io_bound.py: load every input once, save one output) and
tools/merge.py for every method with evaluation off. Reports merge time / I/O bound and peak RSS /
size of one model. Prints one JSON line on stdout and a summary on stderr; deletes its files.

Goals (issue 5): time <= 1.25x the I/O bound for simple_average, task_arithmetic and ties_merging at
medium; peak RSS <= 2x one model for the linear methods, <= (N + 1.5)x for TIES."""
import argparse
import math
import os
import shutil
import sys
import tempfile
import time

import psutil
import yaml

import benchlib
from model_pool import SIZES, backbone_shapes
from ppmerge.cli import run_tool
from ppmerge.errors import UserError

TASKS = ["CoLA", "SST2", "MRPC", "STSB", "QQP", "MNLI", "QNLI", "RTE", "WNLI"]

# name in the report -> (Merge section, time goal applies, RSS goal: "linear" or "ties")
METHODS = {
    "simple_average": ({"method": "simple_average"}, True, "linear"),
    "task_arithmetic": ({"method": "task_arithmetic", "scaling_factor": 0.3}, True, "linear"),
    "ties_merging_global": ({"method": "ties_merging", "threshold": 20, "topk_scope": "global",
                             "merge_func": "sum", "scaling_factor": 0.3}, True, "ties"),
    "ties_merging_tensor": ({"method": "ties_merging", "threshold": 20, "topk_scope": "tensor",
                             "merge_func": "sum", "scaling_factor": 0.3}, True, "ties"),
    "dare_task_arithmetic": ({"method": "dare_task_arithmetic", "sparsity_ratio": 0.5, "rescale": True,
                              "seed": 0, "scaling_factor": 0.3}, False, "linear"),
}
TIME_GOAL = 1.25
LINEAR_RSS_GOAL = 2.0


def merge_config(pool, merge, out_dir):
    """A tools/merge.py config: the pool, one method, no task pool (evaluation off)."""
    return {
        "Global": {"device": "cpu", "seed": 0},
        "ModelPool": {"base": pool["base"], "models": dict(pool["models"]), "head_keys": r"^score\."},
        "Merge": dict(merge),
        "TaskPool": {"tasks": []},
        "Output": {"dir": out_dir},
    }


def check_resources(folder, model_bytes, n):
    """Refuse politely when the disk or RAM cannot hold the run (the inputs, an output, TIES's peak)."""
    need_disk = (n + 3) * model_bytes * 1.1
    free_disk = shutil.disk_usage(folder).free
    if free_disk < need_disk:
        raise UserError(f"merge_bench needs {benchlib.gb(need_disk):.1f} GB free in {folder}, only "
                        f"{benchlib.gb(free_disk):.1f} GB are: use --workdir elsewhere, a smaller --size or --n")
    need_ram = (n + 1.5) * model_bytes + 1.5 * 2**30  # TIES's goal plus paddle's own footprint
    free_ram = psutil.virtual_memory().available
    if free_ram < need_ram:
        raise UserError(f"merge_bench needs {benchlib.gb(need_ram):.1f} GB of free RAM, only "
                        f"{benchlib.gb(free_ram):.1f} GB are available: use a smaller --size or --n, or retry "
                        f"when the machine is quieter")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=list(SIZES), default="medium")
    parser.add_argument("--n", type=int, default=7, help="number of fine-tuned models (default 7)")
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    parser.add_argument("--workdir", default=None, help="parent of the temporary folder (default: system temp)")
    parser.add_argument("--quick", action="store_true", help="tiny shapes, 2 models: a smoke run")
    args = parser.parse_args(argv)
    if args.quick:
        args.size, args.n = "tiny", 2
    if not 1 <= args.n <= len(TASKS):
        raise UserError(f"--n must be between 1 and {len(TASKS)}, got {args.n}")

    shapes = backbone_shapes(**SIZES[args.size])
    n_params = sum(math.prod(s) for s in shapes.values())
    model_bytes = 4 * n_params
    parent = args.workdir or tempfile.gettempdir()
    check_resources(parent, model_bytes, args.n)
    info = benchlib.machine_info()
    folder = tempfile.mkdtemp(prefix="ppmerge_merge_bench_", dir=parent)
    try:
        t0 = time.perf_counter()
        print(f"merge_bench: writing {args.n + 1} models of {benchlib.gb(model_bytes):.2f} GB ...", file=sys.stderr)
        written = benchlib.run_child([benchlib.PYTHON, os.path.join(benchlib.ROOT, "bench", "model_pool.py"),
                                      os.path.join(folder, "models"), "--size", args.size, "--tasks",
                                      *TASKS[:args.n]])
        pool = benchlib.last_json_line(written["stdout"])
        model_bytes = pool["model_bytes"]  # one backbone's tensors (a score head is negligible)
        write_s = time.perf_counter() - t0
        inputs = [pool["base"]] + list(pool["models"].values())
        file_bytes = os.path.getsize(pool["models"][TASKS[0]])

        # What a process that imports paddle and the merge code holds before touching a model.
        baseline = benchlib.run_child([benchlib.PYTHON, "-c", "from ppmerge.runtime import import_paddle; "
                                       "import_paddle(); import ppmerge.merge.runner, ppmerge.models.checkpoint"])
        baseline.pop("stdout")
        io_out = os.path.join(folder, "io_bound.pdparams")
        io = benchlib.run_child([benchlib.PYTHON, os.path.join(benchlib.ROOT, "bench", "io_bound.py"),
                                 "--output", io_out] + inputs)
        io.update(benchlib.last_json_line(io.pop("stdout")) or {})
        os.remove(io_out)
        # io_bound.py reads the inputs twice (whole files, tensor by tensor) and keeps the faster pass:
        # the bound is its wall time less the slower pass (start-up and the save stay in, as for a merge).
        io["bound_s"] = io["wall_s"] - (io["load_lazy_s"] + io["load_eager_s"] - io["load_s"])

        results = {}
        for name in args.methods:
            merge, time_goal, rss_goal = METHODS[name]
            out_dir = os.path.join(folder, "out_" + name)
            cfg_path = os.path.join(folder, name + ".yaml")
            with open(cfg_path, "w") as f:
                yaml.safe_dump(merge_config(pool, merge, out_dir), f, sort_keys=False)
            print(f"merge_bench: {name} ...", file=sys.stderr)
            run = benchlib.run_child([benchlib.PYTHON, os.path.join(benchlib.ROOT, "tools", "merge.py"),
                                      "-c", cfg_path, "--device", "cpu"])
            run.pop("stdout")
            model_file = os.path.join(out_dir, "merged_model.pdparams")
            run["output_bytes"] = os.path.getsize(model_file) if os.path.exists(model_file) else 0
            shutil.rmtree(out_dir, ignore_errors=True)  # free the disk before the next method
            rss_limit = LINEAR_RSS_GOAL if rss_goal == "linear" else args.n + 1.5
            run["time_ratio"] = benchlib.ratio(run["wall_s"], io["bound_s"])
            run["rss_ratio"] = benchlib.ratio(run["peak_rss_bytes"], model_bytes)
            # the same without the interpreter + paddle footprint (it dominates at tiny sizes)
            run["rss_net_ratio"] = benchlib.ratio(run["peak_rss_bytes"] - baseline["peak_rss_bytes"], model_bytes)
            run["time_goal"] = TIME_GOAL if time_goal else None
            run["rss_goal"] = rss_limit
            run["meets_time"] = bool(run["time_ratio"] <= TIME_GOAL) if time_goal else None
            run["meets_rss"] = bool(run["rss_ratio"] <= rss_limit)
            results[name] = run
    finally:
        shutil.rmtree(folder, ignore_errors=True)

    result = {"bench": "merge", "size": args.size, "n": args.n, "params": n_params, "model_bytes": model_bytes,
              "file_bytes": file_bytes, "write_s": write_s, "baseline": baseline, "io_bound": io, "methods": results, "machine": info}
    lines = [f"merge_bench: size {args.size}, {args.n} models + base, {n_params / 1e6:.1f}M params, "
             f"{benchlib.gb(model_bytes):.2f} GB per model; load avg {info['loadavg_start'][0]}",
             f"  start-up only        {baseline['wall_s']:7.1f} s   peak RSS {benchlib.gb(baseline['peak_rss_bytes']):5.2f} GB",
             f"  I/O bound            {io['bound_s']:7.1f} s   peak RSS {benchlib.gb(io['peak_rss_bytes']):5.2f} GB "
             f"(load {io.get('load_s', 0):.1f} s (tensor by tensor {io['load_lazy_s']:.1f} s, whole files "
             f"{io['load_eager_s']:.1f} s), save {io.get('save_s', 0):.1f} s, start-up included)"]
    for name, r in results.items():
        lines.append(f"  {name:21s}{r['wall_s']:7.1f} s = {r['time_ratio']:.2f}x I/O   peak RSS "
                     f"{benchlib.gb(r['peak_rss_bytes']):5.2f} GB = {r['rss_ratio']:.2f}x model (goal "
                     f"<= {r['rss_goal']:g}x; {r['rss_net_ratio']:.2f}x above start-up)")
    benchlib.emit(result, lines)
    return 0


if __name__ == "__main__":
    sys.exit(run_tool(main))
