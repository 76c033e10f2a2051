"""The benchmarks' --quick modes, run as a user runs them, so the scripts never rot.

Each script must exit 0 and print one JSON line with every figure; the checks are on the shape and
sanity of the figures (positive times, finite ratios, identical metrics), never on timings."""
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_bench(script, *args):
    env = dict(os.environ, PYTHONPATH=ROOT, GLOG_minloglevel="2")
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "bench", script), "--quick", *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one JSON line on stdout, got: {proc.stdout[-2000:]}"
    result = json.loads(lines[0])
    assert proc.stderr.strip(), "the human summary goes to stderr"
    machine = result["machine"]
    assert machine["nproc"] >= 1 and machine["ram_gb"] > 0 and machine["paddle"]
    assert len(machine["loadavg_start"]) == 3 and len(machine["loadavg_end"]) == 3
    return result


def positive(x):
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def test_merge_bench_quick():
    r = run_bench("merge_bench.py", "--repeats", "2")
    assert r["bench"] == "merge" and r["size"] == "tiny" and r["n"] == 2 and r["repeats"] == 2
    # gpt tiny shapes of bench/model_pool.py: the parameter count is known exactly
    hidden, ffn, layers, vocab, pos = 64, 256, 2, 50257, 128
    per_layer = 4 * (hidden * hidden + hidden) + hidden * ffn + ffn + ffn * hidden + hidden + 4 * hidden
    assert r["params"] == vocab * hidden + pos * hidden + layers * per_layer + 2 * hidden
    assert r["model_bytes"] == 4 * r["params"]
    assert r["file_bytes"] >= r["model_bytes"]
    assert positive(r["baseline"]["peak_rss_bytes"])
    io = r["io_bound"]
    assert positive(io["wall_s"]) and positive(io["peak_rss_bytes"]) and positive(io["load_s"])
    assert io["wall_s"] > io["load_s"] + io["save_s"]  # the process also starts python and paddle
    assert io["load_s"] == min(io["load_lazy_s"], io["load_eager_s"])  # the faster reader is the bound
    assert io["bound_s"] == pytest.approx(io["wall_s"] - max(io["load_lazy_s"], io["load_eager_s"]))
    assert io["bound_s"] > io["load_s"] + io["save_s"]
    expected = {"simple_average", "task_arithmetic", "ties_merging_global", "ties_merging_tensor",
                "dare_task_arithmetic"}
    assert set(r["methods"]) == expected
    for name, m in r["methods"].items():
        assert positive(m["wall_s"]) and positive(m["peak_rss_bytes"]), name
        # paired: the median over rounds of (method time / the bound of the same round)
        assert m["time_ratio"] == pytest.approx(float(np.median(m["time_ratio_rounds"])))
        assert m["time_ratio_min"] <= m["time_ratio"] <= m["time_ratio_max"]
        assert len(m["time_ratio_rounds"]) == r["repeats"] == len(io["bound_s_rounds"])
        assert m["rss_ratio"] == pytest.approx(m["peak_rss_bytes"] / r["model_bytes"])
        assert isinstance(m["meets_rss"], bool)
        # the merged model (backbone + every task's head) really was written
        assert m["output_bytes"] > r["model_bytes"]
    assert r["methods"]["ties_merging_global"]["rss_goal"] == 5.0
    assert r["methods"]["simple_average"]["rss_goal"] == 2.0


def test_eval_bench_quick():
    r = run_bench("eval_bench.py")
    assert r["bench"] == "eval" and r["path"] == "TaskPool.evaluate"
    for arm in ("dynamic", "dataset_order", "max_length_pad"):
        assert positive(r[arm]["seconds"]) and positive(r[arm]["samples_per_s"])
        assert r[arm]["metric"]["num_examples"] == r["samples"] == 64
    assert r["speedup"] == pytest.approx(r["dynamic"]["samples_per_s"] / r["max_length_pad"]["samples_per_s"])
    assert r["speedup_dataset_order"] == pytest.approx(
        r["dataset_order"]["samples_per_s"] / r["max_length_pad"]["samples_per_s"])
    # the proof the benchmark exists for: padding and batch order change the speed, never the result
    assert r["metrics_identical"] is True
    assert r["dynamic"]["metric"] == r["max_length_pad"]["metric"] == r["dataset_order"]["metric"]
    assert 0.0 <= r["max_abs_logit_diff"] < 1e-4
    assert 0.0 <= r["dynamic"]["metric"]["accuracy"] <= 1.0
    assert 3 <= r["lengths"]["median"] <= r["lengths"]["max"] <= r["max_length"]
    # the T5 arm: generation with length-sorted dynamic padding vs FusionBench's pad-to-512, same answers
    t5 = r["t5"]
    assert t5["samples"] == 32 and t5["pad_to"] == 512 and t5["goal"] == 3.0
    for arm in ("dynamic", "pad_512"):
        assert positive(t5[arm]["seconds"]) and positive(t5[arm]["samples_per_s"])
        assert t5[arm]["metric"]["num_examples"] == 32 and 0.0 <= t5[arm]["metric"]["invalid_rate"] <= 1.0
    assert t5["speedup"] == pytest.approx(t5["dynamic"]["samples_per_s"] / t5["pad_512"]["samples_per_s"])
    assert t5["answers_identical"] is True and t5["dynamic"]["metric"] == t5["pad_512"]["metric"]
    assert t5["speedup_rounds"] == pytest.approx([p / d for d, p in zip(t5["dynamic"]["times"], t5["pad_512"]["times"])])
    assert t5["answers_shape"] == [32, 9] and t5["distinct_answers"] > 1   # input-dependent answers
    assert t5["lengths"]["max"] < 512


def test_sweep_bench_quick():
    r = run_bench("sweep_bench.py")
    assert r["bench"] == "sweep" and r["points"] == 2 and r["values"] == [0.0, 1.0]
    assert positive(r["one_process"]["wall_s"]) and positive(r["separate"]["wall_s"])
    assert len(r["separate"]["calls"]) == 2
    assert r["ratio"] == pytest.approx(r["one_process"]["wall_s"] / r["separate"]["wall_s"])
    # both arms evaluated every point, with the same result
    assert sorted(r["averages_one_process"]) == sorted(r["averages_separate"]) == ["0.0", "1.0"]
    assert r["averages_identical"] is True


def test_train_bench_quick():
    r = run_bench("train_bench.py")
    assert r["bench"] == "train"
    for arm in ("engine", "plain_loop"):
        assert positive(r[arm]["samples_per_s"]) and positive(r[arm]["tokens_per_s"])
        assert r[arm]["tokens_per_s"] > r[arm]["samples_per_s"]  # every sample has at least 1 token
    assert r["ratio"] == pytest.approx(r["engine"]["samples_per_s"] / r["plain_loop"]["samples_per_s"])
    assert math.isfinite(r["ratio"])


def test_device_check_without_a_gpu_says_so_and_exits_0():
    env = dict(os.environ, PYTHONPATH=ROOT, GLOG_minloglevel="2")
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "device_check.py")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["bench"] == "device_check"
    if not result["gpu"]:  # this project's CPU machines
        assert "no GPU" in proc.stderr
    else:  # a GPU machine: every data-free method was compared, and the training steps ran
        assert result["methods"] and all("max_ulp" in r or "error" in r for r in result["methods"].values())
        assert set(result["training"]) == {"fp16_O1", "fp16_O2", "bf16_O1"}
