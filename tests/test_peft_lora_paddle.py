"""Adapters of a real paddlenlp.peft LoRAModel (t5-tiny, gpt-tiny) ↔ the PEFT-like layout: the merged weights
compute what the LoRA model computes (paddlenlp's own forward x·W + s·x·A·B), the inverse restores the LoRA
model exactly, and an adapter in Paddle's layout (keys `<path>.lora_A` [in, r]) reads to the same τ."""
import json
import math

import numpy as np
import pytest

from ppmerge.errors import CheckpointError

P = "base_model.model."


@pytest.fixture(scope="module")
def paddle():
    from ppmerge.runtime import import_paddle

    return import_paddle()


def t5_lora_model(paddle, seed, rslora=False, r=4, alpha=8):
    from paddlenlp.peft import LoRAConfig, LoRAModel

    from ppmerge.models.t5 import build_t5

    paddle.seed(seed)
    network = build_t5({"name": "t5-tiny", "vocab_size": 50, "num_layers": 1})
    model = LoRAModel(network, LoRAConfig(target_modules=[r".*\.q", r".*\.v"], r=r, lora_alpha=alpha,
                                          rslora=rslora, merge_weights=False))
    model.mark_only_lora_as_trainable()
    rng = np.random.default_rng(seed)
    for name, param in model.model.named_parameters():
        if ".lora_B" in name:  # B starts at zero: give it values, as training would
            param.set_value(paddle.to_tensor(rng.standard_normal(param.shape).astype(np.float32)))
    model.eval()
    return model


def t5_logits(paddle, model):
    enc = paddle.to_tensor(np.array([[5, 9, 13, 7, 22, 3, 1]]))
    dec = paddle.to_tensor(np.array([[0, 4, 8, 15]]))
    with paddle.no_grad():
        out = model(input_ids=enc, decoder_input_ids=dec, return_dict=True)
    return out.logits.numpy()


@pytest.mark.parametrize("rslora", [False, True])
def test_t5_lora_model_to_peft_layout_and_back(paddle, tmp_path, rslora):
    import safetensors.numpy

    from ppmerge.models.peft_lora import (adapter_state_from_lora_model, load_adapter_into_lora_model,
                                          merge_and_unload, read_adapter)
    from ppmerge.models.t5 import build_t5, load_t5_state_dict

    lora = t5_lora_model(paddle, seed=1, rslora=rslora)
    tensors, config = adapter_state_from_lora_model(lora)
    scale = 8 / math.sqrt(4) if rslora else 8 / 4
    assert config["r"] == 4 and config["lora_alpha"] == 8 and config["use_rslora"] is rslora
    layers = {n: l for n, l in lora.model.named_sublayers() if hasattr(l, "lora_A")}
    assert len(layers) == 2 + 4 and sorted(config["target_modules"]) == sorted(layers)  # enc q,v; dec q,v + cross q,v
    for path, layer in layers.items():
        np.testing.assert_array_equal(tensors[f"{P}{path}.lora_A.weight"], layer.lora_A.numpy().T)  # [r, in]
        np.testing.assert_array_equal(tensors[f"{P}{path}.lora_B.weight"], layer.lora_B.numpy().T)  # [out, r]
    assert not any(".lora_" not in k for k in tensors)  # nothing else was trainable

    folder = tmp_path / "adapter"
    folder.mkdir()
    (folder / "adapter_config.json").write_text(json.dumps(config))
    safetensors.numpy.save_file(tensors, str(folder / "adapter_model.safetensors"))
    adapter = read_adapter(folder)
    assert adapter.scale == pytest.approx(scale)

    base = {k: v.numpy() for k, v in lora.model.state_dict().items() if ".lora_" not in k}
    merged = merge_and_unload(base, adapter)
    for path, layer in layers.items():  # numpy: W + s·lora_A·lora_B in Paddle's [in, out]
        expected = base[path + ".weight"] + scale * (layer.lora_A.numpy().astype(np.float64) @ layer.lora_B.numpy())
        np.testing.assert_allclose(merged[path + ".weight"], expected, rtol=1e-5, atol=1e-5)
    plain = build_t5({"name": "t5-tiny", "vocab_size": 50, "num_layers": 1})
    load_t5_state_dict(plain, merged)
    plain.eval()
    np.testing.assert_allclose(t5_logits(paddle, plain), t5_logits(paddle, lora), atol=1e-4, rtol=0)

    fresh = t5_lora_model(paddle, seed=2, rslora=rslora)  # other base and LoRA weights
    for key, value in base.items():  # the same base ...
        fresh.model.state_dict()[key].set_value(paddle.to_tensor(value))
    assert not np.allclose(t5_logits(paddle, fresh), t5_logits(paddle, lora), atol=1e-3)
    load_adapter_into_lora_model(fresh, (tensors, config))  # ... and the adapter: the same model
    np.testing.assert_allclose(t5_logits(paddle, fresh), t5_logits(paddle, lora), atol=1e-5, rtol=0)


def test_inverse_refuses_mismatches(paddle):
    from ppmerge.models.peft_lora import adapter_state_from_lora_model, load_adapter_into_lora_model

    tensors, config = adapter_state_from_lora_model(t5_lora_model(paddle, seed=3))
    with pytest.raises(CheckpointError, match="scale"):
        load_adapter_into_lora_model(t5_lora_model(paddle, seed=3, alpha=16), (tensors, config))
    with pytest.raises(CheckpointError, match=r"lora_A has shape \[64, 4\].*\[64, 2\]"):
        load_adapter_into_lora_model(t5_lora_model(paddle, seed=3, r=2, alpha=4), (tensors, config))
    q = "t5.encoder.block.0.layer.0.SelfAttention.q"
    fewer = {k: v for k, v in tensors.items() if q + "." not in k}
    fewer_cfg = dict(config, target_modules=[t for t in config["target_modules"] if t != q])
    with pytest.raises(CheckpointError, match=f"no LoRA weights for the model's LoRA layer {q}"):
        load_adapter_into_lora_model(t5_lora_model(paddle, seed=3), (fewer, fewer_cfg))


def test_paddle_layout_adapter_reads_to_the_same_tau(paddle, tmp_path):
    """The layout paddlenlp's LoRAModel holds (and ppmerge's LoRA training saves): `<path>.lora_A` [in, r],
    `<path>.lora_B` [r, out], config with scaling and regex target_modules."""
    from ppmerge.models.checkpoint import save_state_dict
    from ppmerge.models.peft_lora import lowrank_delta, read_adapter

    lora = t5_lora_model(paddle, seed=4)
    layers = {n: l for n, l in lora.model.named_sublayers() if hasattr(l, "lora_A")}
    tensors = {}
    for path, layer in layers.items():
        tensors[path + ".lora_A"], tensors[path + ".lora_B"] = layer.lora_A.numpy(), layer.lora_B.numpy()
    config = {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "scaling": 2.0, "target_modules": [r".*\.q", r".*\.v"],
              "family": "t5", "base_model": None, "layout": "paddle: lora_A [in, r], lora_B [r, out]"}
    folder = tmp_path / "paddle_adapter"
    folder.mkdir()
    (folder / "adapter_config.json").write_text(json.dumps(config))
    save_state_dict(tensors, folder / "adapter_model.pdparams")
    adapter = read_adapter(folder)
    assert sorted(adapter.targets) == sorted(p + ".weight" for p in layers)
    for path, layer in layers.items():
        np.testing.assert_allclose(lowrank_delta(adapter, path + ".weight"),
                                   2.0 * layer.lora_A.numpy().astype(np.float64) @ layer.lora_B.numpy(),
                                   rtol=1e-5, atol=1e-6)
    bad = folder.parent / "bad"
    bad.mkdir()
    (bad / "adapter_config.json").write_text(json.dumps(dict(config, scaling=3.0)))
    save_state_dict(tensors, bad / "adapter_model.pdparams")
    with pytest.raises(CheckpointError, match="scaling 3.0"):
        read_adapter(bad)
    (bad / "adapter_config.json").write_text(json.dumps(dict(config, target_modules=[r".*\.q"])))
    with pytest.raises(CheckpointError, match="SelfAttention.v' has LoRA weights"):
        read_adapter(bad)


def test_gpt_lora_model_with_trained_head(paddle):
    """Family-independent: GPT's q_proj / v_proj in our GPT keys; the head trained alongside is saved whole."""
    from paddlenlp.peft import LoRAConfig, LoRAModel

    from ppmerge.models import build_model
    from ppmerge.models.peft_lora import adapter_state_from_lora_model, merge_and_unload, parse_adapter

    paddle.seed(5)
    network = build_model({"name": "gpt-tiny", "vocab_size": 60, "max_position_embeddings": 16}, num_classes=3)
    lora = LoRAModel(network, LoRAConfig(target_modules=[r".*q_proj", r".*v_proj"], r=2, lora_alpha=4,
                                         trainable_modules=[r"score\.weight"], merge_weights=False))
    lora.mark_only_lora_as_trainable()
    rng = np.random.default_rng(5)
    for name, param in lora.model.named_parameters():
        if ".lora_B" in name or name == "score.weight":
            param.set_value(paddle.to_tensor(rng.standard_normal(param.shape).astype(np.float32)))
    lora.eval()
    tensors, config = adapter_state_from_lora_model(lora)
    assert config["modules_to_save"] == ["score"] and P + "score.weight" in tensors
    assert f"{P}gpt.decoder.layers.1.self_attn.v_proj.lora_A.weight" in tensors
    base = {k: v.numpy() for k, v in network.state_dict().items() if ".lora_" not in k}
    merged = merge_and_unload(base, parse_adapter(config, tensors))
    plain = build_model({"name": "gpt-tiny", "vocab_size": 60, "max_position_embeddings": 16}, num_classes=3)
    plain.set_state_dict({k: paddle.to_tensor(v) for k, v in merged.items()})
    plain.eval()
    ids, lengths = paddle.to_tensor(np.array([[4, 8, 15, 16, 23, 42 % 60]])), paddle.to_tensor(np.array([6]))
    with paddle.no_grad():
        np.testing.assert_allclose(plain(ids, lengths).numpy(), lora(ids, lengths).numpy(), atol=1e-4, rtol=0)
