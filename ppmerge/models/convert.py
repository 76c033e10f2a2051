"""Checkpoint conversion behind `tools/convert.py`: FleetX / paddlenlp / Hugging Face GPT-2 → our
key layout (separate q/k/v, float32), written as `.pdparams` or `.safetensors`."""
import json
import os

from ppmerge.errors import CheckpointError, UserError
from ppmerge.models import hf_gpt2
from ppmerge.models.checkpoint import (load_numpy_state_dict, resolve_checkpoint_path, save_state_dict,
                                       to_float32, to_our_layout)

SOURCES = ("fleetx", "paddlenlp", "hf")
TARGETS = ("pdparams", "safetensors")


def output_path(path, target):
    """`path` with the target's extension (added when missing; a different one is an error)."""
    ext = os.path.splitext(path)[1].lower()
    if not ext:
        return f"{path}.{target}"
    if ext != "." + target:
        raise UserError(f"--output {path} has extension {ext} but --to is {target}")
    return path


def _heads_from_paddlenlp_config(file):
    """paddlenlp's save_pretrained writes config.json beside the weights; it knows the head count."""
    config = os.path.join(os.path.dirname(file), "config.json")
    if os.path.isfile(config):
        with open(config, encoding="utf-8") as f:
            return json.load(f).get("num_attention_heads")
    return None


def convert_checkpoint(source, target, input_path, output, num_heads=None):
    """Convert and write; returns (written path, number of tensors, Model-section fields or None)."""
    if source not in SOURCES:
        raise UserError(f"--from {source!r}: expected one of {', '.join(SOURCES)}")
    if target not in TARGETS:
        raise UserError(f"--to {target!r}: expected one of {', '.join(TARGETS)}")
    output = output_path(output, target)
    model_fields = None
    if source == "hf":
        if not os.path.isdir(input_path):
            raise CheckpointError(f"--input {input_path}: expected a Hugging Face folder (config.json + model.safetensors)")
        model_fields, num_classes, state_dict = hf_gpt2.load_folder(input_path)
        if num_classes:
            model_fields["num_classes"] = num_classes
    else:
        file = resolve_checkpoint_path(input_path)
        if source == "paddlenlp" and not num_heads:
            num_heads = _heads_from_paddlenlp_config(file)
        state_dict = to_our_layout(load_numpy_state_dict(file), num_heads, source=file)
    state_dict = {key: to_float32(value) if value.dtype.kind == "f" or value.dtype.name == "uint16" else value
                  for key, value in state_dict.items()}
    save_state_dict(state_dict, output)
    return output, len(state_dict), model_fields
