"""Engine.logger: visualdl (records read back with VisualDL's own LogReader) and plain progress lines
when the output is not a terminal."""
import io
import os
import subprocess
import sys

import numpy as np
import pytest
from test_engine_support import tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_visualdl_records_loss_lr_and_eval_metrics(tmp_path):
    from ppmerge.data.synthetic import write_glue_suite
    from ppmerge.engine import Engine, FinetuneModule, build_dataset
    from ppmerge.engine.logger import read_scalars

    base = str(tmp_path / "glue")
    write_glue_suite(base, layout="glue", n_train=64, n_dev=16, n_test=4, seed=0, tasks=["SST2"])
    out = tmp_path / "run"
    cfg = tiny_config("SST2", base, str(out), ["Engine.logger=visualdl", "Engine.num_train_epochs=2",
                                                "Data.Train.sampler.batch_size=16", "Engine.eval_freq=1"])
    engine = Engine(cfg, FinetuneModule(cfg), out=io.StringIO())
    engine.fit(build_dataset(cfg, "Train"), build_dataset(cfg, "Eval"))
    scalars = read_scalars(str(out / "vdl"))
    steps = list(range(1, len(engine.history) + 1))
    assert len(engine.history) == 8  # 64 / 16 = 4 steps per epoch, 2 epochs
    assert [s for s, _ in scalars["train/loss"]] == steps
    np.testing.assert_allclose([v for _, v in scalars["train/loss"]], engine.history, rtol=1e-6)
    lrs = [v for _, v in scalars["train/lr"]]
    assert len(lrs) == 8 and max(lrs) > 0  # linear warm-up then decay: not constant
    assert len(set(np.round(lrs, 12))) > 1
    evals = engine.eval_history
    assert [s for s, _ in scalars["eval/accuracy"]] == [step for step, _ in evals] == [4, 8]
    np.testing.assert_allclose([v for _, v in scalars["eval/accuracy"]], [m["accuracy"] for _, m in evals], rtol=1e-6)
    np.testing.assert_allclose([v for _, v in scalars["eval/loss"]], [m["loss"] for _, m in evals], rtol=1e-6)


def test_logger_key_is_checked():
    from ppmerge.config.schema import validate
    from ppmerge.config.train_schema import TRAIN_SCHEMA
    from ppmerge.errors import ConfigError

    cfg = tiny_config("SST2", "unused", "unused")
    cfg["Engine"]["logger"] = "tensorboard"
    with pytest.raises(ConfigError, match="Engine.*logger.*visualdl"):
        validate(cfg, TRAIN_SCHEMA)


SCRIPT = """
import sys, time
from ppmerge.progress import progress_bar
with progress_bar(total=4, desc="merge demo", unit="model", file=sys.stderr) as bar:
    for _ in range(4):
        time.sleep(0.01)
        bar.update(1)
for _ in progress_bar(range(3), desc="sweep", unit="point", file=sys.stderr):
    pass
for _ in progress_bar(range(3), desc="quiet", file=sys.stderr, disable=True):
    pass
"""


def test_plain_progress_lines_when_not_a_terminal():
    env = dict(os.environ, PPMERGE_PROGRESS_INTERVAL="0")
    env.pop("PPMERGE_PROGRESS", None)
    result = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, cwd=ROOT, env=env)
    assert result.returncode == 0, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[:3] == [f"merge demo: {i}/4 model ({25 * i}%)" + lines[i - 1].split("%)")[1] for i in (1, 2, 3)]
    assert "eta" in lines[0] and lines[3].startswith("merge demo: 4/4 model (100%), done in 0:00:0")
    assert lines[4].startswith("sweep: 1/3 point (33%)") and lines[6].startswith("sweep: 3/3 point (100%), done in")
    assert not any("quiet" in line for line in lines) and "\r" not in result.stderr  # no bar redraws
    # the default interval (30 s) prints only the final line of a short loop
    env.pop("PPMERGE_PROGRESS_INTERVAL")
    result = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, cwd=ROOT, env=env)
    assert [line.split(",")[0] for line in result.stderr.strip().splitlines()] == [
        "merge demo: 4/4 model (100%)", "sweep: 3/3 point (100%)"]


def test_a_terminal_gets_tqdm(monkeypatch):
    from tqdm import tqdm

    from ppmerge.progress import PlainProgress, progress_bar

    class Tty(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.delenv("PPMERGE_PROGRESS", raising=False)
    assert isinstance(progress_bar(total=2, file=Tty()), tqdm)
    assert isinstance(progress_bar(total=2, file=io.StringIO()), PlainProgress)
    monkeypatch.setenv("PPMERGE_PROGRESS", "plain")
    assert isinstance(progress_bar(total=2, file=Tty()), PlainProgress)


MERGE_SCRIPT = """
import sys
sys.path.insert(0, "tests")
from test_merge_runner_support import make_pool, raw_config
from ppmerge.config.merge_schema import MERGE_SCHEMA
from ppmerge.config.schema import validate
from ppmerge.data.synthetic import write_glue_suite
from ppmerge.merge.runner import run_merge
out = sys.argv[1]
write_glue_suite(out + "/glue", layout="glue", n_train=16, n_dev=24, n_test=4, seed=0, tasks=["SST2", "MNLI"])
paths, _ = make_pool(out + "/pool", tasks=["SST2", "MNLI"])
raw = raw_config(paths, out + "/glue", out + "/merge", tasks=["SST2", "MNLI"])
raw["Sweep"] = {"grid": {"Merge.weights": [[1.0, 1.0], [1.0, 2.0]]}}
raw["Merge"] = {"method": "weighted_average"}
run_merge(validate(raw, MERGE_SCHEMA), progress=True)
"""


def test_a_merge_in_a_log_file_prints_progress_lines(tmp_path):
    env = dict(os.environ, PPMERGE_PROGRESS_INTERVAL="0")
    env.pop("PPMERGE_PROGRESS", None)
    result = subprocess.run([sys.executable, "-c", MERGE_SCRIPT, str(tmp_path)], capture_output=True, text=True,
                            cwd=ROOT, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stderr.splitlines()
    assert "\r" not in result.stderr
    assert any(line.startswith("sweep: 1/2 point (50%)") for line in lines), result.stderr[-2000:]
    assert any(line.startswith("sweep: 2/2 point (100%), done in") for line in lines)
    evaluations = [line for line in lines if line.startswith("evaluate ") and " batch " in line]
    assert evaluations and any("[SST2]" in line or "[MNLI]" in line for line in evaluations)


def test_records_survive_an_error_exit(tmp_path):
    code = ("import sys; from ppmerge.engine.logger import build_logger\n"
            "log = build_logger('visualdl', sys.argv[1])\n"
            "for s in range(1, 4): log.train(s, 1.0 / s, 1e-3)\n"
            "log.train(4, float('nan'), 1e-3)\n"
            "raise SystemExit(2)  # the tool's error exit, fit never closed the logger\n")
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 2, result.stderr
    from ppmerge.engine.logger import read_scalars

    scalars = read_scalars(str(tmp_path / "vdl"))
    assert [s for s, _ in scalars["train/loss"]] == [1, 2, 3]  # the NaN is not written
    np.testing.assert_allclose([v for _, v in scalars["train/loss"]], [1.0, 0.5, 1 / 3], rtol=1e-6)
