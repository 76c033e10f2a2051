"""A new user's journey through the pool: a merged model is a pool input by default (iterative merging)."""
import os

import numpy as np
import pytest

from ppmerge.errors import UserError
from test_model_pool_named import backbone, load, named_config, run
from test_merge_runner_support import make_pool


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("journey"))
    return make_pool(folder, tasks=["SST2", "MNLI", "STSB"], seed=5)


def test_merge_then_merge_the_merged_file_again(pool, glue_suite, tmp_path):
    """merge SST2+MNLI → merged file; merge it (task SST2) with STSB using the default head_keys: the
    backbone is the mean of the merged backbone and STSB's (numpy), the merged input's head for SST2 is the
    head its file saved for SST2 (select_task_head), STSB's head is its own."""
    from ppmerge.models.checkpoint import select_task_head

    paths, sds = pool
    first_out = str(tmp_path / "first")
    run(named_config(paths, glue_suite["glue"], first_out, {"SST2": paths["SST2"], "MNLI": paths["MNLI"]},
                     ["SST2", "MNLI"]))
    first_path = os.path.join(first_out, "merged_model.pdparams")
    first = load(first_path)
    assert any(k.startswith("heads.SST2.") for k in first)

    second_out = str(tmp_path / "second")
    models = {"m1": {"path": first_path, "task": "SST2"}, "STSB": paths["STSB"]}
    result = run(named_config(paths, glue_suite["glue"], second_out, models, ["SST2", "STSB"]))
    second = load(os.path.join(second_out, "merged_model.pdparams"))
    for key in backbone(sds["base"]):
        want = (first[key].astype(np.float64) + sds["STSB"][key]) / 2
        np.testing.assert_allclose(second[key], want, rtol=1e-5, atol=1e-6, err_msg=key)
    assert not any(k.startswith("heads.m1.heads.") for k in second)      # no nested heads
    np.testing.assert_array_equal(second["heads.m1.score.weight"], select_task_head(first, "SST2")["score.weight"])
    np.testing.assert_array_equal(second["heads.m1.score.weight"], sds["SST2"]["score.weight"])
    np.testing.assert_array_equal(second["heads.STSB.score.weight"], sds["STSB"]["score.weight"])
    assert set(result["rows"][0]["metrics"]) == {"SST2", "STSB"}


def test_merged_input_without_task_contributes_no_head_and_wrong_task_is_an_error(pool, glue_suite, tmp_path):
    paths, sds = pool
    first_out = str(tmp_path / "first")
    run(named_config(paths, glue_suite["glue"], first_out, {"SST2": paths["SST2"], "MNLI": paths["MNLI"]},
                     ["SST2"]))
    first_path = os.path.join(first_out, "merged_model.pdparams")
    out = str(tmp_path / "notask")
    run(named_config(paths, glue_suite["glue"], out, {"mine": first_path, "STSB": paths["STSB"]}, ["STSB"]))
    merged = load(os.path.join(out, "merged_model.pdparams"))
    assert not any(k.startswith("heads.mine.") for k in merged)
    np.testing.assert_array_equal(merged["heads.STSB.score.weight"], sds["STSB"]["score.weight"])
    bad = str(tmp_path / "bad")
    with pytest.raises(UserError, match=r"model m1 \(.*merged_model.pdparams\): merged model has no head for 'CoLA'"):
        run(named_config(paths, glue_suite["glue"], bad, {"m1": {"path": first_path, "task": "CoLA"},
                                                          "STSB": paths["STSB"]}, ["STSB"]))
    assert not os.path.exists(bad) or not os.listdir(bad)


def test_two_columns_on_one_split_are_an_error(glue_suite):
    """TaskPool.splits {MNLI: dev_mismatched} with tasks [MNLI, MNLI-mm]: both columns would be the mismatched
    split (counted twice in the average) → ConfigError naming both; the default splits keep both columns."""
    from ppmerge.errors import ConfigError
    from ppmerge.evaluation.task_pool import TaskPool
    from test_merge_runner_support import MODEL_CFG

    section = {"tasks": ["MNLI", "MNLI-mm"], "data_root": glue_suite["glue"], "model": dict(MODEL_CFG)}
    with pytest.raises(ConfigError, match=r"TaskPool.tasks: 'MNLI' and 'MNLI-mm' both evaluate MNLI on split "
                                          r"'dev_mismatched' \(TaskPool.splits.MNLI: dev_mismatched\)"):
        TaskPool.from_config({**section, "splits": {"MNLI": "dev_mismatched"}}, progress=False)
    pool = TaskPool.from_config(section, progress=False)
    assert [pool.split_of(t) for t in pool.tasks] == ["dev_matched", "dev_mismatched"]
    with pytest.raises(ConfigError, match="'MNLI-m' and 'MNLI' both evaluate MNLI on split 'dev_matched'"):
        TaskPool.from_config({**section, "tasks": ["MNLI-m", "MNLI"]}, progress=False)


@pytest.mark.parametrize("task, classes, metric_key", [("MNLI", 3, "accuracy"), ("STSB", 1, "pearson"),
                                                       ("CoLA", 2, "mcc")])
def test_train_derives_model_settings_from_the_task(task, classes, metric_key, tmp_path):
    """tools/train.py on the tiny config (its _base_ sets SST-2's num_classes/loss/metric) with only the data
    pointed at MNLI / STSB / CoLA: Model.* come from the task, CoLA's best/ tracks mcc; a value the user sets
    that disagrees with the task is still an error."""
    import importlib.util

    from ppmerge.data import get_task, task_root
    from ppmerge.data.synthetic import write_glue_suite
    from ppmerge.errors import UserError
    from test_engine_support import ROOT, TINY

    spec = importlib.util.spec_from_file_location("tool_train_journey", os.path.join(ROOT, "tools", "train.py"))
    train = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train)
    data = str(tmp_path / "glue")
    write_glue_suite(data, layout="glue", n_train=32, n_dev=16, n_test=4, seed=1, tasks=[task])
    root = task_root(get_task(task).name, data, "glue")
    out = str(tmp_path / "out")
    argv = ["-c", TINY, "--device", "cpu", "-o", f"Data.Train.dataset.name={task}", "-o", f"Data.Train.dataset.root={root}",
            "-o", f"Data.Eval.dataset.name={task}", "-o", f"Data.Eval.dataset.root={root}",
            "-o", f"Engine.save_load.output_dir={out}", "-o", "Engine.max_steps=2", "-o", "Engine.eval_freq=1",
            "-o", "Engine.logging_freq=1000"]
    from ppmerge.config import load_config

    overrides = argv[5::2]
    assert all(o.startswith(("Data.", "Engine.")) for o in overrides)
    cfg = train.from_task(load_config(TINY, overrides), TINY, overrides)
    want = get_task(task)
    assert cfg["Model"]["num_classes"] == classes == want.num_classes
    assert cfg["Model"]["loss"]["train"]["name"] == want.loss and cfg["Model"]["metric"]["eval"]["name"] == want.metric
    assert train.main(argv) == 0
    assert os.path.isdir(os.path.join(out, "best"))
    import json

    best = json.load(open(os.path.join(out, "best", "metrics.json")))
    assert metric_key in json.dumps(best).lower()
    bad = str(tmp_path / "bad")
    with pytest.raises(UserError, match="num_classes"):
        train.main(argv + ["-o", f"Engine.save_load.output_dir={bad}", "-o", f"Model.num_classes={classes + 3}"])
