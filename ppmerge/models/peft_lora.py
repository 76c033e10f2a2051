"""LoRA adapters in PEFT's folder format (`adapter_config.json` + `adapter_model.safetensors`), any family.

A PEFT LoRA module adds `scale · B · A` to a weight: `lora_A.weight` is `[r, in]`, `lora_B.weight` is
`[out, r]` (also for HF GPT-2's Conv1D, where `fan_in_fan_out: true` says the base weight is stored
`[in, out]`), `scale = lora_alpha / r`, or `lora_alpha / sqrt(r)` with `use_rslora`. Our Linear weights
are `[in, out]` (Paddle), so the dense task vector of an adapted weight in our layout is
τ = scale · (B · A)ᵀ (`lowrank_delta`) and merge-and-unload is W + τ (`merge_and_unload`).

Module paths (the key less `base_model.model.` and `.lora_A.weight`) are mapped to our key layout:
- ours already (`t5.…`, `gpt.…`; what `save_adapter` writes): `<path>.weight`;
- HF T5 / Flan-T5 (`encoder.…`, `decoder.…`, `lm_head`): `t5.<path>.weight` (`lm_head.weight`);
- HF GPT-2 (`transformer.h.{i}.attn.c_attn` …): c_attn's B `[3H, r]` is split into q / k / v rows,
  `attn.c_proj` → `self_attn.out_proj`, `mlp.c_fc` → `linear1`, `mlp.c_proj` → `linear2`.
`modules_to_save` weights (stored whole, e.g. a classifier) are converted like a full checkpoint of that
layout. Everything the adapter would need that we do not compute is an error naming the key: DoRA,
`bias` other than none, LoRA biases, embedding LoRA, `layers_to_transform` / `layers_pattern`,
`rank_pattern` / `alpha_pattern`, PiSSA / OLoRA initialisations (they change the base weights), keys
that are neither LoRA factors of a targeted module nor a module to save.

paddlenlp.peft: `adapter_state_from_lora_model(lora_model)` turns a `LoRAModel`'s Paddle-layout factors
(`<path>.lora_A` [in, r], `.lora_B` [r, out]) into this PEFT-like layout (A = lora_Aᵀ, B = lora_Bᵀ) and
`load_adapter_into_lora_model` is its inverse. An adapter folder in Paddle's layout (keys `<path>.lora_A`
without the `base_model.model.` prefix, config with `scaling`) is read by `parse_paddle_adapter`."""
import json
import math
import os
import re
from dataclasses import dataclass, field

import numpy as np

from ppmerge.errors import CheckpointError

PREFIX = "base_model.model."
CONFIG_FILE = "adapter_config.json"
WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.pdparams")

# adapter_config.json keys that only describe training or provenance: read and ignored.
_IGNORED = {"peft_type", "task_type", "base_model_name_or_path", "revision", "inference_mode", "lora_dropout",
            "auto_mapping", "megatron_config", "megatron_core", "loftq_config", "exclude_modules",
            "runtime_config", "eva_config", "corda_config", "trainable_token_indices", "qalora_group_size",
            "ppmerge_layout"}
_HONOURED = {"r", "lora_alpha", "target_modules", "fan_in_fan_out", "use_rslora", "modules_to_save", "bias",
             "init_lora_weights", "use_dora", "layers_to_transform", "layers_pattern", "rank_pattern",
             "alpha_pattern", "lora_bias", "layer_replication", "target_parameters", "use_qalora"}
# Keys that must be unset (None / False / empty): what they would change is not computed here.
_MUST_BE_UNSET = ("use_dora", "layers_to_transform", "layers_pattern", "rank_pattern", "alpha_pattern", "lora_bias",
                  "layer_replication", "target_parameters", "use_qalora")

_GPT2_MODULES = {"attn.c_proj": "self_attn.out_proj", "mlp.c_fc": "linear1", "mlp.c_proj": "linear2"}
_T5_LINEARS = ("q", "k", "v", "o", "wi", "wi_0", "wi_1", "wo")


@dataclass
class LoraTarget:
    """One adapted weight of our layout: τ = scale · (B · A)ᵀ, `[in, out]`."""
    A: np.ndarray      # [r, in]
    B: np.ndarray      # [out, r]
    scale: float

    def delta(self):
        return (self.scale * (self.B.astype(np.float32) @ self.A.astype(np.float32))).T


@dataclass
class LoraAdapter:
    """An adapter in our key layout: `targets` {our weight key: LoraTarget}, `saved` {our key: whole
    weight from modules_to_save}, `config` (adapter_config.json as read), `layout` (ours | hf-t5 | hf-gpt2)."""
    targets: dict
    saved: dict = field(default_factory=dict)
    config: dict = field(default_factory=dict)
    layout: str = "ours"
    source: str = "adapter"

    @property
    def scale(self):
        return lora_scale(self.config)


def lora_scale(config, where=CONFIG_FILE):
    r, alpha = config.get("r"), config.get("lora_alpha")
    for key, value in (("r", r), ("lora_alpha", alpha)):
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
            raise CheckpointError(f"{where}: {key} must be a positive number, got {value!r}")
    return alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r


def check_config(config, where=CONFIG_FILE):
    """CheckpointError naming the first adapter_config.json key whose meaning we do not compute."""
    if not isinstance(config, dict):
        raise CheckpointError(f"{where}: expected a JSON object")
    peft_type = config.get("peft_type", "LORA")
    if str(peft_type).upper() != "LORA":
        raise CheckpointError(f"{where}: peft_type {peft_type!r} is not supported; expected LORA")
    lora_scale(config, where)
    if config.get("bias", "none") != "none":
        raise CheckpointError(f"{where}: bias {config['bias']!r} is not supported; expected \"none\" (trained biases "
                              f"are not merged)")
    for key in _MUST_BE_UNSET:
        if config.get(key) not in (None, False, {}, [], ""):
            raise CheckpointError(f"{where}: {key} {config[key]!r} is not supported (expected it unset)")
    init = config.get("init_lora_weights", True)
    if isinstance(init, str) and init.lower().startswith(("pissa", "olora", "corda")):
        raise CheckpointError(f"{where}: init_lora_weights {init!r} is not supported: it changes the base weights "
                              f"as well")
    if not isinstance(config.get("fan_in_fan_out", False), bool):
        raise CheckpointError(f"{where}: fan_in_fan_out must be true or false")
    targets = config.get("target_modules")
    if not (isinstance(targets, str) or (isinstance(targets, list) and all(isinstance(t, str) for t in targets))):
        raise CheckpointError(f"{where}: target_modules must be a list of module names or a regex string, got "
                              f"{targets!r}")
    saved = config.get("modules_to_save")
    if saved is not None and not (isinstance(saved, list) and all(isinstance(t, str) for t in saved)):
        raise CheckpointError(f"{where}: modules_to_save must be a list of module names or null, got {saved!r}")
    for key, value in config.items():
        if key not in _IGNORED and key not in _HONOURED and value not in (None, False, {}, [], "", "none"):
            raise CheckpointError(f"{where}: {key} {value!r} is not understood by ppmerge's LoRA import")


def _targeted(module, targets):
    if isinstance(targets, str):
        return re.fullmatch(targets, module) is not None
    return any(module == t or module.endswith("." + t) for t in targets)


def _to_save(module, saved):
    return any(module == s or module.endswith("." + s) or f".{s}." in f".{module}." for s in saved or ())


def _layout(paths, where):
    """ours | hf-t5 | hf-gpt2 from the module paths of the adapter."""
    kinds = set()
    for path in paths:
        head = path.split(".", 1)[0]
        if head in ("t5", "gpt"):
            kinds.add("ours")
        elif head in ("encoder", "decoder", "shared"):
            kinds.add("hf-t5")
        elif head in ("transformer", "h", "wte", "wpe", "ln_f"):
            kinds.add("hf-gpt2")
        elif head not in ("lm_head", "score"):
            raise CheckpointError(f"{where}: module {path!r} belongs to no model family ppmerge knows "
                                  f"(T5: encoder./decoder., GPT-2: transformer.h., ours: t5./gpt.)")
    if len(kinds) > 1:
        raise CheckpointError(f"{where}: module paths mix key layouts ({', '.join(sorted(kinds))})")
    if not kinds:
        raise CheckpointError(f"{where}: only lm_head / score modules: cannot tell the model family")
    return kinds.pop()


def _lora_keys(module, layout, where):
    """[(our weight key, rows of B or None)] for a LoRA-adapted module path of `layout`."""
    if layout == "ours":
        return [(module + ".weight", None)]
    if layout == "hf-t5":
        if module == "lm_head":
            return [("lm_head.weight", None)]
        if module.rsplit(".", 1)[-1] not in _T5_LINEARS:
            raise CheckpointError(f"{where}: LoRA on T5 module {module!r} is not supported (only the Linear layers "
                                  f"{', '.join(_T5_LINEARS)}, lm_head)")
        return [("t5." + module + ".weight", None)]
    name = module[len("transformer."):] if module.startswith("transformer.") else module
    match = re.fullmatch(r"h\.(\d+)\.(attn\.c_attn|attn\.c_proj|mlp\.c_fc|mlp\.c_proj)", name)
    if not match:
        raise CheckpointError(f"{where}: LoRA on GPT-2 module {module!r} is not supported (c_attn, attn.c_proj, "
                              f"mlp.c_fc, mlp.c_proj)")
    layer, part = match.groups()
    prefix = f"gpt.decoder.layers.{layer}."
    if part == "attn.c_attn":
        return [(f"{prefix}self_attn.{p}_proj.weight", i) for i, p in enumerate("qkv")]
    return [(prefix + _GPT2_MODULES[part] + ".weight", None)]


def _uses_conv1d(layout):
    return layout == "hf-gpt2"  # HF GPT-2's layers are Conv1D ([in, out]); T5's and ours are nn.Linear in PEFT


def _saved_to_ours(saved, layout, where):
    """modules_to_save weights (PEFT keys less the prefix) → our layout."""
    if not saved:
        return {}
    if layout == "ours":
        return dict(saved)
    if layout == "hf-gpt2":
        from ppmerge.models.hf_gpt2 import convert_state_dict

        return convert_state_dict({k[len("transformer."):] if k.startswith("transformer.") else k: v
                                   for k, v in saved.items()})
    out = {}
    for key, value in saved.items():
        module = key.rsplit(".", 1)[0]
        if key == "lm_head.weight" or module.rsplit(".", 1)[-1] in _T5_LINEARS:
            out["t5." + key if key != "lm_head.weight" else key] = np.ascontiguousarray(np.asarray(value).T)
        elif key == "shared.weight":
            for ours in ("t5.shared.weight", "t5.encoder.embed_tokens.weight", "t5.decoder.embed_tokens.weight"):
                out[ours] = value
        elif key.endswith(".weight"):
            out["t5." + key] = value
        else:
            raise CheckpointError(f"{where}: unexpected T5 weight {key!r} in modules_to_save")
    return out


def _is_paddle_layout(tensors):
    return bool(tensors) and not any(k.startswith(PREFIX) for k in tensors) and \
        any(k.endswith((".lora_A", ".lora_B")) for k in tensors)


# adapter_config.json keys of a Paddle-layout adapter (ppmerge's LoRA training, ppmerge.models.families.lora).
_PADDLE_CONFIG = {"peft_type", "r", "lora_alpha", "scaling", "target_modules", "family", "base_model", "layout",
                  "rslora", "use_rslora", "lora_dropout", "dropout"}


def parse_paddle_adapter(config, tensors, where="adapter"):
    """A `LoraAdapter` from an adapter in Paddle's layout (what paddlenlp's LoRAModel holds): keys
    `<our module path>.lora_A` [in, r] and `.lora_B` [r, out], other keys trained whole weights (a
    head); scale = config `scaling`, else lora_alpha / r (/ sqrt(r) with rslora). A = lora_Aᵀ, B = lora_Bᵀ."""
    cfg_where = os.path.join(where, CONFIG_FILE) if where != "adapter" else CONFIG_FILE
    if not isinstance(config, dict):
        raise CheckpointError(f"{cfg_where}: expected a JSON object")
    for key, value in config.items():
        if key not in _PADDLE_CONFIG and value not in (None, False, {}, [], "", "none"):
            raise CheckpointError(f"{cfg_where}: {key} {value!r} is not understood by ppmerge's LoRA import")
    if str(config.get("peft_type", "LORA")).upper() != "LORA":
        raise CheckpointError(f"{cfg_where}: peft_type {config['peft_type']!r} is not supported; expected LORA")
    rslora = bool(config.get("rslora") or config.get("use_rslora"))
    scale = lora_scale(dict(config, use_rslora=rslora), cfg_where)
    if config.get("scaling") is not None and not math.isclose(float(config["scaling"]), scale, rel_tol=1e-6):
        raise CheckpointError(f"{cfg_where}: scaling {config['scaling']} does not equal lora_alpha / "
                              f"{'sqrt(r)' if rslora else 'r'} = {scale}")
    factors, saved = {}, {}
    for key, value in tensors.items():
        match = re.fullmatch(r"(.+)\.lora_(A|B)", key)
        if match:
            factors.setdefault(match.group(1), {})[match.group(2)] = np.asarray(value)
        elif ".lora_" in key:
            raise CheckpointError(f"{where}: unexpected LoRA key {key!r} (expected <module>.lora_A / .lora_B)")
        else:
            saved[key] = np.asarray(value)
    patterns = config.get("target_modules") or []
    targets = {}
    for module, pair in factors.items():
        for part in ("A", "B"):
            if part not in pair:
                raise CheckpointError(f"{where}: {module}.lora_{part} is missing")
        if module.split(".", 1)[0] not in ("t5", "gpt"):
            raise CheckpointError(f"{where}: module {module!r} is not in ppmerge's key layout (t5. / gpt.)")
        if patterns and not any(re.fullmatch(p, module) for p in patterns):
            raise CheckpointError(f"{where}: module {module!r} has LoRA weights but target_modules {patterns!r} "
                                  f"does not match it")
        A, B = pair["A"], pair["B"]
        if A.ndim != 2 or B.ndim != 2 or A.shape[1] != config["r"] or B.shape[0] != config["r"]:
            raise CheckpointError(f"{where}: {module}: lora_A {list(A.shape)} / lora_B {list(B.shape)} do not have "
                                  f"rank r = {config['r']} ([in, r] and [r, out] in Paddle's layout)")
        targets[module + ".weight"] = LoraTarget(A=np.ascontiguousarray(A.T), B=np.ascontiguousarray(B.T), scale=scale)
    if not targets:
        raise CheckpointError(f"{where}: the adapter holds no LoRA weights")
    peft = {"peft_type": "LORA", "r": config["r"], "lora_alpha": config["lora_alpha"], "use_rslora": rslora,
            "target_modules": sorted(factors), "fan_in_fan_out": False, "bias": "none",
            "modules_to_save": sorted({k.rsplit(".", 1)[0] for k in saved}) or None}
    return LoraAdapter(targets=targets, saved=saved, config=peft, layout="ours", source=where)


def parse_adapter(config, tensors, where="adapter"):
    """A `LoraAdapter` from adapter_config.json (dict) and the adapter's tensors (PEFT keys → numpy;
    an adapter in Paddle's layout, `<path>.lora_A` [in, r], goes to `parse_paddle_adapter`)."""
    if _is_paddle_layout(tensors):
        return parse_paddle_adapter(config, tensors, where)
    check_config(config, os.path.join(where, CONFIG_FILE) if where != "adapter" else CONFIG_FILE)
    scale = lora_scale(config)
    r = config["r"]
    factors, saved = {}, {}
    for key, value in tensors.items():
        if not key.startswith(PREFIX):
            raise CheckpointError(f"{where}: unexpected key {key!r} (PEFT keys start with {PREFIX!r})")
        name = key[len(PREFIX):]
        match = re.fullmatch(r"(.+)\.lora_(A|B)(?:\.default)?\.weight", name)
        if match:
            factors.setdefault(match.group(1), {})[match.group(2)] = np.asarray(value)
            continue
        if re.search(r"\.lora_magnitude_vector", name):
            raise CheckpointError(f"{where}: {key} is a DoRA magnitude; DoRA adapters are not supported")
        if re.search(r"\.lora_(A|B)(\.default)?\.bias$", name):
            raise CheckpointError(f"{where}: {key} is a LoRA bias; adapters with lora_bias are not supported")
        if re.search(r"\.lora_embedding_(A|B)", name):
            raise CheckpointError(f"{where}: {key}: LoRA on embeddings is not supported")
        module = name.rsplit(".", 1)[0]
        if not _to_save(module, config.get("modules_to_save")):
            raise CheckpointError(f"{where}: unexpected key {key!r}: neither a LoRA factor nor in modules_to_save")
        saved[name.replace(".modules_to_save.default.", ".")] = np.asarray(value)
    if not factors and not saved:
        raise CheckpointError(f"{where}: the adapter holds no LoRA weights")
    layout = _layout(list(factors) + [k.rsplit(".", 1)[0] for k in saved], where)
    conv1d = _uses_conv1d(layout)
    if bool(config.get("fan_in_fan_out", False)) != conv1d:
        raise CheckpointError(f"{where}: fan_in_fan_out is {bool(config.get('fan_in_fan_out', False))} but the "
                              f"adapted layers are {'Conv1D (GPT-2: true)' if conv1d else 'Linear (false)'}")
    targets = {}
    for module, pair in factors.items():
        for part in ("A", "B"):
            if part not in pair:
                raise CheckpointError(f"{where}: {PREFIX}{module}.lora_{part}.weight is missing")
        if not _targeted(module, config["target_modules"]):
            raise CheckpointError(f"{where}: module {module!r} has LoRA weights but target_modules "
                                  f"{config['target_modules']!r} does not name it")
        A, B = pair["A"], pair["B"]
        if A.ndim != 2 or B.ndim != 2 or A.shape[0] != r or B.shape[1] != r:
            raise CheckpointError(f"{where}: {PREFIX}{module}: lora_A {list(A.shape)} / lora_B {list(B.shape)} do "
                                  f"not have rank r = {r} ([r, in] and [out, r])")
        keys = _lora_keys(module, layout, where)
        rows = np.split(B, len(keys), axis=0) if len(keys) > 1 else [B]
        if len(keys) > 1 and B.shape[0] % len(keys):
            raise CheckpointError(f"{where}: {PREFIX}{module}.lora_B.weight has {B.shape[0]} rows, not 3 × hidden")
        for (ours, _), block in zip(keys, rows):
            if ours in targets:
                raise CheckpointError(f"{where}: two LoRA modules map to {ours}")
            targets[ours] = LoraTarget(A=A, B=np.ascontiguousarray(block), scale=scale)
    return LoraAdapter(targets=targets, saved=_saved_to_ours(saved, layout, where), config=dict(config),
                       layout=layout, source=where)


def read_adapter(folder):
    """A `LoraAdapter` from a local PEFT LoRA folder (adapter_config.json + adapter_model.safetensors,
    or our adapter_model.pdparams). `adapter_model.bin` needs PyTorch and is refused."""
    from ppmerge.models.checkpoint import load_numpy_state_dict

    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        raise CheckpointError(f"{folder}: expected a PEFT LoRA folder "
                              f"(adapter_config.json + adapter_model.safetensors)")
    path = os.path.join(folder, CONFIG_FILE)
    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    except FileNotFoundError:
        raise CheckpointError(f"{folder}: no {CONFIG_FILE} (expected a PEFT LoRA folder)") from None
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc})") from None
    weights = next((os.path.join(folder, n) for n in WEIGHT_FILES if os.path.isfile(os.path.join(folder, n))), None)
    if weights is None:
        if os.path.isfile(os.path.join(folder, "adapter_model.bin")):
            raise CheckpointError(f"{folder}: only adapter_model.bin found; reading it needs PyTorch, which ppmerge "
                                  f"does not install. Save the adapter as adapter_model.safetensors "
                                  f"(PEFT: save_pretrained(..., safe_serialization=True))")
        raise CheckpointError(f"{folder}: no adapter_model.safetensors found")
    return parse_adapter(config, load_numpy_state_dict(weights), where=folder)


def lowrank_delta(adapter, key):
    """The dense task vector τ = scale · (B · A)ᵀ of one adapted weight, in our layout `[in, out]` (float32)."""
    if key not in adapter.targets:
        raise CheckpointError(f"{adapter.source}: no LoRA weights for {key!r}")
    return np.ascontiguousarray(adapter.targets[key].delta())


def merge_and_unload(base, adapter, source="base model"):
    """A full state dict (our layout, float32 where adapted): base W + τ for every adapted key,
    modules_to_save weights replacing the base's. `base`: our-layout state dict (numpy or paddle)."""
    from ppmerge.models.checkpoint import to_float32

    out = dict(base)
    for key, target in adapter.targets.items():
        if key not in base:
            raise CheckpointError(f"{adapter.source}: adapted weight {key} is not in the {source}")
        weight = to_float32(np.asarray(base[key]))
        delta = target.delta()
        if weight.shape != delta.shape:
            raise CheckpointError(f"{adapter.source}: LoRA for {key} gives shape {list(delta.shape)} but the "
                                  f"{source} has {list(weight.shape)}")
        out[key] = weight + delta
    for key, value in adapter.saved.items():
        if key not in base:
            raise CheckpointError(f"{adapter.source}: modules_to_save weight {key} is not in the {source}")
        if tuple(np.shape(base[key])) != tuple(value.shape):
            raise CheckpointError(f"{adapter.source}: modules_to_save weight {key} has shape {list(value.shape)} but "
                                  f"the {source} has {list(np.shape(base[key]))}")
        out[key] = value
    return out


def adapter_tensors(adapter):
    """The adapter as PEFT-like tensors in our key layout: `base_model.model.<our module>.lora_A.weight`
    `[r, in]`, `.lora_B.weight` `[out, r]`, and `base_model.model.<our key>` for modules_to_save."""
    out = {}
    for key, target in adapter.targets.items():
        module = key[:-len(".weight")] if key.endswith(".weight") else key
        out[f"{PREFIX}{module}.lora_A.weight"] = np.ascontiguousarray(target.A)
        out[f"{PREFIX}{module}.lora_B.weight"] = np.ascontiguousarray(target.B)
    for key, value in adapter.saved.items():
        out[PREFIX + key] = np.asarray(value)
    return out


def adapter_config_ours(adapter):
    """adapter_config.json for `adapter_tensors(adapter)`: our module names, fan_in_fan_out false."""
    config = dict(adapter.config)
    modules = sorted({key[:-len(".weight")] for key in adapter.targets})
    config.update(peft_type="LORA", target_modules=modules, fan_in_fan_out=False, ppmerge_layout="ours",
                  modules_to_save=sorted({k.rsplit(".", 1)[0] for k in adapter.saved}) or None)
    return config


def save_adapter(adapter, folder, fmt="safetensors", dtype=None):
    """Write `adapter` in our key layout: folder/adapter_config.json + adapter_model.<fmt> (atomic folder);
    `dtype` (float32 | float16 | bfloat16) casts the tensors, None keeps them."""
    from ppmerge.fileio import atomic_dir
    from ppmerge.models.checkpoint import save_state_dict

    if fmt not in ("safetensors", "pdparams"):
        raise CheckpointError(f"adapter format {fmt!r}: expected safetensors or pdparams")
    tensors = adapter_tensors(adapter)
    if dtype is not None:
        from ppmerge.models.dtypes import cast_state_dict

        tensors = cast_state_dict(tensors, dtype, where="--dtype")
    with atomic_dir(folder) as tmp:
        with open(os.path.join(tmp, CONFIG_FILE), "w", encoding="utf-8") as f:
            json.dump(adapter_config_ours(adapter), f, indent=2, sort_keys=True)
            f.write("\n")
        save_state_dict(tensors, os.path.join(tmp, f"adapter_model.{fmt}"))
    return folder


def load_base(path):
    """(Model fields or None, state dict in our layout) of the model an adapter belongs to: a local HF
    T5 / Flan-T5 folder, a local HF GPT-2 folder, or one of our checkpoints (file or folder)."""
    from ppmerge.models import hf_gpt2, hf_t5
    from ppmerge.models.checkpoint import load_numpy_state_dict, resolve_checkpoint_path, to_our_layout

    path = os.fspath(path)
    if os.path.isdir(path) and os.path.isfile(os.path.join(path, "config.json")):
        if hf_t5.is_hf_t5_folder(path):
            return hf_t5.load_folder(path, dtype=None)
        config = hf_gpt2.read_config(path)
        if config.get("model_type") == "gpt2":
            fields, num_classes, state_dict = hf_gpt2.load_folder(path)
            if num_classes:
                fields["num_classes"] = num_classes
            return fields, state_dict
    file = resolve_checkpoint_path(path)
    state_dict = load_numpy_state_dict(file)
    if any(key.startswith("t5.") for key in state_dict):
        return None, state_dict
    return None, to_our_layout(state_dict, source=file)


def merge_folder(adapter_folder, base_path):
    """merge-and-unload of a PEFT LoRA folder into its base (`load_base`): (Model fields or None, state dict)."""
    adapter = read_adapter(adapter_folder)
    fields, base = load_base(base_path)
    return fields, merge_and_unload(base, adapter, source=f"base model {os.fspath(base_path)}")


# --------------------------------------------------------------------------- paddlenlp.peft LoRAModel

def _lora_layers(lora_model):
    """{module path in the base network: LoRA layer} of a paddlenlp `LoRAModel` (or the wrapped network)."""
    network = getattr(lora_model, "model", lora_model)
    return network, {name: layer for name, layer in network.named_sublayers()
                     if hasattr(layer, "lora_A") and hasattr(layer, "lora_B")}


def adapter_from_lora_model(lora_model):
    """A `LoraAdapter` (our key layout) of a paddlenlp `LoRAModel`: per LoRA Linear at `path`, Paddle's
    `lora_A` [in, r] / `lora_B` [r, out] become PEFT's A = lora_Aᵀ [r, in], B = lora_Bᵀ [out, r] for
    `path.weight` (so τ = scale·(B·A)ᵀ = scale·lora_A·lora_B); trainable non-LoRA weights (a head trained
    alongside) become modules_to_save. MoRA / PiSSA / mixer layers are refused."""
    network, layers = _lora_layers(lora_model)
    if not layers:
        raise CheckpointError("the model has no LoRA layers (expected a paddlenlp.peft LoRAModel)")
    ranks, alphas, rslora = set(), set(), set()
    targets = {}
    for path, layer in layers.items():
        for flag in ("use_mora", "pissa", "lora_use_mixer"):
            if getattr(layer, flag, False):
                raise CheckpointError(f"LoRA layer {path}: {flag} is not supported")
        r, alpha, scale = int(layer.r), float(layer.lora_alpha), float(layer.scaling)
        if math.isclose(scale, alpha / r, rel_tol=1e-6):
            rslora.add(False)
        elif math.isclose(scale, alpha / math.sqrt(r), rel_tol=1e-6):
            rslora.add(True)
        else:
            raise CheckpointError(f"LoRA layer {path}: scaling {scale} is neither lora_alpha/r nor lora_alpha/sqrt(r)")
        ranks.add(r)
        alphas.add(layer.lora_alpha)
        targets[f"{path}.weight"] = LoraTarget(A=np.ascontiguousarray(layer.lora_A.numpy().T),
                                               B=np.ascontiguousarray(layer.lora_B.numpy().T), scale=scale)
    if len(ranks) > 1 or len(alphas) > 1 or len(rslora) > 1:
        raise CheckpointError(f"LoRA layers differ in r / lora_alpha / rslora ({sorted(ranks)}, {sorted(alphas)}); "
                              f"one adapter config cannot describe them")
    saved = {key: value.numpy() for key, value in network.state_dict().items()
             if ".lora_" not in key and not value.stop_gradient}
    alpha = alphas.pop()
    config = {"peft_type": "LORA", "r": ranks.pop(), "lora_alpha": int(alpha) if float(alpha).is_integer() else alpha,
              "use_rslora": rslora.pop(), "target_modules": sorted(layers), "fan_in_fan_out": False, "bias": "none",
              "modules_to_save": sorted({k.rsplit(".", 1)[0] for k in saved}) or None}
    return LoraAdapter(targets=targets, saved=saved, config=config, layout="ours", source="LoRAModel")


def adapter_state_from_lora_model(lora_model):
    """(tensors, adapter_config) of a paddlenlp `LoRAModel` in the documented PEFT-like layout:
    `base_model.model.<path>.lora_A.weight` [r, in], `.lora_B.weight` [out, r], `base_model.model.<key>`
    for trained non-LoRA weights; readable by `parse_adapter` / `read_adapter` and PEFT-shaped."""
    adapter = adapter_from_lora_model(lora_model)
    return adapter_tensors(adapter), adapter_config_ours(adapter)


def load_adapter_into_lora_model(lora_model, adapter):
    """The inverse: set a paddlenlp `LoRAModel`'s lora_A = Aᵀ, lora_B = Bᵀ (and modules_to_save weights)
    from `adapter` (a LoraAdapter in our key layout, or `(tensors, config)` as `adapter_state_from_lora_model`
    gives). Every LoRA layer must get weights, every adapter weight must find its layer, scales must agree."""
    from ppmerge.runtime import import_paddle

    paddle = import_paddle()
    if isinstance(adapter, tuple):
        tensors, config = adapter
        adapter = parse_adapter(config, tensors)
    network, layers = _lora_layers(lora_model)
    by_key = {f"{path}.weight": layer for path, layer in layers.items()}
    for key in adapter.targets:
        if key not in by_key:
            raise CheckpointError(f"{adapter.source}: adapter weight {key} has no LoRA layer in the model")
    params = network.state_dict()
    for key in adapter.saved:
        if key not in params:
            raise CheckpointError(f"{adapter.source}: modules_to_save weight {key} is not in the model")
    for key, layer in by_key.items():
        if key not in adapter.targets:
            raise CheckpointError(f"{adapter.source}: no LoRA weights for the model's LoRA layer "
                                  f"{key[:-len('.weight')]}")
        target = adapter.targets[key]
        if not math.isclose(float(layer.scaling), target.scale, rel_tol=1e-6):
            raise CheckpointError(f"{adapter.source}: {key}: adapter scale {target.scale} but the LoRA layer's "
                                  f"scaling is {float(layer.scaling)} (r / lora_alpha / rslora differ)")
        for name, value in (("lora_A", target.A.T), ("lora_B", target.B.T)):
            param = getattr(layer, name)
            if tuple(value.shape) != tuple(param.shape):
                raise CheckpointError(f"{adapter.source}: {key}: {name} has shape {list(value.shape)} in Paddle's "
                                      f"layout but the layer's is {list(param.shape)}")
            param.set_value(paddle.to_tensor(np.ascontiguousarray(value)).astype(param.dtype))
    for key, value in adapter.saved.items():
        param = params[key]
        if tuple(value.shape) != tuple(param.shape):
            raise CheckpointError(f"{adapter.source}: {key} has shape {list(value.shape)} but the model's is "
                                  f"{list(param.shape)}")
        param.set_value(paddle.to_tensor(np.asarray(value)).astype(param.dtype))
    return lora_model
