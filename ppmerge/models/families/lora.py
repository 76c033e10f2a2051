"""LoRA for any family (`Model.lora: {r, alpha, dropout, target_modules, save_merged}`), with paddlenlp.peft.

`apply_lora(network, lora_cfg, family)` wraps the network in paddlenlp's `LoRAModel` (each targeted
Linear W [in, out] gains `lora_A` [in, r] and `lora_B` [r, out], B zero-initialised; output
x·W + x·A·B·scale, scale = alpha / r) and leaves only the LoRA weights trainable. Target names:
a plain name such as `q` means every Linear whose path ends in `.q` (regex `.*\\.q`); anything with
regex characters is used as given (paddlenlp full-matches module paths). Default: the family's
(`q`, `v` for T5; `q_proj`, `v_proj` for GPT).

`save_adapter(lora_model, lora_cfg, folder, save_merged)` writes
    folder/adapter_model.pdparams   the LoRA weights alone, keys = the base model's Linear path +
                                    `.lora_A` / `.lora_B`, plus the family's per-task
                                    head when it has one (GPT `score.weight`, trained with the LoRA weights) (e.g. `t5.encoder.block.0.layer.0.SelfAttention.q.lora_A`,
                                    [in, r]; `...q.lora_B`, [r, out]) -- Paddle's layout; PEFT's torch files
                                    store A as [r, in] and B as [out, r] under `base_model.model.<path>.lora_A.weight`
    folder/adapter_config.json      {peft_type: LORA, r, lora_alpha, scaling, target_modules, family, base_model}
    folder/merged_model.pdparams    (save_merged) the full model with W + scale·A·B folded in (no LoRA keys)
"""
import json
import os
import re

import numpy as np

from ppmerge.errors import ConfigError

ADAPTER_FILE = "adapter_model.pdparams"
ADAPTER_CONFIG = "adapter_config.json"
MERGED_FILE = "merged_model.pdparams"
LORA_KEYS = ("r", "alpha", "dropout", "target_modules", "save_merged")


def target_regexes(names, family):
    names = list(names or [])
    if not names:
        return list(family.lora_targets)
    out = []
    for name in names:
        if not isinstance(name, str) or not name:
            raise ConfigError(f"Model.lora.target_modules: expected module names such as q, v; got {name!r}")
        out.append(rf".*\.{name}" if re.fullmatch(r"[A-Za-z0-9_]+", name) else name)
    return out


def check_lora_config(lora_cfg):
    unknown = sorted(set(lora_cfg) - set(LORA_KEYS))
    if unknown:
        raise ConfigError(f"Model.lora: unknown key {unknown[0]!r}; expected {', '.join(LORA_KEYS)}")
    r = lora_cfg.get("r", 16)
    if not isinstance(r, int) or isinstance(r, bool) or r < 1:
        raise ConfigError(f"Model.lora.r: expected a positive integer, got {r!r}")
    dropout = float(lora_cfg.get("dropout") or 0.0)
    if not 0.0 <= dropout < 1.0:
        raise ConfigError(f"Model.lora.dropout: expected a value in [0, 1), got {dropout!r}")


def apply_lora(network, lora_cfg, family):
    """paddlenlp LoRAModel around `network`, only the LoRA weights trainable. A target list that
    matches no Linear is an error (nothing would train)."""
    check_lora_config(lora_cfg)
    from paddlenlp.peft import LoRAConfig, LoRAModel

    r = int(lora_cfg.get("r") or 16)
    targets = target_regexes(lora_cfg.get("target_modules"), family)
    config = LoRAConfig(target_modules=targets, r=r, lora_alpha=int(lora_cfg.get("alpha") or 2 * r),
                        lora_dropout=float(lora_cfg.get("dropout") or 0.0), merge_weights=False,
                        trainable_modules=list(family.lora_trainable) or None)
    model = LoRAModel(network, config)
    model.mark_only_lora_as_trainable()
    if not any(".lora_" in name for name, _ in model.named_parameters()):
        raise ConfigError(f"Model.lora.target_modules: {lora_cfg.get('target_modules')} matched no layer of the "
                          f"{family.name} model (T5: q, k, v, o, wi_0, wi_1, wo; GPT: q_proj, k_proj, v_proj, out_proj)")
    return model


def lora_layers(lora_model):
    """{base Linear path: layer} of the LoRA layers (they carry weight, lora_A, lora_B, scaling)."""
    return {name: layer for name, layer in lora_model.model.named_sublayers()
            if hasattr(layer, "lora_A") and hasattr(layer, "lora_B")}


def adapter_state(lora_model):
    """{path.lora_A / path.lora_B: numpy} of the LoRA weights (keys of the base model)."""
    out = {}
    for key, value in lora_model.model.state_dict().items():
        if ".lora_" not in key and not value.stop_gradient:
            out[key] = value.numpy()   # a head trained alongside (GPT's score.weight)
    for name, layer in lora_layers(lora_model).items():
        out[f"{name}.lora_A"] = layer.lora_A.numpy()
        out[f"{name}.lora_B"] = layer.lora_B.numpy()
    return out


def merged_state(lora_model):
    """The base model's state dict (numpy) with every LoRA layer's W + scaling·A·B folded in."""
    layers = lora_layers(lora_model)
    state = {}
    for key, value in lora_model.model.state_dict().items():
        if ".lora_" in key:
            continue
        state[key] = value.numpy()
    for name, layer in layers.items():
        delta = layer.lora_A.numpy().astype(np.float64) @ layer.lora_B.numpy().astype(np.float64)
        weight = state[f"{name}.weight"]
        state[f"{name}.weight"] = (weight.astype(np.float64) + float(layer.scaling) * delta).astype(weight.dtype)
    return state


def save_adapter(lora_model, lora_cfg, family, folder, base_model=None):
    """Write the adapter (and, if `lora_cfg.save_merged`, the merged full model) into `folder`."""
    from ppmerge.fileio import write_text
    from ppmerge.models.checkpoint import save_state_dict

    os.makedirs(folder, exist_ok=True)
    layers = lora_layers(lora_model)
    scaling = float(next(iter(layers.values())).scaling) if layers else None
    r = int(lora_cfg.get("r") or 16)
    save_state_dict(adapter_state(lora_model), os.path.join(folder, ADAPTER_FILE))
    meta = {"peft_type": "LORA", "r": r, "lora_alpha": int(lora_cfg.get("alpha") or 2 * r), "scaling": scaling,
            "target_modules": target_regexes(lora_cfg.get("target_modules"), family), "family": family.name,
            "base_model": base_model, "layout": "paddle: lora_A [in, r], lora_B [r, out], W' = W + scaling * A @ B"}
    write_text(os.path.join(folder, ADAPTER_CONFIG), json.dumps(meta, indent=2) + "\n")
    written = [os.path.join(folder, ADAPTER_FILE)]
    if lora_cfg.get("save_merged"):
        save_state_dict(merged_state(lora_model), os.path.join(folder, MERGED_FILE))
        written.append(os.path.join(folder, MERGED_FILE))
    return written
