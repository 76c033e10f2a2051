"""projects/t5/finetune_flan_t5_base.sh: task and mode handling, overrides reaching the config, a tiny run."""
import os
import subprocess
import sys

import pytest
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "projects", "t5", "finetune_flan_t5_base.sh")


def _script(*args, env=None, cwd=ROOT):
    full_env = dict(os.environ, PYTHON=sys.executable, **(env or {}))
    return subprocess.run(["bash", SCRIPT, *args], capture_output=True, text=True, cwd=cwd, env=full_env, timeout=300)


def _dry(*args):
    proc = _script(*args, env={"PPMERGE_DRY_RUN": "1"})
    assert proc.returncode == 0, proc.stderr
    return yaml.safe_load(proc.stdout)


@pytest.mark.parametrize("args, message, usage", [
    (("SST5",), "unknown task 'SST5'", True),
    (("RTE", "qlora"), "unknown mode 'qlora'", True),
    (("RTE", "full", "stray"), "unexpected argument 'stray'", False),
    ((), "no task given", True),
])
def test_bad_arguments_exit_2(args, message, usage):
    proc = _script(*args)
    assert proc.returncode == 2 and message in proc.stderr and proc.stdout == ""
    assert ("usage:" in proc.stderr) == usage


def test_modes_and_overrides_reach_the_config():
    cfg = _dry("sts-b")
    assert cfg["Model"]["name"] == "flan-t5-base" and cfg["Model"]["lora"] is None
    assert cfg["Data"]["Train"]["dataset"] == dict(cfg["Data"]["Train"]["dataset"], name="STSB", root="./dataset/STS-B/")
    assert cfg["Engine"]["save_load"]["output_dir"] == "./output/flan_t5_base/STSB"

    cfg = _dry("MNLI", "lora", "Engine.max_steps=3", "-o", "Model.lora.r=8")
    assert cfg["Model"]["lora"] == {"r": 8, "alpha": 32, "dropout": 0.0, "target_modules": ["q", "v"],
                                    "save_merged": True}
    assert cfg["Data"]["Eval"]["dataset"]["split"] == "dev_matched" and cfg["Engine"]["max_steps"] == 3
    assert cfg["Engine"]["save_load"]["output_dir"] == "./output/flan_t5_base/MNLI_lora-16"


def test_a_real_tiny_lora_run_through_the_script(tmp_path, t5_spiece):
    from ppmerge.data.synthetic import write_glue_suite
    from ppmerge.data.t5_tokenizer import load_t5_tokenizer

    write_glue_suite(str(tmp_path / "dataset"), layout="glue", n_train=32, n_dev=16, n_test=4, seed=2, tasks=["RTE"])
    from ppmerge.models.init import write_t5_base

    vocab = load_t5_tokenizer(t5_spiece).vocab_size
    base = str(tmp_path / "base.pdparams")  # a LoRA run needs a saved base (Model.pretrained)
    write_t5_base(base, {"name": "t5-tiny", "vocab_size": vocab}, 0)
    proc = _script("RTE", "lora", "Engine.max_steps=2", "Model.lora.r=2", f"Tokenizer.spiece_model={t5_spiece}",
                   f"Model.vocab_size={vocab}", "Data.Train.dataset.max_length=64", f"Model.pretrained={base}",
                   env={"CONFIG": os.path.join(ROOT, "configs", "t5", "finetune_t5_tiny_glue.yaml"),
                        "PPMERGE_NO_TQDM": "1"}, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = tmp_path / "output" / "flan_t5_base" / "RTE_lora-16"
    assert (out / "lora" / "adapter_model.pdparams").is_file() and (out / "lora" / "merged_model.pdparams").is_file()
    assert (out / "epoch_0_step_2" / "model.pdparams").is_file()
