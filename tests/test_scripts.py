"""projects/gpt/*.sh: task handling, FleetX's per-task overrides reaching the config, a real tiny run."""
import os
import subprocess
import sys

import pytest
import yaml
from test_engine_support import ROOT, TINY

SCRIPTS = ["finetune_gpt_345M_single_card.sh", "finetune_gpt_345M_multi_card.sh", "finetune_gpt2_medium_single_card.sh"]


def _script(name, *args, env=None, cwd=ROOT):
    full_env = dict(os.environ, PYTHON=sys.executable, **(env or {}))
    return subprocess.run(["bash", os.path.join(ROOT, "projects", "gpt", name), *args], capture_output=True,
                          text=True, cwd=cwd, env=full_env, timeout=300)


def _dry_config(*args, script=SCRIPTS[0]):
    proc = _script(script, *args, env={"PPMERGE_DRY_RUN": "1"})
    assert proc.returncode == 0, proc.stderr
    return yaml.safe_load(proc.stdout)


@pytest.mark.parametrize("script", SCRIPTS)
def test_unknown_task_lists_the_valid_ones_and_exits_2(script):
    proc = _script(script, "SST5")
    assert proc.returncode == 2
    assert "unknown task 'SST5'" in proc.stderr and "CoLA SST2 MRPC STSB QQP MNLI QNLI RTE WNLI" in proc.stderr
    assert _script(script).returncode == 2


def test_per_task_overrides_reach_the_config():
    cfg = _dry_config("STS-B")
    assert cfg["Model"]["num_classes"] == 1
    assert cfg["Model"]["loss"]["train"]["name"] == cfg["Model"]["loss"]["eval"]["name"] == "MSELoss"
    assert cfg["Model"]["metric"]["eval"]["name"] == "PearsonAndSpearman"
    assert cfg["Data"]["Train"]["dataset"]["root"] == "./dataset/STS-B/"

    cfg = _dry_config("mnli", "dev_mismatched", "Engine.max_steps=3", "-o", "Optimizer.lr.learning_rate=1e-5")
    assert cfg["Model"]["num_classes"] == 3 and cfg["Data"]["Eval"]["dataset"]["split"] == "dev_mismatched"
    assert cfg["Data"]["Eval"]["dataset"]["root"] == "./dataset/multinli_1.0/"
    assert cfg["Engine"]["max_steps"] == 3 and cfg["Optimizer"]["lr"]["learning_rate"] == 1e-5

    cfg = _dry_config("CoLA")
    assert cfg["Model"]["metric"]["eval"]["name"] == "Mcc" and cfg["Engine"]["num_train_epochs"] == 3
    assert cfg["Data"]["Train"]["dataset"]["root"] == "./dataset/cola_public/"
    for task in ("MRPC", "WNLI"):
        assert _dry_config(task)["Engine"]["num_train_epochs"] == 5
    assert _dry_config("QQP")["Model"]["metric"]["eval"]["name"] == "AccuracyAndF1"
    assert _dry_config("MRPC", "Engine.num_train_epochs=2")["Engine"]["num_train_epochs"] == 2  # user wins
    assert _dry_config("SST2", script=SCRIPTS[2])["Model"]["name"] == "gpt2-medium-en"
    assert _script(SCRIPTS[0], "MNLI", "test").returncode == 2  # MNLI's eval split is dev_(mis)matched


def test_a_real_tiny_run_through_the_script(tmp_path):
    from ppmerge.data.synthetic import write_glue_suite

    write_glue_suite(str(tmp_path / "dataset"), layout="fleetx", n_train=32, n_dev=16, n_test=4, seed=2,
                     tasks=["CoLA"])
    proc = _script(SCRIPTS[0], "CoLA", "Engine.max_steps=2", "Global.device=cpu", cwd=str(tmp_path),
                   env={"CONFIG": TINY, "PPMERGE_NO_TQDM": "1"} | {"HOME": os.environ.get("HOME", "/tmp")})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "mcc:" in proc.stdout  # CoLA is scored with MCC
    out = tmp_path / "output" / "tiny" / "CoLA"  # one folder per task below the config's output_dir
    assert (out / "epoch_0_step_2" / "model.pdparams").is_file() and (out / "latest").read_text().strip() == "epoch_0_step_2"


def _dry_in(cwd, *args, env=None):
    proc = _script(SCRIPTS[0], *args, env={"PPMERGE_DRY_RUN": "1", **(env or {})}, cwd=str(cwd))
    assert proc.returncode == 0, proc.stderr
    return yaml.safe_load(proc.stdout)


def test_scripts_find_every_layout_and_write_per_task(tmp_path, glue_suite):
    """CoLA and MNLI in the GLUE-zip layout (the README's), FleetX's sources, and the Hugging Face parquet
    export are found by the script; checkpoints go to <output_dir>/<TASK> (OUTPUT_DIR and -o still win)."""
    for layout, expected in (("glue", {"CoLA": "CoLA", "MNLI": "MNLI"}),
                             ("fleetx", {"CoLA": "cola_public", "MNLI": "multinli_1.0"})):
        for task, folder in expected.items():
            cfg = _dry_in(tmp_path, task, env={"DATASET_DIR": glue_suite[layout]})
            assert cfg["Data"]["Train"]["dataset"]["root"] == f"{glue_suite[layout]}/{folder}/"
            assert cfg["Data"]["Eval"]["dataset"]["root"] == cfg["Data"]["Train"]["dataset"]["root"]
            assert cfg["Engine"]["save_load"]["output_dir"] == f"./output/{task}"
    hf = tmp_path / "hf"
    (hf / "glue" / "cola").mkdir(parents=True)
    assert _dry_in(tmp_path, "cola", env={"DATASET_DIR": str(hf)})["Data"]["Train"]["dataset"]["root"] == f"{hf}/"
    cfg = _dry_in(tmp_path, "SST2", env={"OUTPUT_DIR": "runs/"})
    assert cfg["Engine"]["save_load"]["output_dir"] == "runs/SST2"
    cfg = _dry_in(tmp_path, "SST2", "Engine.save_load.output_dir=mine")
    assert cfg["Engine"]["save_load"]["output_dir"] == "mine"
