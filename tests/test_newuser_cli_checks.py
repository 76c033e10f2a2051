"""Bad inputs found by the new-user walk-through that used to end in a traceback or a silent exit 0:
tools/init_model.py with an out-of-range --seed or -o FIELD=VALUE (paddle's own errors), and
tools/extract_task_vector.py on two models that share no key (it wrote an empty "task vector" made of
the fine-tuned model's own weights). Each must be one `error:` line naming the flag / file, exit 2,
nothing written."""
import contextlib
import importlib.util
import io
import os

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(name, argv):
    from ppmerge.cli import run_tool

    spec = importlib.util.spec_from_file_location(f"newuser_{name}", os.path.join(ROOT, "tools", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            run_tool(module.main, [str(a) for a in argv])
            code = 0
        except SystemExit as exc:
            code = exc.code
    return code, err.getvalue()


def assert_one_error(code, err, *names):
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for name in names:
        assert name in lines[0], (name, lines[0])


@pytest.mark.parametrize("args, names", [
    (["--seed", "-1"], ["--seed", "-1"]),
    (["-o", "hidden_size=0"], ["hidden_size=0"]),
    (["-o", "num_attention_heads=0"], ["num_attention_heads"]),
    (["-o", "hidden_dropout_prob=1.5"], ["hidden_dropout_prob"]),
    (["-o", "num_layers=many"], ["num_layers"]),
])
def test_init_model_refuses_out_of_range_values(tmp_path, args, names):
    out = tmp_path / "m.pdparams"
    code, err = run("init_model", ["--preset", "gpt-tiny", *args, "--output", out])
    assert_one_error(code, err, *names)
    assert os.listdir(tmp_path) == []


def test_extract_task_vector_refuses_models_without_a_common_key(tmp_path):
    from ppmerge.models.checkpoint import save_state_dict

    rng = np.random.default_rng(0)
    t5 = tmp_path / "t5.safetensors"
    gpt = tmp_path / "gpt.safetensors"
    save_state_dict({"t5.shared.weight": rng.standard_normal((4, 3)).astype(np.float32)}, str(t5))
    save_state_dict({"gpt.embeddings.word_embeddings.weight": rng.standard_normal((4, 3)).astype(np.float32)}, str(gpt))
    before = sorted(os.listdir(tmp_path))
    code, err = run("extract_task_vector", ["--finetuned_model_path", t5, "--base_model_path", gpt,
                                            "--save_path", tmp_path / "tv.safetensors"])
    assert_one_error(code, err, str(t5), str(gpt), "no key in common")
    assert sorted(os.listdir(tmp_path)) == before

    # the working case still works: a shared key gives θ_ft − θ_0
    base = {"w": np.ones((2, 2), np.float32)}
    ft = {"w": np.full((2, 2), 3.0, np.float32), "score.weight": np.zeros((2, 1), np.float32)}
    save_state_dict(base, str(tmp_path / "b.safetensors"))
    save_state_dict(ft, str(tmp_path / "f.safetensors"))
    code, err = run("extract_task_vector", ["--finetuned_model_path", tmp_path / "f.safetensors",
                                            "--base_model_path", tmp_path / "b.safetensors",
                                            "--save_path", tmp_path / "tv.safetensors"])
    assert code == 0, err
    from ppmerge.models.checkpoint import load_numpy_state_dict

    tau = load_numpy_state_dict(str(tmp_path / "tv.safetensors"))
    np.testing.assert_array_equal(tau["w"], np.full((2, 2), 2.0, np.float32))


def test_merge_refuses_to_replace_its_own_input(tmp_path):
    """An earlier merge's merged_model.pdparams merged again into the same Output.dir (a marked merge
    output, so accepted without --overwrite) used to be replaced by its own result, exit 0."""
    import hashlib

    from test_merge_runner_support import make_pool, raw_config, write_yaml

    paths, _ = make_pool(str(tmp_path / "pool"), tasks=("SST2", "RTE"))
    out = tmp_path / "out"
    cfg = raw_config(paths, str(tmp_path / "no_data"), str(out), tasks=("SST2", "RTE"))
    cfg["TaskPool"]["tasks"] = []  # merge and save only
    code, err = run("merge", ["-c", write_yaml(cfg, str(tmp_path / "first.yaml"))])
    assert code == 0, err
    merged = out / "merged_model.pdparams"
    digest = hashlib.sha1(merged.read_bytes()).hexdigest()

    cfg["ModelPool"]["models"]["prev"] = {"path": str(merged)}
    cfg["ModelPool"]["head_keys"] = r"^(score|heads)\."
    for extra in ([], ["--overwrite"]):
        code, err = run("merge", ["-c", write_yaml(cfg, str(tmp_path / "again.yaml")), *extra])
        assert_one_error(code, err, "ModelPool.models.prev", str(merged))
        assert hashlib.sha1(merged.read_bytes()).hexdigest() == digest

    # the same pool into another folder is fine
    cfg["Output"]["dir"] = str(tmp_path / "out2")
    code, err = run("merge", ["-c", write_yaml(cfg, str(tmp_path / "other.yaml"))])
    assert code == 0, err
    assert (tmp_path / "out2" / "merged_model.pdparams").is_file()


def test_convert_refuses_zero_heads_and_non_finite_weights(tmp_path):
    """--num-heads 0 used to mean "unset" (the preset's count, exit 0); a NaN / Inf model was exported."""
    from test_merge_runner_support import make_pool

    from ppmerge.models.checkpoint import load_numpy_state_dict, save_state_dict

    paths, _ = make_pool(str(tmp_path / "pool"), tasks=("SST2",))
    for heads in ("0", "-4"):
        code, err = run("convert", ["--from", "ppmerge", "--to", "hf", "--input", paths["SST2"],
                                    "--output", tmp_path / "hf", "--num-heads", heads])
        assert_one_error(code, err, "--num-heads", heads)
        assert not (tmp_path / "hf").exists()
    sd = load_numpy_state_dict(paths["SST2"])
    key = sorted(k for k in sd if k != "score.weight")[0]
    for bad, word in ((np.nan, "NaN"), (np.inf, "Inf")):
        damaged = dict(sd)
        damaged[key] = sd[key].copy()
        damaged[key].flat[0] = bad
        save_state_dict(damaged, str(tmp_path / "bad.pdparams"))
        for target, out in (("hf", tmp_path / "hf"), ("safetensors", tmp_path / "x.safetensors")):
            code, err = run("convert", ["--from", "ppmerge", "--to", target, "--input", tmp_path / "bad.pdparams",
                                        "--output", out])
            assert_one_error(code, err, str(tmp_path / "bad.pdparams"), key, word)
            assert not out.exists()
    code, err = run("convert", ["--from", "ppmerge", "--to", "hf", "--input", paths["SST2"], "--output", tmp_path / "hf"])
    assert code == 0, err


def test_a_folder_where_a_checkpoint_file_is_expected_is_named_as_such(tmp_path):
    """It said 'checkpoint file not found' for a path that exists (as a folder)."""
    from ppmerge.errors import CheckpointError
    from ppmerge.models.checkpoint import load_numpy_state_dict

    folder = tmp_path / "model.pdparams"
    folder.mkdir()
    with pytest.raises(CheckpointError, match="is a folder; expected a checkpoint file"):
        load_numpy_state_dict(str(folder))
    with pytest.raises(CheckpointError, match="checkpoint file not found"):
        load_numpy_state_dict(str(tmp_path / "missing.pdparams"))


def test_t5_generation_max_length_has_the_merge_schemas_range():
    """Model.generation.max_length 0 was accepted by training and read as "unset" (10); the merge's
    TaskPool.generation.max_length already required >= 2."""
    from ppmerge.config.merge_schema import MERGE_SCHEMA
    from ppmerge.config.train_schema import TRAIN_SCHEMA
    from ppmerge.errors import ConfigError

    train = TRAIN_SCHEMA.fields["Model"].fields["generation"].fields["max_length"]
    merge = MERGE_SCHEMA.fields["TaskPool"].fields["generation"].fields["max_length"]
    assert (train.min, train.default) == (merge.min, merge.default) == (2, 10)
    for bad in (0, 1, -3):
        with pytest.raises(ConfigError, match="max_length"):
            train.validate(bad, "max_length", "t")
    assert train.validate(2, "max_length", "t") == 2


def test_t5_script_output_dir_env():
    """projects/t5/finetune_flan_t5_base.sh wrote to ./output/flan_t5_base/<TASK> whatever CONFIG was
    (the t5-tiny config's output_dir ignored); OUTPUT_DIR now replaces the parent, as for the GPT scripts."""
    import subprocess
    import sys

    import yaml

    script = os.path.join(ROOT, "projects", "t5", "finetune_flan_t5_base.sh")

    def dry(env, *args):
        proc = subprocess.run(["bash", script, *args], capture_output=True, text=True, cwd=ROOT, timeout=120,
                              env=dict(os.environ, PYTHON=sys.executable, PPMERGE_DRY_RUN="1", **env))
        assert proc.returncode == 0, proc.stderr
        return yaml.safe_load(proc.stdout)["Engine"]["save_load"]["output_dir"]

    assert dry({}, "RTE") == "./output/flan_t5_base/RTE"
    assert dry({"OUTPUT_DIR": "runs/t5/"}, "RTE", "lora") == "runs/t5/RTE_lora-16"


def test_train_refuses_a_pretrained_model_it_would_rewrite(tmp_path):
    """Training into an earlier run's folder from that run's best/model.pdparams replaced its own
    starting point (exit 0). Checked right after the config, before any data or model is read."""
    best = tmp_path / "run" / "best"
    best.mkdir(parents=True)
    (tmp_path / "run" / ".ppmerge-output").write_text("train\n")
    (best / "model.pdparams").write_bytes(b"not read")
    args = ["-c", os.path.join(ROOT, "configs", "gpt", "finetune_gpt_tiny_glue.yaml"),
            "-o", f"Engine.save_load.output_dir={tmp_path / 'run'}"]
    for inside in ("best/model.pdparams", "epoch_1_step_9/model.pdparams", "lora/merged_model.pdparams"):
        code, err = run("train", [*args, "-o", f"Model.pretrained={tmp_path / 'run' / inside}"])
        assert_one_error(code, err, "Model.pretrained", inside)
    assert (best / "model.pdparams").read_bytes() == b"not read"
    assert sorted(os.listdir(tmp_path / "run")) == [".ppmerge-output", "best"]


def test_eval_with_head_keeps_the_task_heads_results(tmp_path):
    """`--head sst2_b` on a soup's merged model wrote eval_results_SST2_dev.json too: the second of the two
    runs silently replaced the first. The --head run now has its own file, with its own numbers."""
    import json

    from test_merge_runner_support import MODEL_CFG, make_pool, raw_config, write_yaml

    code, err = run("make_glue_data", ["--out", tmp_path / "data", "--tasks", "SST2", "--n-train", "8",
                                       "--n-dev", "24", "--n-test", "4"])
    assert code == 0, err
    paths, _ = make_pool(str(tmp_path / "pool"), tasks=("SST2", "RTE"))
    cfg = raw_config(paths, str(tmp_path / "data"), str(tmp_path / "merge"), tasks=("SST2",))
    # a soup: two SST2 models (RTE's file with a 2-class head stands in for a second SST-2 run)
    cfg["ModelPool"]["models"] = {"sst2_a": {"path": paths["SST2"], "task": "SST2"},
                                  "sst2_b": {"path": paths["RTE"], "task": "SST2"}}
    cfg["TaskPool"]["tasks"] = []
    code, err = run("merge", ["-c", write_yaml(cfg, str(tmp_path / "soup.yaml"))])
    assert code == 0, err
    merged = tmp_path / "merge" / "merged_model.pdparams"
    out = tmp_path / "ev"
    common = ["-c", os.path.join(ROOT, "configs", "gpt", "finetune_gpt_tiny_glue.yaml"),
              "-o", f"Model.pretrained={merged}", "-o", "Data.Eval.dataset.name=SST2",
              "-o", f"Data.Eval.dataset.root={tmp_path / 'data' / 'SST-2'}", "-o", "Data.Eval.dataset.max_length=32",
              *[a for k, v in MODEL_CFG.items() if k != "name" for a in ("-o", f"Model.{k}={v}")],
              "--output-dir", out]
    results = {}
    for head in (None, "sst2_a", "sst2_b"):
        code, err = run("eval", common + (["--head", head] if head else []))
        assert code == 0, err
        name = "eval_results_SST2_dev.json" if head is None else f"eval_results_SST2_dev_head-{head}.json"
        with open(out / name) as f:
            results[head] = json.load(f)
    assert results[None]["head"] == "SST2"
    assert results["sst2_a"]["head"] == "sst2_a" and results["sst2_b"]["head"] == "sst2_b"
    assert results["sst2_a"]["loss"] != results["sst2_b"]["loss"]  # different heads, different numbers
