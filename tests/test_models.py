"""ppmerge.models: presets, state-dict keys, pooling at true lengths, FleetX fused qkv, HF GPT-2 import."""
import json

import numpy as np
import pytest

from ppmerge.errors import ConfigError
from ppmerge.models import fleetx
from ppmerge.models.presets import ARCH_PRESETS, make_gpt_config, resolve_arch

SMALL = {"name": "gpt-tiny", "vocab_size": 128}  # tiny shapes, small vocabulary: fast tests


@pytest.fixture(scope="module")
def paddle():
    from ppmerge.runtime import import_paddle

    return import_paddle()


def small_model(paddle, num_classes=3, seed=0, **fields):
    from ppmerge.models import build_model

    paddle.seed(seed)
    model = build_model(dict(SMALL, **fields), num_classes)
    model.eval()
    return model


def expected_keys(num_layers):
    keys = ["gpt.embeddings.word_embeddings.weight", "gpt.embeddings.position_embeddings.weight"]
    for i in range(num_layers):
        for name in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj",
                     "linear1", "linear2", "norm1", "norm2"):
            keys += [f"gpt.decoder.layers.{i}.{name}.weight", f"gpt.decoder.layers.{i}.{name}.bias"]
    return keys + ["gpt.decoder.norm.weight", "gpt.decoder.norm.bias", "score.weight"]


# ----------------------------------------------------------------------------- presets

def test_presets_and_gpt_config():
    big = make_gpt_config("GPT")  # FleetX's alias; config only, the 345M model is never built here
    assert (big.vocab_size, big.hidden_size, big.num_hidden_layers, big.num_attention_heads,
            big.intermediate_size, big.max_position_embeddings) == (50304, 1024, 24, 16, 4096, 1024)
    assert big.hidden_dropout_prob == 0.1 and big.initializer_range == 0.02 and big.type_vocab_size == 16
    assert big.eos_token_id == big.pad_token_id == big.bos_token_id == 50256
    assert make_gpt_config("gpt2-medium-en").vocab_size == 50257
    tiny = make_gpt_config({"name": "gpt-tiny", "hidden_size": None, "num_layers": 3})
    assert (tiny.vocab_size, tiny.hidden_size, tiny.num_hidden_layers, tiny.hidden_dropout_prob) == (50304, 64, 3, 0.0)
    assert resolve_arch("gpt-345m") == ARCH_PRESETS["gpt-345m"]
    with pytest.raises(ConfigError, match="gpt-tiny"):
        resolve_arch({"name": "gpt-999"})
    with pytest.raises(ConfigError, match="divisible"):
        resolve_arch({"name": "gpt-tiny", "num_attention_heads": 5})


def test_state_dict_keys_and_shapes(paddle):
    model = small_model(paddle, num_classes=3)
    state = model.state_dict()
    assert list(state) == expected_keys(2)
    assert list(state["score.weight"].shape) == [64, 3]
    assert list(state["gpt.decoder.layers.0.linear1.weight"].shape) == [64, 256]  # Paddle Linear: [in, out]
    assert model.score.bias is None
    assert abs(float(state["score.weight"].std()) - 0.02) < 0.006  # Normal(std=initializer_range)


# ----------------------------------------------------------------------------- pooling

def test_padding_does_not_change_logits(paddle):
    """Texts with `!` (id 0) and <|endoftext|> (50256) inside: alone == padded in a batch (1e-5)."""
    model = small_model(paddle)
    pad = 127  # vocabulary of 128: 127 plays <|endoftext|>, the pad id, also inside a text
    texts = [[11, 0, 23, 0], [40, pad, 7, pad, 9], [3, 5, 8, 13, 21, 34, 55, 89, 1, 2]]
    longest = max(map(len, texts))
    batch = np.full((len(texts), longest), pad, dtype=np.int64)
    for row, ids in enumerate(texts):
        batch[row, :len(ids)] = ids
    lengths = np.array([len(t) for t in texts], dtype=np.int64)
    with paddle.no_grad():
        together = model(paddle.to_tensor(batch), paddle.to_tensor(lengths)).numpy()
        for row, ids in enumerate(texts):
            alone = model(paddle.to_tensor(np.array([ids])), paddle.to_tensor([len(ids)])).numpy()
            np.testing.assert_allclose(together[row], alone[0], atol=1e-5)
        pooled = model.pooled_hidden(paddle.to_tensor(batch), paddle.to_tensor(lengths)).numpy()
        full = model.gpt(input_ids=paddle.to_tensor(batch)).numpy()
    np.testing.assert_allclose(pooled, full[np.arange(3), lengths - 1], atol=1e-6)
    np.testing.assert_allclose(together, pooled @ model.score.weight.numpy(), atol=1e-5)


def test_real_eos_id_inside_text(paddle):
    """The real <|endoftext|> id 50256 inside a text, with the full GPT-2 vocabulary."""
    from ppmerge.models import build_model

    paddle.seed(1)
    model = build_model("gpt-tiny", 2)
    model.eval()
    text = [464, 50256, 3797, 0, 318]
    batch = np.array([text + [50256] * 3, [1, 2, 3, 4, 5, 6, 7, 8]])
    with paddle.no_grad():
        together = model(paddle.to_tensor(batch), paddle.to_tensor([5, 8])).numpy()
        alone = model(paddle.to_tensor([text]), paddle.to_tensor([5])).numpy()
    np.testing.assert_allclose(together[0], alone[0], atol=1e-5)


# ----------------------------------------------------------------------------- FleetX fused qkv

def test_split_and_fuse_are_exact_inverses():
    rng = np.random.default_rng(0)
    hidden, heads = 12, 3
    weight = rng.standard_normal((hidden, 3 * hidden)).astype(np.float16)
    bias = rng.standard_normal(3 * hidden).astype(np.float16)
    q, k, v = fleetx.split_qkv(weight, heads)
    # Independent statement of FleetX's layout: output column (head h, part p, d) = h*3*hd + p*hd + d.
    head_dim = hidden // heads
    for h in range(heads):
        for p, part in enumerate((q, k, v)):
            np.testing.assert_array_equal(part[:, h * head_dim:(h + 1) * head_dim],
                                          weight[:, h * 3 * head_dim + p * head_dim:h * 3 * head_dim + (p + 1) * head_dim])
    np.testing.assert_array_equal(fleetx.fuse_qkv(q, k, v, heads), weight)
    np.testing.assert_array_equal(fleetx.fuse_qkv(*fleetx.split_qkv(bias, heads), heads), bias)
    fused = {"gpt.decoder.layers.0.self_attn.qkv_proj.weight": weight,
             "gpt.decoder.layers.0.self_attn.qkv_proj.bias": bias, "gpt.decoder.norm.weight": bias[:hidden]}
    separate = fleetx.split_fused_state_dict(fused, heads)
    assert sorted(separate) == sorted(["gpt.decoder.norm.weight"] + [
        f"gpt.decoder.layers.0.self_attn.{p}.{s}" for p in ("q_proj", "k_proj", "v_proj") for s in ("weight", "bias")])
    back = fleetx.fuse_state_dict(separate, heads)
    assert list(back) == list(fused)
    for key in fused:
        assert back[key].dtype == fused[key].dtype
        np.testing.assert_array_equal(back[key], fused[key])


def test_fused_fp16_checkpoint_gives_same_logits(paddle, tmp_path):
    """paddlenlp's fuse_attention_qkv layer (same layout as FleetX: reshape to [.., heads, 3*hd], split)
    in fp16 → load_pretrained into our separate-q/k/v model → same logits."""
    from ppmerge.models import GPTForSequenceClassification, load_pretrained, save_state_dict

    config = make_gpt_config(SMALL)
    config.fuse_attention_qkv = True
    paddle.seed(3)
    fused_model = GPTForSequenceClassification(config, 2)
    fused_model.eval()
    # FleetX's release is fp16: round the weights to fp16 so both models compute with the same values.
    fp16 = {key: value.numpy().astype(np.float16) for key, value in fused_model.state_dict().items()}
    fused_model.set_state_dict({key: value.astype(np.float32) for key, value in fp16.items()})
    assert "gpt.decoder.layers.1.self_attn.qkv_proj.weight" in fp16
    fleetx_file = {key: value for key, value in fp16.items() if key != "score.weight"}
    save_state_dict(fleetx_file, tmp_path / "model.pdparams")

    separate = small_model(paddle, num_classes=2, seed=9)
    missing, unexpected = load_pretrained(separate, tmp_path / "model")  # FleetX's prefix form
    assert missing == ["score.weight"] and unexpected == []
    separate.score.weight.set_value(fp16["score.weight"].astype(np.float32))
    ids = paddle.to_tensor(np.array([[5, 9, 3, 0, 127, 127], [1, 2, 3, 4, 5, 6]]))
    lengths = paddle.to_tensor([4, 6])
    with paddle.no_grad():
        np.testing.assert_allclose(separate(ids, lengths).numpy(), fused_model(ids, lengths).numpy(), atol=1e-5)


# ----------------------------------------------------------------------------- HF GPT-2 import

def _layer_norm(x, weight, bias, eps=1e-5):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * weight + bias


def _gelu_new(x):
    return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x ** 3)))


def numpy_gpt2_logits(sd, ids, n_head, prefix="transformer."):
    """Plain-numpy GPT-2 sequence classifier (HF weight names), one text at a time, no padding."""
    w = {key[len(prefix):] if key.startswith(prefix) else key: value.astype(np.float64) for key, value in sd.items()}
    n_layer = len({key.split(".")[1] for key in w if key.startswith("h.")})
    x = w["wte.weight"][ids] + w["wpe.weight"][np.arange(len(ids))]
    length, hidden = x.shape
    head_dim = hidden // n_head
    causal = np.triu(np.full((length, length), -np.inf), k=1)
    for i in range(n_layer):
        p = f"h.{i}."
        h = _layer_norm(x, w[p + "ln_1.weight"], w[p + "ln_1.bias"])
        q, k, v = np.split(h @ w[p + "attn.c_attn.weight"] + w[p + "attn.c_attn.bias"], 3, axis=-1)
        q, k, v = (t.reshape(length, n_head, head_dim).transpose(1, 0, 2) for t in (q, k, v))
        scores = q @ k.transpose(0, 2, 1) / np.sqrt(head_dim) + causal
        scores = np.exp(scores - scores.max(-1, keepdims=True))
        attn = (scores / scores.sum(-1, keepdims=True)) @ v
        attn = attn.transpose(1, 0, 2).reshape(length, hidden)
        x = x + attn @ w[p + "attn.c_proj.weight"] + w[p + "attn.c_proj.bias"]
        h = _layer_norm(x, w[p + "ln_2.weight"], w[p + "ln_2.bias"])
        x = x + _gelu_new(h @ w[p + "mlp.c_fc.weight"] + w[p + "mlp.c_fc.bias"]) @ w[p + "mlp.c_proj.weight"] \
            + w[p + "mlp.c_proj.bias"]
    x = _layer_norm(x, w["ln_f.weight"], w["ln_f.bias"])
    return x[-1] @ w["score.weight"].T


def write_hf_gpt2(folder, rng, vocab=100, hidden=32, layers=2, heads=4, positions=64, classes=3):
    folder.mkdir(parents=True, exist_ok=True)
    import safetensors.numpy

    def normal(*shape, std=0.2):
        return (rng.standard_normal(shape) * std).astype(np.float32)

    sd = {"transformer.wte.weight": normal(vocab, hidden, std=0.5),
          "transformer.wpe.weight": normal(positions, hidden, std=0.5)}
    for i in range(layers):
        p = f"transformer.h.{i}."
        sd.update({p + "ln_1.weight": 1 + normal(hidden), p + "ln_1.bias": normal(hidden),
                   p + "attn.bias": np.tril(np.ones((1, 1, positions, positions), np.float32)),  # buffer
                   p + "attn.masked_bias": np.array(-1e4, np.float32),
                   p + "attn.c_attn.weight": normal(hidden, 3 * hidden), p + "attn.c_attn.bias": normal(3 * hidden),
                   p + "attn.c_proj.weight": normal(hidden, hidden), p + "attn.c_proj.bias": normal(hidden),
                   p + "ln_2.weight": 1 + normal(hidden), p + "ln_2.bias": normal(hidden),
                   p + "mlp.c_fc.weight": normal(hidden, 4 * hidden), p + "mlp.c_fc.bias": normal(4 * hidden),
                   p + "mlp.c_proj.weight": normal(4 * hidden, hidden), p + "mlp.c_proj.bias": normal(hidden)})
    sd.update({"transformer.ln_f.weight": 1 + normal(hidden), "transformer.ln_f.bias": normal(hidden),
               "score.weight": normal(classes, hidden, std=1.0)})
    safetensors.numpy.save_file(sd, str(folder / "model.safetensors"))
    config = {"architectures": ["GPT2ForSequenceClassification"], "model_type": "gpt2", "vocab_size": vocab,
              "n_embd": hidden, "n_layer": layers, "n_head": heads, "n_positions": positions, "n_inner": None,
              "activation_function": "gelu_new", "layer_norm_epsilon": 1e-5, "resid_pdrop": 0.1, "attn_pdrop": 0.1,
              "embd_pdrop": 0.1, "initializer_range": 0.02, "bos_token_id": 50256, "eos_token_id": 50256,
              "id2label": {str(i): f"LABEL_{i}" for i in range(classes)}}
    (folder / "config.json").write_text(json.dumps(config))
    return sd


def test_hf_gpt2_import_matches_numpy_reference(paddle, tmp_path):
    from ppmerge.models import build_model, load_pretrained
    from ppmerge.models.hf_gpt2 import load_folder

    rng = np.random.default_rng(0)
    sd = write_hf_gpt2(tmp_path / "hf", rng)
    model_cfg, num_classes, converted = load_folder(str(tmp_path / "hf"))
    assert num_classes == 3 and model_cfg["vocab_size"] == 100 and model_cfg["ffn_hidden_size"] == 128
    np.testing.assert_array_equal(converted["score.weight"], sd["score.weight"].T)
    model = build_model(model_cfg, num_classes)
    model.eval()
    missing, unexpected = load_pretrained(model, tmp_path / "hf")  # an HF folder works as pretrained path too
    assert missing == [] and unexpected == []
    texts = [[5, 17, 99, 0, 42], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]]
    batch = np.full((2, 11), 99, dtype=np.int64)  # right padding
    for row, ids in enumerate(texts):
        batch[row, :len(ids)] = ids
    with paddle.no_grad():
        logits = model(paddle.to_tensor(batch), paddle.to_tensor([5, 11])).numpy()
    for row, ids in enumerate(texts):
        np.testing.assert_allclose(logits[row], numpy_gpt2_logits(sd, np.array(ids), n_head=4), atol=1e-4)


def test_hf_key_variants_and_refusals(tmp_path):
    from ppmerge.errors import CheckpointError
    from ppmerge.models.hf_gpt2 import convert_state_dict, find_weights, model_config

    h = np.zeros((8, 24), np.float32)
    lm = {"transformer.wte.weight": np.zeros((5, 8)), "transformer.h.0.attn.c_attn.weight": h,
          "lm_head.weight": np.zeros((5, 8))}
    bare = {"wte.weight": np.zeros((5, 8)), "h.0.attn.c_attn.weight": h, "ln_f.bias": np.zeros(8)}
    assert sorted(convert_state_dict(lm)) == sorted(["gpt.embeddings.word_embeddings.weight"] + [
        f"gpt.decoder.layers.0.self_attn.{p}.weight" for p in ("q_proj", "k_proj", "v_proj")])
    assert "gpt.decoder.norm.bias" in convert_state_dict(bare)
    base = {"n_embd": 8, "n_layer": 1, "n_head": 2}
    with pytest.raises(CheckpointError, match="activation_function"):
        model_config(dict(base, activation_function="relu"))
    with pytest.raises(CheckpointError, match="layer_norm_epsilon"):
        model_config(dict(base, layer_norm_epsilon=1e-6))
    (tmp_path / "pytorch_model.bin").write_bytes(b"x")
    with pytest.raises(CheckpointError, match="PyTorch"):
        find_weights(str(tmp_path))
