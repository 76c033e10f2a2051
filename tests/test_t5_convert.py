"""tools/convert.py --from hf-t5 | peft-lora: files in our T5 layout, merge-and-unload against a numpy PEFT
merge, the adapter written in our key layout, refusals (exit 2, one line, nothing written)."""
import json
import os
import subprocess
import sys

import numpy as np

from ppmerge.models import load_numpy_state_dict
from tests.test_peft_lora import P, peft_config, t5_lora, write_adapter
from tests.test_t5_model import hf_t5_config, random_hf_t5, write_hf_t5

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_convert(*args):
    return subprocess.run([sys.executable, os.path.join(ROOT, "tools", "convert.py"), *map(str, args)],
                          capture_output=True, text=True)


def convert(*args):
    result = run_convert(*args)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_hf_t5_to_our_files_and_peft_merge(tmp_path):
    from ppmerge.models.hf_t5 import convert_state_dict
    from ppmerge.models.peft_lora import lowrank_delta, read_adapter
    from ppmerge.models.t5 import t5_state_shapes

    rng = np.random.default_rng(11)
    cfg = hf_t5_config(num_layers=1, num_decoder_layers=2)
    base_hf = random_hf_t5(cfg, rng)
    hf = write_hf_t5(tmp_path / "flan", cfg, base_hf)

    out = convert("--from", "hf-t5", "--to", "safetensors", "--input", hf, "--output", tmp_path / "flan_ours")
    # the printed overrides describe the model exactly (schema names where the Model section has them)
    import yaml

    from ppmerge.models.hf_t5 import model_config
    from ppmerge.models.t5 import resolve_t5_arch

    line = next(l for l in out.splitlines() if l.startswith("use it with:"))
    printed = dict(tok[len("Model."):].split("=", 1) for tok in line.split() if tok.startswith("Model."))
    printed = {k: yaml.safe_load(v) for k, v in printed.items() if k != "pretrained"}
    assert printed["hidden_size"] == 32
    assert resolve_t5_arch(printed) == resolve_t5_arch(model_config(cfg))
    ours = load_numpy_state_dict(tmp_path / "flan_ours.safetensors")
    fields = dict(cfg, name="t5-tiny")
    assert {k: v.shape for k, v in ours.items()} == t5_state_shapes(fields)
    q = "encoder.block.0.layer.0.SelfAttention.q.weight"
    np.testing.assert_array_equal(ours["t5." + q], base_hf[q].T)
    np.testing.assert_array_equal(ours["lm_head.weight"], base_hf["lm_head.weight"].T)

    modules = [k[:-len(".weight")] for k in base_hf if k.endswith((".q.weight", ".v.weight"))]
    tensors = t5_lora(base_hf, modules, 4, rng)
    adapter_dir = write_adapter(tmp_path / "lora", peft_config(r=4, lora_alpha=16), tensors)
    merged_hf = dict(base_hf)
    for m in modules:
        merged_hf[m + ".weight"] = base_hf[m + ".weight"] + 4.0 * (tensors[f"{P}{m}.lora_B.weight"].astype(np.float64)
                                                                  @ tensors[f"{P}{m}.lora_A.weight"])
    expected = convert_state_dict(merged_hf, tied=False)
    for base in (hf, tmp_path / "flan_ours.safetensors"):  # an HF folder or our own file as --base
        name = f"merged_{os.path.basename(base).split('.')[0]}"
        convert("--from", "peft-lora", "--to", "pdparams", "--input", adapter_dir, "--base", base,
                "--output", tmp_path / name)
        merged = load_numpy_state_dict(tmp_path / f"{name}.pdparams")
        assert sorted(merged) == sorted(expected)
        for key in expected:
            np.testing.assert_allclose(merged[key], expected[key], rtol=1e-5, atol=1e-5, err_msg=key)

    # without --base: the adapter, in our key layout, as a folder
    out = convert("--from", "peft-lora", "--to", "safetensors", "--input", adapter_dir, "--output", tmp_path / "ad")
    assert "--base" in out
    config = json.loads((tmp_path / "ad" / "adapter_config.json").read_text())
    assert config["r"] == 4 and all(t.startswith("t5.") for t in config["target_modules"])
    again, original = read_adapter(tmp_path / "ad"), read_adapter(adapter_dir)
    assert sorted(again.targets) == sorted("t5." + m + ".weight" for m in modules)
    for key in again.targets:
        np.testing.assert_array_equal(lowrank_delta(again, key), lowrank_delta(original, key))


def test_convert_refusals(tmp_path):
    rng = np.random.default_rng(12)
    cfg = hf_t5_config(num_layers=1, num_decoder_layers=1)
    base_hf = random_hf_t5(cfg, rng)
    hf = write_hf_t5(tmp_path / "flan", cfg, base_hf)
    modules = [k[:-len(".weight")] for k in base_hf if k.endswith(".q.weight")]
    dora = write_adapter(tmp_path / "dora", peft_config(use_dora=True, target_modules=["q"]),
                         t5_lora(base_hf, modules, 4, rng))
    cases = [
        (("--from", "peft-lora", "--to", "pdparams", "--input", dora, "--base", hf, "--output", tmp_path / "m"),
         "use_dora"),
        (("--from", "hf-t5", "--to", "hf", "--input", hf, "--output", tmp_path / "m"), "--to hf"),
        (("--from", "hf-t5", "--to", "pdparams", "--input", hf, "--base", hf, "--output", tmp_path / "m"), "--base"),
        (("--from", "peft-lora", "--to", "pdparams", "--input", dora, "--output", hf), "not empty"),
    ]
    for args, match in cases:
        result = run_convert(*args)
        assert result.returncode == 2, result.stderr
        assert result.stderr.startswith("error: ") and match in result.stderr and result.stderr.count("\n") == 1
        assert "Traceback" not in result.stderr
    assert not any(p.name.startswith("m") for p in tmp_path.iterdir())  # nothing written


def test_peft_lora_on_an_hf_gpt2_base(tmp_path):
    """--base may be an HF GPT-2 folder: c_attn's Conv1D LoRA lands split in our q / k / v keys."""
    from ppmerge.models.hf_gpt2 import convert_state_dict
    from tests.test_models import write_hf_gpt2

    rng = np.random.default_rng(13)
    base_hf = write_hf_gpt2(tmp_path / "gpt2", rng, hidden=16, layers=2, heads=2)
    modules = [f"transformer.h.{i}.attn.c_attn" for i in range(2)]
    tensors = {}
    for m in modules:
        in_dim, out_dim = base_hf[m + ".weight"].shape
        tensors[f"{P}{m}.lora_A.weight"] = rng.standard_normal((2, in_dim)).astype(np.float32)
        tensors[f"{P}{m}.lora_B.weight"] = rng.standard_normal((out_dim, 2)).astype(np.float32)
    adapter = write_adapter(tmp_path / "lora", peft_config(r=2, lora_alpha=2, fan_in_fan_out=True,
                                                            target_modules=["c_attn"], task_type="SEQ_CLS"), tensors)
    out = convert("--from", "peft-lora", "--to", "safetensors", "--input", adapter, "--base", tmp_path / "gpt2",
                  "--output", tmp_path / "merged")
    merged = load_numpy_state_dict(tmp_path / "merged.safetensors")
    merged_hf = dict(base_hf)
    for m in modules:
        merged_hf[m + ".weight"] = base_hf[m + ".weight"] + (tensors[f"{P}{m}.lora_B.weight"].astype(np.float64)
                                                            @ tensors[f"{P}{m}.lora_A.weight"]).T
    expected = convert_state_dict(merged_hf)
    assert sorted(merged) == sorted(expected) and "-o Model.num_classes=3" in out
    for key in expected:
        np.testing.assert_allclose(merged[key], expected[key], rtol=1e-5, atol=1e-5, err_msg=key)
