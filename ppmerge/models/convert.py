"""Checkpoint conversion behind `tools/convert.py` (and `ppmerge.convert`), table-driven.

A *reader* (`SOURCES[name](input_path, num_heads) -> Source`) brings a checkpoint into our key layout
(paddlenlp `GPTForSequenceClassification` names, separate q/k/v, numpy values as stored); a *writer*
(`TARGETS[name](source, output, dtype, num_heads, task) -> (path, tensor count, notes)`) writes it out.
A new format is one more entry in a table.

Sources: ppmerge (our own .pdparams / .safetensors, merged files too), fleetx, paddlenlp, hf; hf-t5 (a
Flan-T5 folder, `hf_t5`) and peft-lora (a PEFT LoRA folder merged into --base, or without it the adapter
itself as a folder in our key layout, `peft_lora`), written as pdparams / safetensors only.
Targets: pdparams, safetensors (our layout, merged files kept whole), hf, paddlenlp (folders), fleetx
(a .pdparams with fused qkv). A merged model (`heads.<TASK>.…`) becomes one folder per task for the
hf / paddlenlp / fleetx targets (`--task` picks one). Values are cast once, tensor by tensor, to
`dtype` (float32 | float16 | bfloat16; bf16 as paddle's uint16 bits)."""
import json
import os
from dataclasses import dataclass, field

from ppmerge.errors import CheckpointError, UserError
from ppmerge.models import export, hf_gpt2
from ppmerge.models.checkpoint import (load_numpy_state_dict, merged_task_names, resolve_checkpoint_path,
                                       save_state_dict, select_task_head, to_our_layout)


@dataclass
class Source:
    """A checkpoint read into our layout: `state_dict`, `model_fields` (Model-section fields the input's
    own config states, or None), `num_heads` (when known), `path` (what was read)."""
    state_dict: dict
    model_fields: dict = None
    num_heads: int = None
    path: str = ""
    notes: list = field(default_factory=list)


# --------------------------------------------------------------------------- readers

def _config_beside(file):
    """config.json beside a weights file (paddlenlp's save_pretrained writes one), or None."""
    config = os.path.join(os.path.dirname(file), "config.json")
    if os.path.isfile(config):
        with open(config, encoding="utf-8") as f:
            try:
                return json.load(f)
            except json.JSONDecodeError as exc:
                raise CheckpointError(f"{config}: not valid JSON ({exc})") from None
    return None


def _heads_from_paddlenlp_config(file):
    """paddlenlp's save_pretrained writes config.json beside the weights; it knows the head count."""
    config = _config_beside(file)
    return config.get("num_attention_heads") if config else None


def read_ours(input_path, num_heads=None):
    file = resolve_checkpoint_path(input_path)
    return Source(load_numpy_state_dict(file), num_heads=num_heads or _heads_from_paddlenlp_config(file), path=file)


def read_layout(input_path, num_heads=None):
    """FleetX / paddlenlp / our checkpoints: prefixes normalised, fused qkv split (needs the head count)."""
    file = resolve_checkpoint_path(input_path)
    num_heads = num_heads or _heads_from_paddlenlp_config(file)
    return Source(to_our_layout(load_numpy_state_dict(file), num_heads, source=file), num_heads=num_heads, path=file)


def read_hf(input_path, num_heads=None):
    if not os.path.isdir(input_path):
        raise CheckpointError(f"--input {input_path}: expected a Hugging Face folder (config.json + model.safetensors)")
    model_fields, num_classes, state_dict = hf_gpt2.load_folder(input_path)
    if num_classes:
        model_fields["num_classes"] = num_classes
    return Source(state_dict, model_fields, num_heads or model_fields["num_attention_heads"], path=input_path)


def read_hf_t5(input_path, num_heads=None):
    """A local HF T5 / Flan-T5 folder → our T5 layout (ppmerge.models.hf_t5)."""
    from ppmerge.models import hf_t5

    from ppmerge.models.t5 import t5_model_overrides

    fields, state_dict = hf_t5.load_folder(input_path, dtype=None)
    return Source(state_dict, t5_model_overrides(fields), fields["num_heads"], path=input_path)


def read_peft_lora(input_path, num_heads=None, base=None):
    """A PEFT LoRA folder merged into `base` (merge-and-unload; ppmerge.models.peft_lora)."""
    from ppmerge.models import peft_lora

    if base is None:
        raise UserError("--from peft-lora: merge-and-unload needs --base (the model the adapter was trained on); "
                        "without --base the adapter itself is written")
    fields, state_dict = peft_lora.merge_folder(input_path, base)
    if fields and "d_model" in fields:  # a T5 base: the shortest Model section
        from ppmerge.models.t5 import t5_model_overrides

        fields = t5_model_overrides(fields)
    return Source(state_dict, fields, num_heads, path=input_path)


SOURCES = {"ppmerge": read_ours, "fleetx": read_layout, "paddlenlp": read_layout, "hf": read_hf,
           "hf-t5": read_hf_t5, "peft-lora": read_peft_lora}
# Sources that give T5 models or adapters: written only as our own files (the GPT exports do not apply).
FILE_ONLY_SOURCES = ("hf-t5", "peft-lora")


# --------------------------------------------------------------------------- writers

def output_path(path, target):
    """`path` with the target's extension (added when missing; a different one is an error)."""
    ext = os.path.splitext(path)[1].lower()
    if not ext:
        return f"{path}.{target}"
    if ext != "." + target:
        raise UserError(f"--output {path} has extension {ext} but --to is {target}")
    return path


def _write_file(target):
    def write(source, output, dtype, num_heads=None, task=None):
        from ppmerge.models.dtypes import cast_state_dict

        path = output_path(output, target)
        state_dict = source.state_dict
        if task is not None:
            state_dict = select_task_head(state_dict, task)
        state_dict = cast_state_dict(dict(state_dict), dtype, where="--dtype")
        save_state_dict(state_dict, path)
        return path, len(state_dict), []
    return write


def _models(source, task):
    """[(task or None, plain state dict)]: one per head of a merged model (or `task`'s), else the model."""
    tasks = merged_task_names(source.state_dict)
    if not tasks:
        return [(task, source.state_dict)]
    if task is not None:
        state_dict = select_task_head(source.state_dict, task)
        return [(next((t for t in tasks if _same_task(t, task)), task), state_dict)]
    return [(name, select_task_head(source.state_dict, name)) for name in tasks]


def _same_task(a, b):
    from ppmerge.data import get_task

    try:
        return get_task(a).name == get_task(b).name
    except UserError:
        return a == b


def _check_new_output(output):
    if os.path.exists(output):
        raise UserError(f"--output {output} already exists; choose a new folder (nothing was written)")


def _write_folders(write_one):
    """A writer for folder targets: each model into OUT (or OUT/<TASK>/ for a merged model), atomically."""
    def write(source, output, dtype, num_heads=None, task=None):
        from ppmerge.fileio import atomic_dir
        from ppmerge.models.dtypes import check_dtype
        dtype = check_dtype(dtype, "--dtype")
        _check_new_output(output)
        models = _models(source, task)
        merged = bool(merged_task_names(source.state_dict)) and task is None
        arch, notes = export.infer_arch(models[0][1], num_heads or source.num_heads, source.model_fields)
        count = 0
        with atomic_dir(output) as tmp:
            for name, state_dict in models:
                folder = os.path.join(tmp, name) if merged else tmp
                os.makedirs(folder, exist_ok=True)
                count += write_one(state_dict, arch, folder, dtype, name)
        if merged:
            notes.append(f"one folder per task: {', '.join(os.path.join(output, n) for n, _ in models)}")
        return output, count, notes
    return write


def _write_fleetx_one(state_dict, arch, folder, dtype, task=None):
    from ppmerge.models.dtypes import cast_state_dict

    fused = cast_state_dict(export.fleetx_state_dict(state_dict, arch["num_attention_heads"]), dtype, where="--dtype")
    save_state_dict(fused, os.path.join(folder, "model.pdparams"))
    return len(fused)


def _write_fleetx(source, output, dtype, num_heads=None, task=None):
    """A FleetX model.pdparams (a file: --output names it, .pdparams added); a merged model: folders."""
    from ppmerge.models.dtypes import cast_state_dict, check_dtype

    if merged_task_names(source.state_dict) and task is None:
        return _write_folders(_write_fleetx_one)(source, output, dtype, num_heads, task)
    dtype = check_dtype(dtype, "--dtype")
    path = output_path(output, "pdparams")
    (name, state_dict), = _models(source, task)
    arch, notes = export.infer_arch(state_dict, num_heads or source.num_heads, source.model_fields)
    fused = cast_state_dict(export.fleetx_state_dict(state_dict, arch["num_attention_heads"]), dtype, where="--dtype")
    save_state_dict(fused, path)
    return path, len(fused), notes


TARGETS = {
    "pdparams": _write_file("pdparams"),
    "safetensors": _write_file("safetensors"),
    "hf": _write_folders(export.write_hf),
    "paddlenlp": _write_folders(export.write_paddlenlp),
    "fleetx": _write_fleetx,
}


def read_checkpoint(source, input_path, num_heads=None):
    """`SOURCES[source]`: a Source in our layout."""
    if source not in SOURCES:
        raise UserError(f"--from {source!r}: expected one of {', '.join(SOURCES)}")
    return SOURCES[source](input_path, num_heads)


def convert_checkpoint(source, target, input_path, output, num_heads=None, dtype="float32", task=None,
                       return_notes=False, base=None):
    """Convert and write; returns (written path, number of tensors, Model-section fields or None)
    (and the notes to show the user when `return_notes`). `base`: for --from peft-lora, the model to
    merge the adapter into; without it the adapter is written as a folder in our key layout."""
    from ppmerge.models.dtypes import check_dtype

    if source not in SOURCES:
        raise UserError(f"--from {source!r}: expected one of {', '.join(SOURCES)}")
    if target not in TARGETS:
        raise UserError(f"--to {target!r}: expected one of {', '.join(TARGETS)}")
    if source in FILE_ONLY_SOURCES and target not in ("pdparams", "safetensors"):
        raise UserError(f"--from {source} --to {target}: only --to pdparams or safetensors are supported "
                        f"(the {target} export is for GPT models)")
    if base is not None and source != "peft-lora":
        raise UserError(f"--base is only used with --from peft-lora, not --from {source}")
    dtype = check_dtype(dtype, "--dtype")
    if source == "peft-lora" and base is None:
        from ppmerge.models import peft_lora

        adapter = peft_lora.read_adapter(input_path)
        peft_lora.save_adapter(adapter, output, fmt=target, dtype=dtype)
        count = len(peft_lora.adapter_tensors(adapter))
        notes = [f"the adapter in ppmerge's key layout ({len(adapter.targets)} adapted weights, scale "
                 f"{adapter.scale:g}); pass --base to merge it into a full model"]
        return (output, count, None, notes) if return_notes else (output, count, None)
    if source == "peft-lora":
        loaded = read_peft_lora(input_path, num_heads, base=base)
    else:
        loaded = read_checkpoint(source, input_path, num_heads)
    from ppmerge.models.checkpoint import check_finite

    check_finite(loaded.state_dict, loaded.path or input_path)  # a NaN model is not exported (nothing written)
    path, count, notes = TARGETS[target](loaded, output, dtype, num_heads, task)
    if return_notes:
        return path, count, loaded.model_fields, notes
    return path, count, loaded.model_fields
