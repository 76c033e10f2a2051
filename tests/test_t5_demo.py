"""The T5 part of the demo at reduced size: sentencepiece + tiny T5 base -> tools/train.py (full, LoRA)
-> tools/merge.py (simple average, task arithmetic sweep, TIES) on both pools -> table."""
import os


def test_t5_demo_reduced(tmp_path):
    from ppmerge.data.synthetic import write_glue_suite
    from ppmerge.demo import run_t5_demo

    out = str(tmp_path / "demo")
    tasks = ["SST2", "RTE"]
    write_glue_suite(os.path.join(out, "data"), layout="glue", n_train=48, n_dev=16, n_test=4, seed=0, tasks=tasks)
    lines = []
    result = run_t5_demo(out, os.path.join(out, "data"), tasks=tasks, n_dev=16, epochs=1, say=lines.append)
    for task in tasks:
        lora = os.path.join(out, "t5", "finetune", f"{task}_lora", "lora")
        assert os.path.isfile(os.path.join(lora, "adapter_model.pdparams"))
        assert os.path.isfile(os.path.join(lora, "merged_model.pdparams"))
    for run in ("simple_average_full", "task_arithmetic_sweep_lora", "ties_merging_full"):
        assert os.path.isfile(os.path.join(out, "t5", "merge", run, "report.json")), run
    import json

    with open(os.path.join(out, "t5", "merge", "ties_merging_lora", "report.json")) as f:
        pool = json.load(f)["config"]["ModelPool"]
    assert pool["lora"]["mode"] == "unload" and all(str(p).endswith("lora") for p in pool["models"].values())
    rows = result["rows"]
    assert list(rows)[:2] == ["Pretrained base", "Fine-tuned (own task)"]
    assert "LoRA fine-tuned (own task)" in rows and "ties_merging (LoRA pool)" in rows
    assert any(k.startswith("task_arithmetic_sweep (best: scaling_factor=") for k in rows)
    assert all(0.0 <= v <= 100.0 for row in rows.values() for v in row.values())
    assert result["table"].splitlines()[0] == "| Model | SST2 | RTE | Avg. |"
    assert isinstance(result["failures"], list)
