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
