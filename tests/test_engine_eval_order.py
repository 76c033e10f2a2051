"""Engine.evaluate / predict run length-sorted batches; predictions, metrics, loss and the GLUE test
TSV are those of a plain forward pass in dataset order with every example padded to max_length,
scored with scikit-learn / scipy."""
import importlib.util
import io
import os

import numpy as np
import pytest
from test_engine_support import ROOT, TINY, task_overrides, tiny_config

EVAL_BATCH = 8


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    from ppmerge.data.synthetic import write_glue_suite

    base = str(tmp_path_factory.mktemp("eval_order_glue"))
    write_glue_suite(base, layout="glue", n_train=16, n_dev=40, n_test=20, seed=3, tasks=["SST2", "STSB"])
    return base


def make_engine(task, suite, out, extra=()):
    from ppmerge.engine import Engine, FinetuneModule

    cfg = tiny_config(task, suite, out, [f"Data.Eval.sampler.batch_size={EVAL_BATCH}", *extra])
    return cfg, Engine(cfg, FinetuneModule(cfg), out=io.StringIO())


def padded_to_max_forward(network, dataset):
    """Outputs of every example, in dataset order, each padded to the dataset's max_length."""
    from ppmerge.runtime import import_paddle

    paddle = import_paddle()
    n = len(dataset)
    ids = np.full((n, dataset.max_length), 50256, dtype=np.int64)
    lengths = np.array([len(dataset[i]["input_ids"]) for i in range(n)])
    for i in range(n):
        ids[i, :lengths[i]] = dataset[i]["input_ids"]
    network.eval()
    with paddle.no_grad():
        out = network(paddle.to_tensor(ids), paddle.to_tensor(lengths)).numpy()
    return out, np.array([dataset[i]["label"] for i in range(n)])


def assert_reordered(dataset):
    """The length-sorted plan differs from dataset order (so the order checks can fail)."""
    from ppmerge.data import length_sorted_batches, sequence_lengths

    flat = np.concatenate(length_sorted_batches(sequence_lengths(dataset), EVAL_BATCH))
    assert flat.tolist() != list(range(len(dataset)))


def test_predict_and_evaluate_match_a_dataset_order_forward(suite, tmp_path):
    from scipy.special import softmax
    from sklearn.metrics import accuracy_score, log_loss

    from ppmerge.engine import build_dataset

    cfg, engine = make_engine("SST2", suite, str(tmp_path))
    dev = build_dataset(cfg, "Eval")
    assert_reordered(dev)
    expected, labels = padded_to_max_forward(engine.module.network, dev)
    got = engine.predict(dev)
    assert got.shape == (40, 2) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)

    results = engine.evaluate(dev)
    assert results["accuracy"] == pytest.approx(accuracy_score(labels, expected.argmax(-1)))
    assert results["loss"] == pytest.approx(log_loss(labels, softmax(expected, axis=-1), labels=[0, 1]), rel=1e-5)


def test_regression_scores_metrics_and_mse(suite, tmp_path):
    from scipy.stats import pearsonr, spearmanr

    from ppmerge.engine import build_dataset

    cfg, engine = make_engine("STSB", suite, str(tmp_path))
    dev = build_dataset(cfg, "Eval")
    assert_reordered(dev)
    expected, labels = padded_to_max_forward(engine.module.network, dev)
    np.testing.assert_allclose(engine.predict(dev), expected, rtol=1e-4, atol=1e-5)
    results = engine.evaluate(dev)
    scores = expected[:, 0]
    assert results["pearson"] == pytest.approx(pearsonr(scores, labels)[0], abs=1e-5)
    assert results["spearman"] == pytest.approx(spearmanr(scores, labels)[0], abs=1e-5)
    assert results["loss"] == pytest.approx(np.mean((scores - labels) ** 2), rel=1e-5)


def test_eval_iters_takes_the_first_batches_worth_in_dataset_order(suite, tmp_path):
    from sklearn.metrics import accuracy_score

    from ppmerge.engine import build_dataset

    cfg, engine = make_engine("SST2", suite, str(tmp_path), ["Engine.eval_iters=2"])
    dev = build_dataset(cfg, "Eval")
    expected, labels = padded_to_max_forward(engine.module.network, dev)
    first = slice(0, 2 * EVAL_BATCH)
    results = engine.evaluate(dev)
    assert results["accuracy"] == pytest.approx(accuracy_score(labels[first], expected[first].argmax(-1)))
    assert "examples: 16" in engine.out.getvalue()


def _eval_tool():
    spec = importlib.util.spec_from_file_location("tool_eval_order", os.path.join(ROOT, "tools", "eval.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("task, file_name", [("SST2", "SST-2.tsv"), ("STSB", "STS-B.tsv")])
def test_glue_submission_rows_are_in_index_order(suite, tmp_path, task, file_name):
    """tools/eval.py --split test: row i is example i's prediction (a direct forward's)."""
    from ppmerge.engine import build_dataset
    from ppmerge.engine.submission import prediction_strings
    from ppmerge.models import save_state_dict

    cfg, engine = make_engine(task, suite, str(tmp_path))
    weights = os.path.join(str(tmp_path), "model.pdparams")
    save_state_dict(engine.module.network.state_dict(), weights)
    test = build_dataset(cfg, "Eval", split="test")
    assert len(test) == 20 and not test.has_labels
    assert_reordered(test)
    expected, _ = padded_to_max_forward(engine.module.network, test)

    argv = ["-c", TINY, "--device", "cpu", "--split", "test", "-o", f"Model.pretrained={weights}",
            "-o", f"Data.Eval.sampler.batch_size={EVAL_BATCH}"]
    for override in task_overrides(task, suite, str(tmp_path)):
        argv += ["-o", override]
    assert _eval_tool().main(argv) == 0
    with open(os.path.join(str(tmp_path), file_name)) as f:
        rows = [line.split("\t") for line in f.read().splitlines()[1:]]
    assert [int(r[0]) for r in rows] == list(range(20))
    if task == "STSB":
        # GLUE's STS-B range: predictions are clipped to [0, 5]
        clipped = np.clip(expected[:, 0], 0.0, 5.0)
        np.testing.assert_allclose([float(r[1]) for r in rows], clipped, atol=2e-3)
        # scores are distinct enough that a shuffled file could not pass the check above
        assert len(set(np.round(clipped, 3))) >= 5 and np.ptp(clipped) > 0.05
    else:
        assert [r[1] for r in rows] == prediction_strings(task, expected)
