"""tools/train.py and tools/eval.py: error exits, --help, dry run, a real run, eval JSON and GLUE TSVs."""
import importlib.util
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
from test_engine_support import ROOT, TINY, task_overrides


def _tool(name):
    spec = importlib.util.spec_from_file_location(f"tool_{name}", os.path.join(ROOT, "tools", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(*args):
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=ROOT, timeout=120)


def test_help_is_instant_and_bad_key_exits_2_with_one_line():
    for tool in ("train", "eval"):
        start = time.perf_counter()
        proc = _run(f"tools/{tool}.py", "--help")
        assert proc.returncode == 0 and "-c CONFIG" in proc.stdout
        assert time.perf_counter() - start < 5  # no paddle import (~7 s with paddlenlp)
    proc = _run("tools/train.py", "-c", "configs/gpt/finetune_gpt_345M_single_card_glue.yaml",
                "-o", "Engine.num_train_epoch=3")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:")
    assert "Engine.num_train_epoch" in lines[0] and "num_train_epochs" in lines[0].split("did you mean")[1]
    proc = _run("tools/train.py", "-c", TINY, "--device", "tpu")
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1


def test_print_config_shows_overrides_and_exits():
    proc = _run("tools/train.py", "-c", TINY, "-o", "Engine.max_steps=7", "-o", "Data.Train.dataset.name=CoLA",
                "--print-config")
    assert proc.returncode == 0, proc.stderr
    assert "max_steps: 7" in proc.stdout and "name: CoLA" in proc.stdout and "[train]" not in proc.stdout


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """tools/train.py (in process) on generated SST2 and MNLI, 4 steps each."""
    from ppmerge.data.synthetic import write_glue_suite

    base = str(tmp_path_factory.mktemp("tools_glue"))
    write_glue_suite(base, layout="glue", n_train=64, n_dev=32, n_test=8, seed=1, tasks=["SST2", "MNLI"])
    train = _tool("train")
    outs = {}
    for task in ("SST2", "MNLI"):
        out = str(tmp_path_factory.mktemp(f"out_{task}"))
        argv = ["-c", TINY, "--device", "cpu"]
        for override in task_overrides(task, base, out) + ["Engine.max_steps=4"]:
            argv += ["-o", override]
        assert train.main(argv) == 0
        outs[task] = (out, argv)
    return outs


def test_eval_dev_matches_an_independent_accuracy(trained, capsys):
    from sklearn.metrics import accuracy_score

    from ppmerge.config import load_config
    from ppmerge.engine import Engine, FinetuneModule, build_dataset
    from ppmerge.engine.checkpoint import latest_checkpoint

    out, argv = trained["SST2"]
    ckpt = latest_checkpoint(out)
    assert ckpt.endswith("epoch_0_step_4")
    assert _tool("eval").main(argv + ["-o", f"Engine.save_load.ckpt_dir={ckpt}"]) == 0
    with open(os.path.join(ckpt, "eval_results_SST2_dev.json")) as f:
        results = json.load(f)
    assert results["task"] == "SST2" and "accuracy:" in capsys.readouterr().out

    # independent check: the checkpoint's weights through the model by hand, scored with sklearn
    cfg = load_config(TINY, list(argv[5::2]) + [f"Model.pretrained={ckpt}/model.pdparams"])
    module = FinetuneModule(cfg)
    dev = build_dataset(cfg, "Eval")
    from ppmerge.data import collate_batch
    from ppmerge.runtime import import_paddle

    paddle = import_paddle()
    module.network.eval()
    batch = collate_batch([dev[i] for i in range(len(dev))])
    with paddle.no_grad():
        logits = module.network(paddle.to_tensor(batch["input_ids"]), paddle.to_tensor(batch["lengths"])).numpy()
    assert results["accuracy"] == pytest.approx(accuracy_score(batch["labels"], logits.argmax(-1)))

    # a merged model file (heads.<TASK>.*) works as Model.pretrained and gives the same numbers
    from ppmerge.models import load_numpy_state_dict, save_state_dict

    weights = load_numpy_state_dict(os.path.join(ckpt, "model.pdparams"))
    weights["heads.SST2.score.weight"] = weights.pop("score.weight")
    weights["heads.CoLA.score.weight"] = np.zeros_like(weights["heads.SST2.score.weight"])
    merged = os.path.join(out, "merged", "model.pdparams")
    save_state_dict(weights, merged)
    assert _tool("eval").main(argv + ["-o", f"Model.pretrained={merged}"]) == 0
    with open(os.path.join(out, "merged", "eval_results_SST2_dev.json")) as f:
        assert json.load(f)["accuracy"] == pytest.approx(results["accuracy"])
    assert len(Engine(cfg, module).predict(dev)) == len(dev)


def test_eval_test_split_writes_glue_submission_files(trained):
    out, argv = trained["MNLI"]
    ckpt = os.path.join(out, "epoch_0_step_4")
    assert _tool("eval").main(argv + ["-o", f"Engine.save_load.ckpt_dir={ckpt}", "--split", "test"]) == 0
    for name in ("MNLI-m.tsv", "MNLI-mm.tsv"):
        with open(os.path.join(ckpt, name)) as f:
            rows = f.read().splitlines()
        assert rows[0] == "index\tprediction" and len(rows) == 9
        assert [r.split("\t")[0] for r in rows[1:]] == [str(i) for i in range(8)]
        assert {r.split("\t")[1] for r in rows[1:]} <= {"entailment", "neutral", "contradiction"}

    out, argv = trained["SST2"]
    assert _tool("eval").main(argv + ["-o", f"Model.pretrained={out}/best/model.pdparams", "--split", "test",
                                      "--output-dir", os.path.join(out, "sub")]) == 0
    with open(os.path.join(out, "sub", "SST-2.tsv")) as f:
        assert {r.split("\t")[1] for r in f.read().splitlines()[1:]} <= {"0", "1"}


def test_submission_formats():
    from ppmerge.engine.submission import prediction_strings, submission_name

    assert submission_name("sts-b", "test") == "STS-B.tsv" and submission_name("MNLI", "test_mismatched") == "MNLI-mm.tsv"
    assert prediction_strings("QNLI", np.array([[0.9, 0.1], [0.2, 0.8]])) == ["entailment", "not_entailment"]
    assert prediction_strings("STSB", np.array([[3.14159], [0.5]])) == ["3.142", "0.500"]
    assert prediction_strings("CoLA", np.array([[0.0, 1.0]])) == ["1"]


def test_eval_without_weights_exits_2():
    proc = _run("tools/eval.py", "-c", TINY)
    assert proc.returncode == 2 and "ckpt_dir" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
