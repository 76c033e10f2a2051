"""Generation metrics on fixed answers, against values computed by hand (and scipy for Spearman)."""
import numpy as np
import pytest

from ppmerge.data.prompts import PROMPTS
from ppmerge.metrics import GenerationMetric, parse_float


def test_exact_match_invalid_share_and_confusion():
    # RTE: label 0 -> "yes", 1 -> "no". Answers: 2 right, 1 wrong, 2 invalid ("Yes", "maybe").
    answers = ["yes", "no", "no", "Yes", "maybe"]
    labels = [0, 1, 0, 0, 1]
    metric = GenerationMetric("RTE", PROMPTS["RTE"])
    metric.update(answers[:2], labels[:2])
    metric.update(answers[2:], labels[2:])
    out = metric.accumulate()
    assert out["accuracy"] == pytest.approx(2 / 5)
    assert out["invalid_rate"] == pytest.approx(2 / 5) and out["num_invalid"] == 2
    # valid answers only: (true 0, pred 0), (true 1, pred 1), (true 0, pred 1)
    assert out["confusion_matrix"] == [[1, 1], [0, 1]]
    assert metric.main_key == "accuracy"


def test_mnli_three_words_all_invalid():
    metric = GenerationMetric("MNLI", PROMPTS["MNLI"])
    metric.update(["", "entail"], [0, 2])
    out = metric.accumulate()
    assert out["accuracy"] == 0.0 and out["invalid_rate"] == 1.0
    assert out["confusion_matrix"] == [[0, 0, 0]] * 3


def test_stsb_parse_and_spearman_hand_computed():
    answers = ["3.8", "1.0", "banana", "4.5", "2.0"]
    labels = [3.84, 0.96, 2.5, 5.0, 2.04]   # formatted "3.8", "1.0", "2.5", "5.0", "2.0"
    metric = GenerationMetric("STSB", PROMPTS["STSB"])
    metric.update(answers, labels)
    out = metric.accumulate()
    # preds 3.8, 1.0, 0.0 (unparseable), 4.5, 2.0 -> ranks 4, 2, 1, 5, 3
    # gold  3.8, 1.0, 2.5, 5.0, 2.0           -> ranks 4, 1, 3, 5, 2
    d = np.array([4, 2, 1, 5, 3]) - np.array([4, 1, 3, 5, 2])
    rho = 1 - 6 * float((d ** 2).sum()) / (5 * (25 - 1))
    assert out["spearman"] == pytest.approx(rho)
    assert out["invalid_rate"] == pytest.approx(1 / 5) and out["num_invalid"] == 1
    assert metric.main_key == "spearman"


def test_stsb_constant_answers_give_zero():
    metric = GenerationMetric("STSB", PROMPTS["STSB"])
    metric.update(["x", "y", "z"], [1.0, 2.0, 3.0])
    assert metric.accumulate()["spearman"] == 0.0


def test_parse_float_rules():
    assert parse_float(" 2.5 ") == (2.5, True)
    assert parse_float("nan") == (0.0, False) and parse_float("inf") == (0.0, False)
    assert parse_float("two") == (0.0, False)


def test_token_ids_are_decoded(t5_spiece):
    from ppmerge.data.t5_tokenizer import load_t5_tokenizer

    tok = load_t5_tokenizer(t5_spiece)
    rows = [list(tok.encode("positive")) + [0, 0], list(tok.encode("negative")) + [0, 0], [1, 0, 0, 0]]
    width = max(len(r) for r in rows)
    ids = np.array([r + [0] * (width - len(r)) for r in rows])
    metric = GenerationMetric("SST2", PROMPTS["SST2"], tok)
    metric.update(ids, [1, 1, 0])
    out = metric.accumulate()
    assert metric.texts() == ["positive", "negative", ""]
    assert out["accuracy"] == pytest.approx(1 / 3) and out["num_invalid"] == 1
