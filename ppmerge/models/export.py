"""Our key layout → other toolkits' formats: Hugging Face GPT-2, paddlenlp, FleetX (no paddle at import).

Hugging Face folder (`--to hf`; transformers' `GPT2ForSequenceClassification.from_pretrained(folder)`):
  config.json        GPT2Config: `model_type: gpt2`, `architectures: [GPT2ForSequenceClassification]`
                     (a backbone without a head: `GPT2Model`), n_embd / n_layer / n_head / n_inner /
                     n_positions / vocab_size, `activation_function: gelu_new`, `layer_norm_epsilon: 1e-5`,
                     `num_labels` (as `id2label` / `label2id`: the task's label strings when known),
                     `problem_type` (regression for one output), `pad_token_id` = bos = eos = 50256, `torch_dtype`.
  model.safetensors  `transformer.wte.weight`, `transformer.wpe.weight`, `transformer.h.{i}.{ln_1, attn.c_attn,
                     attn.c_proj, ln_2, mlp.c_fc, mlp.c_proj}.{weight, bias}`, `transformer.ln_f.*`,
                     `score.weight` `[num_labels, n_embd]` (bare `wte.weight`, ... for GPT2Model); metadata
                     `format: pt` (transformers refuses safetensors files without it). Conv1D weights are
                     `[in, out]` like Paddle's Linear; `c_attn` is q | k | v side by side.
  No tokenizer files: the vocabulary is GPT-2's (`AutoTokenizer.from_pretrained("gpt2")`). Note that HF's
  classifier pools the last token that is not `pad_token_id` (50256), so a text that itself ends in
  <|endoftext|> pools differently than ppmerge (which pools at the true length).

paddlenlp folder (`--to paddlenlp`; `paddlenlp.transformers.GPTForSequenceClassification.from_pretrained`):
  config.json (paddlenlp `GPTConfig`, `num_labels`, `architectures`, `dtype`) + model_state.pdparams (our
  keys are paddlenlp's; a backbone alone is written as `GPTModel`, keys without `gpt.`).

FleetX file (`--to fleetx`): model.pdparams with the fused, head-interleaved `qkv_proj` (the exact inverse
of the FleetX import, `fleetx.fuse_state_dict`), `gpt.` keys, `score.weight` kept when present.

A merged model file (backbone + `heads.<TASK>.…`) is written as one folder per task: OUT/<TASK>/…"""
import json
import os
import re

import numpy as np

from ppmerge.errors import CheckpointError, UserError
from ppmerge.models import dtypes, fleetx
from ppmerge.models.presets import ARCH_FIELDS, ARCH_PRESETS, GPT2_EOS_ID

_LAYER = re.compile(r"^gpt\.decoder\.layers\.(\d+)\.(.+)\.(weight|bias)$")
_TO_HF_LAYER = {
    "norm1": "ln_1",
    "norm2": "ln_2",
    "self_attn.out_proj": "attn.c_proj",
    "linear1": "mlp.c_fc",
    "linear2": "mlp.c_proj",
}


# --------------------------------------------------------------------------- architecture

def infer_arch(state_dict, num_heads=None, known=None):
    """(Model arch fields, notes) of a state dict in our layout. Shapes give vocabulary, positions,
    hidden size, layers and ffn size; the head count comes from `num_heads`, else `known` (fields read
    from the input's own config), else the preset with the same hidden size (said in a note), else
    a UserError. Dropout / init range: `known`, else that preset, else GPT-2's."""
    try:
        vocab, hidden = np.shape(state_dict["gpt.embeddings.word_embeddings.weight"])
        positions = np.shape(state_dict["gpt.embeddings.position_embeddings.weight"])[0]
        ffn = np.shape(state_dict["gpt.decoder.layers.0.linear1.weight"])[1]
    except KeyError as exc:
        raise CheckpointError(f"not a GPT state dict in ppmerge's layout: {exc.args[0]} is missing") from None
    layers = len({int(m.group(1)) for m in map(_LAYER.match, state_dict) if m})
    known = dict(known or {})
    notes = []
    preset = next((name for name, arch in ARCH_PRESETS.items() if arch["hidden_size"] == hidden), None)
    if num_heads is None:
        num_heads = known.get("num_attention_heads")
    if num_heads is None:
        if preset is None:
            raise UserError(f"--num-heads: the number of attention heads is not stored in the weights "
                            f"(hidden size {hidden}); say it with --num-heads")
        num_heads = ARCH_PRESETS[preset]["num_attention_heads"]
        notes.append(f"num_attention_heads {num_heads} (preset {preset}, hidden size {hidden}; --num-heads to change)")
    if hidden % int(num_heads):
        raise UserError(f"--num-heads {num_heads} does not divide the hidden size {hidden}")
    defaults = ARCH_PRESETS[preset] if preset else ARCH_PRESETS["gpt2-medium-en"]
    arch = {field: known.get(field, defaults[field]) for field in ARCH_FIELDS}
    arch.update(vocab_size=int(vocab), hidden_size=int(hidden), max_position_embeddings=int(positions),
                ffn_hidden_size=int(ffn), num_layers=layers, num_attention_heads=int(num_heads))
    return arch, notes


def _labels(task, num_classes):
    """id2label: the task's label strings when known and of the right count, else LABEL_i."""
    labels = ()
    if task:
        try:
            from ppmerge.data import get_task

            labels = get_task(task).labels
        except UserError:
            labels = ()
    if len(labels) != num_classes:
        labels = [f"LABEL_{i}" for i in range(num_classes)]
    return {str(i): str(label) for i, label in enumerate(labels)}


# --------------------------------------------------------------------------- Hugging Face

def hf_state_dict(state_dict):
    """Our keys → HF GPT-2 keys (with a `score.weight`: GPT2ForSequenceClassification's, else GPT2Model's)."""
    with_head = "score.weight" in state_dict
    prefix = "transformer." if with_head else ""
    out = {}
    for key, value in state_dict.items():
        if key == "score.weight":
            out["score.weight"] = np.ascontiguousarray(np.asarray(value).T)  # [H, C] → nn.Linear [C, H]
        elif key == "gpt.embeddings.word_embeddings.weight":
            out[prefix + "wte.weight"] = value
        elif key == "gpt.embeddings.position_embeddings.weight":
            out[prefix + "wpe.weight"] = value
        elif key.startswith("gpt.decoder.norm."):
            out[prefix + "ln_f." + key.rsplit(".", 1)[1]] = value
        elif (match := _LAYER.match(key)) is not None:
            index, module, param = match.groups()
            layer = f"{prefix}h.{index}."
            if module == "self_attn.q_proj":
                parts = [np.asarray(state_dict[f"gpt.decoder.layers.{index}.self_attn.{p}.{param}"])
                         for p in fleetx.PARTS]
                out[layer + "attn.c_attn." + param] = np.concatenate(parts, axis=-1)
            elif module in ("self_attn.k_proj", "self_attn.v_proj"):
                continue
            elif module in _TO_HF_LAYER:
                out[layer + _TO_HF_LAYER[module] + "." + param] = value
            else:
                raise CheckpointError(f"{key}: no Hugging Face GPT-2 counterpart")
        else:
            raise CheckpointError(f"{key}: no Hugging Face GPT-2 counterpart")
    return out


def hf_config(arch, num_classes=None, task=None, dtype="float32"):
    """config.json of a GPT-2 folder for `arch` (our fields); `num_classes` None: a bare GPT2Model."""
    config = {
        "architectures": ["GPT2ForSequenceClassification" if num_classes else "GPT2Model"],
        "model_type": "gpt2",
        "vocab_size": arch["vocab_size"],
        "n_positions": arch["max_position_embeddings"],
        "n_embd": arch["hidden_size"],
        "n_layer": arch["num_layers"],
        "n_head": arch["num_attention_heads"],
        "n_inner": arch["ffn_hidden_size"],
        "activation_function": "gelu_new",
        "resid_pdrop": arch["hidden_dropout_prob"],
        "embd_pdrop": arch["hidden_dropout_prob"],
        "attn_pdrop": arch["attention_probs_dropout_prob"],
        "layer_norm_epsilon": 1e-5,
        "initializer_range": arch["initializer_range"],
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
        "use_cache": True,
        "bos_token_id": GPT2_EOS_ID,
        "eos_token_id": GPT2_EOS_ID,
        "pad_token_id": GPT2_EOS_ID,
        "torch_dtype": dtype,
    }
    if num_classes:
        id2label = _labels(task, num_classes)
        config.update(num_labels=num_classes, id2label=id2label, label2id={v: int(k) for k, v in id2label.items()},
                      problem_type="regression" if num_classes == 1 else "single_label_classification")
    if task:
        config["finetuning_task"] = task
    return config


def write_safetensors(tensors, path, metadata=None):
    """Write numpy tensors (bf16 as uint16 bits) to a .safetensors file atomically, with `metadata`."""
    from ppmerge.fileio import atomic_path

    if any(np.asarray(v).dtype == np.uint16 for v in tensors.values()):
        import safetensors.paddle
        from ppmerge.runtime import import_paddle

        paddle = import_paddle()

        def tensor(value):  # uint16 bits → a paddle bf16 tensor, so the file says BF16
            value = np.ascontiguousarray(value)
            if value.dtype == np.uint16:
                return paddle.to_tensor(value).view(paddle.bfloat16)
            return paddle.to_tensor(value)

        with atomic_path(path) as tmp:
            safetensors.paddle.save_file({k: tensor(v) for k, v in tensors.items()}, tmp, metadata=metadata)
        return
    import safetensors.numpy

    with atomic_path(path) as tmp:
        safetensors.numpy.save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, tmp, metadata=metadata)


def write_hf(state_dict, arch, folder, dtype="float32", task=None):
    """One Hugging Face GPT-2 folder (config.json + model.safetensors) into an existing folder."""
    from ppmerge.fileio import write_text

    num_classes = int(np.shape(state_dict["score.weight"])[1]) if "score.weight" in state_dict else None
    tensors = dtypes.cast_state_dict(hf_state_dict(state_dict), dtype, where="--dtype")
    write_safetensors(tensors, os.path.join(folder, "model.safetensors"), metadata={"format": "pt"})
    config = hf_config(arch, num_classes, task, dtype)
    write_text(os.path.join(folder, "config.json"), json.dumps(config, indent=2) + "\n")
    return len(tensors)


# --------------------------------------------------------------------------- paddlenlp

def paddlenlp_config(arch, num_classes=None, task=None, dtype="float32"):
    """paddlenlp GPTConfig as a dict (config.json of a save_pretrained folder)."""
    from ppmerge.models.presets import make_gpt_config

    config = make_gpt_config(arch)
    config.architectures = ["GPTForSequenceClassification" if num_classes else "GPTModel"]
    config.dtype = dtype
    if num_classes:
        config.num_labels = num_classes
        config.id2label = {int(k): v for k, v in _labels(task, num_classes).items()}
        config.label2id = {v: k for k, v in config.id2label.items()}
    out = config.to_dict()
    if task:
        out["finetuning_task"] = task
    return out


def write_paddlenlp(state_dict, arch, folder, dtype="float32", task=None):
    """One paddlenlp folder (config.json + model_state.pdparams) into an existing folder."""
    from ppmerge.fileio import write_text
    from ppmerge.models.checkpoint import save_state_dict

    num_classes = int(np.shape(state_dict["score.weight"])[1]) if "score.weight" in state_dict else None
    tensors = state_dict if num_classes else {k[len("gpt."):] if k.startswith("gpt.") else k: v
                                              for k, v in state_dict.items()}
    tensors = dtypes.cast_state_dict(dict(tensors), dtype, where="--dtype")
    save_state_dict(tensors, os.path.join(folder, "model_state.pdparams"))
    config = paddlenlp_config(arch, num_classes, task, dtype)
    write_text(os.path.join(folder, "config.json"), json.dumps(config, indent=2, default=str) + "\n")
    return len(tensors)


# --------------------------------------------------------------------------- FleetX

def fleetx_state_dict(state_dict, num_heads):
    """Our layout → FleetX's (fused head-interleaved qkv_proj; the inverse of the import)."""
    return fleetx.fuse_state_dict(state_dict, num_heads)
