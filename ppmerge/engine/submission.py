"""GLUE test-server submission files: `index<TAB>prediction`, one file per task (and MNLI split), + AX.

Predictions are written the way the GLUE server reads them: label names for the NLI tasks
(`entailment`, `neutral`, `contradiction`; `not_entailment`), 0/1 for the binary tasks, and the
similarity score (3 decimals, clipped to GLUE's [0, 5]) for STS-B. The diagnostic set (AX) is MNLI's
`diagnostic` split, predicted with the MNLI head. A complete submission is the eleven files below in
one zip (`write_submission_zip`), files at the zip's top level, as the server expects."""
import os

import numpy as np

from ppmerge.data.tasks import get_task
from ppmerge.errors import UserError
from ppmerge.fileio import atomic_open

_FILE_NAMES = {"CoLA": "CoLA.tsv", "SST2": "SST-2.tsv", "MRPC": "MRPC.tsv", "STSB": "STS-B.tsv",
               "QQP": "QQP.tsv", "QNLI": "QNLI.tsv", "RTE": "RTE.tsv", "WNLI": "WNLI.tsv",
               ("MNLI", "test_matched"): "MNLI-m.tsv", ("MNLI", "test_mismatched"): "MNLI-mm.tsv",
               ("MNLI", "diagnostic"): "AX.tsv"}

# The eleven files of a complete GLUE submission, in GLUE's order.
SUBMISSION_FILES = ("CoLA.tsv", "SST-2.tsv", "MRPC.tsv", "STS-B.tsv", "QQP.tsv", "MNLI-m.tsv", "MNLI-mm.tsv",
                    "QNLI.tsv", "RTE.tsv", "WNLI.tsv", "AX.tsv")
ZIP_NAME = "glue_submission.zip"
STSB_RANGE = (0.0, 5.0)


def submission_splits(task):
    """The unlabelled splits a task's submission files come from (MNLI: both test splits + the diagnostic)."""
    task = get_task(task)
    return ["test_matched", "test_mismatched", "diagnostic"] if task.name == "MNLI" else ["test"]


def submission_name(task, split):
    task = get_task(task)
    if task.name not in _FILE_NAMES and task.name != "MNLI":  # a custom dataset: <task>.tsv, same format
        return f"{task.name}.tsv"
    if task.name == "MNLI":
        key = (task.name, "test_matched" if split == "test" else split)
        if key not in _FILE_NAMES:
            raise UserError(f"MNLI split {split!r} has no GLUE submission file (test_matched, test_mismatched, diagnostic)")
        return _FILE_NAMES[key]
    return _FILE_NAMES[task.name]


def prediction_strings(task, outputs):
    """Model outputs ([n, C] logits or [n, 1] scores) -> the strings GLUE expects (STS-B clipped to [0, 5])."""
    task = get_task(task)
    outputs = np.asarray(outputs)
    if not np.all(np.isfinite(outputs)):
        raise UserError(f"{task.name}: the model's outputs contain NaN / Inf: no submission written")
    if task.is_regression:
        scores = outputs.reshape(-1)
        return [f"{score:.3f}" for score in (np.clip(scores, *STSB_RANGE) if task.name == "STSB" else scores)]
    return [task.labels[i] for i in outputs.argmax(axis=-1)]


def submission_text(task, outputs):
    lines = ["index\tprediction"] + [f"{i}\t{p}" for i, p in enumerate(prediction_strings(task, outputs))]
    return "\n".join(lines) + "\n"


def write_submission(folder, task, split, outputs):
    """Write folder/<GLUE file name>; returns its path."""
    path = os.path.join(folder, submission_name(task, split))
    text = submission_text(task, outputs)
    with atomic_open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return path


def write_submission_zip(folder, paths, name=ZIP_NAME):
    """Zip the submission files (`paths`, each stored under its base name) into folder/name; all eleven
    GLUE files must be there (else a UserError naming the missing ones, nothing written)."""
    import zipfile

    names = {os.path.basename(p): p for p in paths}
    missing = [n for n in SUBMISSION_FILES if n not in names]
    if missing:
        raise UserError(f"a GLUE submission needs {len(SUBMISSION_FILES)} files; missing: {', '.join(missing)}")
    path = os.path.join(folder, name)
    with atomic_open(path, "wb") as f:
        with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for file_name in SUBMISSION_FILES:
                archive.write(names[file_name], arcname=file_name)
    return path
