"""GLUE test-server submission files: `index<TAB>prediction`, one file per task (and MNLI split).

Predictions are written the way the GLUE server reads them: label names for the NLI tasks
(`entailment`, `neutral`, `contradiction`; `not_entailment`), 0/1 for the binary tasks, and the
raw similarity score (3 decimals) for STS-B."""
import os

import numpy as np

from ppmerge.data.tasks import get_task
from ppmerge.fileio import atomic_open

_FILE_NAMES = {"CoLA": "CoLA.tsv", "SST2": "SST-2.tsv", "MRPC": "MRPC.tsv", "STSB": "STS-B.tsv",
               "QQP": "QQP.tsv", "QNLI": "QNLI.tsv", "RTE": "RTE.tsv", "WNLI": "WNLI.tsv",
               ("MNLI", "test_matched"): "MNLI-m.tsv", ("MNLI", "test_mismatched"): "MNLI-mm.tsv"}


def submission_name(task, split):
    task = get_task(task)
    return _FILE_NAMES[(task.name, split)] if task.name == "MNLI" else _FILE_NAMES[task.name]


def prediction_strings(task, outputs):
    """Model outputs ([n, C] logits or [n, 1] scores) -> the strings GLUE expects."""
    task = get_task(task)
    outputs = np.asarray(outputs)
    if task.is_regression:
        return [f"{score:.3f}" for score in outputs.reshape(-1)]
    return [task.labels[i] for i in outputs.argmax(axis=-1)]


def write_submission(folder, task, split, outputs):
    """Write folder/<GLUE file name>; returns its path."""
    path = os.path.join(folder, submission_name(task, split))
    with atomic_open(path, "w", encoding="utf-8") as f:
        f.write("index\tprediction\n")
        for index, prediction in enumerate(prediction_strings(task, outputs)):
            f.write(f"{index}\t{prediction}\n")
    return path
