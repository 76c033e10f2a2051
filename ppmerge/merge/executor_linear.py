"""Linear merges with one fine-tuned model in memory at a time: θ = c₀·θ₀ + Σ c_i·θ_i.

Memory: by default the inputs are left alone and the peak is base + accumulator + one model. With
`consume=True` the result is accumulated in the base's own buffers (float32 numpy arrays are reused in
place, other values replaced in the dict) and each model's tensors are dropped from its dict as soon as
they are added, so the peak is about base (= the accumulator) + one model, i.e. 2× one model: the base
dict then holds the merged values, and every model dict is left empty. The iterable must have len().

With a data-free sparsifier (dare / random masks, which do not look at τ) the model θ_i stands for
θ₀ + τ̂_i = θ₀ + s·m_i ⊙ (θ_i − θ₀), so per entry c₀ becomes c₀ + Σ c_i·(1 − s·m_i) and c_i becomes
c_i·s·m_i; the masks are drawn again from their seeds, which is why the base can be scaled up front.

The arithmetic runs on blocks of rows (≤ BLOCK_BYTES each), in place in the accumulator: a whole-
tensor `acc + θ_i·c` would make two temporaries the size of the largest tensor (the embedding,
0.15× a GPT-2-medium model each; paddle's allocator keeps them), measured in the streamed merges' peak.
"""
import os
import threading
from concurrent.futures import ThreadPoolExecutor, wait

import numpy as np

from ppmerge.errors import UserError
from ppmerge.models.checkpoint import to_float32
from ppmerge.merge.tensor_ops import as_numpy, is_floating, like_base, numpy_dtype, to_device, to_host


def _float32_buffer(base, key, consume):
    """A writable float32 copy of base[key], or, when consuming, the base's own buffer if it is one."""
    value = base[key]
    if consume and isinstance(value, np.ndarray) and value.dtype == np.float32 and value.flags.writeable:
        return value
    buffer = np.array(as_numpy(value), dtype=np.float32)
    if consume:
        base[key] = buffer  # the caller's tensor can go now
    return buffer


BLOCK_BYTES = 8 << 20


def _row_blocks(array):
    """Slices of the first axis, each ≤ BLOCK_BYTES (one slice for small or 0-d arrays)."""
    if array.ndim == 0 or array.nbytes <= BLOCK_BYTES:
        return [...]
    rows = array.shape[0]
    step = max(1, BLOCK_BYTES * rows // array.nbytes)
    return [slice(start, min(start + step, rows)) for start in range(0, rows, step)]


def _block(coef, rows):
    """The part of a coefficient (a scalar or a per-entry paddle tensor / array) for a block of rows."""
    return coef if np.isscalar(coef) or getattr(coef, "ndim", 0) == 0 or rows is Ellipsis else coef[rows]


def _update_block(block, update):
    """Apply `update` (an in-place paddle op) to a block of the accumulator. On CPU the device tensor
    is the block's own memory (zero-copy), so nothing is copied back; elsewhere the result is."""
    tensor = to_device(block)
    update(tensor)
    result = to_host(tensor)
    if not np.may_share_memory(result, block):
        block[...] = result


def _scale_in_place(buffer, coef):
    """buffer *= coef (on the compute device), block by block."""
    if np.isscalar(coef) and coef == 1.0:
        return
    for rows in _row_blocks(buffer):
        part = _block(coef, rows)
        if np.isscalar(part) or np.ndim(part) == 0:
            _update_block(buffer[rows], lambda t: t.scale_(float(part)))
        else:
            _update_block(buffer[rows], lambda t: t.multiply_(to_device(part) if isinstance(part, np.ndarray) else part))


def _add_in_place(accumulator, value, coef=1.0):
    """accumulator += value·coef (on the compute device), block by block."""
    plain = np.isscalar(coef) and coef == 1.0  # one pass instead of a multiply then an add
    for rows in _row_blocks(accumulator):
        part = _block(coef, rows)
        if isinstance(part, np.ndarray) and part.ndim:
            part = to_device(part)
        _update_block(accumulator[rows], lambda t: t.add_(to_device(value[rows]) if plain else to_device(value[rows]) * part))


SCRATCH_BYTES = 2 << 20  # the fused read + add works on blocks this size: they stay in cache (2-4 MB fastest here)
THREADS = None  # fused-add workers; None: one per usable core


class Scratch:
    """Reusable work buffers of one thread (made when first needed, grown on demand): `raw(nbytes)` the
    file's bytes of a fused read, `float32(size)` products and fp16 / bf16 values, and the chunk-sized
    `tau` / `work` / `mask` of the TIES kernels."""

    def __init__(self, nbytes=0):
        self._raw = np.empty(nbytes, dtype=np.uint8)
        self._float32 = np.empty(0, dtype=np.float32)
        self._chunk = None

    def raw(self, nbytes):
        if self._raw.size < nbytes:
            self._raw = np.empty(nbytes, dtype=np.uint8)
        return self._raw[:nbytes]

    def float32(self, size):
        if self._float32.size < size:
            self._float32 = np.empty(size, dtype=np.float32)
        return self._float32[:size]

    def chunk_buffers(self, size):
        """(tau, work, mask): two float32 and one bool buffer of `size` entries."""
        if self._chunk is None or self._chunk[0].size < size:
            self._chunk = (np.empty(size, np.float32), np.empty(size, np.float32), np.empty(size, bool))
        return self._chunk

    def as_float32(self, block):
        """block as float32 values: float32 blocks as they are, fp16 cast, uint16 decoded as bf16 bits."""
        if block.dtype == np.float32:
            return block
        out = self.float32(block.size)
        if block.dtype == np.uint16:  # paddle's bf16 convention: the high half of a float32
            bits = out.view(np.uint32)
            np.copyto(bits, block)
            np.left_shift(bits, 16, out=bits)
            return out
        np.copyto(out, block, casting="same_kind")
        return out


_LOCAL = threading.local()


def thread_scratch(nbytes=0):
    """This thread's Scratch (one per worker thread, kept for the life of the thread)."""
    scratch = getattr(_LOCAL, "scratch", None)
    if scratch is None:
        scratch = _LOCAL.scratch = Scratch(nbytes)
    return scratch


def _flat(array, order):
    """array's elements in `order` as a flat view (None when that would need a copy)."""
    if array.flags.c_contiguous if order == "C" else array.flags.f_contiguous:
        return array.reshape(-1, order=order)
    return None


def _can_fuse(model, key, accumulator):
    """The model reads in blocks, in an element order the accumulator has as a flat view."""
    return hasattr(model, "iter_blocks") and _flat(accumulator, model.storage_order(key)) is not None


def _fused_add(accumulator, model, key, coef, scratch, raw_bytes, then_scale=None):
    """accumulator += model[key]·coef (then ·then_scale), reading the tensor from its file block by block
    into the scratch buffer and adding each block while it is in cache: no copy of the tensor is made
    and it is read from memory once (`_can_fuse` must hold). `coef` is a float, or a MaskedCoef (DARE:
    per entry, built block by block from packed masks). Float32 numpy ops round exactly as the paddle
    ops of `_add_in_place` do."""
    order = model.storage_order(key)
    flat = _flat(accumulator, order)
    masked = isinstance(coef, MaskedCoef)
    plain = not masked and coef == 1.0
    for start, block in model.iter_blocks(key, scratch.raw(raw_bytes)):
        out = flat[start:start + block.size]
        if not plain:
            part = coef.block(start, start + block.size, order, accumulator.shape) if masked else coef
            value = scratch.as_float32(block)
            if value is block:  # float32 from the file: the product goes to the float32 scratch
                value = np.multiply(block, part, out=scratch.float32(block.size))
            else:
                np.multiply(value, part, out=value)
        elif block.dtype == np.uint16:
            value = scratch.as_float32(block)
        else:
            value = block  # float32, or fp16 (cast exactly inside the ufunc)
        np.add(out, value, out=out)
        if then_scale is not None:
            np.multiply(out, then_scale, out=out)


def thread_count():
    """THE thread policy of the merge kernels: one worker per core this process may use (numpy's
    ufuncs and pread release the GIL); `THREADS` overrides it (tests, benchmarks)."""
    if THREADS:
        return THREADS
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


class _FusedWorkers:
    """Runs the fused adds of one model's tensors on a few threads, each with its own scratch buffers.
    Tensors are handed out largest first (so the embedding does not finish last); the first failing
    tensor in key order is the error raised, as a sequential loop would raise it."""

    def __init__(self, threads):
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="fused-merge") if threads > 1 else None

    def run(self, keys, work, size):
        if self.pool is None:
            for key in keys:
                work(key, thread_scratch())
            return
        futures = {key: self.pool.submit(lambda k=key: work(k, thread_scratch()))
                   for key in sorted(keys, key=size, reverse=True)}
        try:
            for key in keys:
                futures[key].result()
        finally:
            for future in futures.values():
                future.cancel()
            wait(list(futures.values()))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.pool is not None:
            self.pool.shutdown(wait=True)


class DareMasks:
    """The keep masks of a data-free sparsifier (dare / random) for every model and tensor, drawn ONCE
    from their seeds (sparsify.random_keep_host, on the worker threads) and kept as packed bits:
    n/32 of one float32 model. Both the base coefficient and each model's add read them."""

    def __init__(self, spec, shapes, num_models, threads):
        from ppmerge.merge.sparsify import random_keep_packed

        self.scale = float(spec["scale"])
        self.shapes = shapes
        jobs = [(i, key) for i in range(num_models) for key in shapes]

        def draw(job):
            i, key = job
            return random_keep_packed(shapes[key], spec["ratio"], spec["seed"], i, key)

        with ThreadPoolExecutor(max(1, threads)) as pool:
            self.bits = dict(zip(jobs, pool.map(draw, jobs)))

    def keep(self, i, key, start=0, stop=None):
        """Model i's mask of `key`, flat (C order), entries start..stop, as uint8 0/1."""
        size = int(np.prod(self.shapes[key]))
        stop = size if stop is None else stop
        first = start // 8
        bits = np.unpackbits(self.bits[i, key][first:(stop + 7) // 8], count=stop - first * 8)
        return bits[start - first * 8:]

    def coef(self, i, key, c):
        return MaskedCoef(self, i, key, np.float32(self.scale) * np.float32(c))

    def scale_base(self, buffer, key, base_coef, coefs, block=1 << 20):
        """buffer *= c₀ + Σ_i c_i·(1 − s·m_i) per entry, block by block (no whole-tensor temporaries)."""
        flat = buffer.reshape(-1) if buffer.flags.c_contiguous else None
        if flat is None:  # a non-contiguous buffer: the per-entry coefficient whole
            coef = self._base_coef(key, base_coef, coefs, 0, buffer.size).reshape(buffer.shape)
            _scale_in_place(buffer, coef)
            return
        for start in range(0, flat.size, block):
            stop = min(start + block, flat.size)
            np.multiply(flat[start:stop], self._base_coef(key, base_coef, coefs, start, stop), out=flat[start:stop])

    def _base_coef(self, key, base_coef, coefs, start, stop):
        coef = np.zeros(stop - start, dtype=np.float32)
        for i, c in enumerate(coefs):
            coef += np.float32(c) * (np.float32(1.0) - self.keep(i, key, start, stop) * np.float32(self.scale))
        return np.float32(base_coef) + coef


class MaskedCoef:
    """c·s·m_i per entry of one tensor, made block by block (never a whole float32 tensor)."""

    def __init__(self, masks, i, key, value):
        self.masks, self.i, self.key, self.value = masks, i, key, value

    def block(self, start, stop, order="C", shape=None):
        if order != "C":  # a Fortran-ordered file: the mask in that element order (whole tensor, rare)
            full = self.whole().reshape(shape).reshape(-1, order=order)
            return full[start:stop]
        return self.masks.keep(self.i, self.key, start, stop) * self.value

    def whole(self):
        return self.block(0, None)


def _as_float_values(value):
    """bf16 tensors (uint16 bits) decoded, so that they are added as the numbers they stand for."""
    return to_float32(value) if isinstance(value, np.ndarray) and value.dtype == np.uint16 else value


def each_model(models, n, consume):
    """(i, model) for the n models of a sized stream, one at a time: once the caller is done with a
    model, a consuming merge's model is cleared before the next one is opened. A pool that yields
    fewer than n models is a UserError."""
    iterator = iter(models)
    for i in range(n):
        model = next(iterator, None)
        if model is None:
            raise UserError(f"the merge expected {n} models but the pool yielded {i}")
        yield i, model
        if consume:
            model.clear()
        del model


def stream_linear(base, models, base_coef, model_coefs, sparsify=None, consume=False, per_key=None):
    """θ = base_coef·θ₀ + Σ_i model_coefs[i]·θ_i over the sized iterable `models` (one model in memory at
    a time; a list runs the same code). `sparsify`: a parsed data-free spec (dare / random) or None.
    `per_key`: {key: (base_coef, model_coefs)} when the coefficients differ between keys."""
    n = len(model_coefs)
    if len(models) != n:
        raise UserError(f"the merge got {len(models)} models but {n} coefficients (one per model expected)")
    keys = [k for k, v in base.items() if is_floating(v)]
    dtypes = {k: numpy_dtype(base[k]) for k in base}
    threads = thread_count()
    masks = DareMasks(sparsify, {k: tuple(np.shape(base[k])) for k in keys}, n, threads) if sparsify else None
    # Every model with the same coefficient c (simple average, task arithmetic): accumulate
    # (c₀/c)·θ₀ + Σ θ_i and multiply by c once at the end, so each model costs one add pass.
    common = (model_coefs[0] if masks is None and per_key is None and n and len(set(model_coefs)) == 1
              and model_coefs[0] else None)
    if common is not None:
        base_coef, model_coefs = base_coef / common, [1.0] * n
    coefficients = per_key or {key: (base_coef, model_coefs) for key in keys}

    accumulator = {}
    for key in keys:  # accumulator = c₀ ⊙ θ₀ (per entry with masks: c₀ + Σ c_i·(1 − s·m_i)), over the base's buffer
        buffer = _float32_buffer(base, key, consume)
        if masks is not None:
            masks.scale_base(buffer, key, *coefficients[key])
        else:
            _scale_in_place(buffer, coefficients[key][0])
        accumulator[key] = buffer

    # The common factor is applied with the last model's add, while each block is in cache.
    final_scale = common if common is not None and common != 1.0 else None
    largest = max([accumulator[k].nbytes for k in keys], default=0)  # small models: blocks well below a tensor
    raw_bytes = max(1, min(SCRATCH_BYTES, max(largest // 8, 64 << 10), largest))
    with _FusedWorkers(threads) as workers:
        for i, model in each_model(models, n, consume):
            then_scale = final_scale if i == n - 1 else None

            def coef_of(key, i=i):
                c = coefficients[key][1][i]
                return c if masks is None else masks.coef(i, key, c)

            fused = [k for k in keys if _can_fuse(model, k, accumulator[k])]
            whole = [k for k in keys if k not in set(fused)]
            for key in whole:  # whole tensors (dict models, layouts that differ, ...)
                value = _as_float_values(model.pop(key) if consume else model[key])
                coef = coef_of(key)
                if isinstance(coef, MaskedCoef):
                    coef = coef.whole().reshape(accumulator[key].shape)
                _add_in_place(accumulator[key], value, coef)
                del value
                if then_scale is not None:
                    _scale_in_place(accumulator[key], then_scale)
            workers.run(fused, lambda key, scratch: _fused_add(accumulator[key], model, key, coef_of(key), scratch,
                                                              raw_bytes, then_scale),
                        size=lambda key: accumulator[key].nbytes)
    return like_base(base, accumulator, dtypes)
