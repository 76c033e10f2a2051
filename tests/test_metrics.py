"""Metrics against scikit-learn / scipy on random data, plus the edge cases paddlenlp gets wrong."""
import warnings

import numpy as np
import pytest
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef, precision_score, recall_score

from ppmerge.errors import ConfigError
from ppmerge.metrics import Accuracy, AccuracyAndF1, Mcc, PearsonAndSpearman, build_metric


def _feed(metric, preds, labels, batch=7):
    """Update in uneven batches, as an eval loop does."""
    for i in range(0, len(labels), batch):
        metric.update(preds[i:i + batch], labels[i:i + batch])
    return metric.accumulate()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_classification_metrics_equal_sklearn(seed):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(101, 2)).astype(np.float32)
    labels = rng.integers(0, 2, size=101)
    preds = logits.argmax(-1)

    assert _feed(Accuracy(), logits, labels) == {"accuracy": pytest.approx(accuracy_score(labels, preds))}
    assert _feed(Mcc(), logits, labels)["mcc"] == pytest.approx(matthews_corrcoef(labels, preds))
    out = _feed(AccuracyAndF1(), logits, labels)
    f1 = f1_score(labels, preds)
    assert out["accuracy"] == pytest.approx(accuracy_score(labels, preds))
    assert out["precision"] == pytest.approx(precision_score(labels, preds))
    assert out["recall"] == pytest.approx(recall_score(labels, preds))
    assert out["f1"] == pytest.approx(f1)
    assert out["acc_and_f1"] == pytest.approx((accuracy_score(labels, preds) + f1) / 2)


def test_three_class_accuracy_and_label_shapes():
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(50, 3))
    labels = rng.integers(0, 3, size=(50, 1))  # [n, 1] labels are flattened
    assert _feed(Accuracy(), logits, labels)["accuracy"] == pytest.approx(
        accuracy_score(labels.ravel(), logits.argmax(-1)))


def test_mcc_perfect_prediction_with_zero_cells_is_one():
    labels = np.array([0, 1, 1, 0, 1])
    logits = np.eye(2)[labels] * 5.0  # perfect: the off-diagonal confusion cells are zero
    assert _feed(Mcc(), logits, labels)["mcc"] == pytest.approx(1.0)
    # one cell zero, not perfect: still sklearn's value (paddlenlp returns 0.0 here)
    preds = np.array([0, 1, 1, 1, 1])
    assert _feed(Mcc(), np.eye(2)[preds], labels)["mcc"] == pytest.approx(matthews_corrcoef(labels, preds))
    assert matthews_corrcoef(labels, preds) > 0.5


def test_pearson_spearman_equal_scipy_with_ties():
    rng = np.random.default_rng(4)
    labels = rng.integers(0, 6, size=80).astype(np.float32)  # many ties, like STS-B's 0..5 scale
    scores = (labels + rng.normal(scale=1.5, size=80)).round(0).reshape(-1, 1)  # ties in preds too
    out = _feed(PearsonAndSpearman(), scores, labels)
    p, s = pearsonr(scores.ravel(), labels)[0], spearmanr(scores.ravel(), labels)[0]
    assert out["pearson"] == pytest.approx(p, rel=1e-6)
    assert out["spearman"] == pytest.approx(s, rel=1e-6)
    assert out["corr"] == pytest.approx((p + s) / 2, rel=1e-6)
    # ties matter: the tie-corrected value differs from a naive ranking by position
    naive = np.corrcoef(np.argsort(np.argsort(scores.ravel(), kind="stable")),
                        np.argsort(np.argsort(labels, kind="stable")))[0, 1]
    assert abs(out["spearman"] - naive) > 1e-4


def test_undefined_values_are_zero_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        constant = _feed(PearsonAndSpearman(), np.full(10, 2.5), np.arange(10.0))
        assert constant == {"pearson": 0.0, "spearman": 0.0, "corr": 0.0}
        labels = np.array([0, 1, 0, 1])
        assert _feed(Mcc(), np.zeros((4, 2)) + [1, 0], labels)["mcc"] == 0.0
        out = _feed(AccuracyAndF1(), np.zeros((4, 2)) + [1, 0], labels)  # never predicts 1
        assert out["precision"] == 0.0 and out["f1"] == 0.0 and out["accuracy"] == 0.5


def test_paddle_tensors_reset_and_build_metric():
    from ppmerge.runtime import import_paddle

    paddle = import_paddle()
    metric = build_metric("Accuracy")
    metric.update(paddle.to_tensor([[0.1, 0.9], [0.8, 0.2]]), paddle.to_tensor([1, 1]))
    assert metric.accumulate() == {"accuracy": 0.5}
    metric.reset()
    metric.update(np.array([[0.0, 1.0]]), np.array([1]))
    assert metric.accumulate() == {"accuracy": 1.0}
    assert build_metric("PearsonAndSpearman").main_key == "corr"
    with pytest.raises(ConfigError, match="Mcc"):
        build_metric("F1")
    with pytest.raises(ValueError):
        Accuracy().accumulate()
