"""TaskPool: metrics equal scikit-learn / scipy on logits computed directly (every example padded to
max_length, so this also checks dynamic padding), models and datasets built once, errors."""
import numpy as np
import pytest

from test_task_pool_support import (make_pool, random_backbone, random_heads, reference_logits,
                                    sklearn_metrics)

TASKS = ["CoLA", "MRPC", "STSB", "MNLI"]   # Mcc, AccuracyAndF1, regression, 3 classes


@pytest.fixture(scope="module")
def pool(glue_suite):
    return make_pool(glue_suite["glue"], TASKS, max_examples=24, batch_size=5)


@pytest.fixture(scope="module")
def heads():
    return random_heads(TASKS)


def check_against_reference(pool, results, backbone, heads):
    for task in TASKS:
        outputs, labels = reference_logits(pool, task, backbone, heads[task])
        expected = sklearn_metrics(task, outputs, labels)
        got = results[task]
        assert got["num_examples"] == len(labels) == 24
        for key, value in expected.items():
            assert got[key] == pytest.approx(value, abs=1e-6), (task, key)
        if task != "STSB":
            assert got["accuracy"] == pytest.approx(np.mean(outputs.argmax(-1) == labels), abs=1e-9)
        assert got["seconds"] >= 0


def test_metrics_match_sklearn_on_padded_to_max_logits(pool, heads):
    backbone = random_backbone(1)
    results = pool.evaluate(backbone, heads)
    assert list(results) == TASKS
    check_against_reference(pool, results, backbone, heads)


def test_logits_equal_the_padded_to_max_forward(pool, heads):
    backbone = random_backbone(1)
    for task in ("MRPC", "MNLI"):
        got, labels = pool.logits(task, backbone, heads[task])
        expected, expected_labels = reference_logits(pool, task, backbone, heads[task])
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
        np.testing.assert_array_equal(labels, expected_labels)


def test_skeletons_and_datasets_are_reused(pool, heads):
    """Another backbone: right results again (weights really reloaded), no new model or dataset."""
    pool.evaluate(random_backbone(1), heads)
    models = dict(pool._models)
    datasets = {k: v for k, v in pool._datasets.items()}
    backbone = random_backbone(2)
    results = pool.evaluate(backbone, heads, tasks=["mnli", "CoLA"])
    assert list(results) == ["MNLI", "CoLA"]
    assert set(models) == {1, 2, 3}
    assert all(pool._models[k] is m for k, m in models.items()) and len(pool._models) == 3
    assert all(pool._datasets[k] is d for k, d in datasets.items()) and len(pool._datasets) == len(datasets)
    outputs, labels = reference_logits(pool, "MNLI", backbone, heads["MNLI"])
    assert results["MNLI"]["accuracy"] == pytest.approx(np.mean(outputs.argmax(-1) == labels))


def test_main_is_the_task_metric_main_key(pool, heads):
    results = pool.evaluate(random_backbone(3), heads)
    assert results["CoLA"]["main"] == results["CoLA"]["mcc"]
    assert results["MRPC"]["main"] == results["MRPC"]["acc_and_f1"]
    assert results["STSB"]["main"] == results["STSB"]["corr"]
    assert results["MNLI"]["main"] == results["MNLI"]["accuracy"]
    assert "accuracy" not in results["STSB"]


def test_cross_task_matrix_is_evaluate_per_backbone(pool, heads):
    backbones = {"CoLA": random_backbone(4), "MNLI": random_backbone(5)}
    matrix = pool.cross_task_matrix(backbones, heads, ["CoLA", "MNLI"])
    assert list(matrix) == ["CoLA", "MNLI"]
    for name, backbone in backbones.items():
        direct = pool.evaluate(backbone, heads, ["CoLA", "MNLI"])
        for task in ("CoLA", "MNLI"):
            assert matrix[name][task]["main"] == pytest.approx(direct[task]["main"])


def test_train_batches_are_seeded_and_counted(pool):
    dataset = pool.dataset("MRPC", "train")
    first = list(pool.train_batches("MRPC", num_examples=7, batch_size=3, seed=0))
    again = list(pool.train_batches("MRPC", num_examples=7, batch_size=3, seed=0))
    other = list(pool.train_batches("MRPC", num_examples=7, batch_size=3, seed=1))
    assert [len(b["lengths"]) for b in first] == [3, 3, 1]
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a["input_ids"], b["input_ids"])
    assert any(a["input_ids"].shape != b["input_ids"].shape or (a["input_ids"] != b["input_ids"]).any()
               for a, b in zip(first, other))
    # The rows are the permutation's examples, right-padded to the batch's longest.
    order = np.random.default_rng(0).permutation(len(dataset))[:7]
    rows = [(ids, n, y) for b in first for ids, n, y in zip(b["input_ids"], b["lengths"], b["labels"])]
    for index, (ids, length, label) in zip(order, rows):
        item = dataset[int(index)]
        np.testing.assert_array_equal(ids[:length], item["input_ids"])
        assert (ids[length:] == 50256).all() and label == item["label"]
    everything = sum(len(b["lengths"]) for b in pool.train_batches("MRPC", num_examples=-1, batch_size=64))
    assert everything == len(dataset)


def test_errors_name_the_problem(pool, heads, glue_suite):
    from ppmerge.errors import CheckpointError, ConfigError, UserError

    backbone = random_backbone(1)
    with pytest.raises(CheckpointError, match="no head for task 'MRPC'"):
        pool.evaluate(backbone, {k: v for k, v in heads.items() if k != "MRPC"}, ["MRPC"])
    bad = dict(backbone)
    bad["gpt.decoder.norm.weight"] = np.ones(32, np.float32)
    with pytest.raises(CheckpointError, match=r"gpt.decoder.norm.weight.*\[32\].*\[64\]"):
        pool.evaluate(bad, heads, ["CoLA"])
    with pytest.raises(CheckpointError, match="missing"):
        pool.evaluate({k: v for k, v in backbone.items() if "norm" not in k}, heads, ["CoLA"])
    # A task outside TaskPool.tasks is evaluated when there is data and a head for it.
    rte = pool.evaluate(backbone, {**heads, "RTE": heads["CoLA"]}, ["RTE"])["RTE"]
    outputs, labels = reference_logits(pool, "RTE", backbone, heads["CoLA"])
    assert rte["num_examples"] == len(labels) == 24
    assert rte["main"] == pytest.approx(sklearn_metrics("RTE", outputs, labels)["main"], abs=1e-6)
    with pytest.raises(ConfigError, match="unknown key 'batchsize'"):
        make_pool(glue_suite["glue"], TASKS, batchsize=3)
    with pytest.raises(UserError, match="unknown GLUE task"):
        make_pool(glue_suite["glue"], ["SST3"])
