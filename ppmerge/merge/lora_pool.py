"""LoRA pools: model-pool entries that are LoRA adapters over the pool's base (`ModelPool.base`).

An entry of `ModelPool.models` whose path is an adapter folder (`adapter_config.json` + the adapter's
weights: a PEFT folder with `adapter_model.safetensors`, or the `lora/` folder of our own LoRA run,
`adapter_model.pdparams` in Paddle's layout; read by `ppmerge.models.peft_lora.read_adapter`) stands for
the model θ_i = θ₀ + τ_i, where τ_i = scale·(B_i·A_i)ᵀ on each adapted weight (our `[in, out]` layout),
the adapter's `modules_to_save` weights replace the base's, and every other key is the base's (τ = 0).
A head saved with the adapter (GPT's `score.weight`) is the model's head, never merged.

`ModelPool.lora: {mode: unload | lowrank}` (null = unload):
  - unload (FusionBench's behaviour): each adapter is merged and unloaded into a full backbone
    (`peft_lora.merge_and_unload`) and the pool merges these like any fine-tuned models; held in memory,
    N models cost N copies of every adapted weight.
  - lowrank: each model is a `LowRankModel`, a read-only mapping that computes a key's value when the
    merge reads it: θ₀[k] + scale·(B·A)ᵀ for an adapted weight, the base's own array elsewhere. Merges
    run key by key, so nothing but the factors is held per model: memory ≈ base + merged result + the
    dense delta of the weight being read. The values are the ones merge-and-unload computes (float32
    W + the same float32 delta), so both modes give the same merged model for every method.

Which base: where an adapter's adapter_config.json names its base (PEFT's `base_model_name_or_path`, our
runs' `base_model` = the run's Model.pretrained) and that name is a local file or folder (as written:
absolute, or relative to the current folder, else to the adapter folder), it must be `ModelPool.base`
itself (the same file / folder, `os.path.samefile`) or a byte-identical copy of that file; anything else
is a ConfigError naming both. A name that is no local path (a hub id such as google/flan-t5-base, or a
base that was moved away) is not checked. In every case each adapted / modules_to_save weight must be a
key of the base with the shape the adapter implies (`backbone_and_head`).

The base is read with `peft_lora.load_base` (our checkpoint, an HF T5 / Flan-T5 or GPT-2 folder) and checked
for NaN / Inf like any pool model; a pool with adapters needs one. Models share the base's arrays, so a
streamed merge must not accumulate into the base's buffers (`ModelPool.models_share_base`).
"""
import os

import numpy as np

from ppmerge.errors import CheckpointError, ConfigError
from ppmerge.models.checkpoint import TensorsOnDemand

MODES = ("unload", "lowrank")


def is_adapter_folder(path):
    """Is `path` a LoRA adapter folder (adapter_config.json inside)?"""
    from ppmerge.models.peft_lora import CONFIG_FILE

    return os.path.isdir(path) and os.path.isfile(os.path.join(path, CONFIG_FILE))


def lora_mode(section):
    """The mode of a `ModelPool.lora` section (None / {} → unload); a bad value is a ConfigError."""
    if section is None:
        return "unload"
    if not isinstance(section, dict):
        raise ConfigError(f"ModelPool.lora: expected {{mode: unload | lowrank}}, got {section!r}")
    unknown = sorted(set(section) - {"mode"})
    if unknown:
        raise ConfigError(f"ModelPool.lora: unknown key {unknown[0]!r}; expected mode")
    mode = str(section.get("mode") or "unload").lower()
    if mode not in MODES:
        raise ConfigError(f"ModelPool.lora.mode: expected one of {', '.join(MODES)}, got {section.get('mode')!r}")
    return mode


class LowRankModel(TensorsOnDemand):
    """A LoRA model's backbone as θ₀ + τ, computed key by key when read and not kept: adapted weights
    float32 W + scale·(B·A)ᵀ (what merge-and-unload computes), `saved` weights as stored, every other
    key the base's own array. `pop` / `clear` forget keys (what a consuming merge calls)."""

    def __init__(self, base, targets, saved, name):
        self.base, self.targets, self.saved, self.name = base, targets, saved, name
        self.shapes = {key: tuple(np.shape(value)) for key, value in base.items()}

    def read_tensor(self, key):
        from ppmerge.models.checkpoint import to_float32

        if key in self.targets:
            return to_float32(np.asarray(self.base[key])) + self.targets[key].delta()
        if key in self.saved:
            return self.saved[key]
        return self.base[key]

    def clear(self):
        self.shapes.clear()


class LoraPool:
    """The adapters of a model pool: `names` (its adapter entries), `mode`, `adapters` {name: LoraAdapter}
    (read and checked up front: they are small), and the base reader (`base_state_dict()`)."""

    def __init__(self, pool, names, mode):
        from ppmerge.models.peft_lora import read_adapter

        self.pool, self.names, self.mode = pool, list(names), mode
        if not pool.has_base:
            raise ConfigError(f"ModelPool.base: model {self.names[0]} is a LoRA adapter "
                              f"({pool.paths[self.names[0]]}); a pool of adapters needs the base model they were "
                              f"trained on")
        self.adapters = {}
        for name in self.names:
            adapter = read_adapter(pool.paths[name])
            _check_adapter_finite(adapter, name, pool.paths[name])
            check_named_base(adapter.config, name, pool.paths[name], pool.base_path)
            self.adapters[name] = adapter

    def base_state_dict(self):
        """The base (our layout, numpy): our checkpoint or an HF T5 / GPT-2 folder, NaN / Inf checked. Not
        kept here: the pool keeps its split (without the head and tied copies) as `ModelPool.base`."""
        from ppmerge.merge.model_pool import _check_finite
        from ppmerge.models.peft_lora import load_base

        path = self.pool.base_path
        _, state_dict = load_base(path)
        _check_finite(state_dict, "base", path)
        return state_dict

    def backbone_and_head(self, name, base_backbone):
        """(backbone, head) of adapter model `name` over the pool's base backbone (tied copies and
        heads already split off): a dict (unload) or a `LowRankModel` (lowrank); checked against the base."""
        from ppmerge.merge.model_pool import NO_HEADS

        adapter, path = self.adapters[name], self.pool.paths[name]
        head = {k: v for k, v in adapter.saved.items() if self.pool.head_pattern.search(k)}
        if not head and self.pool.task_of[name] is not None and self.pool.head_pattern.pattern != NO_HEADS:
            raise CheckpointError(f"model {name} ({path}): the adapter saves no head matching ModelPool.head_keys "
                                  f"{self.pool.head_pattern.pattern!r} (a model with a task needs its head: our GPT "
                                  f"LoRA runs save score.weight with the adapter; PEFT: modules_to_save: [score])")
        saved = {k: v for k, v in adapter.saved.items() if k not in head}
        for key in self.pool.tied_copies(saved, name, path):
            del saved[key]
        for key in adapter.targets:
            if self.pool.head_pattern.search(key):
                raise CheckpointError(f"model {name} ({path}): LoRA on head weight {key!r} is not supported in a model "
                                      f"pool (heads are never merged; save the head whole with modules_to_save)")
        for kind, items in (("adapted weight", adapter.targets.items()), ("modules_to_save weight", saved.items())):
            for key, value in items:
                if key not in base_backbone:
                    raise CheckpointError(f"model {name} ({path}): {kind} {key!r} is not in the base model "
                                          f"({self.pool.base_path}): is this adapter for another model?")
                shape = (value.A.shape[1], value.B.shape[0]) if kind == "adapted weight" else tuple(np.shape(value))
                if tuple(shape) != tuple(np.shape(base_backbone[key])):
                    raise CheckpointError(f"model {name} ({path}): {kind} {key} gives shape {list(shape)} but the "
                                          f"base model has {list(np.shape(base_backbone[key]))}")
        if self.mode == "lowrank":
            return LowRankModel(base_backbone, adapter.targets, saved, name), head
        from dataclasses import replace

        from ppmerge.models.peft_lora import merge_and_unload

        backbone = merge_and_unload(base_backbone, replace(adapter, saved=saved),
                                    source=f"base model {self.pool.base_path}")
        return backbone, head


def named_base(config, adapter_folder):
    """The local path an adapter_config.json names as its base (`base_model_name_or_path`, or our
    `base_model`), or None when it names none or no existing local file / folder."""
    for key in ("base_model_name_or_path", "base_model"):
        value = (config or {}).get(key)
        if not isinstance(value, str) or not value.strip():
            continue
        value = os.path.expanduser(value.strip())
        candidates = [value] if os.path.isabs(value) else [value, os.path.join(os.fspath(adapter_folder), value)]
        for candidate in candidates:
            if os.path.exists(candidate):
                return key, os.path.abspath(candidate)
    return None


def _same_base(a, b):
    import filecmp

    if os.path.samefile(a, b):
        return True
    return os.path.isfile(a) and os.path.isfile(b) and filecmp.cmp(a, b, shallow=False)


def check_named_base(config, name, adapter_folder, base_path):
    """Refuse adapter `name` when its adapter_config.json names a local base that is not `base_path`
    (ModelPool.base) or a byte-identical copy of it (see the module docstring)."""
    found = named_base(config, adapter_folder)
    if found is None or base_path is None or not os.path.exists(base_path):
        return
    key, named = found
    if not _same_base(named, base_path):
        raise ConfigError(f"ModelPool.base: model {name} ({adapter_folder}) was trained on {named} (its "
                          f"adapter_config.json {key}) but ModelPool.base is {os.path.abspath(base_path)}; "
                          f"set ModelPool.base to the adapter's base")


def _check_adapter_finite(adapter, name, path):
    from ppmerge.merge.model_pool import _check_finite

    for key, target in adapter.targets.items():
        _check_finite({f"{key} (lora_A)": target.A, f"{key} (lora_B)": target.B}, name, path)
    _check_finite(adapter.saved, name, path)


def lora_pool(pool, section):
    """The `LoraPool` of `pool` (a ModelPool) when some of its models are adapter folders, else None
    (and then a `ModelPool.lora` section is an error: nothing would use it)."""
    names = [name for name in pool.names if is_adapter_folder(pool.paths[name])]
    mode = lora_mode(section)
    if not names:
        if section is not None:
            raise ConfigError("ModelPool.lora: no model of the pool is a LoRA adapter folder (adapter_config.json "
                              "+ adapter_model.safetensors / .pdparams); remove ModelPool.lora or list adapters")
        return None
    return LoraPool(pool, names, mode)
