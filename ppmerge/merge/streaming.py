"""Linear merges with one fine-tuned model in memory at a time: θ = c₀·θ₀ + Σ c_i·θ_i.

Memory: by default the inputs are left alone and the peak is base + accumulator + one model. With
`consume=True` the result is accumulated in the base's own buffers (float32 numpy arrays are reused in
place, other values replaced in the dict) and each model's tensors are dropped from its dict as soon as
they are added, so the peak is about base (= the accumulator) + one model, i.e. 2× one model: the base
dict then holds the merged values, and every model dict is left empty. The iterable must have len().

With a data-free sparsifier (dare / random masks, which do not look at τ) the model θ_i stands for
θ₀ + τ̂_i = θ₀ + s·m_i ⊙ (θ_i − θ₀), so per entry c₀ becomes c₀ + Σ c_i·(1 − s·m_i) and c_i becomes
c_i·s·m_i; the masks are drawn again from their seeds, which is why the base can be scaled up front.
"""
import numpy as np

from ppmerge.errors import UserError
from ppmerge.merge.tensor_ops import as_numpy, is_floating, numpy_dtype, to_device, to_host


def _float32_buffer(base, key, consume):
    """A writable float32 copy of base[key], or, when consuming, the base's own buffer if it is one."""
    value = base[key]
    if consume and isinstance(value, np.ndarray) and value.dtype == np.float32 and value.flags.writeable:
        return value
    buffer = np.array(as_numpy(value), dtype=np.float32)
    if consume:
        base[key] = buffer  # the caller's tensor can go now
    return buffer


def stream_linear(base, models, base_coef, model_coefs, sparsify=None, consume=False):
    """θ = base_coef·θ₀ + Σ_i model_coefs[i]·θ_i over the iterable `models` (len(models) == len(model_coefs))."""
    from ppmerge.merge.sparsify import Sparsifier

    n = len(model_coefs)
    if len(models) != n:
        raise UserError(f"the merge got {len(models)} models but {n} coefficients (one per model expected)")
    sparsifier = Sparsifier(sparsify, n) if sparsify else None
    if sparsifier is not None and not sparsifier.data_free:
        raise ValueError("stream_linear: only dare / random masks can stream (check MergeMethod.can_stream)")
    keys = [k for k, v in base.items() if is_floating(v)]
    dtypes = {k: numpy_dtype(base[k]) for k in base}

    accumulator = {}
    for key in keys:  # accumulator = c₀ ⊙ θ₀, written over the base's buffer
        buffer = _float32_buffer(base, key, consume)
        coef = base_coef
        if sparsifier is not None:
            coef = base_coef + sum(c * (1.0 - sparsifier.keep_scale(i, key, buffer.shape)) for i, c in enumerate(model_coefs))
        buffer[...] = to_host(to_device(buffer) * coef)
        accumulator[key] = buffer

    iterator, seen = iter(models), 0
    for i in range(n):
        model = next(iterator, None)
        if model is None:
            break
        for key in keys:
            value = model.pop(key) if consume else model[key]
            coef = model_coefs[i] if sparsifier is None else model_coefs[i] * sparsifier.keep_scale(i, key, value.shape)
            accumulator[key][...] = to_host(to_device(accumulator[key]) + to_device(value) * coef)
            del value
        if consume:
            model.clear()
        model = None
        seen += 1
    if seen != n:
        raise UserError(f"the merge expected {n} models but the pool yielded {seen}")

    merged = {}
    for key in base:
        if key in accumulator:
            merged[key] = accumulator.pop(key).astype(dtypes[key], copy=False)
        else:  # non-float tensors are copied from the base
            merged[key] = np.array(as_numpy(base[key]))
    return merged
