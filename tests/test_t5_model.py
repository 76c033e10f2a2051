"""T5 presets, paddlenlp config/model, key layout, and the HF T5 import checked against an independent
numpy T5 forward (encoder + decoder, relative position buckets, gated-gelu / relu / gated-silu, RMS norm,
cross-attention, tied / untied lm_head)."""
import json
import math

import numpy as np
import pytest

from ppmerge.errors import CheckpointError, ConfigError


@pytest.fixture(scope="module")
def paddle():
    from ppmerge.runtime import import_paddle

    return import_paddle()


# --------------------------------------------------------------------------- presets (no paddle)

def test_presets_resolve_without_paddle():
    from ppmerge.models.presets import preset_family
    from ppmerge.models.t5 import resolve_t5_arch

    base = resolve_t5_arch("flan-t5-base")
    assert (base["d_model"], base["d_ff"], base["num_layers"], base["num_decoder_layers"], base["num_heads"],
            base["d_kv"], base["vocab_size"]) == (768, 2048, 12, 12, 12, 64, 32128)
    assert base["feed_forward_proj"] == "gated-gelu" and base["tie_word_embeddings"] is False
    assert (base["relative_attention_num_buckets"], base["relative_attention_max_distance"]) == (32, 128)
    large = resolve_t5_arch({"name": "FLAN-T5-Large"})
    assert (large["d_model"], large["d_ff"], large["num_layers"], large["num_decoder_layers"],
            large["num_heads"]) == (1024, 2816, 24, 24, 16)
    small = resolve_t5_arch("flan-t5-small")
    assert (small["d_model"], small["d_ff"], small["num_layers"], small["num_heads"]) == (512, 1024, 8, 6)
    tiny = resolve_t5_arch({"name": "t5-tiny", "vocab_size": 517, "num_layers": 3, "hidden_size": None})
    assert (tiny["vocab_size"], tiny["num_layers"], tiny["num_decoder_layers"], tiny["d_model"]) == (517, 3, 3, 64)
    assert resolve_t5_arch({"name": "t5-tiny", "num_layers": 3, "num_decoder_layers": 1})["num_decoder_layers"] == 1
    assert resolve_t5_arch({"name": "t5-tiny", "hidden_size": 32, "num_attention_heads": 2})["d_model"] == 32
    assert preset_family("t5-tiny") == "t5" and preset_family("GPT") == "gpt" and preset_family("gpt-tiny") == "gpt"
    with pytest.raises(ConfigError, match="Model.name"):
        preset_family("t5-huge")
    with pytest.raises(ConfigError, match="Model.max_position_embeddings"):
        resolve_t5_arch({"name": "t5-tiny", "max_position_embeddings": 512})
    with pytest.raises(ConfigError, match="Model.feed_forward_proj"):
        resolve_t5_arch({"name": "t5-tiny", "feed_forward_proj": "gelu"})
    with pytest.raises(ConfigError, match="Model.hidden_size"):
        resolve_t5_arch({"name": "t5-tiny", "hidden_size": 32, "d_model": 64})
    with pytest.raises(ConfigError, match="Model.relative_attention_max_distance"):
        resolve_t5_arch({"name": "t5-tiny", "relative_attention_max_distance": 64})
    with pytest.raises(ConfigError, match="Model.vocab_size"):
        resolve_t5_arch({"name": "t5-tiny", "vocab_size": 0})


def test_shortest_model_overrides_round_trip():
    from ppmerge.models.t5 import resolve_t5_arch, t5_model_overrides

    assert t5_model_overrides(resolve_t5_arch("flan-t5-base")) == {"name": "flan-t5-base"}
    assert t5_model_overrides(resolve_t5_arch("flan-t5-large")) == {"name": "flan-t5-large"}
    tiny = resolve_t5_arch({"name": "t5-tiny", "vocab_size": 517})
    assert t5_model_overrides(tiny) == {"name": "t5-tiny", "vocab_size": 517}
    rng = np.random.default_rng(0)
    for _ in range(300):
        arch = resolve_t5_arch({
            "name": "t5-tiny", "d_model": int(rng.integers(8, 900)), "d_kv": int(rng.integers(4, 70)),
            "num_layers": int(rng.integers(1, 30)), "num_decoder_layers": int(rng.integers(1, 30)),
            "num_heads": int(rng.integers(1, 20)), "vocab_size": int(rng.choice([1000, 32128, 77])),
            "tie_word_embeddings": bool(rng.integers(2)), "dropout_rate": float(rng.choice([0, 0.1])),
            "feed_forward_proj": str(rng.choice(["relu", "gated-gelu"]))})
        assert resolve_t5_arch(t5_model_overrides(arch)) == arch


def test_config_and_key_layout_match_paddlenlp(paddle):
    from ppmerge.models.t5 import build_t5, make_t5_config, t5_state_shapes

    config = make_t5_config({"name": "t5-tiny", "vocab_size": 300})
    ids = (config.pad_token_id, config.eos_token_id, config.bos_token_id, config.decoder_start_token_id)
    assert ids == (0, 1, 0, 0)
    for cfg in ({"name": "t5-tiny", "vocab_size": 300},
                {"name": "t5-tiny", "vocab_size": 50, "feed_forward_proj": "relu", "tie_word_embeddings": True,
                 "num_decoder_layers": 3}):
        model = build_t5(cfg)
        actual = {key: tuple(value.shape) for key, value in model.state_dict().items()}
        assert actual == t5_state_shapes(cfg)
        assert list(actual) == list(t5_state_shapes(cfg))  # same order too


def test_forward_with_labels_runs(paddle):
    """The config's special ids let paddlenlp compute the loss (it asserts otherwise)."""
    from ppmerge.models.t5 import build_t5

    paddle.seed(0)
    model = build_t5({"name": "t5-tiny", "vocab_size": 40})
    ids = paddle.to_tensor(np.array([[5, 6, 7, 1], [8, 9, 1, 0]]))
    labels = paddle.to_tensor(np.array([[3, 1], [4, 1]]))
    out = model(input_ids=ids, attention_mask=(ids != 0).astype("int64"), labels=labels, return_dict=True)
    assert np.isfinite(float(out.loss)) and float(out.loss) > 0


# --------------------------------------------------------------------------- numpy reference T5

def _rms_norm(x, weight, eps):
    return weight * (x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps))


def _gelu_tanh(x):
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


_ACTS = {"gated-gelu": _gelu_tanh, "gated-silu": lambda x: x / (1.0 + np.exp(-x)),
         "relu": lambda x: np.maximum(x, 0.0)}


def _bucket(relative, bidirectional, num_buckets, max_distance):
    """T5's relative position bucket (Raffel et al. 2020; mesh-tensorflow's formula)."""
    relative = np.asarray(relative, dtype=np.int64)
    out = np.zeros_like(relative)
    if bidirectional:
        num_buckets //= 2
        out += (relative > 0) * num_buckets
        n = np.abs(relative)
    else:
        n = np.maximum(-relative, 0)
    max_exact = num_buckets // 2
    large = max_exact + (np.log(np.maximum(n, 1) / max_exact) / math.log(max_distance / max_exact)
                         * (num_buckets - max_exact)).astype(np.int64)
    large = np.minimum(large, num_buckets - 1)
    return out + np.where(n < max_exact, n, large)


def _attention(x_q, x_kv, w, prefix, heads, bias=None, causal=False):
    """Multi-head attention with HF [out, in] weights; T5: no 1/sqrt(d) scaling, additive position bias."""
    def split(y):
        return y.reshape(y.shape[0], heads, -1).transpose(1, 0, 2)

    q, k, v = (split(inp @ w[f"{prefix}.{n}.weight"].T) for n, inp in (("q", x_q), ("k", x_kv), ("v", x_kv)))
    scores = q @ k.transpose(0, 2, 1)
    if bias is not None:
        scores = scores + bias
    if causal:
        scores = np.where(np.tril(np.ones(scores.shape[1:], dtype=bool)), scores, -np.inf)
    scores = scores - scores.max(-1, keepdims=True)
    probs = np.exp(scores)
    probs /= probs.sum(-1, keepdims=True)
    out = (probs @ v).transpose(1, 0, 2).reshape(x_q.shape[0], -1)
    return out @ w[f"{prefix}.o.weight"].T


def _position_bias(table, q_len, k_len, bidirectional, cfg):
    rel = np.arange(k_len)[None, :] - np.arange(q_len)[:, None]  # key position - query position
    buckets = _bucket(rel, bidirectional, cfg["relative_attention_num_buckets"],
                      cfg["relative_attention_max_distance"])
    return table[buckets].transpose(2, 0, 1)  # [heads, q, k]


def _feed_forward(x, w, prefix, proj):
    act = _ACTS[proj]
    if proj.startswith("gated-"):
        h = act(x @ w[f"{prefix}.wi_0.weight"].T) * (x @ w[f"{prefix}.wi_1.weight"].T)
    else:
        h = act(x @ w[f"{prefix}.wi.weight"].T)
    return h @ w[f"{prefix}.wo.weight"].T


def numpy_t5_logits(w, cfg, enc_ids, dec_ids, dtype=np.float64):
    """Plain-numpy T5ForConditionalGeneration (HF weight names, float64), one example, no padding."""
    w = {k: np.asarray(v, dtype=dtype) for k, v in w.items()}
    heads, eps, proj = cfg["num_heads"], cfg.get("layer_norm_epsilon", 1e-6), cfg["feed_forward_proj"]
    x = w["shared.weight"][enc_ids]
    bias = _position_bias(w["encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"],
                          len(enc_ids), len(enc_ids), True, cfg)
    for i in range(cfg["num_layers"]):
        p = f"encoder.block.{i}.layer"
        x = x + _attention(h := _rms_norm(x, w[f"{p}.0.layer_norm.weight"], eps), h, w, f"{p}.0.SelfAttention",
                           heads, bias)
        x = x + _feed_forward(_rms_norm(x, w[f"{p}.1.layer_norm.weight"], eps), w, f"{p}.1.DenseReluDense", proj)
    memory = _rms_norm(x, w["encoder.final_layer_norm.weight"], eps)

    y = w["shared.weight"][dec_ids]
    bias = _position_bias(w["decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"],
                          len(dec_ids), len(dec_ids), False, cfg)
    for i in range(cfg.get("num_decoder_layers") or cfg["num_layers"]):
        p = f"decoder.block.{i}.layer"
        y = y + _attention(h := _rms_norm(y, w[f"{p}.0.layer_norm.weight"], eps), h, w, f"{p}.0.SelfAttention",
                           heads, bias, causal=True)
        y = y + _attention(_rms_norm(y, w[f"{p}.1.layer_norm.weight"], eps), memory, w, f"{p}.1.EncDecAttention",
                           heads)
        y = y + _feed_forward(_rms_norm(y, w[f"{p}.2.layer_norm.weight"], eps), w, f"{p}.2.DenseReluDense", proj)
    y = _rms_norm(y, w["decoder.final_layer_norm.weight"], eps)
    if cfg.get("tie_word_embeddings", True):
        return (y * cfg["d_model"] ** -0.5) @ w["shared.weight"].T
    return y @ w["lm_head.weight"].T


def hf_t5_config(**over):
    cfg = {"architectures": ["T5ForConditionalGeneration"], "model_type": "t5", "vocab_size": 61, "d_model": 32,
           "d_kv": 8, "d_ff": 48, "num_layers": 2, "num_decoder_layers": 3, "num_heads": 4,
           "relative_attention_num_buckets": 8, "relative_attention_max_distance": 128, "dropout_rate": 0.1,
           "layer_norm_epsilon": 1e-6, "initializer_factor": 1.0, "feed_forward_proj": "gated-gelu",
           "dense_act_fn": "gelu_new", "is_gated_act": True, "tie_word_embeddings": False,
           "is_encoder_decoder": True, "pad_token_id": 0, "eos_token_id": 1, "decoder_start_token_id": 0}
    cfg.update(over)
    return cfg


def random_hf_t5(cfg, rng):
    """A random HF-layout T5 state dict (float32; Linear weights [out, in])."""
    d, inner, ff, vocab = cfg["d_model"], cfg["num_heads"] * cfg["d_kv"], cfg["d_ff"], cfg["vocab_size"]
    gated = cfg["feed_forward_proj"].startswith("gated-")

    def normal(*shape, std):
        return (rng.standard_normal(shape) * std).astype(np.float32)

    sd = {"shared.weight": normal(vocab, d, std=1.0)}

    def attention(prefix, relative):
        # T5's own init scales (q also by d_kv**-0.5: T5 does not scale scores), so that float32 stays
        # well conditioned at real sizes too
        for n, shape in (("q", (inner, d)), ("k", (inner, d)), ("v", (inner, d)), ("o", (d, inner))):
            std = (d * cfg["d_kv"]) ** -0.5 if n == "q" else shape[1] ** -0.5
            sd[f"{prefix}.{n}.weight"] = normal(*shape, std=std)
        if relative:
            sd[f"{prefix}.relative_attention_bias.weight"] = normal(cfg["relative_attention_num_buckets"],
                                                                    cfg["num_heads"], std=1.0)

    def norm(key):
        sd[key] = (1.0 + 0.2 * rng.standard_normal(d)).astype(np.float32)

    def feed_forward(prefix):
        for n in (("wi_0", "wi_1") if gated else ("wi",)):
            sd[f"{prefix}.DenseReluDense.{n}.weight"] = normal(ff, d, std=d ** -0.5)
        sd[f"{prefix}.DenseReluDense.wo.weight"] = normal(d, ff, std=ff ** -0.5)
        norm(f"{prefix}.layer_norm.weight")

    for i in range(cfg["num_layers"]):
        attention(f"encoder.block.{i}.layer.0.SelfAttention", i == 0)
        norm(f"encoder.block.{i}.layer.0.layer_norm.weight")
        feed_forward(f"encoder.block.{i}.layer.1")
    norm("encoder.final_layer_norm.weight")
    for i in range(cfg.get("num_decoder_layers") or cfg["num_layers"]):
        attention(f"decoder.block.{i}.layer.0.SelfAttention", i == 0)
        norm(f"decoder.block.{i}.layer.0.layer_norm.weight")
        attention(f"decoder.block.{i}.layer.1.EncDecAttention", False)
        norm(f"decoder.block.{i}.layer.1.layer_norm.weight")
        feed_forward(f"decoder.block.{i}.layer.2")
    norm("decoder.final_layer_norm.weight")
    if not cfg["tie_word_embeddings"]:
        # an untied safetensors file holds the embedding copies separately (measured on HF's writer)
        sd["encoder.embed_tokens.weight"] = sd["shared.weight"].copy()
        sd["decoder.embed_tokens.weight"] = sd["shared.weight"].copy()
        sd["lm_head.weight"] = normal(vocab, d, std=d ** -0.5)
    return sd


def write_hf_t5(folder, cfg, sd):
    import safetensors.numpy

    folder.mkdir(parents=True, exist_ok=True)
    safetensors.numpy.save_file(sd, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(cfg))
    return folder


def _check_import(paddle, tmp_path, cfg, seed):
    from ppmerge.models.hf_t5 import load_folder
    from ppmerge.models.t5 import build_t5, load_t5_state_dict

    rng = np.random.default_rng(seed)
    sd = random_hf_t5(cfg, rng)
    folder = write_hf_t5(tmp_path / f"hf_{seed}", cfg, sd)
    fields, converted = load_folder(folder)
    assert fields["tie_word_embeddings"] == cfg["tie_word_embeddings"]
    assert ("lm_head.weight" in converted) == (not cfg["tie_word_embeddings"])
    model = build_t5(fields)
    load_t5_state_dict(model, converted, source=str(folder))
    model.eval()

    # Encoder inputs of different lengths, right-padded with pad 0 and masked; 8 buckets: lengths far past
    # the exact buckets (max_exact 2 / 4) so the logarithmic buckets and the last-bucket clip are exercised.
    lengths = [23, 9, 15]
    dec_len = 13
    enc = np.zeros((3, max(lengths)), dtype=np.int64)
    for row, n in enumerate(lengths):
        enc[row, :n] = rng.integers(2, cfg["vocab_size"], size=n)
    dec = np.concatenate([np.zeros((3, 1), np.int64), rng.integers(1, cfg["vocab_size"], size=(3, dec_len - 1))], 1)
    with paddle.no_grad():
        out = model(input_ids=paddle.to_tensor(enc), attention_mask=paddle.to_tensor((enc != 0).astype(np.int64)),
                    decoder_input_ids=paddle.to_tensor(dec), return_dict=True)
    logits = out.logits.numpy()
    assert logits.shape == (3, dec_len, cfg["vocab_size"])
    worst = 0.0
    for row, n in enumerate(lengths):
        expected = numpy_t5_logits(sd, cfg, enc[row, :n], dec[row])
        assert np.abs(expected).max() > 1.0  # not a degenerate comparison
        np.testing.assert_allclose(logits[row], expected, atol=1e-4, rtol=0)
        worst = max(worst, float(np.abs(logits[row] - expected).max()))
    return worst


def test_hf_flan_t5_import_matches_numpy_forward(paddle, tmp_path):
    """Flan-T5's shape: gated-gelu (tanh gelu), untied lm_head, more decoder than encoder layers."""
    _check_import(paddle, tmp_path, hf_t5_config(), seed=1)


@pytest.mark.parametrize("proj,act", [("relu", "relu"), ("gated-silu", "silu")])
def test_hf_t5_tied_and_other_activations_match_numpy_forward(paddle, tmp_path, proj, act):
    """Original T5 (relu, tied: only shared.weight stored, output scaled by d_model**-0.5) and gated-silu."""
    cfg = hf_t5_config(feed_forward_proj=proj, dense_act_fn=act, is_gated_act=proj.startswith("gated"),
                       tie_word_embeddings=True, num_decoder_layers=None)
    _check_import(paddle, tmp_path, cfg, seed=2)


def test_bf16_file_and_tied_lm_head_copy(tmp_path):
    """A bf16 safetensors file comes out float32 with the same values; a stored tied lm_head equal to
    shared is dropped, a different one refused."""
    import safetensors.paddle

    from ppmerge.models.hf_t5 import load_folder
    from ppmerge.runtime import import_paddle

    paddle = import_paddle()
    cfg = hf_t5_config(tie_word_embeddings=True, num_layers=1, num_decoder_layers=1)
    sd = random_hf_t5(cfg, np.random.default_rng(3))
    sd["lm_head.weight"] = sd["shared.weight"]
    folder = tmp_path / "bf16"
    folder.mkdir()
    tensors = {k: paddle.to_tensor(v).astype("bfloat16") for k, v in sd.items()}
    safetensors.paddle.save_file(tensors, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(cfg))
    fields, converted = load_folder(folder)
    assert "lm_head.weight" not in converted and converted["t5.shared.weight"].dtype == np.float32
    q = "t5.encoder.block.0.layer.0.SelfAttention.q.weight"
    expected = tensors["encoder.block.0.layer.0.SelfAttention.q.weight"].astype("float32").numpy().T
    np.testing.assert_array_equal(converted[q], expected)

    tensors["lm_head.weight"] = (tensors["lm_head.weight"].astype("float32") + 1).astype("bfloat16")
    safetensors.paddle.save_file(tensors, str(folder / "model.safetensors"))
    with pytest.raises(CheckpointError, match="lm_head.weight differs from shared.weight"):
        load_folder(folder)


def test_hf_t5_refusals(tmp_path):
    from ppmerge.models.hf_t5 import load_folder

    cfg = hf_t5_config(num_layers=1, num_decoder_layers=1)
    sd = random_hf_t5(cfg, np.random.default_rng(4))

    def attempt(name, config=cfg, state=sd, match=None):
        folder = write_hf_t5(tmp_path / name, config, state)
        with pytest.raises(CheckpointError, match=match):
            load_folder(folder)

    attempt("gelu", hf_t5_config(feed_forward_proj="gelu", num_layers=1, num_decoder_layers=1),
            match="feed_forward_proj 'gelu'")
    attempt("act", hf_t5_config(dense_act_fn="gelu", num_layers=1, num_decoder_layers=1), match="dense_act_fn")
    attempt("umt5", dict(cfg, model_type="umt5"), match="model_type 'umt5'")
    attempt("pad", dict(cfg, decoder_start_token_id=5), match="decoder_start_token_id")
    attempt("distance", dict(cfg, relative_attention_max_distance=20), match="relative_attention_max_distance 20")
    attempt("nohead", cfg, {k: v for k, v in sd.items() if k != "lm_head.weight"}, match="lm_head.weight is missing")
    attempt("extra", cfg, dict(sd, **{"encoder.block.0.layer.0.SelfAttention.q.bias": np.zeros(32, np.float32)}),
            match="q.bias")
    attempt("missing", cfg, {k: v for k, v in sd.items() if "wi_1" not in k},
            match="t5.encoder.block.0.layer.1.DenseReluDense.wi_1.weight")
    attempt("shape", hf_t5_config(num_layers=1, num_decoder_layers=1, d_ff=50), sd, match="wi_0.weight has shape")
    bad = dict(sd, **{"decoder.embed_tokens.weight": sd["shared.weight"] + 1})
    attempt("embed", cfg, bad, match="decoder.embed_tokens.weight differs")

    torch_only = tmp_path / "torch"
    torch_only.mkdir()
    (torch_only / "config.json").write_text(json.dumps(cfg))
    (torch_only / "pytorch_model.bin").write_bytes(b"not read")
    with pytest.raises(CheckpointError, match="pytorch_model.bin.*PyTorch"):
        load_folder(torch_only)
    with pytest.raises(CheckpointError, match="no config.json"):
        load_folder(tmp_path)
    (tmp_path / "badjson").mkdir()
    (tmp_path / "badjson" / "config.json").write_text("{")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_folder(tmp_path / "badjson")


def test_load_t5_state_dict_checks(paddle):
    from ppmerge.models.t5 import build_t5, load_t5_state_dict

    model = build_t5({"name": "t5-tiny", "vocab_size": 30, "num_layers": 1})
    sd = {k: v.numpy() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError, match="lm_head.weight.*missing"):
        load_t5_state_dict(model, {k: v for k, v in sd.items() if k != "lm_head.weight"})
    with pytest.raises(CheckpointError, match="t5.decoder.embed_tokens.weight differs"):
        load_t5_state_dict(model, dict(sd, **{"t5.decoder.embed_tokens.weight": sd["t5.shared.weight"] * 2}))
    with pytest.raises(CheckpointError, match="lm_head.weight has shape"):
        load_t5_state_dict(model, dict(sd, **{"lm_head.weight": sd["lm_head.weight"][:, :5]}))
    new = {k: (v + 0.5).astype(np.float16) if v.dtype == np.float32 else v for k, v in sd.items()}
    load_t5_state_dict(model, new)
    after = model.state_dict()
    for key in sd:
        np.testing.assert_array_equal(after[key].numpy(), new[key].astype(np.float32))


def test_paddlenlp_save_pretrained_folder_and_shared_embedding_only(paddle, tmp_path):
    """A paddlenlp save_pretrained T5 folder (keys already ours) loads as it is; a state dict that keeps
    only t5.shared.weight (a merge may drop the two copies) loads too."""
    from ppmerge.models.hf_t5 import load_folder
    from ppmerge.models.t5 import build_t5, load_t5_state_dict

    paddle.seed(3)
    cfg = {"name": "t5-tiny", "vocab_size": 40, "num_layers": 1}
    model = build_t5(cfg)
    expected = {k: v.numpy() for k, v in model.state_dict().items()}
    for safe in (False, True):
        folder = tmp_path / f"pn_{safe}"
        model.save_pretrained(str(folder), safe_serialization=safe)
        fields, sd = load_folder(folder)
        assert fields["d_model"] == 64 and fields["num_layers"] == 1 and fields["vocab_size"] == 40
        assert sorted(sd) == sorted(expected)
        for key, value in expected.items():
            np.testing.assert_array_equal(sd[key], value)
    paddle.seed(4)
    other = build_t5(cfg)
    only_shared = {k: v for k, v in expected.items() if ".embed_tokens." not in k}
    load_t5_state_dict(other, only_shared)
    for key, value in other.state_dict().items():
        np.testing.assert_array_equal(value.numpy(), expected[key])
