"""GPT architecture presets and the `Model` config section → paddlenlp `GPTConfig`.

No paddle at import time: tools read presets before argument parsing is done."""
from ppmerge.errors import ConfigError

GPT2_EOS_ID = 50256  # <|endoftext|>: GPT-2's eos, also our pad and bos (paddlenlp defaults to 7 / 0)

_GPT_345M = dict(
    vocab_size=50304,  # GPT-2's 50257 rounded up to a multiple of 128 (Megatron / FleetX)
    hidden_size=1024,
    num_layers=24,
    num_attention_heads=16,
    ffn_hidden_size=4096,
    max_position_embeddings=1024,
    type_vocab_size=16,
    hidden_dropout_prob=0.1,
    attention_probs_dropout_prob=0.1,
    initializer_range=0.02,
    fused_linear=False,
)

ARCH_PRESETS = {
    "gpt-345m": _GPT_345M,
    "gpt2-medium-en": dict(_GPT_345M, vocab_size=50257),
    # Tiny shapes for tests and the demo; the full vocabulary keeps real GPT-2 token ids usable.
    "gpt-tiny": dict(_GPT_345M, hidden_size=64, num_layers=2, num_attention_heads=4, ffn_hidden_size=256,
                     max_position_embeddings=512, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0),
}
ARCH_ALIASES = {"gpt": "gpt-345m"}  # FleetX's `Model.name: GPT`

# T5 presets (flan-t5-small/base/large, t5-tiny) live in ppmerge/models/t5.py; every preset by family:
from ppmerge.models.t5 import T5_PRESETS  # noqa: E402  (no paddle)

PRESET_FAMILIES = {**{name: "gpt" for name in ARCH_PRESETS}, **{name: "t5" for name in T5_PRESETS}}

ARCH_FIELDS = tuple(_GPT_345M)

# Our (FleetX) field names → paddlenlp GPTConfig argument names.
_PADDLENLP_NAMES = {"num_layers": "num_hidden_layers", "ffn_hidden_size": "intermediate_size",
                    "fused_linear": "use_fused_linear"}


def preset_name(name):
    """Canonical preset name for `name` (case-insensitive, alias GPT → gpt-345m)."""
    key = str(name).strip().lower()
    key = ARCH_ALIASES.get(key, key)
    if key not in ARCH_PRESETS:
        valid = ", ".join(list(ARCH_PRESETS) + ["GPT"])
        raise ConfigError(f"Model.name: unknown architecture {name!r}; expected one of {valid}")
    return key


def preset_family(name):
    """"gpt" or "t5": the model family of a preset name (case-insensitive, alias GPT)."""
    key = str(name).strip().lower()
    key = ARCH_ALIASES.get(key, key)
    if key not in PRESET_FAMILIES:
        valid = ", ".join(list(PRESET_FAMILIES) + ["GPT"])
        raise ConfigError(f"Model.name: unknown architecture {name!r}; expected one of {valid}")
    return PRESET_FAMILIES[key]


def resolve_arch(model_cfg):
    """The full architecture (dict of ARCH_FIELDS) for a `Model` section or a bare preset name.

    Explicit non-null fields of the section override the preset's."""
    if isinstance(model_cfg, str):
        model_cfg = {"name": model_cfg}
    arch = dict(ARCH_PRESETS[preset_name(model_cfg.get("name") or "gpt-345m")])
    for field in ARCH_FIELDS:
        if model_cfg.get(field) is not None:
            arch[field] = model_cfg[field]
    if arch["hidden_size"] % arch["num_attention_heads"]:
        raise ConfigError(f"Model.hidden_size {arch['hidden_size']} is not divisible by "
                          f"Model.num_attention_heads {arch['num_attention_heads']}")
    return arch


def make_gpt_config(model_cfg):
    """paddlenlp `GPTConfig` for a `Model` section (dict) or a preset name; eos = pad = bos = 50256."""
    from ppmerge.runtime import import_paddlenlp_transformers

    transformers = import_paddlenlp_transformers()
    arch = resolve_arch(model_cfg)
    kwargs = {_PADDLENLP_NAMES.get(k, k): v for k, v in arch.items()}
    return transformers.GPTConfig(
        **kwargs,
        hidden_activation="gelu",  # paddlenlp's GPT calls it with approximate=True: GPT-2's tanh gelu
        eos_token_id=GPT2_EOS_ID,
        pad_token_id=GPT2_EOS_ID,
        bos_token_id=GPT2_EOS_ID,
        eol_token_id=198,  # "\n" in GPT-2's vocabulary
    )
