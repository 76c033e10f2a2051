"""Custom datasets (TSV / CSV / JSONL / Parquet) and GLUE in the Hugging Face parquet layout: read back
equal to the rows written (csv / json modules, pyarrow), strict errors naming file:line, and the custom
task through fine-tuning, tools/eval.py and a merge's task pool."""
import csv
import json
import os

import numpy as np
import pytest

from ppmerge.errors import ConfigError, DataError

WORDS = ["good", "bad", "fine, really", 'a "quoted" word', "great", "awful", "ok"]


def _rows(n, seed=0, pair=False, regression=False):
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        a = " ".join(rng.choice(WORDS, 3)) + f" {i}"
        b = " ".join(rng.choice(WORDS, 2)) if pair else None
        label = round(float(rng.uniform(0, 5)), 3) if regression else ["neg", "pos"][i % 2]
        rows.append((a, b, label))
    return rows


def _write_csv(path, rows, delimiter=",", header=("text", "label")):
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, delimiter=delimiter, quoting=csv.QUOTE_MINIMAL if delimiter == "," else csv.QUOTE_NONE,
                            escapechar="\\" if delimiter != "," else None)
        writer.writerow(header)
        for a, _, y in rows:
            writer.writerow([a, y] if len(header) == 2 else [a])


def _write_jsonl(path, rows):
    with open(path, "w", encoding="utf-8") as f:
        for a, b, y in rows:
            f.write(json.dumps({"premise": a, "hypothesis": b, "score": y}) + "\n")


def _section(fmt, files, **extra):
    return {"name": "custom", "format": fmt, "files": files, "text_columns": ["text"], "label_column": "label",
            "labels": ["neg", "pos"], **extra}


def test_csv_tsv_and_parquet_read_back(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ppmerge.data import read_examples
    from ppmerge.data.custom import custom_task

    rows = _rows(12)
    _write_csv(tmp_path / "train.csv", rows)
    spec = custom_task(_section("csv", {"train": "train.csv"}, task_name="reviews"))
    assert (spec.name, spec.num_classes, spec.metric, spec.loss, spec.is_pair) == ("reviews", 2, "Accuracy",
                                                                                    "CrossEntropyLoss", False)
    got = read_examples(spec, str(tmp_path), "train")
    assert [(e.text_a, e.text_b, e.label) for e in got] == [(a, None, ["neg", "pos"].index(y)) for a, _, y in rows]

    tsv_rows = [(a.replace('"', ""), b, y) for a, b, y in rows]  # TSV: text as is (no quoting)
    with open(tmp_path / "train.tsv", "w") as f:
        f.write("text\tlabel\n" + "".join(f"{a}\t{y}\n" for a, _, y in tsv_rows))
    spec = custom_task(_section("tsv", {"train": "train.tsv"}))
    assert [e.text_a for e in read_examples(spec, str(tmp_path), "train")] == [a for a, _, _ in tsv_rows]

    table = pa.table({"text": [a for a, _, _ in rows], "label": [["neg", "pos"].index(y) for _, _, y in rows]})
    pq.write_table(table, tmp_path / "train.parquet")
    spec = custom_task(_section("parquet", {"train": "train.parquet"}, labels=["0", "1"]))
    assert [e.label for e in read_examples(spec, str(tmp_path), "train")] == [["neg", "pos"].index(y) for _, _, y in rows]


def test_jsonl_pairs_regression_and_errors_name_file_and_line(tmp_path):
    from ppmerge.data import read_examples
    from ppmerge.data.custom import custom_task

    rows = _rows(9, pair=True, regression=True)
    _write_jsonl(tmp_path / "dev.jsonl", rows)
    section = {"name": "custom", "format": "jsonl", "files": {"dev": str(tmp_path / "dev.jsonl")},
               "text_columns": ["premise", "hypothesis"], "label_column": "score", "labels": "regression"}
    spec = custom_task(section)
    assert (spec.num_classes, spec.metric, spec.loss, spec.is_pair) == (1, "PearsonAndSpearman", "MSELoss", True)
    got = read_examples(spec, None, "dev")
    assert [(e.text_a, e.text_b, e.label) for e in got] == rows

    bad = rows[:4] + [(rows[4][0], rows[4][1], "high")] + rows[5:]
    _write_jsonl(tmp_path / "bad.jsonl", bad)
    spec = custom_task({**section, "files": {"dev": str(tmp_path / "bad.jsonl")}})
    with pytest.raises(DataError, match=r"bad.jsonl:5: bad custom label 'high'"):
        read_examples(spec, None, "dev")

    classes = _rows(6)
    classes[3] = (classes[3][0], None, "neutral")
    _write_csv(tmp_path / "three.csv", classes)
    spec = custom_task(_section("csv", {"train": str(tmp_path / "three.csv")}))
    with pytest.raises(DataError, match=r"three.csv:5: unknown custom label 'neutral': expected one of neg, pos"):
        read_examples(spec, None, "train")
    spec = custom_task(_section("csv", {"train": str(tmp_path / "three.csv")}, text_columns=["review"]))
    with pytest.raises(DataError, match=r"three.csv: no column 'review' \(text_columns\); its columns: text, label"):
        read_examples(spec, None, "train")
    with pytest.raises(DataError, match="split 'dev' is not valid for custom: expected one of train"):
        read_examples(spec, None, "dev")
    for key, value, expected in [("format", "xml", "format: expected one of tsv, csv, jsonl, parquet"),
                                 ("labels", ["pos"], "labels: expected the class names"),
                                 ("metric", "PearsonAndSpearman", "does not fit a classification dataset"),
                                 ("colour", 1, "colour: unknown key")]:
        with pytest.raises(ConfigError, match=expected):
            custom_task({**_section("csv", {"train": "x.csv"}), key: value}, "Data.Train.dataset")


def _write_hf_glue(root):
    """glue/<config>/<split>-00000-of-00001.parquet as the hub's parquet export has them (pyarrow)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = {}

    def write(config, split, columns):
        folder = os.path.join(root, "glue", config)
        os.makedirs(folder, exist_ok=True)
        pq.write_table(pa.table(columns), os.path.join(folder, f"{split}-00000-of-00001.parquet"))
        rows[(config, split)] = columns

    rng = np.random.default_rng(0)
    for split, n in (("train", 40), ("validation", 16), ("test", 8)):
        labels = [-1] * n if split == "test" else [int(v) for v in rng.integers(0, 2, n)]
        write("sst2", split, {"sentence": [f"{rng.choice(WORDS)} film {i}" for i in range(n)], "label": labels,
                              "idx": list(range(n))})
    for split, n in (("train", 30), ("validation_matched", 12), ("validation_mismatched", 10),
                     ("test_matched", 6), ("test_mismatched", 5)):
        labels = [-1] * n if split.startswith("test") else [int(v) for v in rng.integers(0, 3, n)]
        write("mnli", split, {"premise": [f"a cat {i}" for i in range(n)], "hypothesis": [f"an animal {i}" for i in range(n)],
                              "label": labels, "idx": list(range(n))})
    write("ax", "test", {"premise": [f"p {i}" for i in range(7)], "hypothesis": [f"h {i}" for i in range(7)],
                         "label": [-1] * 7, "idx": list(range(7))})
    write("stsb", "validation", {"sentence1": ["a", "b"], "sentence2": ["c", "d"], "label": [0.5, 4.8], "idx": [0, 1]})
    return rows


def test_hugging_face_parquet_layout(tmp_path):
    from ppmerge.data import read_examples
    from ppmerge.data.readers import data_file

    root = str(tmp_path / "hf")
    rows = _write_hf_glue(root)
    for task, split, config, hub in [("SST2", "train", "sst2", "train"), ("SST-2", "dev", "sst2", "validation"),
                                     ("MNLI", "dev_mismatched", "mnli", "validation_mismatched"),
                                     ("MNLI", "dev", "mnli", "validation_matched")]:
        got = read_examples(task, root, split)
        src = rows[(config, hub)]
        texts = src.get("sentence") or src["premise"]
        assert [e.text_a for e in got] == texts and [e.label for e in got] == src["label"]
        if config == "mnli":
            assert [e.text_b for e in got] == src["hypothesis"]
    test = read_examples("SST2", os.path.join(root, "glue", "sst2"), "test")  # the task's own folder works too
    assert len(test) == 8 and all(e.label is None for e in test)
    assert data_file("SST2", root, "test")[1].label is None
    assert [e.text_a for e in read_examples("MNLI", root, "test_mismatched")] == rows[("mnli", "test_mismatched")]["premise"]
    ax = read_examples("MNLI", root, "diagnostic")
    assert [(e.text_a, e.text_b, e.label) for e in ax] == [(f"p {i}", f"h {i}", None) for i in range(7)]
    assert [e.label for e in read_examples("STSB", root, "dev")] == [0.5, 4.8]
    with pytest.raises(DataError, match="CoLA train file not found"):
        read_examples("CoLA", root, "train")

    # a merge's task pool finds the tasks under TaskPool.data_root in this layout too
    from ppmerge.evaluation.task_pool import TaskPool

    pool = TaskPool(["SST2", "MNLI"], {"name": "gpt-tiny"}, data_root=root, splits={"MNLI": "dev_mismatched"},
                    progress=False)
    assert [len(pool.dataset(t)) for t in ("SST2", "MNLI")] == [16, 10]

    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"sentence": ["x", "y"], "label": [1, 7], "idx": [0, 1]}),
                   os.path.join(root, "glue", "sst2", "validation-00000-of-00001.parquet"))
    with pytest.raises(DataError, match=r"validation-00000-of-00001.parquet: row 1: bad SST2 label 7"):
        read_examples("SST2", root, "dev")


def test_custom_task_through_training_eval_and_a_merge(tmp_path, glue_suite):
    """tools/train.py fine-tunes on a custom CSV dataset (2 steps); tools/eval.py evaluates the checkpoint
    from its run folder alone (accuracy equal to the model run by hand); a merge's task pool evaluates a
    pool of two models of the custom task (TaskPool.datasets)."""
    import importlib.util

    from test_engine_support import ROOT, TINY

    def tool(name):
        spec = importlib.util.spec_from_file_location(f"tool_{name}_custom", os.path.join(ROOT, "tools", f"{name}.py"))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    data = tmp_path / "data"
    data.mkdir()
    _write_csv(data / "train.csv", _rows(32, seed=1))
    _write_csv(data / "dev.csv", _rows(16, seed=2))
    out = str(tmp_path / "run")
    argv = ["-c", TINY, "--device", "cpu", "-o", "Data.Train.dataset.name=custom", "-o", f"Data.Train.dataset.root={data}",
            "-o", "Data.Train.dataset.format=csv", "-o", "Data.Train.dataset.files={train: train.csv, dev: dev.csv}",
            "-o", "Data.Train.dataset.text_columns=[text]", "-o", "Data.Train.dataset.labels=[neg, pos]",
            "-o", "Data.Train.dataset.task_name=reviews"]
    for key in ("name", "root", "format", "files", "text_columns", "labels", "task_name"):
        value = next(a.split("=", 1)[1] for a in argv if a.startswith(f"Data.Train.dataset.{key}="))
        argv += ["-o", f"Data.Eval.dataset.{key}={value}"]
    argv += ["-o", "Data.Eval.dataset.split=dev", "-o", f"Engine.save_load.output_dir={out}", "-o", "Engine.max_steps=2",
             "-o", "Data.Train.sampler.batch_size=8", "-o", "Engine.logging_freq=1000"]
    assert tool("train").main(argv) == 0
    from ppmerge.engine.checkpoint import latest_checkpoint

    ckpt = latest_checkpoint(out)
    assert tool("eval").main(["-o", f"Engine.save_load.ckpt_dir={ckpt}", "--output-dir", str(tmp_path / "ev")]) == 0
    with open(tmp_path / "ev" / "eval_results_reviews_dev.json") as f:
        results = json.load(f)

    from ppmerge.data import GLUEDataset, collate_batch, load_tokenizer
    from ppmerge.data.custom import custom_task
    from ppmerge.models import build_model, load_numpy_state_dict
    from ppmerge.runtime import import_paddle

    paddle = import_paddle()
    spec = custom_task(_section("csv", {"train": "train.csv", "dev": "dev.csv"}, task_name="reviews"))
    ds = GLUEDataset(spec, str(data), "dev", load_tokenizer(), max_length=128)
    model = build_model({"name": "gpt-tiny"}, 2)
    weights = load_numpy_state_dict(os.path.join(ckpt, "model.pdparams"))
    model.set_state_dict({k: paddle.to_tensor(v) for k, v in weights.items()})
    model.eval()
    batch = collate_batch([ds[i] for i in range(len(ds))])
    with paddle.no_grad():
        logits = model(paddle.to_tensor(batch["input_ids"]), paddle.to_tensor(batch["lengths"])).numpy()
    assert results["task"] == "reviews"
    assert results["accuracy"] == pytest.approx(float(np.mean(logits.argmax(-1) == batch["labels"])), abs=1e-6)

    # a merge: two models of the custom task (a soup), evaluated on it through TaskPool.datasets
    from ppmerge.config.merge_schema import MERGE_SCHEMA
    from ppmerge.config.schema import validate
    from ppmerge.merge.runner import run_merge

    dataset = {"format": "csv", "files": {"train": "train.csv", "dev": "dev.csv"}, "text_columns": ["text"],
               "labels": ["neg", "pos"], "root": str(data)}
    cfg = {"Global": {"device": "cpu"},
           "ModelPool": {"models": {"a": {"path": os.path.join(ckpt, "model.pdparams"), "task": "reviews"},
                                    "b": {"path": os.path.join(ckpt, "model.pdparams"), "task": "reviews"}}},
           "Merge": {"method": "simple_average"},
           "TaskPool": {"tasks": ["reviews"], "datasets": {"reviews": dataset}, "model": {"name": "gpt-tiny"},
                        "batch_size": 8},
           "Output": {"dir": str(tmp_path / "merge")}}
    result = run_merge(validate(cfg, MERGE_SCHEMA), progress=False)
    # the soup of a model with itself is the model: the same accuracy as tools/eval.py's
    assert result["rows"][0]["metrics"]["reviews"]["accuracy"] == pytest.approx(results["accuracy"], abs=1e-6)
    assert result["main_metric"] == {"reviews": "Accuracy"}
