"""Hugging Face T5 / Flan-T5 (`T5ForConditionalGeneration`) folder → our (paddlenlp) T5 key layout.

HF key `X` becomes `t5.X` (`lm_head.weight` stays `lm_head.weight`). Every Linear weight (`q k v o
wi wi_0 wi_1 wo lm_head`) is transposed: torch's `[out, in]` → Paddle's `[in, out]`; `shared`,
`embed_tokens` and `relative_attention_bias` are copied as they are. A safetensors file of a tied model
usually holds only `shared.weight` (the embed_tokens copies and the tied lm_head are the same tensor),
an untied one (Flan-T5) all of `shared`, `encoder/decoder.embed_tokens` and `lm_head`.

What paddlenlp's T5 computes and this import therefore accepts: `feed_forward_proj` relu, gated-gelu
(tanh gelu, HF's "gelu_new") or gated-silu; relative attention bias in block 0 of each stack (T5 / mT5;
not UMT5's per-layer bias) with relative_attention_max_distance 128 (paddlenlp 3.0.0b4 ignores the
setting and always uses 128); tied or untied lm_head (tied: the decoder output is scaled by d_model**-0.5
before the shared embedding, in both libraries)."""
import os

import numpy as np

from ppmerge.errors import CheckpointError
from ppmerge.models.t5 import FEED_FORWARD_PROJ, PADDLENLP_MAX_DISTANCE, check_t5_state_dict, resolve_t5_arch

_LINEAR_NAMES = ("q", "k", "v", "o", "wi", "wi_0", "wi_1", "wo")
_MODEL_TYPES = ("t5", "mt5")


def read_config(folder):
    from ppmerge.models.hf_gpt2 import read_config as read_json_config

    return read_json_config(folder)


def model_config(hf_config, path="config.json"):
    """Our `Model` section fields (paddlenlp T5Config names) for an HF T5 config.json; anything paddlenlp's
    T5 cannot compute is a CheckpointError naming the key."""
    model_type = hf_config.get("model_type", "t5")
    if model_type not in _MODEL_TYPES:
        raise CheckpointError(f"{path}: model_type {model_type!r} is not supported; expected one of "
                              f"{', '.join(_MODEL_TYPES)} (T5ForConditionalGeneration)")
    if not hf_config.get("is_encoder_decoder", True):
        raise CheckpointError(f"{path}: is_encoder_decoder is false; expected an encoder-decoder T5")
    proj = hf_config.get("feed_forward_proj", "relu")
    if proj not in FEED_FORWARD_PROJ:
        raise CheckpointError(f"{path}: feed_forward_proj {proj!r} is not supported; paddlenlp's T5 computes "
                              f"{', '.join(FEED_FORWARD_PROJ)}")
    act = hf_config.get("dense_act_fn")
    if act is not None and act != FEED_FORWARD_PROJ[proj]:
        raise CheckpointError(f"{path}: dense_act_fn {act!r} does not match feed_forward_proj {proj!r} "
                              f"(paddlenlp computes {FEED_FORWARD_PROJ[proj]!r} for it)")
    gated = hf_config.get("is_gated_act")
    if gated is not None and bool(gated) != proj.startswith("gated-"):
        raise CheckpointError(f"{path}: is_gated_act {gated!r} does not match feed_forward_proj {proj!r}")
    for key in ("d_model", "d_kv", "d_ff", "num_layers", "num_heads", "vocab_size"):
        if key not in hf_config:
            raise CheckpointError(f"{path}: {key} is missing (expected an HF T5 config.json)")
    fields = {
        "name": "flan-t5-base",
        "vocab_size": hf_config["vocab_size"],
        "d_model": hf_config["d_model"],
        "d_kv": hf_config["d_kv"],
        "d_ff": hf_config["d_ff"],
        "num_layers": hf_config["num_layers"],
        "num_decoder_layers": hf_config.get("num_decoder_layers") or hf_config["num_layers"],
        "num_heads": hf_config["num_heads"],
        "relative_attention_num_buckets": hf_config.get("relative_attention_num_buckets", 32),
        "relative_attention_max_distance": hf_config.get("relative_attention_max_distance", 128),
        "dropout_rate": hf_config.get("dropout_rate", 0.1),
        "layer_norm_epsilon": hf_config.get("layer_norm_epsilon", 1e-6),
        "initializer_factor": hf_config.get("initializer_factor", 1.0),
        "feed_forward_proj": proj,
        "tie_word_embeddings": bool(hf_config.get("tie_word_embeddings", True)),  # HF's default
    }
    for key in ("pad_token_id", "decoder_start_token_id"):
        if hf_config.get(key, 0) != 0:
            raise CheckpointError(f"{path}: {key} is {hf_config[key]}; ppmerge's T5 uses 0 (T5's pad)")
    if hf_config.get("eos_token_id", 1) != 1:
        raise CheckpointError(f"{path}: eos_token_id is {hf_config['eos_token_id']}; ppmerge's T5 uses 1 (T5's </s>)")
    if fields["relative_attention_max_distance"] != PADDLENLP_MAX_DISTANCE:
        raise CheckpointError(f"{path}: relative_attention_max_distance {fields['relative_attention_max_distance']} "
                              f"is not supported; paddlenlp's T5 always uses {PADDLENLP_MAX_DISTANCE}")
    resolve_t5_arch(fields)  # value checks
    return fields


def convert_state_dict(state_dict, tied, source="model.safetensors"):
    """HF T5 weights (numpy) → our keys. `tied`: config's tie_word_embeddings (then a stored lm_head
    must equal `shared`, and it is dropped). Missing embed_tokens copies are filled from `shared`;
    copies that differ from it are an error (they are one parameter in both libraries)."""
    out = {}
    for key, value in state_dict.items():
        if key == "lm_head.weight":
            out[key] = value
            continue
        head = key.split(".", 1)[0]
        if head not in ("shared", "encoder", "decoder"):
            raise CheckpointError(f"{source}: unexpected Hugging Face T5 weight {key!r}")
        if not key.endswith(".weight"):
            raise CheckpointError(f"{source}: unexpected Hugging Face T5 weight {key!r} (T5 layers have no biases)")
        module = key[:-len(".weight")].rsplit(".", 1)[-1]
        if module in _LINEAR_NAMES:
            value = np.ascontiguousarray(np.asarray(value).T)
        out["t5." + key] = value
    if "t5.shared.weight" not in out:
        raise CheckpointError(f"{source}: the shared embedding 'shared.weight' is missing")
    shared = np.asarray(out["t5.shared.weight"])
    for stack in ("encoder", "decoder"):
        key = f"t5.{stack}.embed_tokens.weight"
        if key not in out:
            out[key] = out["t5.shared.weight"]
        elif not np.array_equal(np.asarray(out[key]), shared):
            raise CheckpointError(f"{source}: {stack}.embed_tokens.weight differs from shared.weight; T5 shares one "
                                  f"embedding between encoder and decoder")
    if tied and "lm_head.weight" in out:
        lm_head = out.pop("lm_head.weight")
        if not np.array_equal(np.asarray(lm_head), shared):
            raise CheckpointError(f"{source}: lm_head.weight differs from shared.weight but config.json says "
                                  f"tie_word_embeddings: true")
    elif not tied:
        if "lm_head.weight" not in out:
            raise CheckpointError(f"{source}: lm_head.weight is missing but config.json says tie_word_embeddings: "
                                  f"false")
        out["lm_head.weight"] = np.ascontiguousarray(np.asarray(out["lm_head.weight"]).T)
    return out


def find_weights(folder):
    """model.safetensors of an HF folder, or model_state.pdparams of a paddlenlp save_pretrained folder
    (pytorch_model.bin needs torch: refused with a message)."""
    for name in ("model.safetensors", "model_state.pdparams"):
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            return path
    if os.path.isfile(os.path.join(folder, "model.safetensors.index.json")):
        raise CheckpointError(f"{folder}: sharded safetensors (model.safetensors.index.json) are not supported; "
                              f"save the model as one model.safetensors")
    if os.path.isfile(os.path.join(folder, "pytorch_model.bin")):
        raise CheckpointError(f"{folder}: only pytorch_model.bin found; reading it needs PyTorch, which ppmerge does "
                              f"not install. Convert it to model.safetensors first (e.g. with transformers: "
                              f"save_pretrained(..., safe_serialization=True))")
    raise CheckpointError(f"{folder}: no model.safetensors found (expected a Hugging Face T5 folder)")


def is_paddle_layout(state_dict):
    """True for paddlenlp's own T5 keys (`t5.…`), as its save_pretrained writes them."""
    return any(key.startswith("t5.") for key in state_dict)


def from_paddle_layout(state_dict, tied, source="model_state.pdparams"):
    """A paddlenlp-layout T5 state dict (already our layout): embed_tokens copies filled, a tied lm_head
    dropped when it equals `t5.shared.weight` (refused otherwise)."""
    from ppmerge.models.t5 import fill_t5_embeddings

    out = fill_t5_embeddings(dict(state_dict))
    if tied and "lm_head.weight" in out:
        lm_head = out.pop("lm_head.weight")
        if np.shape(lm_head) != np.shape(out.get("t5.shared.weight")) or \
                not np.array_equal(np.asarray(lm_head), np.asarray(out["t5.shared.weight"])):
            raise CheckpointError(f"{source}: lm_head.weight is stored but config.json says tie_word_embeddings: true")
    return out


def is_hf_t5_folder(folder):
    """True for a folder whose config.json says model_type t5 / mt5 (or names T5 architectures)."""
    path = os.path.join(os.fspath(folder), "config.json")
    if not os.path.isfile(path):
        return False
    try:
        cfg = read_config(os.fspath(folder))
    except CheckpointError:
        return False
    archs = " ".join(cfg.get("architectures") or [])
    return cfg.get("model_type") in _MODEL_TYPES or "T5" in archs


def load_folder(folder, dtype="float32"):
    """(Model fields, state dict in our keys) for a local HF T5 folder (or a paddlenlp save_pretrained
    T5 folder: config.json + model_state.pdparams / model.safetensors in paddlenlp's keys); floating weights cast to
    `dtype` (None keeps the file's; bf16 stays uint16 bits, paddle's convention)."""
    from ppmerge.models.checkpoint import load_numpy_state_dict, to_float32

    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        raise CheckpointError(f"{folder}: expected a Hugging Face T5 folder (config.json + model.safetensors)")
    config_path = os.path.join(folder, "config.json")
    fields = model_config(read_config(folder), config_path)
    weights = find_weights(folder)
    state_dict = load_numpy_state_dict(weights)
    if is_paddle_layout(state_dict):  # paddlenlp's save_pretrained: keys already ours
        state_dict = from_paddle_layout(state_dict, fields["tie_word_embeddings"], source=weights)
    else:
        state_dict = convert_state_dict(state_dict, fields["tie_word_embeddings"], source=weights)
    check_t5_state_dict(state_dict, fields, source=weights)
    if dtype == "float32":
        done = {}  # id → cast array: the embedding keys may share one array; cast it once
        for key, value in state_dict.items():
            if value.dtype.kind == "f" or value.dtype == np.uint16:
                if id(value) not in done:
                    done[id(value)] = (value, to_float32(value))  # the original kept alive: ids stay unique
                state_dict[key] = done[id(value)][1]
    return fields, state_dict
