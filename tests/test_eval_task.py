"""tools/eval.py knows the task: class count, loss and metric from the task, a head or an error, result
files per task and split, and the complete GLUE submission (eleven files incl. AX, and the zip)."""
import importlib.util
import json
import os
import subprocess
import sys
import zipfile

import numpy as np
import pandas as pd
import pytest
from test_engine_support import ROOT, TINY

NUM_CLASSES = {"CoLA": 2, "SST2": 2, "MRPC": 2, "STSB": 1, "QQP": 2, "MNLI": 3, "QNLI": 2, "RTE": 2, "WNLI": 2}


def _eval_tool():
    spec = importlib.util.spec_from_file_location("tool_eval_task", os.path.join(ROOT, "tools", "eval.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(*args):
    return subprocess.run([sys.executable, os.path.join(ROOT, "tools", "eval.py"), *args], capture_output=True,
                          text=True, cwd=ROOT, timeout=300)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A gpt-tiny backbone saved four ways: a merged file with a head for every GLUE task, a run folder
    (config.yaml + checkpoint) fine-tuned on SST2, a bare backbone, and its run config."""
    from ppmerge.config import load_config, save_config
    from ppmerge.models import build_model, save_state_dict
    from ppmerge.runtime import import_paddle

    paddle = import_paddle()
    paddle.seed(5)
    sd = {k: v.numpy() for k, v in build_model({"name": "gpt-tiny"}, 2).state_dict().items()}
    rng = np.random.default_rng(5)
    folder = str(tmp_path_factory.mktemp("eval_models"))
    backbone = {k: v for k, v in sd.items() if not k.startswith("score.")}
    merged = dict(backbone)
    for task, c in NUM_CLASSES.items():
        merged[f"heads.{task}.score.weight"] = rng.normal(0, 0.5, (64, c)).astype(np.float32)
    paths = {"merged": os.path.join(folder, "merged", "merged_model.pdparams"),
             "bare": os.path.join(folder, "bare", "backbone.pdparams"),
             "run": os.path.join(folder, "run_sst2")}
    save_state_dict(merged, paths["merged"])
    save_state_dict(backbone, paths["bare"])
    ckpt = os.path.join(paths["run"], "epoch_0_step_4")
    save_state_dict(dict(backbone, **{"score.weight": merged["heads.SST2.score.weight"]}),
                    os.path.join(ckpt, "model.pdparams"))
    save_config(load_config(TINY, ["Data.Train.dataset.name=SST2", "Data.Eval.dataset.name=SST2"]),
                os.path.join(paths["run"], "config.yaml"))
    paths["ckpt"] = ckpt
    return paths, merged


def _logits(spec_task, root, split, weights, head):
    """The model by hand: backbone + the head, every example of the split in one padded batch."""
    from ppmerge.data import GLUEDataset, collate_batch, load_tokenizer
    from ppmerge.models import build_model
    from ppmerge.runtime import import_paddle

    paddle = import_paddle()
    ds = GLUEDataset(spec_task, root, split, load_tokenizer(), max_length=128)
    model = build_model({"name": "gpt-tiny"}, head.shape[1])
    state = {k: v for k, v in weights.items() if not k.startswith("heads.")}
    state["score.weight"] = head
    model.set_state_dict({k: paddle.to_tensor(v) for k, v in state.items()})
    model.eval()
    batch = collate_batch([ds[i] for i in range(len(ds))])
    with paddle.no_grad():
        out = model(paddle.to_tensor(batch["input_ids"]), paddle.to_tensor(batch["lengths"])).numpy()
    return out, batch["labels"]


def test_task_name_is_enough_and_metric_follows_the_task(models, glue_suite, tmp_path):
    """CoLA on a merged model with only Data.Eval.dataset.name/root: MCC (the task's metric, not the
    config's Accuracy), equal to sklearn's on the logits computed by hand; the file is named per task/split."""
    from sklearn.metrics import matthews_corrcoef

    paths, merged = models
    root = os.path.join(glue_suite["glue"], "CoLA")
    out = str(tmp_path / "cola")
    assert _eval_tool().main(["-c", TINY, "-o", f"Model.pretrained={paths['merged']}", "-o", "Data.Eval.dataset.name=CoLA",
                              "-o", f"Data.Eval.dataset.root={root}", "--output-dir", out]) == 0
    with open(os.path.join(out, "eval_results_CoLA_dev.json")) as f:
        results = json.load(f)
    logits, labels = _logits("CoLA", root, "dev", merged, merged["heads.CoLA.score.weight"])
    assert results["task"] == "CoLA" and results["split"] == "dev"
    assert results["mcc"] == pytest.approx(matthews_corrcoef(labels, logits.argmax(-1)), abs=1e-6)

    # STS-B and MNLI-mm need nothing more than the task name either
    out = str(tmp_path / "mnli")
    assert _eval_tool().main(["-c", TINY, "-o", f"Model.pretrained={paths['merged']}", "-o", "Data.Eval.dataset.name=MNLI",
                              "-o", f"Data.Eval.dataset.root={glue_suite['glue']}", "--split", "dev_mismatched",
                              "--output-dir", out]) == 0
    with open(os.path.join(out, "eval_results_MNLI_dev_mismatched.json")) as f:
        mm = json.load(f)
    logits, labels = _logits("MNLI", os.path.join(glue_suite["glue"], "MNLI"), "dev_mismatched", merged,
                             merged["heads.MNLI.score.weight"])
    assert mm["accuracy"] == pytest.approx(float(np.mean(logits.argmax(-1) == labels)), abs=1e-6)


def _merge_config_beside(weights):
    with open(os.path.join(os.path.dirname(weights), "config.yaml"), "w") as f:
        f.write("Global: {device: cpu}\nModelPool: {models: {}}\nTaskPool: {model: {name: gpt-tiny}}\n")


def test_merged_model_needs_only_the_task(models, glue_suite, tmp_path):
    """No -c beside a merged model: the merge's config.yaml gives the architecture; the task name and the
    data are enough, and the numbers equal those of an explicit training config."""
    paths, _ = models
    _merge_config_beside(paths["merged"])
    results = {}
    for name, extra in (("implied", []), ("explicit", ["-c", TINY])):
        out = str(tmp_path / name)
        assert _eval_tool().main(extra + ["-o", f"Model.pretrained={paths['merged']}", "-o", "Data.Eval.dataset.name=CoLA",
                                          "-o", f"Data.Eval.dataset.root={glue_suite['glue']}", "--output-dir", out]) == 0
        with open(os.path.join(out, "eval_results_CoLA_dev.json")) as f:
            results[name] = json.load(f)
    assert results["implied"]["mcc"] == results["explicit"]["mcc"]
    assert results["implied"]["loss"] == results["explicit"]["loss"] and results["implied"]["task"] == "CoLA"


def test_checkpoint_without_config_uses_its_run(models, glue_suite, tmp_path):
    """No -c: the run's config.yaml beside the checkpoint gives the task (SST2) and the config."""
    paths, merged = models
    root = os.path.join(glue_suite["glue"], "SST-2")
    out = str(tmp_path / "run")
    assert _eval_tool().main(["-o", f"Engine.save_load.ckpt_dir={paths['ckpt']}", "-o", f"Data.Eval.dataset.root={root}",
                              "-o", "Model.name=gpt-tiny", "--output-dir", out]) == 0
    with open(os.path.join(out, "eval_results_SST2_dev.json")) as f:
        results = json.load(f)
    logits, labels = _logits("SST2", root, "dev", merged, merged["heads.SST2.score.weight"])
    assert results["accuracy"] == pytest.approx(float(np.mean(logits.argmax(-1) == labels)), abs=1e-6)


@pytest.mark.parametrize("case", ["bare", "bare_test", "other_task", "no_such_head", "merge_config"])
def test_a_model_without_the_tasks_head_is_an_error(models, glue_suite, tmp_path, case):
    paths, _ = models
    out = str(tmp_path / "out")
    args = ["-c", TINY, "--output-dir", out, "-o", f"Data.Eval.dataset.root={glue_suite['glue']}"]
    if case.startswith("bare"):
        args += ["-o", f"Model.pretrained={paths['bare']}", "-o", "Data.Eval.dataset.name=SST2"]
        args += ["--split", "test"] if case == "bare_test" else []
        expected = "has no classification head"
    elif case == "other_task":
        args += ["-o", f"Engine.save_load.ckpt_dir={paths['ckpt']}", "-o", "Data.Eval.dataset.name=CoLA"]
        expected = "was fine-tuned on SST2 .* no head for CoLA"
    elif case == "no_such_head":
        args += ["-o", f"Model.pretrained={paths['merged']}", "-o", "Data.Eval.dataset.name=SST2", "--head", "seed7"]
        expected = "no head for 'seed7'"
    else:  # no -c beside a merged model (its folder's config.yaml is the merge's) and no task named
        _merge_config_beside(paths["merged"])
        args = ["-o", f"Model.pretrained={paths['merged']}", "--output-dir", out]
        expected = "is a merged model: say which task to evaluate with -o Data.Eval.dataset.name=<TASK>"
    proc = _run(*args)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:")
    import re

    assert re.search(expected, lines[0]), lines[0]
    assert not os.path.exists(out) or not [n for n in os.listdir(out) if not n.startswith(".")]


def _read_tsv(path):
    return pd.read_csv(path, sep="\t", quoting=3, dtype=str, keep_default_na=False)


def test_complete_glue_submission_zip(models, glue_suite, tmp_path):
    """--split test --tasks all: the eleven GLUE files and the zip, checked file by file against GLUE's
    format (header, one row per test row with its index, the task's label vocabulary, STS-B in [0, 5]);
    AX is the diagnostic set predicted with the MNLI head (checked against logits computed by hand)."""
    from ppmerge.engine.submission import SUBMISSION_FILES

    paths, merged = models
    out = str(tmp_path / "sub")
    assert _eval_tool().main(["-c", TINY, "-o", f"Model.pretrained={paths['merged']}", "--split", "test",
                              "--tasks", "all", "--data-root", glue_suite["glue"], "--output-dir", out]) == 0
    base = glue_suite["glue"]
    tests = {"CoLA.tsv": "CoLA/test.tsv", "SST-2.tsv": "SST-2/test.tsv", "MRPC.tsv": "MRPC/test.tsv",
             "STS-B.tsv": "STS-B/test.tsv", "QQP.tsv": "QQP/test.tsv", "MNLI-m.tsv": "MNLI/test_matched.tsv",
             "MNLI-mm.tsv": "MNLI/test_mismatched.tsv", "QNLI.tsv": "QNLI/test.tsv", "RTE.tsv": "RTE/test.tsv",
             "WNLI.tsv": "WNLI/test.tsv", "AX.tsv": "diagnostic/diagnostic.tsv"}
    vocab = {"CoLA.tsv": {"0", "1"}, "SST-2.tsv": {"0", "1"}, "MRPC.tsv": {"0", "1"}, "QQP.tsv": {"0", "1"},
             "WNLI.tsv": {"0", "1"}, "QNLI.tsv": {"entailment", "not_entailment"},
             "RTE.tsv": {"entailment", "not_entailment"}}
    nli = {"entailment", "neutral", "contradiction"}
    assert sorted(tests) == sorted(SUBMISSION_FILES)
    with zipfile.ZipFile(os.path.join(out, "glue_submission.zip")) as archive:
        assert sorted(archive.namelist()) == sorted(SUBMISSION_FILES)
        for name in SUBMISSION_FILES:
            path = os.path.join(out, name)
            with open(path, "rb") as f:
                assert archive.read(name) == f.read(), name
            sub = _read_tsv(path)
            source = _read_tsv(os.path.join(base, tests[name]))
            assert list(sub.columns) == ["index", "prediction"], name
            assert list(sub["index"]) == [str(i) for i in range(len(source))], name
            if name == "STS-B.tsv":
                scores = sub["prediction"].astype(float)
                assert scores.between(0, 5).all() and all(len(p.split(".")[1]) == 3 for p in sub["prediction"])
            elif name.startswith("MNLI") or name == "AX.tsv":
                assert set(sub["prediction"]) <= nli, name
            else:
                assert set(sub["prediction"]) <= vocab[name], name
    logits, _ = _logits("MNLI", os.path.join(base, "MNLI"), "diagnostic", merged, merged["heads.MNLI.score.weight"])
    expected = [["entailment", "neutral", "contradiction"][i] for i in logits.argmax(-1)]
    assert list(_read_tsv(os.path.join(out, "AX.tsv"))["prediction"]) == expected


def test_stsb_predictions_are_clipped():
    from ppmerge.engine.submission import prediction_strings

    assert prediction_strings("STS-B", np.array([[-0.7], [2.5], [5.3]])) == ["0.000", "2.500", "5.000"]
    with pytest.raises(Exception, match="NaN"):
        prediction_strings("SST2", np.array([[np.nan, 0.0]]))


def test_submission_from_the_hugging_face_parquet_layout(models, tmp_path):
    """--split test --tasks SST2 MNLI on GLUE in the hub's parquet layout: SST-2, MNLI-m, MNLI-mm and AX
    (glue/ax) with one row per parquet row, index 0..n-1."""
    from test_custom_data import _write_hf_glue

    paths, merged = models
    root = str(tmp_path / "hf")
    rows = _write_hf_glue(root)
    out = str(tmp_path / "sub")
    assert _eval_tool().main(["-c", TINY, "-o", f"Model.pretrained={paths['merged']}", "--split", "test",
                              "--tasks", "SST2", "MNLI", "--data-root", root, "--output-dir", out]) == 0
    expected = {"SST-2.tsv": ("sst2", "test"), "MNLI-m.tsv": ("mnli", "test_matched"),
                "MNLI-mm.tsv": ("mnli", "test_mismatched"), "AX.tsv": ("ax", "test")}
    assert sorted(n for n in os.listdir(out) if not n.startswith(".")) == sorted(expected)
    for name, key in expected.items():
        sub = _read_tsv(os.path.join(out, name))
        assert list(sub["index"]) == [str(i) for i in range(len(rows[key]["label"]))], name
