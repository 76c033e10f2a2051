"""Data parallel on CPU: two processes via paddle.distributed.launch (gloo), through the multi-card script.

Each rank writes the sample indices it read and its final weights (PPMERGE_TRACE_DIR debug hook):
the shards must be disjoint and cover the data, and the weights identical on both ranks."""
import json
import os
import subprocess
import sys

import numpy as np
from test_engine_support import ROOT, TINY


def test_two_processes_see_disjoint_data_and_end_with_identical_weights(tmp_path):
    from ppmerge.data.synthetic import write_glue_suite

    write_glue_suite(str(tmp_path / "dataset"), layout="glue", n_train=64, n_dev=16, n_test=4, seed=3, tasks=["SST2"])
    trace = tmp_path / "trace"
    env = dict(os.environ, PYTHON=sys.executable, CONFIG=TINY, NPROC="2", PPMERGE_TRACE_DIR=str(trace),
               LOG_DIR=str(tmp_path / "log"), PPMERGE_NO_TQDM="1")
    env.pop("DEVICES", None)
    proc = subprocess.run(["bash", os.path.join(ROOT, "projects", "gpt", "finetune_gpt_345M_multi_card.sh"), "SST2",
                           "Engine.num_train_epochs=1", "Model.hidden_dropout_prob=0.1",
                           "Data.Train.sampler.batch_size=8"],
                          cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=300)
    logs = "".join((tmp_path / "log" / f).read_text() for f in os.listdir(tmp_path / "log") if f.startswith("workerlog"))
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-2000:] + logs[-2000:]

    seen = [json.loads((trace / f"rank{r}_samples.json").read_text()) for r in (0, 1)]
    assert len(seen[0]) == len(seen[1]) == 32
    assert not set(seen[0]) & set(seen[1]) and set(seen[0]) | set(seen[1]) == set(range(64))
    weights = [np.load(trace / f"rank{r}_weights.npz") for r in (0, 1)]
    assert all(np.array_equal(weights[0][k], weights[1][k]) for k in weights[0].files)

    # rank 0 alone saved and logged: 64 / (8 x 2 ranks) = 4 steps
    out = tmp_path / "output" / "tiny" / "SST2"  # the scripts write one folder per task
    assert (out / "latest").read_text().strip() == "epoch_0_step_4"
    assert "2 rank(s)" in logs and logs.count("[train] done") == 1
    from ppmerge.models import load_numpy_state_dict

    saved = load_numpy_state_dict(str(out / "epoch_0_step_4" / "model.pdparams"))
    assert all(np.array_equal(saved[k], weights[0][k]) for k in saved)
