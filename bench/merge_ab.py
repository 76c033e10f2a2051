"""A/B of two source trees on the same merges: is a change faster or slower?

    python bench/merge_ab.py OLD_TREE [--size small] [--n 7] [--repeats 5] [--methods ...]

OLD_TREE is a checkout of another commit (e.g. `git archive <commit> | tar -x -C /tmp/old`). One pool of
models is written once; then, `--repeats` times, for every method: tools/merge.py of OLD_TREE and of this
tree, alternating which goes first, each in a fresh process after the inputs were read again (the same
page-cache state). Reports per method the median of the paired ratios new / old (< 1: the new tree is
faster) with their spread, and both medians of wall time and peak RSS. One JSON line on stdout."""
import argparse
import os
import shutil
import sys
import tempfile

import yaml

import benchlib
from merge_bench import METHODS, TASKS, merge_config, warm_cache
from model_pool import SIZES  # noqa: F401  (the sizes model_pool.py knows)
from ppmerge.cli import run_tool
from ppmerge.errors import UserError


def run_tree(tree, cfg_path):
    """tools/merge.py of `tree`, importing that tree's ppmerge."""
    env = benchlib.child_env()
    env["PYTHONPATH"] = tree
    cmd = [benchlib.PYTHON, os.path.join(tree, "tools", "merge.py"), "-c", cfg_path, "--device", "cpu"]
    return benchlib.run_child(cmd, cwd=tree, env=env)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("old_tree")
    parser.add_argument("--size", choices=["tiny", "small", "medium"], default="small")
    parser.add_argument("--n", type=int, default=7)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--methods", nargs="+", choices=list(METHODS),
                        default=["simple_average", "task_arithmetic", "ties_merging_global", "dare_task_arithmetic"])
    args = parser.parse_args(argv)
    old = os.path.abspath(args.old_tree)
    if not os.path.isfile(os.path.join(old, "tools", "merge.py")):
        raise UserError(f"{old}: not a ppmerge source tree (no tools/merge.py)")
    new = benchlib.ROOT
    info = benchlib.machine_info()
    folder = tempfile.mkdtemp(prefix="ppmerge_merge_ab_")
    try:
        written = benchlib.run_child([benchlib.PYTHON, os.path.join(new, "bench", "model_pool.py"),
                                      os.path.join(folder, "models"), "--size", args.size, "--tasks", *TASKS[:args.n]])
        pool = benchlib.last_json_line(written["stdout"])
        inputs = [pool["base"]] + list(pool["models"].values())
        runs = {name: {"old": [], "new": []} for name in args.methods}
        for r in range(args.repeats):
            for name in args.methods:
                order = [("old", old), ("new", new)] if r % 2 == 0 else [("new", new), ("old", old)]
                for label, tree in order:
                    out_dir = os.path.join(folder, f"out_{label}_{name}")
                    cfg_path = os.path.join(folder, f"{label}_{name}.yaml")
                    with open(cfg_path, "w") as f:
                        yaml.safe_dump(merge_config(pool, METHODS[name][0], out_dir), f, sort_keys=False)
                    print(f"merge_ab: round {r + 1} {name} {label} ...", file=sys.stderr)
                    warm_cache(inputs)
                    run = run_tree(tree, cfg_path)
                    shutil.rmtree(out_dir, ignore_errors=True)
                    runs[name][label].append({"wall_s": run["wall_s"], "peak_rss_bytes": run["peak_rss_bytes"]})
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    result = {"bench": "merge_ab", "old_tree": old, "size": args.size, "n": args.n, "repeats": args.repeats,
              "methods": {}, "machine": info}
    lines = [f"merge_ab: size {args.size}, {args.n} models, {args.repeats} paired rounds; new = {new}, old = {old}"]
    for name, pair in runs.items():
        ratios = [n["wall_s"] / o["wall_s"] for n, o in zip(pair["new"], pair["old"])]
        entry = {"ratio_new_over_old": benchlib.median(ratios), "ratios": ratios,
                 "old_wall_s": benchlib.median([x["wall_s"] for x in pair["old"]]),
                 "new_wall_s": benchlib.median([x["wall_s"] for x in pair["new"]]),
                 "old_peak_rss_bytes": max(x["peak_rss_bytes"] for x in pair["old"]),
                 "new_peak_rss_bytes": max(x["peak_rss_bytes"] for x in pair["new"])}
        result["methods"][name] = entry
        lines.append(f"  {name:21s} new/old {entry['ratio_new_over_old']:.2f} (rounds {min(ratios):.2f}-"
                     f"{max(ratios):.2f})  {entry['old_wall_s']:.1f} s -> {entry['new_wall_s']:.1f} s  peak RSS "
                     f"{benchlib.gb(entry['old_peak_rss_bytes']):.2f} -> {benchlib.gb(entry['new_peak_rss_bytes']):.2f} GB")
    benchlib.emit(result, lines)
    return 0


if __name__ == "__main__":
    sys.exit(run_tool(main))
