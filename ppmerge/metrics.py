"""GLUE metrics: Accuracy, Mcc, AccuracyAndF1, PearsonAndSpearman.

Each metric collects predictions batch by batch with `update(preds, labels)` and computes its values
once in `accumulate() -> dict`, with scikit-learn / scipy doing the maths (paddlenlp's Mcc returns 0.0
when a confusion cell is zero and its Spearman ignores ties; these do not).

`preds` are logits `[n, C]` (argmax is taken) or, for regression, scores `[n]` / `[n, 1]`; numpy
arrays, lists or paddle tensors. `main_key` names the value a "best metric" tracks:

    Accuracy            accuracy
    Mcc                 mcc
    AccuracyAndF1       acc_and_f1   (mean of accuracy and F1, as in the GLUE baselines)
    PearsonAndSpearman  corr         (mean of Pearson and Spearman)

Undefined values are reported as 0.0, never nan, and without warnings: a correlation with constant
predictions or labels (no linear/rank relation can be measured), and precision/recall with no
predicted/true positives. MCC with a constant prediction is 0.0 too (scikit-learn's convention).
"""
import warnings

import numpy as np

from ppmerge.errors import ConfigError


def _to_numpy(x):
    """numpy view of a paddle tensor, numpy array or list (no paddle import needed)."""
    if hasattr(x, "numpy") and not isinstance(x, np.ndarray):
        x = x.numpy()
    return np.asarray(x)


class _Metric:
    name = ""
    main_key = ""

    def __init__(self):
        self.reset()

    def reset(self):
        self._preds, self._labels = [], []

    def update(self, preds, labels):
        preds, labels = self._prepare(_to_numpy(preds), _to_numpy(labels).reshape(-1))
        if len(preds) != len(labels):
            raise ValueError(f"{self.name}: {len(preds)} predictions for {len(labels)} labels")
        self._preds.append(preds)
        self._labels.append(labels)

    def _collected(self):
        if not self._preds:
            raise ValueError(f"{self.name}: accumulate() called before any update()")
        return np.concatenate(self._preds), np.concatenate(self._labels)

    @staticmethod
    def _prepare(preds, labels):
        """Class predictions: argmax over logits [n, C]; [n] is taken as class ids already."""
        if preds.ndim == 2:
            preds = preds.argmax(axis=-1)
        return preds.reshape(-1).astype(np.int64), labels.astype(np.int64)

    def accumulate(self) -> dict:
        raise NotImplementedError


class Accuracy(_Metric):
    name = "Accuracy"
    main_key = "accuracy"

    def accumulate(self):
        from sklearn.metrics import accuracy_score

        preds, labels = self._collected()
        return {"accuracy": float(accuracy_score(labels, preds))}


class Mcc(_Metric):
    """Matthews correlation coefficient (CoLA)."""
    name = "Mcc"
    main_key = "mcc"

    def accumulate(self):
        from sklearn.metrics import matthews_corrcoef

        preds, labels = self._collected()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # constant input: sklearn returns 0.0 (and may warn)
            return {"mcc": float(matthews_corrcoef(labels, preds))}


class AccuracyAndF1(_Metric):
    """Accuracy, and precision / recall / F1 of the positive class 1 (MRPC, QQP)."""
    name = "AccuracyAndF1"
    main_key = "acc_and_f1"

    def accumulate(self):
        from sklearn.metrics import accuracy_score, precision_recall_fscore_support

        preds, labels = self._collected()
        accuracy = float(accuracy_score(labels, preds))
        precision, recall, f1, _ = precision_recall_fscore_support(
            labels, preds, pos_label=1, average="binary", zero_division=0.0)
        return {"accuracy": accuracy, "precision": float(precision), "recall": float(recall),
                "f1": float(f1), "acc_and_f1": (accuracy + float(f1)) / 2}


class PearsonAndSpearman(_Metric):
    """Pearson and Spearman correlation of regression scores (STS-B); corr is their mean."""
    name = "PearsonAndSpearman"
    main_key = "corr"

    @staticmethod
    def _prepare(preds, labels):
        if preds.ndim == 2 and preds.shape[1] != 1:
            raise ValueError(f"PearsonAndSpearman expects scores [n] or [n, 1], got shape {list(preds.shape)}")
        return preds.reshape(-1).astype(np.float64), labels.astype(np.float64)

    def accumulate(self):
        from scipy.stats import pearsonr, spearmanr

        preds, labels = self._collected()
        if len(preds) < 2 or np.ptp(preds) == 0 or np.ptp(labels) == 0:
            pearson = spearman = 0.0  # undefined: constant input (documented above)
        else:
            pearson = float(pearsonr(preds, labels)[0])
            spearman = float(spearmanr(preds, labels)[0])
        return {"pearson": pearson, "spearman": spearman, "corr": (pearson + spearman) / 2}


METRICS = {cls.name: cls for cls in (Accuracy, Mcc, AccuracyAndF1, PearsonAndSpearman)}


def build_metric(name):
    """A fresh metric by its FleetX name (Accuracy, Mcc, AccuracyAndF1, PearsonAndSpearman)."""
    if name not in METRICS:
        raise ConfigError(f"Model.metric: unknown metric {name!r}; expected one of {', '.join(METRICS)}")
    return METRICS[name]()


# ---------------------------------------------------------------- text-to-text (T5 family)

def parse_float(text):
    """FusionBench's STS-B rule: the answer as a float, 0.0 when it is not a number (or not finite)."""
    try:
        value = float(str(text).strip())
    except ValueError:
        return 0.0, False
    return (value, True) if np.isfinite(value) else (0.0, False)


class GenerationMetric:
    """Generated answers against GLUE labels, FusionBench's way and then some.

    `update(preds, labels)`: `preds` are answer texts, or generated token ids `[n, G]` (decoded with
    `tokenizer.batch_decode`, special ids dropped); `labels` the GLUE labels (class ids / scores).

    Classification (`prompt["targets"]` a tuple of answer words, class-id order):
      accuracy      exact string match with the label's answer word (FusionBench's metric)
      invalid_rate  share of answers that are none of the answer words (FusionBench does not show it)
      num_invalid, confusion_matrix  ([true][predicted] counts over the valid answers only)
    Regression (STS-B, `targets` a format such as "{:.1f}"):
      spearman      Spearman's rho between the answers parsed as floats (unparseable → 0.0, as
                    FusionBench) and the labels formatted the way the targets are ("3.84" → 3.8,
                    FusionBench parses its decoded target text); pearson too; invalid_rate = share
                    of unparseable answers. Constant input → 0.0 (as PearsonAndSpearman).
    `main_key`: accuracy, or spearman for STS-B.
    """

    def __init__(self, task, prompt, tokenizer=None):
        from ppmerge.data.tasks import get_task

        self.task = get_task(task)
        self.prompt = prompt
        self.tokenizer = tokenizer
        self.is_regression = isinstance(prompt["targets"], str)
        self.name = "ExactMatch" if not self.is_regression else "GeneratedSpearman"
        self.main_key = "spearman" if self.is_regression else "accuracy"
        self.reset()

    def reset(self):
        self._texts, self._labels = [], []

    def _decode(self, preds):
        if isinstance(preds, (list, tuple)) and all(isinstance(p, str) for p in preds):
            return list(preds)
        if self.tokenizer is None:
            raise ValueError("GenerationMetric: token ids given but no tokenizer to decode them")
        return self.tokenizer.batch_decode(_to_numpy(preds))

    def update(self, preds, labels):
        texts = self._decode(preds)
        labels = _to_numpy(labels).reshape(-1)
        if len(texts) != len(labels):
            raise ValueError(f"{self.name}: {len(texts)} answers for {len(labels)} labels")
        self._texts.extend(texts)
        self._labels.append(labels)

    def texts(self):
        return list(self._texts)

    def accumulate(self):
        if not self._labels:
            raise ValueError(f"{self.name}: accumulate() called before any update()")
        labels = np.concatenate(self._labels)
        n = len(labels)
        if self.is_regression:
            from scipy.stats import pearsonr, spearmanr

            parsed = [parse_float(t) for t in self._texts]
            preds = np.array([v for v, _ in parsed], dtype=np.float64)
            invalid = int(sum(not ok for _, ok in parsed))
            gold = np.array([parse_float(self.prompt["targets"].format(float(y)))[0] for y in labels])
            if n < 2 or np.ptp(preds) == 0 or np.ptp(gold) == 0:
                spearman = pearson = 0.0
            else:
                spearman, pearson = float(spearmanr(preds, gold)[0]), float(pearsonr(preds, gold)[0])
            return {"spearman": spearman, "pearson": pearson, "invalid_rate": invalid / max(n, 1),
                    "num_invalid": invalid}
        from sklearn.metrics import confusion_matrix

        words = list(self.prompt["targets"])
        index = {w: i for i, w in enumerate(words)}
        preds = np.array([index.get(t, -1) for t in self._texts], dtype=np.int64)
        labels = labels.astype(np.int64)
        valid = preds >= 0
        matrix = confusion_matrix(labels[valid], preds[valid], labels=list(range(len(words)))) \
            if valid.any() else np.zeros((len(words), len(words)), np.int64)
        return {"accuracy": float(np.mean(preds == labels)) if n else 0.0,
                "invalid_rate": float(np.mean(~valid)) if n else 0.0, "num_invalid": int((~valid).sum()),
                "confusion_matrix": matrix.astype(int).tolist()}
