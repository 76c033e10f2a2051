"""Read GLUE examples from either layout users have on disk.

* "glue": the GLUE-benchmark zips (`train.tsv`, `dev.tsv`, `test.tsv`; MNLI `dev_matched.tsv`, ...).
* "fleetx": FleetX's original sources for CoLA (`cola_public/raw/in_domain_*.tsv`), MNLI
  (`multinli_1.0/multinli_1.0_*.txt`) and MRPC (`msr_paraphrase_{train,test}.txt`, the test file
  serving as dev); the other six tasks use the GLUE files in both layouts.

The layout is detected from the files present in `root`. Files are read with csv QUOTE_NONE: GLUE
text has unbalanced quotes that must stay literal. A row with the wrong column count or a bad label
is a DataError naming `file:line`.
"""
import csv
import math
import os
import sys
from dataclasses import dataclass
from typing import NamedTuple, Optional, Union

from ppmerge.data.tasks import get_task
from ppmerge.errors import DataError

# GLUE fields can be long (a whole paragraph): lift the csv module's 128 KiB field limit. A field this
# large is still a row like any other; only a row with the wrong column count or label is an error.
csv.field_size_limit(min(sys.maxsize, 2**31 - 1))


class Example(NamedTuple):
    text_a: str
    text_b: Optional[str]
    label: Union[int, float, None]   # None on test splits


@dataclass(frozen=True)
class Columns:
    """Where the fields of one file format live. label=-1 means the last column."""
    a: int
    b: Optional[int] = None
    label: Optional[int] = None
    header: bool = True
    ncols: Optional[int] = None     # None: as many as the header has
    exact: bool = True              # False: fewer columns than the header are fine if ours are there


# Real GLUE column layouts, (labelled train/dev files, unlabelled test files).
_GLUE_COLUMNS = {
    "CoLA": (Columns(a=3, label=1, header=False, ncols=4), Columns(a=1)),
    "SST2": (Columns(a=0, label=1), Columns(a=1)),
    "MRPC": (Columns(a=3, b=4, label=0), Columns(a=3, b=4)),
    "STSB": (Columns(a=7, b=8, label=-1), Columns(a=7, b=8)),
    "QQP": (Columns(a=3, b=4, label=5), Columns(a=1, b=2)),
    "MNLI": (Columns(a=8, b=9, label=-1), Columns(a=8, b=9)),
    "QNLI": (Columns(a=1, b=2, label=3), Columns(a=1, b=2)),
    "RTE": (Columns(a=1, b=2, label=3), Columns(a=1, b=2)),
    "WNLI": (Columns(a=1, b=2, label=3), Columns(a=1, b=2)),
}

# multinli_1.0_*.txt: gold_label, sentence1_binary_parse, sentence2_binary_parse, sentence1_parse,
# sentence2_parse, sentence1, sentence2, promptID, pairID, genre, label1..label5.
_MULTINLI = Columns(a=5, b=6, label=0, exact=False)

# split -> (file relative to root, columns) for the files that differ from the GLUE zips.
_FLEETX_FILES = {
    "CoLA": {"train": ("raw/in_domain_train.tsv", _GLUE_COLUMNS["CoLA"][0]),
             "dev": ("raw/in_domain_dev.tsv", _GLUE_COLUMNS["CoLA"][0]),
             "dev_out_of_domain": ("raw/out_of_domain_dev.tsv", _GLUE_COLUMNS["CoLA"][0])},
    "MNLI": {"train": ("multinli_1.0_train.txt", _MULTINLI),
             "dev_matched": ("multinli_1.0_dev_matched.txt", _MULTINLI),
             "dev_mismatched": ("multinli_1.0_dev_mismatched.txt", _MULTINLI)},
    "MRPC": {"train": ("msr_paraphrase_train.txt", _GLUE_COLUMNS["MRPC"][0]),
             "dev": ("msr_paraphrase_test.txt", _GLUE_COLUMNS["MRPC"][0])},
}

_WHERE = {
    "CoLA": "https://nyu-mll.github.io/CoLA/ (cola_public) or the GLUE zip https://gluebenchmark.com/tasks",
    "MNLI": "https://cims.nyu.edu/~sbowman/multinli/ (multinli_1.0) or the GLUE zip https://gluebenchmark.com/tasks",
    "MRPC": "the Microsoft Research Paraphrase Corpus (msr_paraphrase_*.txt) or the GLUE zip "
            "https://gluebenchmark.com/tasks",
}
_GLUE_WHERE = "the GLUE zip https://gluebenchmark.com/tasks"

# Folder names a task lives in, per layout (also used to find a task inside a parent folder).
FOLDERS = {
    "glue": {t: get_task(t).glue_name for t in _GLUE_COLUMNS},
    "fleetx": {**{t: get_task(t).glue_name for t in _GLUE_COLUMNS}, "CoLA": "cola_public", "MNLI": "multinli_1.0"},
}


def normalize_split(task, split):
    """`dev` on MNLI is `dev_matched`, `test` is `test_matched`; anything unknown is a DataError."""
    task = get_task(task)
    split = str(split).lower()
    if task.name == "MNLI" and split in ("dev", "test"):
        split += "_matched"
    allowed = set(task.splits) | ({"dev_out_of_domain"} if task.name == "CoLA" else set())
    if split not in allowed:
        raise DataError(f"split {split!r} is not valid for {task.name}: expected one of "
                        f"{', '.join(sorted(allowed | ({'dev', 'test'} if task.name == 'MNLI' else set())))}")
    return split


def _glue_file(task, split):
    labelled, unlabelled = _GLUE_COLUMNS[task.name]
    return f"{split}.tsv", (unlabelled if split.startswith("test") else labelled)


def detect_layout(task, root):
    """"fleetx" if any of FleetX's original files for this task are in root, else "glue"."""
    task = get_task(task)
    for rel, _ in _FLEETX_FILES.get(task.name, {}).values():
        if os.path.exists(os.path.join(root, rel)):
            return "fleetx"
    return "glue"


def _resolve_root(task, root):
    """Accept the task's own folder or a parent holding it (dataset/ -> dataset/SST-2/)."""
    if not os.path.isdir(root):
        raise DataError(f"{task.name} data folder {root} does not exist: expected the {task.glue_name} "
                        f"files there; get them from {_WHERE.get(task.name, _GLUE_WHERE)}")
    own = [rel for rel, _ in _FLEETX_FILES.get(task.name, {}).values()] + ["train.tsv", "dev.tsv",
                                                                           "dev_matched.tsv", "test.tsv"]
    if any(os.path.exists(os.path.join(root, rel)) for rel in own):
        return root
    for layout in ("fleetx", "glue"):
        sub = os.path.join(root, FOLDERS[layout][task.name])
        if os.path.isdir(sub):
            return sub
    return root


# GLUE's diagnostic set (AX), unlabelled, predicted with the MNLI head: MNLI's `diagnostic` split.
DIAGNOSTIC_COLUMNS = Columns(a=1, b=2)


def _diagnostic_file(root):
    """glue_data/diagnostic/diagnostic.tsv beside the MNLI folder (or in it / below it)."""
    candidates = [os.path.join(root, "diagnostic.tsv"), os.path.join(root, "diagnostic", "diagnostic.tsv"),
                  os.path.join(os.path.dirname(os.path.abspath(root)), "diagnostic", "diagnostic.tsv")]
    for path in candidates:
        if os.path.isfile(path):
            return path, DIAGNOSTIC_COLUMNS, "glue"
    raise DataError(f"GLUE diagnostic file not found: expected {candidates[-1]} (diagnostic.tsv from "
                    f"{_GLUE_WHERE}; the AX submission file is predicted from it with the MNLI head)")


def _other_source(task, root, split):
    """The reader module of a custom dataset (`ppmerge.data.custom`) or of GLUE in the Hugging Face
    parquet layout (`ppmerge.data.hf_parquet`), or None for the GLUE-zip / FleetX files."""
    from ppmerge.data import custom, hf_parquet

    if isinstance(task, custom.CustomTaskSpec):
        return custom
    if root is not None and hf_parquet.task_folder(task, root, split) is not None:
        return hf_parquet
    return None


def data_file(task, root, split):
    """(path, Columns, layout) of the file that holds `split`; DataError if it is not there."""
    task = get_task(task)
    split = normalize_split(task, split)
    other = _other_source(task, root, split)  # custom datasets, the Hugging Face parquet layout
    if other is not None:
        return other.data_file(task, root, split)
    root = _resolve_root(task, os.fspath(root))
    if split == "diagnostic":
        return _diagnostic_file(root)
    layout = detect_layout(task, root)
    if layout == "fleetx" and task.name in _FLEETX_FILES:
        files = _FLEETX_FILES[task.name]
        if split not in files:
            raise DataError(f"FleetX's original {task.name} sources in {root} have no {split!r} split "
                            f"(they have {', '.join(files)}); use {_GLUE_WHERE} for it")
        rel, columns = files[split]
    else:
        rel, columns = _glue_file(task, split)
    path = os.path.join(root, rel)
    if not os.path.isfile(path):
        expected = path
        if layout == "glue" and task.name in _FLEETX_FILES and split in _FLEETX_FILES[task.name]:
            expected += f" (GLUE zip) or {os.path.join(root, _FLEETX_FILES[task.name][split][0])} (original source)"
        raise DataError(f"{task.name} {split} file not found: expected {expected}; "
                        f"get the data from {_WHERE.get(task.name, _GLUE_WHERE)}")
    return path, columns, layout


def _parse_label(task, text, where):
    text = text.strip()
    if task.is_regression:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or not 0.0 <= value <= 5.0:
            raise DataError(f"{where}: bad {task.name} label {text!r}: expected a similarity score (a number 0-5)")
        return value
    label = task.label_map.get(text)
    if label is None:
        raise DataError(f"{where}: bad {task.name} label {text!r}: expected one of {', '.join(task.labels)}")
    return label


def require_labels(dataset, purpose):
    """DataError naming the file and split when `dataset` (any dataset with `.has_labels`, e.g. a test
    split) has no labels but `purpose` (training, evaluation, the task pool) needs them."""
    if hasattr(dataset, "require_labels"):
        dataset.require_labels(purpose)
    elif getattr(dataset, "has_labels", True) is False:
        where = getattr(dataset, "path", None)
        raise DataError(f"{where + ': ' if where else ''}the {getattr(dataset, 'split', '')} split has no labels, "
                        f"but {purpose} needs them (use a labelled split: train, dev, dev_matched, dev_mismatched)")


def read_examples(task, root, split):
    """All examples of `split` (train, dev, dev_matched, dev_mismatched, test) under `root`.

    MNLI rows whose gold label is '-' (no annotator majority) are skipped, as GLUE does."""
    task = get_task(task)
    split = normalize_split(task, split)
    other = _other_source(task, root, split)
    if other is not None:
        return other.read_examples(task, root, split)
    path, cols, _ = data_file(task, root, split)
    wanted = [c for c in (cols.a, cols.b, cols.label) if c is not None and c >= 0]
    examples = []
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            rows = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
            ncols = cols.ncols
            for row in rows:
                if not row or row == [""]:
                    continue
                where = f"{path}:{rows.line_num}"
                if cols.header and ncols is None:
                    ncols = len(row)
                    if ncols <= max(wanted):
                        raise DataError(f"{where}: header has {ncols} columns, expected at least "
                                        f"{max(wanted) + 1} for {task.name}")
                    continue
                if len(row) != ncols and (cols.exact or not max(wanted) < len(row) <= ncols):
                    raise DataError(f"{where}: {len(row)} tab-separated columns, expected {ncols} "
                                    f"({task.name} {split})")
                label = None
                if cols.label is not None:
                    raw = row[cols.label]
                    if task.name == "MNLI" and raw.strip() == "-":
                        continue
                    label = _parse_label(task, raw, where)
                text_b = row[cols.b] if cols.b is not None else None
                examples.append(Example(row[cols.a], text_b, label))
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except csv.Error as exc:
        raise DataError(f"{path}:{rows.line_num}: unreadable row ({exc})") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a folder, expected the {task.name} {split} file") from None
    return examples
