"""The model pool as a list of named models with optional tasks: soups of same-task models, a model
without a task, pools without a base, per-model parameter maps, pool order, per-task eval splits."""
import os

import numpy as np
import pytest

from ppmerge.config.merge_schema import MERGE_SCHEMA
from ppmerge.config.schema import validate
from ppmerge.errors import ConfigError, UserError
from test_merge_runner_support import MODEL_CFG, make_pool


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    """base + two SST2 models (a soup), one MNLI model, one model 'mine' without a task."""
    from ppmerge.models import save_state_dict

    folder = str(tmp_path_factory.mktemp("named"))
    paths, sds = make_pool(folder, tasks=["SST2", "MNLI", "STSB"], seed=3)
    rng = np.random.default_rng(11)
    second = {k: (v + rng.normal(0, 0.02, v.shape)).astype(v.dtype) for k, v in sds["SST2"].items()}
    paths["SST2_b"] = os.path.join(folder, "sst2_b.pdparams")
    save_state_dict(second, paths["SST2_b"])
    sds["SST2_b"] = second
    return paths, sds


def named_config(paths, data_root, out_dir, models, tasks, method="simple_average", base=True, **merge):
    return {
        "Global": {"device": "cpu", "seed": 7},
        "ModelPool": {"base": paths["base"] if base else None, "models": models},
        "Merge": {"method": method, **merge},
        "Sweep": None,
        "TaskPool": {"tasks": list(tasks), "data_root": data_root, "layout": "glue",
                     "batch_size": 16, "max_length": 32, "max_examples": 24, "model": dict(MODEL_CFG)},
        "Output": {"dir": out_dir},
    }


def run(raw):
    from ppmerge.merge.runner import run_merge

    return run_merge(validate(raw, MERGE_SCHEMA), progress=False)


def load(path):
    from ppmerge.models import load_numpy_state_dict

    return load_numpy_state_dict(path)


def backbone(sd):
    return {k: v for k, v in sd.items() if not k.startswith("score.")}


def soup_models(paths):
    return {"sst2_a": {"path": paths["SST2"], "task": "sst-2"}, "sst2_b": {"path": paths["SST2_b"], "task": "SST2"}}


def test_parse_models_legacy_named_and_errors(pool):
    from ppmerge.merge.model_pool import parse_models

    paths, _ = pool
    models = parse_models({"SST-2": paths["SST2"], "mine": paths["MNLI"],
                           "b": {"path": paths["SST2_b"], "task": "mnli"}})
    assert [(m.name, m.task) for m in models] == [("SST2", "SST2"), ("mine", None), ("b", "MNLI")]
    with pytest.raises(ConfigError, match="ModelPool.models.x.task: unknown task 'SST3'"):
        parse_models({"x": {"path": paths["SST2"], "task": "SST3"}})
    with pytest.raises(ConfigError, match="model SST2 is listed twice"):
        parse_models({"SST2": paths["SST2"], "sst-2": paths["SST2_b"]})
    with pytest.raises(ConfigError, match="ModelPool.models.MNLI: a model named like task MNLI must be fine-tuned on it"):
        parse_models({"MNLI": {"path": paths["SST2"], "task": "SST2"}})
    with pytest.raises(ConfigError, match="2 models are fine-tuned on SST2"):
        parse_models({"SST2": paths["SST2"], "other": {"path": paths["SST2_b"], "task": "SST2"}})
    with pytest.raises(ConfigError, match="ModelPool.models.x: unknown key 'pth'"):
        parse_models({"x": {"pth": paths["SST2"]}})


def test_soup_of_two_same_task_models_without_base(pool, glue_suite, tmp_path):
    """simple_average of two SST2 models, no base: the backbone is their mean, heads are kept per model,
    heads.SST2 is the average head, and the SST2 metric is that of the averaged model (numpy reference)."""
    from ppmerge.evaluation.task_pool import TaskPool
    from ppmerge.models.checkpoint import select_task_head

    paths, sds = pool
    out = str(tmp_path / "soup")
    raw = named_config(paths, glue_suite["glue"], out, soup_models(paths), ["SST2"], base=False)
    result = run(raw)
    merged = load(os.path.join(out, "merged_model.pdparams"))
    mean = {k: (sds["SST2"][k].astype(np.float64) + sds["SST2_b"][k]) / 2 for k in backbone(sds["base"])}
    for key, value in mean.items():
        np.testing.assert_allclose(merged[key], value, rtol=1e-5, atol=1e-6, err_msg=key)
    np.testing.assert_array_equal(merged["heads.sst2_a.score.weight"], sds["SST2"]["score.weight"])
    np.testing.assert_array_equal(merged["heads.sst2_b.score.weight"], sds["SST2_b"]["score.weight"])
    head = (sds["SST2"]["score.weight"] + sds["SST2_b"]["score.weight"]) / 2
    np.testing.assert_allclose(merged["heads.SST2.score.weight"], head, rtol=1e-6)
    # select a head by task or by model name
    np.testing.assert_allclose(select_task_head(merged, "sst-2")["score.weight"], head, rtol=1e-6)
    np.testing.assert_array_equal(select_task_head(merged, "sst2_b")["score.weight"], sds["SST2_b"]["score.weight"])
    with pytest.raises(UserError, match="no head for 'CoLA'.*sst2_a, sst2_b, SST2"):
        select_task_head(merged, "CoLA")

    task_pool = TaskPool.from_config(raw["TaskPool"], progress=False)
    direct = task_pool.evaluate(mean, {"SST2": {"score.weight": head}})
    (row,) = result["rows"]
    assert row["metrics"]["SST2"]["main"] == pytest.approx(direct["SST2"]["main"], abs=1e-6)
    assert [m["name"] for m in result["pool"]] == ["sst2_a", "sst2_b"]
    assert result["pool_order"] == "sst2_a (SST2), sst2_b (SST2)" and result["base"] is None
    assert "Model pool (order): sst2_a (SST2), sst2_b (SST2)" in open(os.path.join(out, "report.md")).read()


def test_task_heads_names_one_model_and_weights_map(pool, glue_suite, tmp_path):
    """ModelPool.task_heads picks one model's head for the task; Merge.weights as a {name: w} map is the
    list in pool order (numpy reference)."""
    paths, sds = pool
    out = str(tmp_path / "w")
    raw = named_config(paths, glue_suite["glue"], out, soup_models(paths), ["SST2"], base=False,
                       method="weighted_average", weights={"sst2_b": 3.0, "sst2_a": 1.0})
    raw["ModelPool"]["task_heads"] = {"SST-2": "sst2_b"}
    result = run(raw)
    assert result["params"]["weights"] == [1.0, 3.0]
    merged = load(os.path.join(out, "merged_model.pdparams"))
    for key in backbone(sds["base"]):
        expected = 0.25 * sds["SST2"][key].astype(np.float64) + 0.75 * sds["SST2_b"][key]
        np.testing.assert_allclose(merged[key], expected, rtol=1e-5, atol=1e-6, err_msg=key)
    np.testing.assert_array_equal(merged["heads.SST2.score.weight"], sds["SST2_b"]["score.weight"])

    raw["Merge"]["weights"] = {"sst2_a": 1.0}
    with pytest.raises(ConfigError, match="Merge.weights: no value for model sst2_b"):
        run(raw)
    raw["Merge"]["weights"] = {"sst2_a": 1.0, "sst2_b": 1.0, "sst2_c": 1.0}
    with pytest.raises(ConfigError, match="Merge.weights: 'sst2_c' is not a model of the pool"):
        run(raw)
    raw["Merge"]["weights"] = None
    raw["ModelPool"]["task_heads"] = {"SST2": "nobody"}
    with pytest.raises(ConfigError, match="ModelPool.task_heads.SST2: expected 'average' or the name of a model"):
        run(raw)


def test_model_without_task_and_base_needed(pool, glue_suite, tmp_path):
    """A model without a task is merged and its head saved, not evaluated; a method that needs the base
    says so in one line when the pool has none."""
    paths, sds = pool
    out = str(tmp_path / "mine")
    models = {"MNLI": paths["MNLI"], "mine": paths["STSB"]}
    raw = named_config(paths, glue_suite["glue"], out, models, ["MNLI"], method="task_arithmetic",
                       scaling_factor={"mine": 0.5, "MNLI": 1.0})
    result = run(raw)
    assert result["params"]["scaling_factor"] == [1.0, 0.5]
    merged = load(os.path.join(out, "merged_model.pdparams"))
    for key in backbone(sds["base"]):
        theta0 = sds["base"][key].astype(np.float64)
        expected = theta0 + 1.0 * (sds["MNLI"][key] - theta0) + 0.5 * (sds["STSB"][key] - theta0)
        np.testing.assert_allclose(merged[key], expected, rtol=1e-4, atol=1e-5, err_msg=key)
    np.testing.assert_array_equal(merged["heads.mine.score.weight"], sds["STSB"]["score.weight"])
    assert list(result["rows"][0]["metrics"]) == ["MNLI"]

    raw = named_config(paths, glue_suite["glue"], str(tmp_path / "nobase"), models, ["MNLI"],
                       method="task_arithmetic", base=False)
    with pytest.raises(ConfigError, match=r"Merge.method task_arithmetic needs ModelPool.base .*simple_average") as info:
        run(raw)
    assert "\n" not in str(info.value) and not os.path.exists(str(tmp_path / "nobase"))
    raw["Merge"] = {"method": "simple_average", "sparsify": "dare"}
    with pytest.raises(ConfigError, match="simple_average needs ModelPool.base"):
        run(raw)
    raw["Merge"] = {"method": "regmean"}
    with pytest.raises(ConfigError, match="model mine has no task"):
        run(raw)
    raw["Merge"] = {"method": "simple_average"}
    raw["TaskPool"]["tasks"] = ["MNLI", "CoLA"]
    with pytest.raises(ConfigError, match="TaskPool.tasks: task CoLA has no fine-tuned model"):
        run(raw)


def test_mnli_mismatched_in_a_merge_report(pool, glue_suite, tmp_path):
    """TaskPool.splits: {MNLI: dev_mismatched}: the report's MNLI column is the mismatched dev split
    (equal to a task pool evaluating dev_mismatched directly), and the report says so."""
    from ppmerge.data import read_examples
    from ppmerge.evaluation.task_pool import TaskPool

    paths, sds = pool
    out = str(tmp_path / "mm")
    raw = named_config(paths, glue_suite["glue"], out, {"MNLI": paths["MNLI"], "SST2": paths["SST2"]},
                       ["MNLI", "SST2"])
    raw["TaskPool"]["splits"] = {"mnli": "dev_mismatched"}
    raw["TaskPool"]["max_examples"] = -1
    result = run(raw)
    assert result["splits"] == {"MNLI": "dev_mismatched", "SST2": "dev"}
    mean = {k: (sds["MNLI"][k].astype(np.float64) + sds["SST2"][k]) / 2 for k in backbone(sds["base"])}
    direct_pool = TaskPool.from_config({**raw["TaskPool"], "splits": None, "split": "dev_mismatched",
                                        "tasks": ["MNLI"]}, progress=False)
    direct = direct_pool.evaluate(mean, {"MNLI": {"score.weight": sds["MNLI"]["score.weight"]}})["MNLI"]
    got = result["rows"][0]["metrics"]["MNLI"]
    assert got["num_examples"] == len(read_examples("MNLI", os.path.join(glue_suite["glue"], "MNLI"), "dev_mismatched"))
    assert got["main"] == pytest.approx(direct["main"], abs=1e-6)
    assert "Eval splits: MNLI dev_mismatched, SST2 dev" in open(os.path.join(out, "report.md")).read()
    raw["TaskPool"]["splits"] = {"SST2": "dev_mismatched"}
    with pytest.raises(ConfigError, match="TaskPool.splits.SST2: split 'dev_mismatched' is not valid for SST2"):
        run(raw)


def test_pool_order_is_the_written_order_through_base_files(pool, tmp_path):
    """_base_ inheritance: a child replacing ModelPool.models (_inherited_: False) keeps its own order;
    one merging into the base's keeps the base's order and appends new names."""
    from ppmerge.config import load_config

    paths, _ = pool
    base = {"ModelPool": {"base": paths["base"], "models": {"SST2": paths["SST2"], "MNLI": paths["MNLI"]}},
            "Merge": {"method": "simple_average"}, "TaskPool": {"tasks": [], "model": dict(MODEL_CFG)}}
    replaced = {"_base_": "base.yaml", "ModelPool": {"models": {"_inherited_": False, "zeta": paths["MNLI"],
                                                                "alpha": paths["SST2"], "MNLI": paths["MNLI"]}}}
    merged = {"_base_": "base.yaml", "ModelPool": {"models": {"zeta": paths["STSB"]}}}
    import yaml

    for name, cfg in (("base", base), ("replaced", replaced), ("merged", merged)):
        with open(tmp_path / f"{name}.yaml", "w") as f:
            yaml.safe_dump(cfg, f, sort_keys=False)
    from ppmerge.merge.model_pool import ModelPool

    cfg = load_config(str(tmp_path / "replaced.yaml"), schema=MERGE_SCHEMA)
    assert ModelPool.from_config(cfg["ModelPool"]).names == ["zeta", "alpha", "MNLI"]
    cfg = load_config(str(tmp_path / "merged.yaml"), schema=MERGE_SCHEMA)
    assert ModelPool.from_config(cfg["ModelPool"]).names == ["SST2", "MNLI", "zeta"]


def test_methods_without_base_and_a_sweep_over_a_per_model_map(pool, glue_suite, tmp_path):
    """needs_base=False methods give the same result without ModelPool.base (they never read it): regmean
    and the ensemble; a sweep may address one model's entry of a {name: value} map."""
    paths, sds = pool
    models = soup_models(paths)
    results = {}
    for base in (True, False):
        raw = named_config(paths, glue_suite["glue"], str(tmp_path / f"regmean_{base}"), models, ["SST2"],
                           method="regmean", base=base, num_regmean_examples=8, batch_size=4)
        results[base] = run(raw)
        merged = load(os.path.join(str(tmp_path / f"regmean_{base}"), "merged_model.pdparams"))
        results[base] = (results[base], {k: v for k, v in merged.items() if not k.startswith("heads.")})
    (with_base, sd_with), (without, sd_without) = results[True], results[False]
    assert sd_with.keys() == sd_without.keys()
    for key in sd_with:
        np.testing.assert_array_equal(sd_with[key], sd_without[key], err_msg=key)
    assert with_base["rows"][0]["metrics"]["SST2"]["main"] == without["rows"][0]["metrics"]["SST2"]["main"]

    raw = named_config(paths, glue_suite["glue"], str(tmp_path / "ens"), models, ["SST2"], method="simple_ensemble",
                       base=False)
    assert run(raw)["rows"][0]["metrics"]["SST2"]["num_examples"] == 24

    raw = named_config(paths, glue_suite["glue"], str(tmp_path / "sweep"), {"MNLI": paths["MNLI"], "SST2": paths["SST2"]},
                       ["MNLI"], method="task_arithmetic", scaling_factor={"SST2": 0.0, "MNLI": 1.0})
    raw["Sweep"] = {"grid": {"Merge.scaling_factor.SST2": [0.0, 0.5]}}
    result = run(raw)
    assert [r["params"]["scaling_factor"] for r in result["rows"]] == [[1.0, 0.0], [1.0, 0.5]]


def test_cabs_order_by_names_or_positions(pool):
    """CABS's `order` (pool indices in masking order) from a list of names or a {name: position} map."""
    from ppmerge.merge import get_method
    from ppmerge.merge.model_pool import ModelPool
    from ppmerge.merge.runner import per_model_params

    paths, _ = pool
    models = ModelPool(paths["base"], {"a": paths["SST2"], "b": paths["MNLI"], "c": paths["STSB"]})
    cabs = get_method("cabs")
    assert per_model_params(cabs, {"order": ["c", "a", "b"]}, models)["order"] == [2, 0, 1]
    # positions a: 2, b: 0, c: 1 -> masking order b, c, a
    assert per_model_params(cabs, {"order": {"a": 2, "b": 0, "c": 1}}, models)["order"] == [1, 2, 0]
    assert per_model_params(cabs, {"scaling_factor": {"c": 0.1, "a": 0.3, "b": 0.2}}, models)["scaling_factor"] == [0.3, 0.2, 0.1]
    with pytest.raises(ConfigError, match="Merge.order: a map gives each model its position"):
        per_model_params(cabs, {"order": {"a": 0, "b": 0, "c": 1}}, models)
    with pytest.raises(ConfigError, match="Merge.order: 'd' is not a model of the pool"):
        per_model_params(cabs, {"order": ["d", "a", "b"]}, models)


def test_mnli_matched_and_mismatched_columns_in_one_report(pool, glue_suite, tmp_path):
    """TaskPool.tasks: [MNLI-m, MNLI-mm, SST2]: two MNLI columns (each split, the MNLI head), equal to the
    single-split runs; the fine-tuned row too; a view of a task without a model is refused."""
    paths, _ = pool
    models = {"MNLI": paths["MNLI"], "SST2": paths["SST2"]}
    raw = named_config(paths, glue_suite["glue"], str(tmp_path / "both"), models, ["MNLI-m", "mnli-mm", "SST2"])
    raw["Output"]["reference_rows"] = {"finetuned": True}
    result = run(raw)
    assert result["tasks"] == ["MNLI-m", "MNLI-mm", "SST2"]
    assert result["splits"] == {"MNLI-m": "dev_matched", "MNLI-mm": "dev_mismatched", "SST2": "dev"}
    assert result["main_metric"]["MNLI-mm"] == "Accuracy"
    rows = {r["name"]: r for r in result["rows"]}
    for split, column in (("dev_matched", "MNLI-m"), ("dev_mismatched", "MNLI-mm")):
        single = named_config(paths, glue_suite["glue"], str(tmp_path / split), models, ["MNLI"])
        single["TaskPool"]["splits"] = {"MNLI": split}
        single["Output"]["reference_rows"] = {"finetuned": True}
        one = {r["name"]: r for r in run(single)["rows"]}
        for name in ("simple_average", "finetuned"):
            assert rows[name]["metrics"][column]["main"] == pytest.approx(one[name]["metrics"]["MNLI"]["main"], abs=1e-9)
    assert "| MNLI-m (acc) | MNLI-mm (acc) |" in open(os.path.join(str(tmp_path / "both"), "report.md")).read()
    raw["TaskPool"]["tasks"] = ["MNLI-mm", "CoLA:dev"]
    with pytest.raises(ConfigError, match="TaskPool.tasks: task CoLA:dev has no fine-tuned model"):
        run(raw)
    raw["TaskPool"]["tasks"] = ["SST2:dev_mismatched"]
    with pytest.raises(ConfigError, match="'SST2:dev_mismatched': split 'dev_mismatched' is not valid for SST2"):
        run(raw)


def test_zero_base_of_a_pool_without_base(pool):
    """Without a base, `base` is zeros with the first model's backbone keys, shapes and dtypes (read from
    the file's index: no tensor is read)."""
    import ppmerge.models.checkpoint as checkpoint
    from ppmerge.merge.model_pool import ModelPool

    paths, sds = pool
    models = ModelPool(None, soup_models(paths))
    reads = []
    original = checkpoint.LazyStateDict.read_tensor
    checkpoint.LazyStateDict.read_tensor = lambda self, key: reads.append(key) or original(self, key)
    try:
        zeros = models.base
    finally:
        checkpoint.LazyStateDict.read_tensor = original
    expected = backbone(sds["SST2"])
    assert list(zeros) == list(expected) and not reads
    for key, value in expected.items():
        assert zeros[key].shape == value.shape and zeros[key].dtype == value.dtype and not zeros[key].any()
