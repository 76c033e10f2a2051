"""T5 / Flan-T5 architecture presets, paddlenlp `T5Config` / `T5ForConditionalGeneration`, key layout.

No paddle at import time (presets are read while tools parse their arguments); `make_t5_config` and
`build_t5` import paddlenlp when called.

Our T5 key layout is paddlenlp's `T5ForConditionalGeneration.state_dict()`: `t5.shared.weight`,
`t5.{encoder,decoder}.embed_tokens.weight` (the same parameter as `t5.shared`, listed three times),
`t5.encoder.block.{i}.layer.0.SelfAttention.{q,k,v,o}.weight`, `...layer.0.SelfAttention.
relative_attention_bias.weight` (block 0 only, `[num_buckets, num_heads]`), `...layer.0.layer_norm.weight`,
`...layer.1.DenseReluDense.{wi_0,wi_1,wo}.weight` (gated; `wi` for relu), `...layer.1.layer_norm.weight`,
`t5.encoder.final_layer_norm.weight`; the decoder has `layer.1.EncDecAttention.{q,k,v,o}` and its
feed-forward in `layer.2`; `lm_head.weight` `[d_model, vocab]` when the embeddings are untied. Every
Linear weight is `[in, out]` (Paddle)."""
from ppmerge.errors import ConfigError, CheckpointError

# Special token ids of T5's sentencepiece vocabulary. paddlenlp's forward with labels asserts unless
# bos = pad = 0 and decoder_start = 0 (measured), which is also what HF's T5 uses.
T5_PAD_ID = 0
T5_EOS_ID = 1
T5_UNK_ID = 2

T5_FIELDS = ("vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_decoder_layers", "num_heads",
             "relative_attention_num_buckets", "relative_attention_max_distance", "dropout_rate",
             "layer_norm_epsilon", "initializer_factor", "feed_forward_proj", "tie_word_embeddings")

# paddlenlp 3.0.0b4's T5Attention.compute_bias does not pass relative_attention_max_distance to its bucket
# function, which then uses its default 128 (HF passes the config's value): only 128 computes the same.
PADDLENLP_MAX_DISTANCE = 128

# feed_forward_proj values paddlenlp's T5 computes, with the activation each one applies
# (HF's `dense_act_fn` for the same config: gated-gelu is the tanh gelu, "gelu_new").
FEED_FORWARD_PROJ = {"gated-gelu": "gelu_new", "relu": "relu", "gated-silu": "silu"}

_FLAN_T5_BASE = dict(
    vocab_size=32128, d_model=768, d_kv=64, d_ff=2048, num_layers=12, num_decoder_layers=12, num_heads=12,
    relative_attention_num_buckets=32, relative_attention_max_distance=128, dropout_rate=0.1,
    layer_norm_epsilon=1e-6, initializer_factor=1.0, feed_forward_proj="gated-gelu", tie_word_embeddings=False,
)

T5_PRESETS = {
    "flan-t5-small": dict(_FLAN_T5_BASE, d_model=512, d_ff=1024, num_layers=8, num_decoder_layers=8, num_heads=6),
    "flan-t5-base": _FLAN_T5_BASE,
    "flan-t5-large": dict(_FLAN_T5_BASE, d_model=1024, d_ff=2816, num_layers=24, num_decoder_layers=24,
                          num_heads=16),
    # Tests and the demo: the vocabulary is the size of the run-time sentencepiece model (override
    # Model.vocab_size to match it), no dropout.
    "t5-tiny": dict(_FLAN_T5_BASE, vocab_size=1000, d_model=64, d_kv=16, d_ff=128, num_layers=2,
                    num_decoder_layers=2, num_heads=4, dropout_rate=0.0),
}

# GPT-style names in the shared `Model` section that mean the same T5 field.
_ALIASES = {"hidden_size": "d_model", "num_attention_heads": "num_heads", "ffn_hidden_size": "d_ff"}
# GPT-only fields: setting one for a T5 model would be ignored, so it is refused.
_NOT_T5 = ("max_position_embeddings", "type_vocab_size", "hidden_dropout_prob", "attention_probs_dropout_prob",
           "initializer_range", "fused_linear")


def is_t5_preset(name):
    return isinstance(name, str) and name.strip().lower() in T5_PRESETS


def t5_preset_name(name):
    key = str(name).strip().lower()
    if key not in T5_PRESETS:
        raise ConfigError(f"Model.name: unknown T5 architecture {name!r}; expected one of {', '.join(T5_PRESETS)}")
    return key


def resolve_t5_arch(model_cfg):
    """The full T5 architecture (dict of T5_FIELDS) for a `Model` section or a bare preset name.

    Explicit non-null fields override the preset's; `hidden_size` / `num_attention_heads` /
    `ffn_hidden_size` are accepted for `d_model` / `num_heads` / `d_ff`. No paddle."""
    if isinstance(model_cfg, str):
        model_cfg = {"name": model_cfg}
    arch = dict(T5_PRESETS[t5_preset_name(model_cfg.get("name") or "flan-t5-base")])
    for alias, field in _ALIASES.items():
        if model_cfg.get(alias) is not None:
            if model_cfg.get(field) is not None and model_cfg[field] != model_cfg[alias]:
                raise ConfigError(f"Model.{alias} ({model_cfg[alias]}) and Model.{field} ({model_cfg[field]}) "
                                  f"name the same T5 size and differ; set one")
            arch[field] = model_cfg[alias]
    for key in _NOT_T5:
        if model_cfg.get(key) is not None:
            raise ConfigError(f"Model.{key} is a GPT field and has no meaning for the T5 model "
                              f"{arch_name(model_cfg)}; remove it (T5 fields: {', '.join(T5_FIELDS)})")
    explicit_decoder = model_cfg.get("num_decoder_layers") is not None
    for field in T5_FIELDS:
        if model_cfg.get(field) is not None:
            arch[field] = model_cfg[field]
    if model_cfg.get("num_layers") is not None and not explicit_decoder:
        arch["num_decoder_layers"] = arch["num_layers"]  # symmetric unless told otherwise (as HF / paddlenlp)
    if arch["feed_forward_proj"] not in FEED_FORWARD_PROJ:
        raise ConfigError(f"Model.feed_forward_proj {arch['feed_forward_proj']!r} is not supported; expected one "
                          f"of {', '.join(FEED_FORWARD_PROJ)}")
    for field in ("vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_decoder_layers", "num_heads",
                  "relative_attention_num_buckets", "relative_attention_max_distance"):
        if not isinstance(arch[field], int) or isinstance(arch[field], bool) or arch[field] < 1:
            raise ConfigError(f"Model.{field} must be a positive integer, got {arch[field]!r}")
    if arch["relative_attention_max_distance"] != PADDLENLP_MAX_DISTANCE:
        raise ConfigError(f"Model.relative_attention_max_distance {arch['relative_attention_max_distance']} is not "
                          f"supported: paddlenlp's T5 always buckets relative positions up to "
                          f"{PADDLENLP_MAX_DISTANCE} (it ignores this setting)")
    if not 0.0 <= float(arch["dropout_rate"]) < 1.0:
        raise ConfigError(f"Model.dropout_rate must be in [0, 1), got {arch['dropout_rate']!r}")
    return arch


# T5 field → the shared `Model` section's name for it (the schema's GPT-style keys), where one exists.
SCHEMA_NAMES = {"d_model": "hidden_size", "num_heads": "num_attention_heads", "d_ff": "ffn_hidden_size"}


def t5_model_overrides(arch):
    """The shortest `Model` section for a full T5 architecture: `name` = the preset it differs least
    from, plus the fields that differ (`hidden_size` / `num_attention_heads` / `ffn_hidden_size` for
    d_model / num_heads / d_ff; `num_decoder_layers` only when it is not `num_layers`)."""
    arch = {field: arch[field] for field in T5_FIELDS}

    def diff(preset):
        out = {f: v for f, v in arch.items() if preset[f] != v}
        if "num_layers" in out:  # num_layers alone sets both stacks
            if arch["num_decoder_layers"] == arch["num_layers"]:
                out.pop("num_decoder_layers", None)
            else:
                out["num_decoder_layers"] = arch["num_decoder_layers"]
        return out

    name = min(T5_PRESETS, key=lambda n: (len(diff(T5_PRESETS[n])), n != "flan-t5-base"))
    fields = {"name": name}
    fields.update({SCHEMA_NAMES.get(f, f): v for f, v in diff(T5_PRESETS[name]).items()})
    return fields


def arch_name(model_cfg):
    return str(model_cfg.get("name") if isinstance(model_cfg, dict) else model_cfg)


def make_t5_config(model_cfg):
    """paddlenlp `T5Config` for a `Model` section (dict) or a preset name: pad 0, eos 1, bos 0,
    decoder_start 0 (paddlenlp's loss asserts otherwise)."""
    from ppmerge.runtime import import_paddlenlp_transformers

    transformers = import_paddlenlp_transformers()
    arch = resolve_t5_arch(model_cfg)
    return transformers.T5Config(
        **arch,
        is_encoder_decoder=True,
        pad_token_id=T5_PAD_ID,
        eos_token_id=T5_EOS_ID,
        bos_token_id=T5_PAD_ID,
        decoder_start_token_id=T5_PAD_ID,
    )


def build_t5(model_cfg):
    """A freshly initialised paddlenlp `T5ForConditionalGeneration` (seed paddle before calling)."""
    from ppmerge.runtime import import_paddlenlp_transformers

    transformers = import_paddlenlp_transformers()
    return transformers.T5ForConditionalGeneration(make_t5_config(model_cfg))


def t5_state_shapes(arch):
    """{key: shape} of our T5 layout for an architecture dict (`resolve_t5_arch`), without paddle.

    Equals `{k: v.shape for k, v in build_t5(arch).state_dict().items()}` (tested)."""
    if not isinstance(arch, dict) or "d_model" not in arch:
        arch = resolve_t5_arch(arch)
    d, inner, ff = arch["d_model"], arch["num_heads"] * arch["d_kv"], arch["d_ff"]
    vocab, heads, buckets = arch["vocab_size"], arch["num_heads"], arch["relative_attention_num_buckets"]
    gated = arch["feed_forward_proj"].startswith("gated-")
    shapes = {"t5.shared.weight": (vocab, d), "t5.encoder.embed_tokens.weight": (vocab, d)}

    def attention(prefix, relative):
        for name, shape in (("q", (d, inner)), ("k", (d, inner)), ("v", (d, inner)), ("o", (inner, d))):
            shapes[f"{prefix}.{name}.weight"] = shape
        if relative:
            shapes[f"{prefix}.relative_attention_bias.weight"] = (buckets, heads)

    def feed_forward(prefix):
        names = (("wi_0", (d, ff)), ("wi_1", (d, ff))) if gated else (("wi", (d, ff)),)
        for name, shape in names + (("wo", (ff, d)),):
            shapes[f"{prefix}.DenseReluDense.{name}.weight"] = shape
        shapes[f"{prefix}.layer_norm.weight"] = (d,)

    for i in range(arch["num_layers"]):
        p = f"t5.encoder.block.{i}.layer"
        attention(f"{p}.0.SelfAttention", i == 0)
        shapes[f"{p}.0.layer_norm.weight"] = (d,)
        feed_forward(f"{p}.1")
    shapes["t5.encoder.final_layer_norm.weight"] = (d,)
    shapes["t5.decoder.embed_tokens.weight"] = (vocab, d)
    for i in range(arch["num_decoder_layers"]):
        p = f"t5.decoder.block.{i}.layer"
        attention(f"{p}.0.SelfAttention", i == 0)
        shapes[f"{p}.0.layer_norm.weight"] = (d,)
        attention(f"{p}.1.EncDecAttention", False)
        shapes[f"{p}.1.layer_norm.weight"] = (d,)
        feed_forward(f"{p}.2")
    shapes["t5.decoder.final_layer_norm.weight"] = (d,)
    if not arch["tie_word_embeddings"]:
        shapes["lm_head.weight"] = (d, vocab)
    return shapes


# The keys that name the one shared embedding parameter (paddlenlp lists it three times).
EMBEDDING_KEYS = ("t5.shared.weight", "t5.encoder.embed_tokens.weight", "t5.decoder.embed_tokens.weight")


def fill_t5_embeddings(state_dict):
    """`state_dict` with the embed_tokens copies of `t5.shared.weight` added where missing (they are one
    parameter: a merge may keep only `t5.shared.weight`). The input is not changed."""
    if "t5.shared.weight" not in state_dict or all(key in state_dict for key in EMBEDDING_KEYS):
        return state_dict
    out = dict(state_dict)
    for key in EMBEDDING_KEYS[1:]:
        out.setdefault(key, state_dict["t5.shared.weight"])
    return out


def check_t5_state_dict(state_dict, arch, source="checkpoint"):
    """CheckpointError naming the first missing / unexpected / mis-shaped key against `arch`
    (missing embed_tokens copies of `t5.shared.weight` are fine)."""
    _check_keys(fill_t5_embeddings(state_dict), t5_state_shapes(arch), source, "architecture",
                " (check Model.vocab_size / d_model / d_ff / num_heads)")


def _check_keys(state_dict, shapes, source, what, hint=""):
    """CheckpointError naming the first key of `shapes` missing from `state_dict`, then the first key it
    does not know or whose shape differs (`what`: "architecture" or "model")."""
    for key in shapes:
        if key not in state_dict:
            raise CheckpointError(f"{source}: T5 weight {key!r} is missing (expected shape {list(shapes[key])})")
    for key, value in state_dict.items():
        if key not in shapes:
            raise CheckpointError(f"{source}: unexpected T5 weight {key!r} (not part of the {what})")
        if tuple(value.shape) != shapes[key]:
            raise CheckpointError(f"{source}: {key} has shape {list(value.shape)} but the {what} needs "
                                  f"{list(shapes[key])}{hint}")


def load_t5_state_dict(model, state_dict, source="checkpoint"):
    """Set the weights of a paddlenlp T5ForConditionalGeneration from our layout (numpy or paddle;
    fp16 / bf16 cast to the model's dtype). Every key is checked first (name and shape); the embed_tokens
    copies of `t5.shared.weight` may be absent, and must be equal to it when present."""
    import numpy as np

    from ppmerge.models.checkpoint import to_float32
    from ppmerge.runtime import import_paddle

    paddle = import_paddle()
    state_dict = fill_t5_embeddings(state_dict)
    params = model.state_dict()
    _check_keys(state_dict, {key: tuple(value.shape) for key, value in params.items()}, source, "model")
    shared = [key for key in EMBEDDING_KEYS if key in params]
    first = np.asarray(state_dict[shared[0]]) if shared else None
    for key in shared[1:]:
        if not np.array_equal(np.asarray(state_dict[key]), first):
            raise CheckpointError(f"{source}: {key} differs from {shared[0]}; in the T5 model they are one shared "
                                  f"embedding parameter (merge them as one key)")
    for key, param in params.items():
        if key in shared and key != "t5.shared.weight":
            continue  # the same parameter as t5.shared.weight
        value = state_dict[key]
        if not isinstance(value, paddle.Tensor):
            value = np.asarray(value)
            if value.dtype.kind == "f" or value.dtype == np.uint16:
                value = to_float32(value)
            value = paddle.to_tensor(value)
        param.set_value(value if value.dtype == param.dtype else value.astype(param.dtype))
