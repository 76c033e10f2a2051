"""Training checkpoints: one folder per save, written atomically, enough to resume exactly.

    output_dir/
      config.yaml                    the resolved config (saved at start)
      epoch_{e}_step_{s}/            e = epoch index (0-based, FleetX), s = global optimizer step
        model.pdparams               model weights (ppmerge.models.checkpoint: safe format)
        model_state.pdopt            optimizer moments + LR_Scheduler (+ GradScaler), by parameter path
        meta_state.pdopt             epoch, step in epoch, global step, RNG states, best metric, config
      latest                         text: the newest checkpoint folder's name
      best/model.pdparams            the weights with the best eval metric so far (+ metrics.json)

Optimizer state keys are rewritten from paddle's generated names (`linear_3.w_0_moment1_0`), which
depend on how many layers the process built before, to the parameter's path in the model
(`gpt.decoder.layers.0.linear1.weight@moment1_0`), so a checkpoint resumes in any process.
"""
import json
import os

from ppmerge.errors import CheckpointError
from ppmerge.fileio import atomic_dir, write_text

MODEL_FILE = "model.pdparams"
OPTIMIZER_FILE = "model_state.pdopt"
META_FILE = "meta_state.pdopt"
LATEST_FILE = "latest"
BEST_DIR = "best"
SCALER_KEY = "GradScaler"
_SEP = "@"


def checkpoint_name(epoch, global_step):
    return f"epoch_{epoch}_step_{global_step}"


def _generated_to_path(model):
    return {p.name: path for path, p in model.named_parameters()}


def structured_optimizer_state(opt_state, model):
    """paddle's optimizer state_dict with keys by parameter path instead of generated name."""
    names = _generated_to_path(model)
    by_length = sorted(names, key=len, reverse=True)  # longest first: linear_1.w_0 before linear_1
    out = {}
    for key, value in opt_state.items():
        if key == "master_weights":
            out[key] = {names.get(k, k): v for k, v in value.items()}
            continue
        generated = next((n for n in by_length if key.startswith(n + "_")), None)
        out[key if generated is None else names[generated] + _SEP + key[len(generated) + 1:]] = value
    return out


def generated_optimizer_state(state, model):
    """Inverse of structured_optimizer_state, for this process's model."""
    paths = {path: p.name for path, p in model.named_parameters()}
    out = {}
    for key, value in state.items():
        if key == "master_weights":
            out[key] = {paths.get(k, k): v for k, v in value.items()}
        elif _SEP in key:
            path, suffix = key.rsplit(_SEP, 1)
            if path not in paths:
                raise CheckpointError(f"{OPTIMIZER_FILE}: optimizer state for {path!r}, which the model does not have")
            out[paths[path] + "_" + suffix] = value
        else:
            out[key] = value
    return out


def save_checkpoint(folder, model, optimizer, scaler, meta):
    """Write the three files of a checkpoint folder; the folder appears whole or not at all."""
    from ppmerge.models.checkpoint import save_state_dict
    from ppmerge.models.safe_pickle import write_pickle

    opt_state = structured_optimizer_state(optimizer.state_dict(), model)
    if scaler is not None:
        opt_state[SCALER_KEY] = scaler.state_dict()
    with atomic_dir(folder) as tmp:
        save_state_dict(model.state_dict(), os.path.join(tmp, MODEL_FILE))
        write_pickle(opt_state, os.path.join(tmp, OPTIMIZER_FILE))
        write_pickle(meta, os.path.join(tmp, META_FILE))
    write_text(os.path.join(os.path.dirname(os.path.abspath(folder)), LATEST_FILE), os.path.basename(folder) + "\n")


def load_checkpoint(folder, model, optimizer=None, scaler=None):
    """Restore model (and optimizer, LR scheduler, scaler) in place; returns the meta dict."""
    from ppmerge.models.checkpoint import load_state_dict
    from ppmerge.models.checkpoint import load_object

    folder = os.fspath(folder)
    for name in (MODEL_FILE, META_FILE) + ((OPTIMIZER_FILE,) if optimizer is not None else ()):
        if not os.path.isfile(os.path.join(folder, name)):
            raise CheckpointError(f"Engine.save_load.ckpt_dir: {os.path.join(folder, name)} not found "
                                  f"(expected a folder written by training: {MODEL_FILE}, {OPTIMIZER_FILE}, {META_FILE})")
    weights = load_state_dict(os.path.join(folder, MODEL_FILE))
    from ppmerge.models.checkpoint import check_finite

    check_finite({key: value.numpy() for key, value in weights.items()}, os.path.join(folder, MODEL_FILE))
    expected = set(model.state_dict())
    if set(weights) != expected:
        missing, extra = sorted(expected - set(weights)), sorted(set(weights) - expected)
        raise CheckpointError(f"{os.path.join(folder, MODEL_FILE)} does not match the model: "
                              f"missing {missing[:5]}, unexpected {extra[:5]}")
    model.set_state_dict(weights)
    if optimizer is not None:
        opt_state = load_object(os.path.join(folder, OPTIMIZER_FILE))
        scaler_state = opt_state.pop(SCALER_KEY, None)
        optimizer.set_state_dict(generated_optimizer_state(opt_state, model))
        if scaler is not None and scaler_state:
            scaler.load_state_dict(scaler_state)
    return load_object(os.path.join(folder, META_FILE))


def save_best(output_dir, model, metrics):
    """output_dir/best/{model.pdparams, metrics.json}, replaced whole."""
    from ppmerge.models.checkpoint import save_state_dict

    with atomic_dir(os.path.join(output_dir, BEST_DIR)) as tmp:
        save_state_dict(model.state_dict(), os.path.join(tmp, MODEL_FILE))
        with open(os.path.join(tmp, "metrics.json"), "w", encoding="utf-8") as f:
            json.dump(metrics, f, indent=2)


def latest_checkpoint(output_dir):
    """The newest checkpoint folder under output_dir (from its `latest` file)."""
    pointer = os.path.join(output_dir, LATEST_FILE)
    if not os.path.isfile(pointer):
        raise CheckpointError(f"{pointer} not found: {output_dir} holds no finished training checkpoint")
    with open(pointer, encoding="utf-8") as f:
        folder = os.path.join(output_dir, f.read().strip())
    if not os.path.isdir(folder):
        raise CheckpointError(f"{pointer} names {folder}, which does not exist")
    return folder
