"""PEFT LoRA import: scale (α/r, rslora α/√r), HF T5 Linear and HF GPT-2 Conv1D (fan_in_fan_out) layouts,
modules_to_save, our own layout, merge-and-unload and the dense low-rank τ, all against a numpy merge
written here in PEFT's own terms (W_torch + scale·B·A, or its transpose for Conv1D) and then converted."""
import json
import math

import numpy as np
import pytest

from ppmerge.errors import CheckpointError
from tests.test_t5_model import hf_t5_config, numpy_t5_logits, random_hf_t5

P = "base_model.model."


def peft_config(**over):
    cfg = {"alpha_pattern": {}, "auto_mapping": None, "base_model_name_or_path": "google/flan-t5-base", "bias": "none",
           "fan_in_fan_out": False, "inference_mode": True, "init_lora_weights": True, "layer_replication": None,
           "layers_pattern": None, "layers_to_transform": None, "loftq_config": {}, "lora_alpha": 32,
           "lora_dropout": 0.1, "megatron_config": None, "megatron_core": "megatron.core", "modules_to_save": None,
           "peft_type": "LORA", "r": 4, "rank_pattern": {}, "revision": None, "target_modules": ["q", "v"],
           "task_type": "SEQ_2_SEQ_LM", "use_dora": False, "use_rslora": False, "lora_bias": False}
    cfg.update(over)
    return cfg


def write_adapter(folder, config, tensors):
    import safetensors.numpy

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "adapter_config.json").write_text(json.dumps(config))
    safetensors.numpy.save_file(tensors, str(folder / "adapter_model.safetensors"))
    return folder


def t5_lora(base_hf, modules, r, rng):
    """PEFT tensors for HF T5 modules: lora_A [r, in], lora_B [out, r] (B non-zero: a trained adapter;
    sized so that scale·B·A is comparable to the weight, keeping the float32 forward well conditioned)."""
    tensors = {}
    for module in modules:
        out_dim, in_dim = base_hf[module + ".weight"].shape
        tensors[f"{P}{module}.lora_A.weight"] = (rng.standard_normal((r, in_dim)) * in_dim ** -0.5).astype(np.float32)
        tensors[f"{P}{module}.lora_B.weight"] = (rng.standard_normal((out_dim, r)) * 0.01).astype(np.float32)
    return tensors


@pytest.mark.parametrize("rslora", [False, True])
def test_t5_adapter_merge_matches_numpy_and_forward(tmp_path, rslora):
    from ppmerge.models.hf_t5 import convert_state_dict
    from ppmerge.models.peft_lora import lowrank_delta, merge_and_unload, read_adapter
    from ppmerge.models.t5 import build_t5, load_t5_state_dict
    from ppmerge.runtime import import_paddle

    rng = np.random.default_rng(5)
    cfg = hf_t5_config()
    base_hf = random_hf_t5(cfg, rng)
    modules = [k[:-len(".weight")] for k in base_hf if k.endswith((".q.weight", ".v.weight"))]
    assert any("EncDecAttention" in m for m in modules) and any(m.startswith("encoder") for m in modules)
    r, alpha = 4, 32
    tensors = t5_lora(base_hf, modules, r, rng)
    folder = write_adapter(tmp_path / "lora", peft_config(r=r, lora_alpha=alpha, use_rslora=rslora), tensors)

    scale = alpha / math.sqrt(r) if rslora else alpha / r
    merged_hf = dict(base_hf)
    for m in modules:  # PEFT's merge in torch layout: W + scale · B @ A
        merged_hf[m + ".weight"] = base_hf[m + ".weight"] + scale * (
            tensors[f"{P}{m}.lora_B.weight"].astype(np.float64) @ tensors[f"{P}{m}.lora_A.weight"])
    expected = convert_state_dict(merged_hf, tied=False)
    base = convert_state_dict(base_hf, tied=False)

    adapter = read_adapter(folder)
    assert adapter.layout == "hf-t5" and adapter.scale == pytest.approx(scale)
    assert sorted(adapter.targets) == sorted("t5." + m + ".weight" for m in modules)
    merged = merge_and_unload(base, adapter)
    assert sorted(merged) == sorted(expected)
    for key in expected:
        np.testing.assert_allclose(merged[key], expected[key], rtol=1e-5, atol=1e-5, err_msg=key)
    key = "t5.decoder.block.1.layer.1.EncDecAttention.v.weight"
    np.testing.assert_allclose(lowrank_delta(adapter, key), expected[key] - base[key], rtol=1e-5, atol=1e-5)
    with pytest.raises(CheckpointError, match="no LoRA weights for 't5.shared.weight'"):
        lowrank_delta(adapter, "t5.shared.weight")

    # The merged model computes what the merged HF weights compute.
    paddle = import_paddle()
    model = build_t5(dict(cfg, name="t5-tiny", num_decoder_layers=3))
    load_t5_state_dict(model, merged)
    model.eval()
    enc, dec = rng.integers(2, 61, size=(1, 11)), np.array([[0, 5, 9, 4]])
    with paddle.no_grad():
        logits = model(input_ids=paddle.to_tensor(enc), decoder_input_ids=paddle.to_tensor(dec),
                       return_dict=True).logits.numpy()[0]
    np.testing.assert_allclose(logits, numpy_t5_logits(merged_hf, cfg, enc[0], dec[0]), atol=1e-4, rtol=0)
    assert np.abs(logits - numpy_t5_logits(base_hf, cfg, enc[0], dec[0])).max() > 1e-2  # the adapter matters


def test_gpt2_conv1d_fan_in_fan_out_and_modules_to_save(tmp_path):
    """HF GPT-2's Conv1D weights are [in, out]: PEFT merges W + scale·(B·A)ᵀ (fan_in_fan_out); c_attn's
    B covers q | k | v and lands split in our three keys; the saved classifier is transposed like a checkpoint."""
    from ppmerge.models.hf_gpt2 import convert_state_dict
    from ppmerge.models.peft_lora import merge_and_unload, read_adapter

    rng = np.random.default_rng(6)
    hidden, r, alpha = 8, 2, 5
    base_hf = {}
    for i in range(2):
        p = f"transformer.h.{i}."
        base_hf.update({p + "attn.c_attn.weight": rng.standard_normal((hidden, 3 * hidden)).astype(np.float32),
                        p + "attn.c_proj.weight": rng.standard_normal((hidden, hidden)).astype(np.float32),
                        p + "mlp.c_fc.weight": rng.standard_normal((hidden, 4 * hidden)).astype(np.float32)})
    base_hf["score.weight"] = rng.standard_normal((3, hidden)).astype(np.float32)
    modules = [f"transformer.h.{i}.attn.{n}" for i in range(2) for n in ("c_attn", "c_proj")]
    tensors = {}
    for m in modules:
        in_dim, out_dim = base_hf[m + ".weight"].shape  # Conv1D: [in, out]
        tensors[f"{P}{m}.lora_A.weight"] = rng.standard_normal((r, in_dim)).astype(np.float32)
        tensors[f"{P}{m}.lora_B.weight"] = rng.standard_normal((out_dim, r)).astype(np.float32)
    new_score = rng.standard_normal((3, hidden)).astype(np.float32)
    tensors[P + "score.weight"] = new_score
    config = peft_config(r=r, lora_alpha=alpha, fan_in_fan_out=True, target_modules=["c_attn", "c_proj"],
                         modules_to_save=["score"], task_type="SEQ_CLS")
    adapter = read_adapter(write_adapter(tmp_path / "gpt2", config, tensors))
    assert adapter.layout == "hf-gpt2" and len(adapter.targets) == 2 * 4

    merged_hf = dict(base_hf, **{"score.weight": new_score})
    for m in modules:
        delta = (tensors[f"{P}{m}.lora_B.weight"].astype(np.float64) @ tensors[f"{P}{m}.lora_A.weight"]).T
        merged_hf[m + ".weight"] = base_hf[m + ".weight"] + (alpha / r) * delta
    expected = convert_state_dict(merged_hf)
    merged = merge_and_unload(convert_state_dict(base_hf), adapter)
    assert sorted(merged) == sorted(expected)
    for key in expected:
        np.testing.assert_allclose(merged[key], expected[key], rtol=1e-5, atol=1e-5, err_msg=key)
    np.testing.assert_array_equal(merged["score.weight"], new_score.T)

    with pytest.raises(CheckpointError, match="fan_in_fan_out is False"):
        read_adapter(write_adapter(tmp_path / "gpt2_bad", dict(config, fan_in_fan_out=False), tensors))


def test_our_gpt_layout_round_trip(tmp_path):
    """GPT targets q_proj / v_proj in our keys ([in, out]); save_adapter → read_adapter is exact, also as
    .pdparams."""
    from ppmerge.models.peft_lora import merge_and_unload, read_adapter, save_adapter

    rng = np.random.default_rng(7)
    base = {f"gpt.decoder.layers.{i}.self_attn.{n}.weight": rng.standard_normal((6, 6)).astype(np.float32)
            for i in range(2) for n in ("q_proj", "k_proj", "v_proj")}
    base["score.weight"] = rng.standard_normal((6, 2)).astype(np.float32)
    modules = [k[:-len(".weight")] for k in base if k.endswith(("q_proj.weight", "v_proj.weight"))]
    tensors = {}
    for m in modules:
        tensors[f"{P}{m}.lora_A.weight"] = rng.standard_normal((3, 6)).astype(np.float32)
        tensors[f"{P}{m}.lora_B.weight"] = rng.standard_normal((6, 3)).astype(np.float32)
    tensors[P + "score.weight"] = rng.standard_normal((6, 2)).astype(np.float32)
    config = peft_config(r=3, lora_alpha=6, target_modules=["q_proj", "v_proj"], modules_to_save=["score"],
                         use_rslora=True)
    adapter = read_adapter(write_adapter(tmp_path / "ours", config, tensors))
    assert adapter.layout == "ours"
    merged = merge_and_unload(base, adapter)
    for m in modules:
        expected = base[m + ".weight"] + (6 / math.sqrt(3)) * (tensors[f"{P}{m}.lora_B.weight"]
                                                              @ tensors[f"{P}{m}.lora_A.weight"]).T
        np.testing.assert_allclose(merged[m + ".weight"], expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(merged["gpt.decoder.layers.0.self_attn.k_proj.weight"],
                                  base["gpt.decoder.layers.0.self_attn.k_proj.weight"])
    np.testing.assert_array_equal(merged["score.weight"], tensors[P + "score.weight"])

    for fmt in ("safetensors", "pdparams"):
        again = read_adapter(save_adapter(adapter, tmp_path / f"saved_{fmt}", fmt=fmt))
        assert again.scale == adapter.scale and sorted(again.targets) == sorted(adapter.targets)
        for key, value in merge_and_unload(base, again).items():
            np.testing.assert_array_equal(value, merged[key])


def test_t5_adapter_saved_in_our_layout_reads_back(tmp_path):
    from ppmerge.models.peft_lora import adapter_tensors, lowrank_delta, read_adapter, save_adapter

    rng = np.random.default_rng(8)
    base_hf = random_hf_t5(hf_t5_config(num_layers=1, num_decoder_layers=1), rng)
    modules = [k[:-len(".weight")] for k in base_hf if k.endswith(".q.weight")]
    adapter = read_adapter(write_adapter(tmp_path / "hf", peft_config(target_modules=["q"]),
                                         t5_lora(base_hf, modules, 4, rng)))
    saved = save_adapter(adapter, tmp_path / "ours")
    config = json.loads((tmp_path / "ours" / "adapter_config.json").read_text())
    assert config["target_modules"] == sorted("t5." + m for m in modules) and config["r"] == 4
    assert all(k.startswith(P + "t5.") for k in adapter_tensors(adapter))
    again = read_adapter(saved)
    assert again.layout == "ours"
    for key in adapter.targets:
        np.testing.assert_array_equal(lowrank_delta(again, key), lowrank_delta(adapter, key))


def test_refusals(tmp_path):
    from ppmerge.models.peft_lora import merge_and_unload, read_adapter

    rng = np.random.default_rng(9)
    base_hf = random_hf_t5(hf_t5_config(num_layers=1, num_decoder_layers=1), rng)
    modules = [k[:-len(".weight")] for k in base_hf if k.endswith((".q.weight", ".v.weight"))]
    good = t5_lora(base_hf, modules, 4, rng)
    q = f"{P}encoder.block.0.layer.0.SelfAttention.q"
    cases = [
        ("dora", peft_config(use_dora=True), good, "use_dora"),
        ("bias", peft_config(bias="all"), good, "bias 'all'"),
        ("lorabias", peft_config(lora_bias=True), good, "lora_bias"),
        ("layers", peft_config(layers_to_transform=[0]), good, "layers_to_transform"),
        ("rank_pattern", peft_config(rank_pattern={"q": 8}), good, "rank_pattern"),
        ("pissa", peft_config(init_lora_weights="pissa"), good, "init_lora_weights 'pissa'"),
        ("type", peft_config(peft_type="IA3"), good, "peft_type 'IA3'"),
        ("unknown_cfg", peft_config(use_magic=True), good, "use_magic"),
        ("alpha", peft_config(lora_alpha=0), good, "lora_alpha must be a positive"),
        ("unknown_key", peft_config(), dict(good, **{P + "encoder.final_layer_norm.weight": np.ones(32, np.float32)}),
         "encoder.final_layer_norm.weight.*neither a LoRA factor"),
        ("prefix", peft_config(), dict(good, **{"encoder.x.lora_A.weight": np.ones((4, 2), np.float32)}),
         "'encoder.x.lora_A.weight'"),
        ("missing_B", peft_config(), {k: v for k, v in good.items() if k != q + ".lora_B.weight"},
         "SelfAttention.q.lora_B.weight is missing"),
        ("untargeted", peft_config(target_modules=["q"]), good, "SelfAttention.v' has LoRA weights"),
        ("regex", peft_config(target_modules=r".*\.q"), good, "SelfAttention.v' has LoRA weights"),
        ("rank", peft_config(r=8), good, "rank r = 8"),
        ("fan", peft_config(fan_in_fan_out=True), good, "fan_in_fan_out is True"),
        ("dora_key", peft_config(), dict(good, **{q + ".lora_magnitude_vector": np.ones(32, np.float32)}), "DoRA"),
        ("embedding", peft_config(), dict(good, **{P + "shared.lora_embedding_A": np.ones((4, 61), np.float32)}),
         "embeddings"),
        ("module", peft_config(target_modules=["q", "v", "layer_norm"]),
         dict(good, **{P + "encoder.block.0.layer.0.layer_norm.lora_A.weight": np.ones((4, 32), np.float32),
                       P + "encoder.block.0.layer.0.layer_norm.lora_B.weight": np.ones((32, 4), np.float32)}),
         "LoRA on T5 module 'encoder.block.0.layer.0.layer_norm'"),
    ]
    for name, config, tensors, match in cases:
        with pytest.raises(CheckpointError, match=match):
            read_adapter(write_adapter(tmp_path / name, config, tensors))

    ok = read_adapter(write_adapter(tmp_path / "ok", peft_config(target_modules=r".*\.(q|v)"), good))
    small = {k: v for k, v in ok.targets.items()}
    with pytest.raises(CheckpointError, match="is not in the base model"):
        merge_and_unload({}, ok)
    with pytest.raises(CheckpointError, match="gives shape"):
        merge_and_unload({key: np.zeros((3, 3), np.float32) for key in small}, ok)

    bin_only = tmp_path / "bin"
    bin_only.mkdir()
    (bin_only / "adapter_config.json").write_text(json.dumps(peft_config()))
    (bin_only / "adapter_model.bin").write_bytes(b"x")
    with pytest.raises(CheckpointError, match="adapter_model.bin.*PyTorch"):
        read_adapter(bin_only)
    with pytest.raises(CheckpointError, match="no adapter_config.json"):
        read_adapter(tmp_path)
