"""The merge runner end to end, in process, on tiny "fine-tuned" models of the generated GLUE suite."""
import json
import os

import numpy as np
import pandas as pd
import pytest

from ppmerge.config.merge_schema import MERGE_SCHEMA
from ppmerge.config.schema import validate
from ppmerge.errors import UserError
from test_merge_runner_support import NUM_CLASSES, TASKS, make_pool, raw_config


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    return make_pool(str(tmp_path_factory.mktemp("pool")))


def run(raw):
    from ppmerge.merge.runner import run_merge

    return run_merge(validate(raw, MERGE_SCHEMA), progress=False)


def load(path):
    from ppmerge.models import load_numpy_state_dict

    return load_numpy_state_dict(path)


def backbone_keys(sd):
    return [k for k in sd if not k.startswith("score.")]


def check_reports_agree(out_dir, result):
    """report.json, report.csv, report.md and report.xlsx hold the same numbers."""
    with open(os.path.join(out_dir, "report.json")) as f:
        saved = json.load(f)
    assert saved["method"] == result["method"]
    csv = pd.read_csv(os.path.join(out_dir, "report.csv"))
    xlsx = pd.read_excel(os.path.join(out_dir, "report.xlsx"), sheet_name="results")
    md_rows = [line.strip().strip("|").split("|") for line in open(os.path.join(out_dir, "report.md"))
               if line.startswith("| ") and not line.startswith("| Model")]
    assert len(saved["rows"]) == len(csv) == len(xlsx) == len(md_rows)
    for row, (_, c), (_, x), m in zip(saved["rows"], csv.iterrows(), xlsx.iterrows(), md_rows):
        assert c["row"] == x["row"] == row["name"] and row["name"] in m[0]
        cells = [float(v) for v in m[1:]]
        expected = [100 * row["metrics"][t]["main"] for t in saved["tasks"]] + [100 * row["average"]]
        assert row["average"] == pytest.approx(np.mean([row["metrics"][t]["main"] for t in saved["tasks"]]))
        for column, want, md_value in zip(saved["tasks"] + ["Avg."], expected, cells):
            assert c[column] == pytest.approx(want, abs=0.006)
            assert x[column] == pytest.approx(want, abs=0.006)
            assert md_value == pytest.approx(want, abs=0.006)
    return saved


def test_simple_average_with_reference_rows(pool, glue_suite, tmp_path):
    paths, sds = pool
    out = str(tmp_path / "out")
    raw = raw_config(paths, glue_suite["glue"], out)
    raw["Output"]["reference_rows"] = {"base": True, "finetuned": True, "cross_task": True}
    result = run(raw)

    for name in ("report.json", "report.csv", "report.md", "report.xlsx", "cross_task.png", "config.yaml",
                 "merged_model.pdparams"):
        assert os.path.isfile(os.path.join(out, name)), name
    assert not [n for n in os.listdir(tmp_path) if n != "out"]  # no temporary folder left beside it

    merged = load(os.path.join(out, "merged_model.pdparams"))
    for key in backbone_keys(sds["base"]):
        expected = np.mean([sds[t][key].astype(np.float64) for t in TASKS], axis=0)
        np.testing.assert_allclose(merged[key], expected, rtol=1e-5, atol=1e-6, err_msg=key)
    for task in TASKS:
        assert merged[f"heads.{task}.score.weight"].shape == (64, NUM_CLASSES[task])
        np.testing.assert_array_equal(merged[f"heads.{task}.score.weight"], sds[task]["score.weight"])
    assert "score.weight" not in merged

    saved = check_reports_agree(out, result)
    kinds = [r["kind"] for r in saved["rows"]]
    assert kinds == ["base", "finetuned", "merged"] + ["cross_task"] * len(TASKS)
    rows = {r["name"]: r for r in saved["rows"]}
    for task in TASKS:  # the fine-tuned row is the cross-task matrix's diagonal
        assert rows["finetuned"]["metrics"][task]["main"] == rows[f"cross_task:{task}"]["metrics"][task]["main"]
    assert set(saved["timings"]) >= {"load", "merge", "evaluate", "total"}


def test_streamed_merge_equals_formula_and_evaluation_is_independent(pool, glue_suite, tmp_path, monkeypatch):
    """No reference rows: simple_average streams the models (never all in memory); same backbone, and
    the merged model's metrics equal those of the task pool evaluating the numpy average directly."""
    from ppmerge.evaluation.task_pool import TaskPool
    from ppmerge.merge.model_pool import ModelPool

    def refuse(self):
        raise AssertionError("a streamable single merge must not load every model at once")

    paths, sds = pool
    out = str(tmp_path / "out")
    with monkeypatch.context() as patch:
        patch.setattr(ModelPool, "backbones", refuse)
        result = run(raw_config(paths, glue_suite["glue"], out))
    merged = load(os.path.join(out, "merged_model.pdparams"))
    average = {k: np.mean([sds[t][k] for t in TASKS], axis=0) for k in backbone_keys(sds["base"])}
    for key, value in average.items():
        np.testing.assert_allclose(merged[key], value, rtol=1e-5, atol=1e-6)
    task_pool = TaskPool.from_config(raw_config(paths, glue_suite["glue"], out)["TaskPool"], progress=False)
    direct = task_pool.evaluate(average, {t: {"score.weight": sds[t]["score.weight"]} for t in TASKS})
    (row,) = result["rows"]
    for task in TASKS:
        assert row["metrics"][task]["main"] == pytest.approx(direct[task]["main"], abs=1e-6)


def test_sweep_loads_once_marks_best_and_saves_it(pool, glue_suite, tmp_path, monkeypatch):
    import ppmerge.models.checkpoint as checkpoint

    paths, sds = pool
    calls = []
    original = checkpoint.LazyStateDict.read_all  # how the pool reads a whole model
    monkeypatch.setattr(checkpoint.LazyStateDict, "read_all",
                        lambda self, *a, **k: calls.append(self.path) or original(self, *a, **k))
    out = str(tmp_path / "out")
    raw = raw_config(paths, glue_suite["glue"], out, method="task_arithmetic")
    raw["Sweep"] = {"grid": {"Merge.scaling_factor": [0.0, 0.5, 1.0]}}
    raw["Output"]["reference_rows"] = {"base": True}
    result = run(raw)

    assert sorted(calls) == sorted(paths[k] for k in ["base", *TASKS])  # every model loaded exactly once
    saved = check_reports_agree(out, result)
    sweep = [r for r in saved["rows"] if r["kind"] == "sweep"]
    assert [r["params"]["scaling_factor"] for r in sweep] == [0.0, 0.5, 1.0]
    best = max(sweep, key=lambda r: r["average"])
    assert [r["name"] for r in sweep if r["best"]] == [best["name"]] and saved["best"] == best["name"]
    # lambda = 0 gives the base backbone: its metrics equal the base reference row's
    base_row = next(r for r in saved["rows"] if r["kind"] == "base")
    for task in TASKS:
        assert sweep[0]["metrics"][task]["main"] == pytest.approx(base_row["metrics"][task]["main"], abs=1e-6)
    assert os.path.isfile(os.path.join(out, "sweep.png"))
    # the saved model is the best point's: theta0 + lambda * sum(tau)
    lam = best["params"]["scaling_factor"]
    merged = load(os.path.join(out, "merged_model.pdparams"))
    for key in backbone_keys(sds["base"]):
        theta0 = sds["base"][key].astype(np.float64)
        expected = theta0 + lam * sum(sds[t][key] - theta0 for t in TASKS)
        np.testing.assert_allclose(merged[key], expected, rtol=1e-4, atol=1e-5)


def test_two_key_grid_points():
    from ppmerge.merge.sweep import sweep_points

    points = sweep_points({"scaling_factor": [0.5, 0.5]},
                          {"grid": {"Merge.scaling_factor.0": [0.1, 0.2], "Merge.scaling_factor.1": [0.3, 0.4, 0.5]}})
    assert [p[2]["scaling_factor"] for p in points] == [[a, b] for a in (0.1, 0.2) for b in (0.3, 0.4, 0.5)]
    with pytest.raises(UserError, match="Merge parameter"):
        sweep_points({}, {"grid": {"Global.seed": [1]}})
    with pytest.raises(UserError, match="one key .* or two keys"):
        sweep_points({}, {"grid": {"Merge.a": [1], "Merge.b": [1], "Merge.c": [1]}})


def _bad_pool(folder, sds, task, change):
    from ppmerge.models import save_state_dict

    sd = {k: v.copy() for k, v in sds[task].items()}
    change(sd)
    path = os.path.join(folder, f"bad_{task}.pdparams")
    save_state_dict(sd, path)
    return path


@pytest.mark.parametrize("case", ["shape", "missing_key", "nan", "missing_file", "device", "param", "method"])
def test_errors_leave_no_output(pool, glue_suite, tmp_path, case):
    paths, sds = pool
    paths = dict(paths)
    out = str(tmp_path / "out")
    merge = {}
    emb = "gpt.embeddings.word_embeddings.weight"
    if case == "shape":
        paths["MNLI"] = _bad_pool(str(tmp_path), sds, "MNLI", lambda sd: sd.update({emb: sd[emb][:50257]}))
        expected = r"word_embeddings.weight: base \[50304, 64\] vs MNLI \[50257, 64\]"
    elif case == "missing_key":
        paths["STSB"] = _bad_pool(str(tmp_path), sds, "STSB", lambda sd: sd.pop("gpt.decoder.norm.bias"))
        expected = "gpt.decoder.norm.bias: in base but missing from STSB"
    elif case == "nan":
        paths["SST2"] = _bad_pool(str(tmp_path), sds, "SST2", lambda sd: sd["gpt.decoder.norm.weight"].__setitem__(3, np.nan))
        expected = "model SST2 .*'gpt.decoder.norm.weight' contains NaN"
    elif case == "missing_file":
        paths["MNLI"] = str(tmp_path / "nowhere.pdparams")
        expected = "ModelPool.models.MNLI: model file .*nowhere.pdparams' does not exist"
    elif case == "param":
        merge = {"scaling_factr": 0.3}
        expected = "Merge.scaling_factr: unknown parameter .*did you mean Merge.scaling_factor"
    raw = raw_config(paths, glue_suite["glue"], out, method="task_arithmetic", **merge)
    if case == "device":
        raw["Global"]["device"] = "tpu"
        expected = "device 'tpu' is not valid"
    if case == "method":
        raw["Merge"]["method"] = "task_arithmetc"
        expected = "unknown merge method 'task_arithmetc'; did you mean 'task_arithmetic'"
    with pytest.raises(UserError, match=expected) as info:
        run(raw)
    assert "\n" not in str(info.value)
    assert not os.path.exists(out) and not [n for n in os.listdir(tmp_path) if n.startswith(".out")]


FAST_PARAMS = {"fisher_merging": {"num_fisher_examples": 4, "batch_size": 4},
               "regmean": {"num_regmean_examples": 8, "batch_size": 8},
               "cabs": {"n": 1, "m": 4},  # disjoint n:m masks hold at most m // n models (3 here)
               "wudi_merging": {"iter_num": 5}, "adamerging": {"max_steps": 2, "batch_size": 4},
               "regmean_plusplus": {"num_regmean_examples": 8, "batch_size": 8}}


def test_every_registered_method_runs(pool, glue_suite, tmp_path):
    """Each method of the registry through the runner (small eval): a finite merged model of the right
    keys (or an ensemble without a model file), and one evaluated row."""
    from ppmerge.merge import METHODS

    paths, sds = pool
    for name in sorted(METHODS):
        out = str(tmp_path / name)
        tasks = TASKS[:2] if name == "slerp" else TASKS  # slerp interpolates exactly two models
        raw = raw_config(paths, glue_suite["glue"], out, method=name, tasks=tasks, **FAST_PARAMS.get(name, {}))
        raw["TaskPool"]["max_examples"] = 8
        result = run(raw)
        (row,) = result["rows"]
        assert row["average"] is not None and set(row["metrics"]) == set(tasks), name
        model_file = os.path.join(out, "merged_model.pdparams")
        if name == "simple_ensemble":
            assert result["model_file"] is None and not os.path.exists(model_file)
            continue
        per_task = {"emr_merging": "emr_model.safetensors", "tsv_compression": "tsv_c_model.safetensors"}
        if name in per_task:  # a per-task result in its own file (tests/test_methods_2024_tool.py)
            assert result["model_file"] == os.path.join(out, per_task[name]) and not os.path.exists(model_file)
            continue
        merged = load(model_file)
        assert sorted(backbone_keys(merged)) == sorted(
            [k for k in backbone_keys(sds["base"])] + [f"heads.{t}.score.weight" for t in tasks]), name
        assert all(np.isfinite(v).all() for v in merged.values()), name
