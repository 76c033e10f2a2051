"""GLUE in the Hugging Face `datasets` parquet layout, read offline from local files.

    <root>/glue/<config>/{train,validation,test}-*.parquet     (or <root>/<config>/..., or the folder itself)
    MNLI: validation_matched-*, validation_mismatched-*, test_matched-*, test_mismatched-*
    AX (GLUE's diagnostic set): <root>/glue/ax/test-*.parquet

`<config>` is the hub's name (cola, sst2, mrpc, stsb, qqp, mnli, qnli, rte, wnli, ax). Also accepted:
one folder per split holding `*.parquet` (`cola/train/0000.parquet`, the parquet-converter layout).
Labels are the hub's class ids, which are ppmerge's (`TaskSpec.labels` order) for every task; test
splits carry -1 (no label). Text columns per task follow the hub's schema.
"""
import glob
import math
import os

from ppmerge.data.tasks import get_task
from ppmerge.errors import DataError

HF_NAMES = {"CoLA": "cola", "SST2": "sst2", "MRPC": "mrpc", "STSB": "stsb", "QQP": "qqp", "MNLI": "mnli",
            "QNLI": "qnli", "RTE": "rte", "WNLI": "wnli"}
COLUMNS = {"CoLA": ("sentence", None), "SST2": ("sentence", None), "MRPC": ("sentence1", "sentence2"),
           "STSB": ("sentence1", "sentence2"), "QQP": ("question1", "question2"),
           "MNLI": ("premise", "hypothesis"), "QNLI": ("question", "sentence"), "RTE": ("sentence1", "sentence2"),
           "WNLI": ("sentence1", "sentence2")}
AX_COLUMNS = ("premise", "hypothesis")
# ppmerge split -> the hub's split name
_SPLITS = {"train": "train", "dev": "validation", "test": "test", "dev_matched": "validation_matched",
           "dev_mismatched": "validation_mismatched", "test_matched": "test_matched",
           "test_mismatched": "test_mismatched", "diagnostic": "test"}


def _split_files(folder, hub_split):
    files = sorted(glob.glob(os.path.join(folder, f"{hub_split}-*.parquet")))
    files += sorted(glob.glob(os.path.join(folder, hub_split, "*.parquet")))
    if os.path.isfile(os.path.join(folder, f"{hub_split}.parquet")):
        files.append(os.path.join(folder, f"{hub_split}.parquet"))
    return files


def _has_parquet(folder):
    return os.path.isdir(folder) and bool(glob.glob(os.path.join(folder, "*.parquet")) or
                                          glob.glob(os.path.join(folder, "*", "*.parquet")))


def task_folder(task, root, split="train"):
    """The folder holding the task's hub parquet files under `root`, or None (not this layout)."""
    task = get_task(task)
    if task.name not in HF_NAMES:
        return None
    config = "ax" if split == "diagnostic" else HF_NAMES[task.name]
    root = os.fspath(root)
    candidates = [os.path.join(root, "glue", config), os.path.join(root, config)]
    if split != "diagnostic":
        candidates.append(root)
    else:
        candidates.append(os.path.join(os.path.dirname(os.path.abspath(root)), "ax"))
    for folder in candidates:
        if _has_parquet(folder) and (folder != root or os.path.basename(os.path.normpath(root)) == config):
            return folder
    return None


def is_hf_layout(task, root):
    return task_folder(task, root) is not None


def data_file(task, root, split):
    """(first parquet file, columns, "hf") of a split: `columns.label` None on test splits (labels -1)."""
    from ppmerge.data.readers import Columns

    task = get_task(task)
    files = split_files(task, root, split)
    labelled = not (split.startswith("test") or split == "diagnostic")
    return files[0], Columns(a=0, b=1 if task.is_pair else None, label=2 if labelled else None), "hf"


def split_files(task, root, split):
    task = get_task(task)
    folder = task_folder(task, root, split)
    if folder is None:
        raise DataError(f"{task.name} {split}: no Hugging Face parquet files under {root} (expected "
                        f"glue/{'ax' if split == 'diagnostic' else HF_NAMES.get(task.name, '?')}/*.parquet)")
    files = _split_files(folder, _SPLITS[split])
    if not files:
        raise DataError(f"{task.name} {split} file not found: expected {os.path.join(folder, _SPLITS[split])}-*.parquet")
    return files


def read_hf_examples(task, root, split):
    """Examples of one split (class ids as the hub's; None on test splits, whose labels are -1)."""
    import pandas as pd

    from ppmerge.data.readers import Example

    task = get_task(task)
    files = split_files(task, root, split)
    text_a, text_b = AX_COLUMNS if split == "diagnostic" else COLUMNS[task.name]
    test = split.startswith("test") or split == "diagnostic"
    examples = []
    for path in files:
        try:
            frame = pd.read_parquet(path)
        except (ValueError, OSError) as exc:
            raise DataError(f"{path}: not a readable parquet file ({str(exc).splitlines()[0]})") from None
        needed = [c for c in (text_a, text_b, "label") if c]
        missing = [c for c in needed if c not in frame.columns]
        if missing:
            raise DataError(f"{path}: no column {missing[0]!r} ({task.name} in the Hugging Face layout has "
                            f"{', '.join(needed)}); its columns: {', '.join(map(str, frame.columns))}")
        a_values = frame[text_a].tolist()
        b_values = frame[text_b].tolist() if text_b else [None] * len(frame)
        for i, (a, b, label) in enumerate(zip(a_values, b_values, frame["label"].tolist())):
            where = f"{path}: row {i}"
            if a is None or (text_b and b is None):
                raise DataError(f"{where}: empty text")
            examples.append(Example(str(a), None if text_b is None else str(b),
                                    None if test else _label(task, label, where)))
    return examples


def _label(task, value, where):
    if task.is_regression:
        number = float(value)
        if not math.isfinite(number) or not 0.0 <= number <= 5.0:
            raise DataError(f"{where}: bad {task.name} label {value!r}: expected a similarity score (a number 0-5)")
        return number
    if value is None or int(value) != value or not 0 <= int(value) < task.num_classes:
        raise DataError(f"{where}: bad {task.name} label {value!r}: expected a class id 0..{task.num_classes - 1} "
                        f"(-1 only on test splits)")
    return int(value)


read_examples = read_hf_examples  # the reader interface readers.py dispatches to
