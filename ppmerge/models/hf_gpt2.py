"""Hugging Face GPT-2 (`GPT2Model`, `GPT2LMHeadModel`, `GPT2ForSequenceClassification`) → ours.

HF's Conv1D stores weights `[in, out]` like Paddle's Linear, so nothing is transposed except the
classifier `score.weight`, an nn.Linear `[C, H]`. `c_attn` `[H, 3H]` holds q | k | v as three
contiguous blocks. GPT-2's `gelu_new` is the tanh approximation, which paddlenlp's GPT layer uses
too (it calls gelu with approximate=True); paddlenlp's LayerNorm epsilon is fixed at 1e-5."""
import json
import os

import numpy as np

from ppmerge.errors import CheckpointError

_LAYER_NAMES = {
    "ln_1": "norm1",
    "ln_2": "norm2",
    "attn.c_proj": "self_attn.out_proj",
    "mlp.c_fc": "linear1",
    "mlp.c_proj": "linear2",
}
_TANH_GELUS = ("gelu_new", "gelu_pytorch_tanh")


def is_hf_gpt2(state_dict):
    return any(key.endswith(("wte.weight", ".attn.c_attn.weight")) for key in state_dict)


def convert_state_dict(state_dict):
    """HF GPT-2 weights (numpy) → our keys; attention mask buffers and the tied lm_head dropped."""
    out = {}
    for key, value in state_dict.items():
        name = key[len("transformer."):] if key.startswith("transformer.") else key
        if name.startswith("lm_head.") or name.endswith((".attn.bias", ".attn.masked_bias")):
            continue
        if name == "score.weight":
            out["score.weight"] = np.ascontiguousarray(np.asarray(value).T)  # nn.Linear [C, H] → [H, C]
        elif name in ("wte.weight", "wpe.weight"):
            kind = "word" if name == "wte.weight" else "position"
            out[f"gpt.embeddings.{kind}_embeddings.weight"] = value
        elif name.startswith("ln_f."):
            out["gpt.decoder.norm." + name.split(".", 1)[1]] = value
        elif name.startswith("h."):
            _, index, rest = name.split(".", 2)
            module, param = rest.rsplit(".", 1)
            prefix = f"gpt.decoder.layers.{index}."
            if module == "attn.c_attn":
                value = np.asarray(value)
                for part, block in zip(("q_proj", "k_proj", "v_proj"), np.split(value, 3, axis=-1)):
                    out[f"{prefix}self_attn.{part}.{param}"] = np.ascontiguousarray(block)
            elif module in _LAYER_NAMES:
                out[f"{prefix}{_LAYER_NAMES[module]}.{param}"] = value
            else:
                raise CheckpointError(f"unexpected Hugging Face GPT-2 weight {key!r}")
        else:
            raise CheckpointError(f"unexpected Hugging Face GPT-2 weight {key!r}")
    return out


def read_config(folder):
    path = os.path.join(folder, "config.json")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise CheckpointError(f"Hugging Face folder {folder} has no config.json") from None
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc})") from None


def model_config(hf_config, path="config.json"):
    """Our `Model` section fields for an HF GPT-2 config.json; refuses what our model cannot compute."""
    activation = hf_config.get("activation_function", "gelu_new")
    if activation not in _TANH_GELUS:
        raise CheckpointError(f"{path}: activation_function {activation!r} is not supported; paddlenlp's GPT "
                              f"computes the tanh gelu ({' / '.join(_TANH_GELUS)})")
    epsilon = hf_config.get("layer_norm_epsilon", 1e-5)
    if abs(epsilon - 1e-5) > 1e-12:
        raise CheckpointError(f"{path}: layer_norm_epsilon {epsilon} is not supported; paddlenlp's GPT uses 1e-5")
    if hf_config.get("scale_attn_by_inverse_layer_idx") or not hf_config.get("scale_attn_weights", True):
        raise CheckpointError(f"{path}: only GPT-2's standard 1/sqrt(head_dim) attention scaling is supported")
    hidden = hf_config["n_embd"]
    return {
        "name": "gpt2-medium-en",
        "vocab_size": hf_config.get("vocab_size", 50257),
        "hidden_size": hidden,
        "num_layers": hf_config["n_layer"],
        "num_attention_heads": hf_config["n_head"],
        "ffn_hidden_size": hf_config.get("n_inner") or 4 * hidden,
        "max_position_embeddings": hf_config.get("n_positions", 1024),
        "hidden_dropout_prob": hf_config.get("resid_pdrop", 0.1),
        "attention_probs_dropout_prob": hf_config.get("attn_pdrop", 0.1),
        "initializer_range": hf_config.get("initializer_range", 0.02),
    }


def find_weights(folder):
    """The weights file of an HF folder: model.safetensors (PyTorch .bin files need torch: refused)."""
    path = os.path.join(folder, "model.safetensors")
    if os.path.isfile(path):
        return path
    if os.path.isfile(os.path.join(folder, "pytorch_model.bin")):
        raise CheckpointError(f"{folder}: only pytorch_model.bin found; reading it needs PyTorch, which ppmerge does "
                              f"not install. Convert it to model.safetensors first (e.g. with transformers: "
                              f"save_pretrained(..., safe_serialization=True))")
    raise CheckpointError(f"{folder}: no model.safetensors found (expected a Hugging Face GPT-2 folder)")


def load_folder(folder):
    """(model_cfg, num_classes or None, state dict in our keys) for a local HF GPT-2 folder."""
    from ppmerge.models.checkpoint import load_numpy_state_dict

    cfg = read_config(folder)
    model_cfg = model_config(cfg, os.path.join(folder, "config.json"))
    state_dict = convert_state_dict(load_numpy_state_dict(find_weights(folder)))
    if "score.weight" in state_dict:
        num_classes = state_dict["score.weight"].shape[1]
    else:
        num_classes = len(cfg["id2label"]) if "id2label" in cfg else None
    return model_cfg, num_classes, state_dict
