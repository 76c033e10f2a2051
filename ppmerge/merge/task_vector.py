"""Task vectors τ_i = θ_i − θ₀ and the key-by-key loops every data-free method is built on."""
import numpy as np

from ppmerge.merge.tensor_ops import as_numpy, is_floating, numpy_dtype, to_device, to_host


def extract_task_vector(finetuned, base):
    """τ = θ − θ₀ as numpy arrays; keys missing from the base (e.g. a task head) are kept as they are.
    Returns (task_vector, kept_keys)."""
    vector, kept = {}, []
    for key, value in finetuned.items():
        if key in base and is_floating(value):
            vector[key] = to_host(to_device(value) - to_device(base[key]), numpy_dtype(value))
        else:
            vector[key] = np.array(as_numpy(value))
            kept.append(key)
    return vector, kept


def merge_per_key(base, models, combine):
    """merged[key] = combine(key, θ₀, [θ_1 … θ_n]) with paddle float32 tensors on the current device,
    one key at a time; the result comes back as numpy in the base's dtype. Non-float keys (none in
    GPT) are copied from the base."""
    return _each_key(base, lambda key, theta0: combine(key, theta0, [to_device(m[key]) for m in models]))


def merge_task_vectors(base, models, combine, source=None):
    """merged[key] = combine(key, θ₀, [τ_1 … τ_n]) key by key; `source(i, key)` gives the (sparsified) τ_i."""
    source = source or task_vector_source(base, models)
    return _each_key(base, lambda key, theta0: combine(key, theta0, [source(i, key) for i in range(len(models))]))


def _each_key(base, compute):
    merged = {}
    for key, value in base.items():
        if is_floating(value):
            merged[key] = to_host(compute(key, to_device(value)), numpy_dtype(value))
        else:
            merged[key] = np.array(as_numpy(value))
    return merged


def task_vector_source(base, models, sparsify=None, order=None):
    """A function (i, key) -> τ_i[key] on the device, sparsified by the `sparsify` spec (a dict, see
    ppmerge.merge.sparsify) when one is given; masks that need a pass over whole models (global
    thresholds, conflict-aware masks) are computed here, once."""
    last = {}  # θ₀[key] on the device, for the key being merged (keys are visited one at a time)

    def raw(i, key):
        if key not in last:
            last.clear()
            last[key] = to_device(base[key])
        return to_device(models[i][key]) - last[key]

    if not sparsify:
        return raw
    from ppmerge.merge.sparsify import Sparsifier

    sparsifier = Sparsifier(sparsify, num_models=len(models), order=order)
    sparsifier.prepare(raw, float_key_shapes(base))
    return lambda i, key: sparsifier.apply(i, key, raw(i, key))


def float_key_shapes(base):
    """{key: shape} of the float tensors, in state-dict order."""
    return {k: tuple(v.shape) for k, v in base.items() if is_floating(v)}
