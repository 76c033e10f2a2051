"""TaskPool evaluates in length-sorted batches: the batches really are reordered and padded to their
own longest, and every output comes back in the dataset's order (checked row by row against a forward
pass that pads every example to max_length, in dataset order)."""
import numpy as np
import pytest

from test_task_pool_support import (make_pool, random_backbone, random_heads, reference_logits,
                                    sklearn_metrics)

TASKS = ["SST2", "CoLA", "STSB"]   # the generated splits with the most varied lengths


@pytest.fixture(scope="module")
def pool(glue_suite):
    return make_pool(glue_suite["glue"], TASKS, max_examples=40, batch_size=6)


@pytest.fixture(scope="module")
def heads():
    return random_heads(TASKS, 10)


def test_plan_is_length_sorted_and_not_dataset_order(pool):
    for task in TASKS:
        dataset = pool.dataset(task)
        plan = pool.eval_batches(task)
        flat = np.concatenate(plan)
        assert sorted(flat.tolist()) == list(range(40)), task
        assert flat.tolist() != list(range(40)), task   # else the order checks below prove nothing
        lengths = np.array([len(dataset[int(i)]["input_ids"]) for i in flat])
        assert (np.diff(lengths) <= 0).all(), task


def test_each_batch_is_padded_to_its_own_longest(pool, heads):
    backbone = random_backbone(7)
    model = pool.load_model("SST2", backbone, heads["SST2"])
    shapes = []

    def call(m, ids, lens):
        shapes.append((ids.shape[1], int(lens.numpy().max())))
        return m(ids, lens)

    class Bar:
        def update(self, n):
            pass

    pool._run(model, "SST2", call, Bar())
    assert len(shapes) == 7 and all(width == longest for width, longest in shapes)
    widths = [w for w, _ in shapes]
    assert widths == sorted(widths, reverse=True) and widths[0] > widths[-1]


def test_logits_and_labels_come_back_in_dataset_order(pool, heads):
    backbone = random_backbone(8)
    for task in TASKS:
        got, labels = pool.logits(task, backbone, heads[task])
        expected, expected_labels = reference_logits(pool, task, backbone, heads[task])
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
        np.testing.assert_array_equal(labels, expected_labels)
        # the outputs in batch (sorted) order differ: a missing restore would fail above
        flat = np.concatenate(pool.eval_batches(task))
        assert not np.allclose(got[flat], expected, rtol=1e-4, atol=1e-5), task


def test_metrics_equal_sklearn_on_dataset_order_logits(pool, heads):
    backbone = random_backbone(9)
    results = pool.evaluate(backbone, heads)
    for task in TASKS:
        outputs, labels = reference_logits(pool, task, backbone, heads[task])
        for key, value in sklearn_metrics(task, outputs, labels).items():
            assert results[task][key] == pytest.approx(value, abs=1e-6), (task, key)
        assert results[task]["num_examples"] == 40


def test_ensemble_pooled_states_are_restored_too(pool, heads):
    """evaluate_ensemble averages pooled states across backbones: each must be in dataset order."""
    backbones = [random_backbone(11), random_backbone(12)]
    results = pool.evaluate_ensemble(backbones, heads, ["CoLA", "STSB"])
    for task in ("CoLA", "STSB"):
        pooled = [reference_logits(pool, task, b, heads[task], pooled=True)[0] for b in backbones]
        logits = np.mean(pooled, axis=0) @ heads[task]["score.weight"]
        labels = reference_logits(pool, task, backbones[0], heads[task])[1]
        for key, value in sklearn_metrics(task, logits, labels).items():
            assert results[task][key] == pytest.approx(value, abs=1e-5), (task, key)


def test_no_examples_is_a_config_error(glue_suite, heads):
    from ppmerge.errors import ConfigError

    empty = make_pool(glue_suite["glue"], ["SST2"], max_examples=0)
    with pytest.raises(ConfigError, match="SST2 dev has no examples.*max_examples"):
        empty.evaluate(random_backbone(1), heads, ["SST2"])
