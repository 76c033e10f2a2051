"""Merge benchmark: each data-free method end to end through tools/merge.py against the I/O bound.

    python bench/merge_bench.py [--size tiny|small|medium] [--n 7] [--repeats 3] [--quick]

Writes a base and N fine-tuned state dicts of GPT-2 shapes (small: 124M parameters, 0.50 GB fp32 each;
medium: 355M, 1.42 GB) as .pdparams in a temporary folder, then runs `--repeats` rounds; each round runs,
each in a fresh process and each after the inputs were read once more (so every arm starts with the same
page-cache state): the I/O bound (bench/io_bound.py: load every input once, save one output) and
tools/merge.py for every method with evaluation off. A method's time ratio is the median over the rounds
of (its time / the bound of the same round): paired, so machine drift between rounds cancels; the
spread of those ratios is reported too. Peak RSS is the largest over the rounds, / size of one model.
Prints one JSON line on stdout and a summary on stderr; deletes its files.

Goals (issue 12, --size medium --n 7): time <= 1.5x the I/O bound for simple_average and task_arithmetic,
<= 3x for TIES, <= 2x for dare_task_arithmetic; peak RSS <= 2x one model for the linear methods, <= 5x for
TIES, <= N + 2 for the in-memory methods (mergekit's family)."""
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

# name in the report -> (Merge section, time goal (x the I/O bound) or None, RSS goal kind)
METHODS = {
    "simple_average": ({"method": "simple_average"}, 1.5, "linear"),
    "task_arithmetic": ({"method": "task_arithmetic", "scaling_factor": 0.3}, 1.5, "linear"),
    "ties_merging_global": ({"method": "ties_merging", "threshold": 20, "topk_scope": "global",
                             "merge_func": "sum", "scaling_factor": 0.3}, 3.0, "ties"),
    "ties_merging_tensor": ({"method": "ties_merging", "threshold": 20, "topk_scope": "tensor",
                             "merge_func": "sum", "scaling_factor": 0.3}, 3.0, "ties"),
    "dare_task_arithmetic": ({"method": "dare_task_arithmetic", "sparsity_ratio": 0.5, "rescale": True,
                              "seed": 0, "scaling_factor": 0.3}, 2.0, "linear"),
    # mergekit's family: in memory (every model loaded); measured, SVD-free goal 3x
    "breadcrumbs": ({"method": "breadcrumbs", "weights": 0.3, "density": 0.9, "gamma": 0.01}, 3.0, "memory"),
    "della": ({"method": "della", "weights": 1.0, "density": 0.7, "epsilon": 0.15, "scaling_factor": 0.3}, 3.0,
              "memory"),
    "model_stock": ({"method": "model_stock"}, 3.0, "memory"),
    # the 2024-2025 methods (issue 13): in memory, SVDs / optimisation per matrix; measured, no time goal
    "task_singular_vectors": ({"method": "task_singular_vectors", "alpha": 1.0}, None, "memory"),
    "iso_c": ({"method": "iso_c", "scaling_factor": 1.0}, None, "memory"),
    "iso_cts": ({"method": "iso_cts", "scaling_factor": 1.0, "common_space_fraction": 0.8}, None, "memory"),
    "wudi_merging_10": ({"method": "wudi_merging", "iter_num": 10}, None, "memory"),
    "emr_merging": ({"method": "emr_merging"}, None, "memory"),
}
DEFAULT_METHODS = ["simple_average", "task_arithmetic", "ties_merging_global", "ties_merging_tensor",
                   "dare_task_arithmetic"]
RSS_GOALS = {"linear": lambda n: 2.0, "ties": lambda n: 5.0, "memory": lambda n: n + 2.0}


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


def warm_cache(paths):
    """Read every input file once, so that each measured process starts from the same page-cache state
    (the inputs cached when RAM allows) whatever ran before it."""
    buffer = bytearray(8 << 20)
    for path in paths:
        with open(path, "rb", buffering=0) as f:
            while f.readinto(buffer):
                pass


def run_round(args, pool, inputs, folder, model_bytes, baseline):
    """One round: the I/O bound, then every method, each after warm_cache. Returns (io, {name: run})."""
    warm_cache(inputs)
    io_out = os.path.join(folder, "io_bound.pdparams")
    io = benchlib.run_child([benchlib.PYTHON, os.path.join(benchlib.ROOT, "bench", "io_bound.py"),
                             "--output", io_out] + inputs)
    io.update(benchlib.last_json_line(io.pop("stdout")) or {})
    os.remove(io_out)
    # io_bound.py reads the inputs twice (whole files, tensor by tensor) and keeps the faster pass:
    # the bound is its wall time less the slower pass (start-up and the save stay in, as for a merge).
    io["bound_s"] = io["wall_s"] - (io["load_lazy_s"] + io["load_eager_s"] - io["load_s"])
    runs = {}
    for name in args.methods:
        merge = METHODS[name][0]
        out_dir = os.path.join(folder, "out_" + name)
        cfg_path = os.path.join(folder, name + ".yaml")
        with open(cfg_path, "w") as f:
            yaml.safe_dump(merge_config(pool, merge, out_dir), f, sort_keys=False)
        print(f"merge_bench: {name} ...", file=sys.stderr)
        warm_cache(inputs)
        run = benchlib.run_child([benchlib.PYTHON, os.path.join(benchlib.ROOT, "tools", "merge.py"),
                                  "-c", cfg_path, "--device", "cpu"])
        run.pop("stdout")
        model_files = [os.path.join(out_dir, n) for n in ("merged_model.pdparams", "emr_model.safetensors")]
        run["output_bytes"] = sum(os.path.getsize(p) for p in model_files if os.path.exists(p))
        shutil.rmtree(out_dir, ignore_errors=True)  # free the disk before the next method
        run["time_ratio"] = benchlib.ratio(run["wall_s"], io["bound_s"])
        runs[name] = run
    return io, runs, model_bytes, baseline


def summarize(rounds, n):
    """The I/O bound of the median round, and per method the medians over rounds (paired time ratios)."""
    bounds = [io["bound_s"] for io, *_ in rounds]
    io = dict(sorted((r[0] for r in rounds), key=lambda x: x["bound_s"])[(len(rounds) - 1) // 2])
    io["bound_s_rounds"] = bounds
    model_bytes, baseline = rounds[0][2], rounds[0][3]
    results = {}
    for name in rounds[0][1]:
        runs = [r[1][name] for r in rounds]
        time_goal, rss_kind = METHODS[name][1], METHODS[name][2]
        ratios = [r["time_ratio"] for r in runs]
        run = {"wall_s": benchlib.median([r["wall_s"] for r in runs]), "wall_s_rounds": [r["wall_s"] for r in runs],
               "peak_rss_bytes": max(r["peak_rss_bytes"] for r in runs), "output_bytes": runs[-1]["output_bytes"],
               "time_ratio": benchlib.median(ratios), "time_ratio_min": min(ratios), "time_ratio_max": max(ratios),
               "time_ratio_rounds": ratios}
        run["rss_ratio"] = benchlib.ratio(run["peak_rss_bytes"], model_bytes)
        # the same without the interpreter + paddle footprint (it dominates at tiny sizes)
        run["rss_net_ratio"] = benchlib.ratio(run["peak_rss_bytes"] - baseline["peak_rss_bytes"], model_bytes)
        run["time_goal"] = time_goal
        run["rss_goal"] = RSS_GOALS[rss_kind](n)
        run["meets_time"] = bool(run["time_ratio"] <= time_goal) if time_goal else None
        run["meets_rss"] = bool(run["rss_ratio"] <= run["rss_goal"])
        results[name] = run
    return io, results


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=list(SIZES), default="medium")
    parser.add_argument("--n", type=int, default=7, help="number of fine-tuned models (default 7)")
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), default=DEFAULT_METHODS)
    parser.add_argument("--repeats", type=int, default=None,
                        help="rounds of (bound, every method); medians reported (default 3, --quick 1)")
    parser.add_argument("--workdir", default=None, help="parent of the temporary folder (default: system temp)")
    parser.add_argument("--quick", action="store_true", help="tiny shapes, 2 models: a smoke run")
    args = parser.parse_args(argv)
    if args.quick:
        args.size, args.n = "tiny", 2
    if args.repeats is None:
        args.repeats = 1 if args.quick else 3
    if args.repeats < 1:
        raise UserError(f"--repeats must be at least 1, got {args.repeats}")
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
        rounds = [run_round(args, pool, inputs, folder, model_bytes, baseline) for _ in range(args.repeats)]
        io, results = summarize(rounds, args.n)
    finally:
        shutil.rmtree(folder, ignore_errors=True)

    result = {"bench": "merge", "size": args.size, "n": args.n, "repeats": args.repeats, "params": n_params, "model_bytes": model_bytes,
              "file_bytes": file_bytes, "write_s": write_s, "baseline": baseline, "io_bound": io, "methods": results, "machine": info}
    lines = [f"merge_bench: size {args.size}, {args.n} models + base, {n_params / 1e6:.1f}M params, "
             f"{benchlib.gb(model_bytes):.2f} GB per model; load avg {info['loadavg_start'][0]}",
             f"  start-up only        {baseline['wall_s']:7.1f} s   peak RSS {benchlib.gb(baseline['peak_rss_bytes']):5.2f} GB",
             f"  I/O bound            {io['bound_s']:7.1f} s (rounds {min(io['bound_s_rounds']):.1f}-"
             f"{max(io['bound_s_rounds']):.1f})   peak RSS {benchlib.gb(io['peak_rss_bytes']):5.2f} GB "
             f"(load {io.get('load_s', 0):.1f} s (tensor by tensor {io['load_lazy_s']:.1f} s, whole files "
             f"{io['load_eager_s']:.1f} s), save {io.get('save_s', 0):.1f} s, start-up included)"]
    for name, r in results.items():
        lines.append(f"  {name:21s}{r['wall_s']:7.1f} s = {r['time_ratio']:.2f}x I/O (rounds {r['time_ratio_min']:.2f}-"
                     f"{r['time_ratio_max']:.2f})   peak RSS "
                     f"{benchlib.gb(r['peak_rss_bytes']):5.2f} GB = {r['rss_ratio']:.2f}x model (goal "
                     f"<= {r['rss_goal']:g}x; {r['rss_net_ratio']:.2f}x above start-up)")
    benchlib.emit(result, lines)
    return 0


if __name__ == "__main__":
    sys.exit(run_tool(main))
