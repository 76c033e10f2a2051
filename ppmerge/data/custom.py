"""Custom datasets: any classification or regression task from local TSV / CSV / JSONL / Parquet files.

A dataset section (training `Data.*.dataset`, or an entry of the merge config's `TaskPool.datasets`)

    name: custom                      # (TaskPool.datasets: the entry's key is the task name)
    task_name: reviews                # the task's name in results, heads and reports (default: custom)
    format: tsv | csv | jsonl | parquet
    files: {train: a.csv, dev: b.csv, test: c.csv}   # relative paths: under `root` when given
    text_columns: [review]            # one column, or two for sentence pairs
    label_column: label
    labels: [neg, pos]                # class names in class-id order, or `regression` (float targets)
    metric: Accuracy                  # Accuracy | Mcc | AccuracyAndF1 | PearsonAndSpearman (default:
                                      # Accuracy, PearsonAndSpearman for regression)

becomes a `CustomTaskSpec` (a `TaskSpec`, so everything that takes a GLUE task takes it) whose
examples `read_custom_examples` reads with pandas. Strict like the GLUE readers: a missing column, an
empty text, a label outside `labels` or a non-finite regression target is a DataError naming
`file:line` (JSONL: the line; TSV / CSV: the line of the row, header = line 1; Parquet: the row).
A test file may lack the label column (its labels are then unknown, as GLUE's test splits).
"""
import math
import os
from dataclasses import dataclass

from ppmerge.data.tasks import TaskSpec
from ppmerge.errors import ConfigError, DataError

FORMATS = ("tsv", "csv", "jsonl", "parquet")
METRICS = ("Accuracy", "Mcc", "AccuracyAndF1", "PearsonAndSpearman")
KEYS = ("name", "task_name", "format", "files", "text_columns", "label_column", "labels", "metric", "root",
        "split", "max_length")


@dataclass(frozen=True)
class CustomTaskSpec(TaskSpec):
    """A TaskSpec read from local files (see the module doc)."""
    format: str = "tsv"
    files: tuple = ()            # ((split, path), ...)
    text_columns: tuple = ()
    label_column: str = "label"

    def file_of(self, split, root=None):
        path = dict(self.files).get(split)
        if path is None:
            raise DataError(f"custom dataset {self.name}: no {split!r} file (its files: "
                            f"{', '.join(s for s, _ in self.files)})")
        path = os.path.expanduser(path)
        if root and not os.path.isabs(path):
            path = os.path.join(root, path)
        return path


def is_custom(section):
    return isinstance(section, dict) and str(section.get("name", "")).lower() == "custom"


def custom_task(section, where="dataset", task_name=None):
    """A CustomTaskSpec from a dataset section; ConfigError naming `where.<key>` for a bad section."""
    if not isinstance(section, dict):
        raise ConfigError(f"{where}: expected a mapping (format, files, text_columns, label_column, labels)")
    unknown = sorted(set(section) - set(KEYS))
    if unknown:
        raise ConfigError(f"{where}.{unknown[0]}: unknown key for a custom dataset; expected {', '.join(KEYS)}")
    name = str(task_name or section.get("task_name") or "custom")
    fmt = str(section.get("format") or "").lower()
    if fmt not in FORMATS:
        raise ConfigError(f"{where}.format: expected one of {', '.join(FORMATS)}, got {section.get('format')!r}")
    files = section.get("files")
    if not isinstance(files, dict) or not files or not all(isinstance(v, str) and v for v in files.values()):
        raise ConfigError(f"{where}.files: expected a mapping split -> file path, e.g. {{train: train.{fmt}, "
                          f"dev: dev.{fmt}}}, got {files!r}")
    columns = section.get("text_columns")
    if isinstance(columns, str):
        columns = [columns]
    if not isinstance(columns, (list, tuple)) or len(columns) not in (1, 2) or not all(isinstance(c, str) for c in columns):
        raise ConfigError(f"{where}.text_columns: expected one or two column names, got {columns!r}")
    label_column = section.get("label_column") or "label"
    labels = section.get("labels")
    regression = isinstance(labels, str) and labels.lower() == "regression"
    if not regression:
        if not isinstance(labels, (list, tuple)) or len(labels) < 2:
            raise ConfigError(f"{where}.labels: expected the class names in class-id order (at least two) or "
                              f"'regression', got {labels!r}")
        labels = tuple(_label_text(v) for v in labels)
        if len(set(labels)) != len(labels):
            raise ConfigError(f"{where}.labels: class names repeat: {list(labels)}")
    metric = section.get("metric") or ("PearsonAndSpearman" if regression else "Accuracy")
    canonical = {m.lower(): m for m in METRICS}
    if str(metric).lower() not in canonical:
        raise ConfigError(f"{where}.metric: expected one of {', '.join(METRICS)}, got {metric!r}")
    metric = canonical[str(metric).lower()]
    if (metric == "PearsonAndSpearman") != regression:
        raise ConfigError(f"{where}.metric: {metric} does not fit a "
                          f"{'regression' if regression else 'classification'} dataset")
    splits = tuple(str(s) for s in files)
    return CustomTaskSpec(
        name=name, glue_name=name, num_classes=1 if regression else len(labels), metric=metric,
        loss="MSELoss" if regression else "CrossEntropyLoss", num_train_epochs=3,
        labels=() if regression else labels, is_pair=len(columns) == 2, splits=splits,
        eval_splits=tuple(s for s in splits if s.startswith("dev") or s.startswith("valid")) or ("dev",),
        format=fmt, files=tuple((str(s), str(p)) for s, p in files.items()), text_columns=tuple(columns),
        label_column=str(label_column))


def _label_text(value):
    """A label value as the text compared with `labels` (1.0 from a parquet float column -> '1')."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def _read_frame(spec, path):
    """The file as a pandas DataFrame and a function row position -> 'file:line' for messages."""
    import pandas as pd

    if not os.path.isfile(path):
        raise DataError(f"custom dataset {spec.name}: file {path} does not exist")
    try:
        if spec.format in ("tsv", "csv"):
            frame = pd.read_csv(path, sep="\t" if spec.format == "tsv" else ",", dtype=str, keep_default_na=False,
                                quoting=3 if spec.format == "tsv" else 0, encoding="utf-8-sig")
            where = lambda i: f"{path}:{i + 2}"  # noqa: E731  (header on line 1)
        elif spec.format == "jsonl":
            frame = pd.read_json(path, lines=True, dtype=False, precise_float=True)
            where = lambda i: f"{path}:{i + 1}"  # noqa: E731
        else:
            frame = pd.read_parquet(path)
            where = lambda i: f"{path}: row {i}"  # noqa: E731
    except (ValueError, UnicodeDecodeError, pd.errors.ParserError, OSError) as exc:
        raise DataError(f"{path}: not a readable {spec.format.upper()} file ({str(exc).splitlines()[0]})") from None
    return frame, where


def data_file(spec, root, split):
    """(path, columns, "custom") like readers.data_file: `columns.label` is None when the file has no labels."""
    from ppmerge.data.readers import Columns

    path = spec.file_of(split, root)
    if not os.path.isfile(path):
        raise DataError(f"custom dataset {spec.name}: {split} file {path} does not exist")
    has_label = spec.label_column in _columns_of(spec, path)
    return path, Columns(a=0, b=1 if spec.is_pair else None, label=2 if has_label else None), "custom"


def _columns_of(spec, path):
    frame, _ = _read_frame(spec, path)
    return set(map(str, frame.columns))


def read_custom_examples(spec, root, split):
    """Every row of the split's file as an Example (label None when the file has no label column)."""
    from ppmerge.data.readers import Example

    path = spec.file_of(split, root)
    frame, where = _read_frame(spec, path)
    present = list(map(str, frame.columns))
    frame.columns = present
    for column in spec.text_columns:
        if column not in present:
            raise DataError(f"{path}: no column {column!r} (text_columns); its columns: {', '.join(present)}")
    has_label = spec.label_column in present
    if not has_label and not split.startswith("test"):
        raise DataError(f"{path}: no label column {spec.label_column!r} (label_column); its columns: "
                        f"{', '.join(present)}")
    texts = [frame[c].tolist() for c in spec.text_columns]
    labels = frame[spec.label_column].tolist() if has_label else [None] * len(frame)
    examples = []
    for i in range(len(frame)):
        values = []
        for column, col in zip(spec.text_columns, texts):
            value = col[i]
            if value is None or (isinstance(value, float) and math.isnan(value)):
                raise DataError(f"{where(i)}: column {column!r} is empty (null)")
            values.append(str(value))
        label = None if not has_label else _parse_label(spec, labels[i], where(i))
        examples.append(Example(values[0], values[1] if spec.is_pair else None, label))
    if not examples:
        raise DataError(f"{path}: file has no examples ({spec.name} {split})")
    return examples


def _parse_label(spec, value, where):
    if spec.is_regression:
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = math.nan
        if not math.isfinite(number):
            raise DataError(f"{where}: bad {spec.name} label {value!r}: expected a finite number (regression)")
        return number
    text = _label_text(value)
    label = spec.label_map.get(text)
    if label is None:
        raise DataError(f"{where}: unknown {spec.name} label {text!r}: expected one of {', '.join(spec.labels)} "
                        f"(the dataset's labels)")
    return label


read_examples = read_custom_examples  # the reader interface readers.py dispatches to
