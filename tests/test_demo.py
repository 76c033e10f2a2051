"""The demo pipeline at reduced size (issue 4): generated data → tiny base → tools/train.py per task →
tools/merge.py per method → table; and the margin check that makes `make demo` fail loudly."""
import json
import os

from ppmerge.demo import check_margins, format_table, run_demo


def test_demo_pipeline_reduced(tmp_path):
    lines = []
    tasks = ["SST2", "MNLI", "STSB", "RTE"]
    result = run_demo(str(tmp_path / "demo"), n_train=96, n_dev=32, epochs=1, tasks=tasks,
                      methods=["simple_average", "weighted_average", "task_arithmetic_sweep", "cabs"], say=lines.append)
    out = result["out_dir"]
    # every tool really ran and wrote its results
    for task in tasks:
        with open(os.path.join(out, "finetune", task, "latest")) as f:
            assert os.path.isfile(os.path.join(out, "finetune", task, f.read().strip(), "model.pdparams"))
    for run in ("simple_average", "task_arithmetic_sweep"):
        for name in ("report.json", "report.csv", "report.md", "report.xlsx", "merged_model.pdparams"):
            assert os.path.isfile(os.path.join(out, "merge", run, name)), (run, name)
    assert os.path.isfile(os.path.join(out, "merge", "task_arithmetic_sweep", "sweep.png"))
    assert os.path.isfile(os.path.join(out, "merge", "simple_average", "cross_task.png"))
    # the table holds the reference rows and one row per method, with the report's numbers
    rows = result["rows"]
    assert list(rows)[:2] == ["Pretrained base", "Fine-tuned (own task)"]
    assert "simple_average" in rows and "weighted_average" in rows
    assert any(k.startswith("task_arithmetic_sweep (best: scaling_factor=") for k in rows)
    # CABS merges a pair (RTE + MRPC in the full demo; here MRPC is absent, so the first two models)
    cabs = [k for k in rows if k.startswith("cabs (SST2+MNLI only, best: ")]
    assert cabs and sorted(t for t, v in rows[cabs[0]].items() if v == v) == ["MNLI", "SST2"]
    with open(os.path.join(out, "merge", "simple_average", "report.json")) as f:
        report = json.load(f)
    merged = [r for r in report["rows"] if r["kind"] == "merged"][0]
    for task in tasks:
        assert abs(rows["simple_average"][task] - 100 * merged["metrics"][task]["main"]) < 1e-9
    assert result["table"].splitlines()[0].split("|")[1:-1] == [" Model ", *[f" {t} " for t in tasks], " Avg. "]
    assert os.path.isfile(os.path.join(out, "results.md"))
    assert len(lines) >= 4 + len(tasks) + 2


def test_margin_check_names_the_failing_task():
    tasks = ["SST2", "RTE"]
    rows = {"Pretrained base": {"SST2": 50.0, "RTE": 50.0},
            "Fine-tuned (own task)": {"SST2": 95.0, "RTE": 55.0}}
    failures = check_margins(rows, tasks, margin=10.0)
    assert len(failures) == 1 and failures[0].startswith("RTE:")
    assert check_margins(rows, tasks, margin=4.0) == []
    rows["Fine-tuned (own task)"].pop("RTE")  # a missing fine-tuned result is a failure, not a pass
    assert [f.split(":")[0] for f in check_margins(rows, tasks, margin=4.0)] == ["RTE"]
    table = format_table(rows, tasks).splitlines()
    assert table[2] == "| Pretrained base | 50.00 | 50.00 | 50.00 |"
