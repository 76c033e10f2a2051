"""bench/t5_eval_bench.py --quick, run as a user runs it: one JSON line, identical answers in both arms."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_t5_eval_bench_quick():
    env = dict(os.environ, PYTHONPATH=ROOT, GLOG_minloglevel="2")
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "t5_eval_bench.py"), "--quick"], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    assert len(lines) == 1 and "speed-up" in proc.stderr
    r = json.loads(lines[0])
    assert r["bench"] == "t5_eval" and r["samples"] == 64
    for arm in ("dynamic", "pad_512"):
        assert r[arm]["seconds"] > 0 and r[arm]["samples_per_s"] > 0
        assert sum(m["num_examples"] for m in r[arm]["metrics"].values()) == 64
    assert r["speedup"] == pytest.approx(r["dynamic"]["samples_per_s"] / r["pad_512"]["samples_per_s"])
    assert r["answers_identical"] is True and r["dynamic"]["metrics"] == r["pad_512"]["metrics"]
    assert r["lengths"]["max"] < 512
