"""TIES kernels of the execution layer: the fast forms of ppmerge.merge.methods.ties_merging (read that
file for the math). The executor (ppmerge.merge.executor) picks them for the FusionBench options
(no weights, `topk_rule: ge_kth`, `zero_sign: majority`, masks that do not look at τ).

CPU (`stream_ties_host`, numpy): ONE pass over the models, each key read once. Model i's trim threshold is
found exactly without storing |τ| (sparsify.magnitude_threshold), then its τ̂ is added chunk by chunk
into per-entry running aggregates — Σ τ̂_i, Σ max(τ̂_i, 0) (the agreeing sum for either sign), counts or
extremes — so τ_i = θ_i − θ₀ is never stored and no list of N tensors exists. The majority sign only
matters where Σ τ̂_i is exactly 0 with non-zero entries (cancellation); those few positions get both
candidates and are settled when the scope's sign count is known. The same function runs a single merge
from files (a sized stream of models) and an in-memory sweep (a list).

Other devices (`ties_merge`, paddle, key by key): the same math with the models held in memory.
"""
from collections import deque
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ppmerge.merge.executor_linear import each_model, thread_count, thread_scratch
from ppmerge.merge.sparsify import CHUNK, Sparsifier, TaskVectorPart, magnitude_threshold, parse_sparsify, random_keep_host
from ppmerge.merge.task_vector import float_key_shapes, merge_task_vectors, task_vector_source
from ppmerge.merge.tensor_ops import as_numpy, like_base, numpy_dtype, paddle


# --- CPU: numpy, chunked, running sums ------------------------------------------------------------

def _flat32(value):
    """A flat float32 numpy view (a copy only when the dtype or the container differs)."""
    return np.ascontiguousarray(as_numpy(value), dtype=np.float32).reshape(-1)


def task_vector_part(value, theta0, spec, i, key, shape):
    """τ̂_i of one tensor as a TaskVectorPart: θ_i − θ₀ (`theta0` flat float32), DARE-style dropped and
    rescaled when `spec` is a data-free sparsify spec (the mask redrawn from its seed)."""
    x = _flat32(value)
    if spec is None:
        return TaskVectorPart(x, theta0)
    keep = random_keep_host(shape, spec["ratio"], spec["seed"], i, key).reshape(-1)
    return TaskVectorPart(x, theta0, keep, spec["scale"])




def count_dtype(num_models):
    """The smallest unsigned integer that counts up to num_models."""
    return np.uint8 if num_models <= np.iinfo(np.uint8).max else np.uint16 if num_models <= 65535 else np.uint32


class RunningMerge:
    """Per-entry aggregates of the trimmed task vectors of one slice, added one model at a time:
    sum keeps Σ τ̂ and Σ max(τ̂, 0) (2 float32 per entry), mean also two counts (1 byte each for
    < 256 models), max Σ τ̂, max(0, τ̂) and min(0, τ̂) (3 float32)."""

    def __init__(self, size, merge_func, num_models=65535):
        self.merge_func = merge_func
        self.total = np.zeros(size, dtype=np.float32)        # Σ τ̂_i: its sign is the elected one
        if merge_func in ("sum", "mean"):
            self.positive = np.zeros(size, dtype=np.float32)  # Σ max(τ̂_i, 0); the negative sum is total − it
        if merge_func == "mean":
            self.count_positive = np.zeros(size, dtype=count_dtype(num_models))
            self.count_nonzero = np.zeros(size, dtype=count_dtype(num_models))
        if merge_func == "max":
            self.largest = np.zeros(size, dtype=np.float32)   # max(0, τ̂_i) over i
            self.smallest = np.zeros(size, dtype=np.float32)  # min(0, τ̂_i) over i

    def add(self, part, threshold, scratch=None):
        """Add τ̂ with entries |τ̂| < threshold zeroed (TIES's trim)."""
        if threshold == float("inf"):
            return
        tau_buffer, work_buffer, mask_buffer = (scratch or thread_scratch()).chunk_buffers(CHUNK)
        threshold = np.float32(threshold) if np.isfinite(threshold) else threshold
        for start, tau in part.chunks(tau_buffer):
            n = tau.size
            span = slice(start, start + n)
            work, mask = work_buffer[:n], mask_buffer[:n]
            np.greater_equal(np.abs(tau, out=work), threshold, out=mask)
            np.multiply(tau, mask, out=tau)
            np.add(self.total[span], tau, out=self.total[span])
            if self.merge_func == "max":
                np.maximum(self.largest[span], tau, out=self.largest[span])
                np.minimum(self.smallest[span], tau, out=self.smallest[span])
                continue
            np.add(self.positive[span], np.maximum(tau, np.float32(0), out=work), out=self.positive[span])
            if self.merge_func == "mean":
                np.add(self.count_positive[span], np.greater(tau, 0, out=mask), out=self.count_positive[span])
                np.add(self.count_nonzero[span], np.not_equal(tau, 0, out=mask), out=self.count_nonzero[span])

    def sign_count(self):
        """Σ sign(Σ τ̂_i) over the slice (what decides the majority sign)."""
        return int(np.count_nonzero(self.total > 0)) - int(np.count_nonzero(self.total < 0))

    def candidates(self, span):
        """(positive side, negative side, value where the elected sign is 0) of the merged τ_m on
        `span`. The negative side is also what an elected 0 selects for sum / mean (FusionBench's
        where(sign > 0, τ > 0, τ < 0)); max gives 0 there."""
        if self.merge_func == "max":
            return self.largest[span], self.smallest[span], np.zeros(self.smallest[span].shape, np.float32)
        positive = self.positive[span]
        negative = self.total[span] - positive
        if self.merge_func == "mean":
            negative /= np.maximum(self.count_nonzero[span] - self.count_positive[span], 1)
            positive = positive / np.maximum(self.count_positive[span], 1)
        return positive, negative, negative

    def merged_into(self, out, theta0, scaling_factor):
        """out = θ₀ + λ·τ_m with the majority sign taken as 0 (chunk by chunk; `out` may be
        self.total: each chunk is read whole before it is written); returns the positions where the
        majority sign changes the result (Σ τ̂ = 0 with kept entries), their θ₀ and candidates."""
        found = []
        for start in range(0, self.total.size, CHUNK):
            span = slice(start, min(start + CHUNK, self.total.size))
            total = self.total[span]
            positive, negative, zero = self.candidates(span)
            tau_m = np.where(total > 0, positive, negative if zero is negative else np.where(total < 0, negative, zero))
            undecided = np.flatnonzero((total == 0) & (positive != 0))
            if undecided.size:
                found.append((undecided + start, theta0[span][undecided], positive[undecided], negative[undecided],
                              zero[undecided]))
            np.add(theta0[span], np.multiply(tau_m, np.float32(scaling_factor), out=tau_m), out=out[span])
        if not found:
            return (np.empty(0, dtype=np.int64),) + (np.empty(0, dtype=np.float32),) * 4
        return tuple(np.concatenate(column) for column in zip(*found))


class Undecided:
    """Entries whose merged value waits for the scope's majority sign."""

    def __init__(self):
        self.items = []  # (out array, flat positions, θ₀ there, positive, negative, zero candidates)
        self.sign_count = 0

    def add(self, out, found):
        if found[0].size:
            self.items.append((out, *found))

    def settle(self, scaling_factor):
        majority = np.sign(self.sign_count)
        for out, index, theta0, positive, negative, zero in self.items:
            tau_m = positive if majority > 0 else negative if majority < 0 else zero
            out[index] = theta0 + np.float32(scaling_factor) * tau_m
        self.items, self.sign_count = [], 0



# --- CPU, streamed: one pass over the models ------------------------------------------------------

def stream_ties_host(base, models, threshold, merge_func, scaling_factor, topk_scope, sparsify=None,
                     consume=False):
    """TIES in ONE pass over `models` (a sized iterable yielding one state dict at a time): every
    aggregate is a sum / max over the models, so model i is read (each key once), its own trim
    threshold found, its τ̂ added into per-key RunningMerges, and it is dropped. The sign is elected at
    the end; the majority sign (exact zero sums) needs only the final Σ τ̂. Equal, bit for bit, to
    the reference form up to float rounding (tested).

    Memory: base + accumulators (sum: 2, mean: 2.5, max: 3 float32 copies of the backbone) + one model
    (`topk_scope: global` holds model i whole while its threshold is found; `tensor` one tensor at a
    time, a few in flight on the worker threads). The result is written into the Σ τ̂ accumulator, so
    no extra buffer. consume=True: each model dict is emptied as it is read, and the base dict ends up
    holding the merged values (its old buffers are released key by key at the end)."""
    spec = sparsify  # a parsed data-free spec (dare / random) or None: the executor checks
    density = threshold / 100.0
    n = len(models)
    shapes = float_key_shapes(base)
    keys = sorted(shapes, key=lambda key: -int(np.prod(shapes[key])))  # biggest first: threads finish together
    dtypes = {key: numpy_dtype(value) for key, value in base.items()}
    theta0 = {key: _flat32(base[key]) for key in keys}  # views for float32 numpy (what the runner gives)
    running = {key: RunningMerge(theta0[key].size, merge_func, n) for key in keys}
    threads = thread_count()

    def add(part, key, cutoff):
        if cutoff is None:  # tensor scope: the model's own threshold on this tensor
            cutoff = magnitude_threshold([part], density)
        running[key].add(part, cutoff, thread_scratch())

    with ThreadPoolExecutor(max_workers=threads) as workers:
        for i, model in each_model(models, n, consume):
            read = model.pop if consume else model.__getitem__  # each key read once (a file read when streamed)
            if topk_scope == "global":
                parts = {key: task_vector_part(read(key), theta0[key], spec, i, key, shapes[key]) for key in keys}
                cutoff = magnitude_threshold(list(parts.values()), density, map=workers.map)
                for future in [workers.submit(add, parts[key], key, cutoff) for key in keys]:
                    future.result()
                del parts
            else:
                pending = deque()
                for key in keys:  # read on this thread (files are not shared), added on the workers
                    pending.append(workers.submit(add, task_vector_part(read(key), theta0[key], spec, i, key,
                                                                        shapes[key]), key, None))
                    while len(pending) > threads:  # a bounded number of tensors in flight
                        pending.popleft().result()
                while pending:
                    pending.popleft().result()

        def finish(key):
            merge = running[key]
            undecided = Undecided()
            undecided.sign_count = merge.sign_count()
            out = merge.total  # the result overwrites Σ τ̂ (read chunk by chunk before it is written)
            undecided.add(out, merge.merged_into(out, theta0[key], scaling_factor))
            running[key] = None  # the other aggregates go now
            if topk_scope == "tensor":
                undecided.settle(scaling_factor)
            return out, undecided

        results = dict(zip(keys, workers.map(finish, keys)))
    scope = Undecided()  # global scope: the sign count of the whole task vector settles the rest
    for _, undecided in results.values():
        scope.items += undecided.items
        scope.sign_count += undecided.sign_count
    scope.settle(scaling_factor)
    del theta0
    merged = like_base(base, {key: out for key, (out, _) in results.items()}, dtypes)
    if consume:
        base.update({key: merged[key] for key in results})  # the base's old buffers are released
    return merged


# --- other devices: paddle, key by key -------------------------------------------------------------

def trimmed_source(base, models, threshold, topk_scope, source):
    """(i, key) -> τ̂_i[key]: `source`'s task vectors with all but the top `threshold`% zeroed."""
    spec = parse_sparsify({"name": "magnitude", "scope": topk_scope})
    spec["density"] = threshold / 100.0  # exactly the user's fraction, not 1 − (1 − q)
    trim = Sparsifier(spec, num_models=len(models))
    trim.prepare(source, float_key_shapes(base))
    return lambda i, key: trim.apply(i, key, source(i, key))


def elected_sign(total, majority):
    """sign(Σ_i τ̂_i), with 0 replaced by the majority sign."""
    pd = paddle()
    sign = pd.sign(total)
    return pd.where(sign == 0, pd.full_like(sign, majority), sign)


def disjoint_merge(taus, sign, merge_func):
    """Combine the entries of the τ̂_i whose sign agrees with `sign`, one model at a time (no [n, ...]
    stack). relu(direction·τ̂) is |τ̂| where τ̂ agrees and 0 elsewhere; like FusionBench's
    where(sign > 0, τ > 0, τ < 0), an elected 0 selects the negative entries (max then gives 0)."""
    pd = paddle()
    relu = pd.nn.functional.relu
    direction = pd.where(sign > 0, 1.0, -1.0)
    largest = total = count = None
    for tau in taus:  # running aggregates: one agreeing tensor alive at a time
        magnitude = relu(tau * direction)
        if merge_func == "max":
            largest = magnitude if largest is None else pd.maximum(largest, magnitude)
            continue
        total = magnitude if total is None else total + magnitude
        if merge_func == "mean":
            agrees = (magnitude > 0).astype("float32")
            count = agrees if count is None else count + agrees
    if merge_func == "max":
        return largest * sign
    if merge_func == "mean":
        total = total / pd.clip(count, min=1.0)
    return total * direction


def ties_merge(base, models, threshold, merge_func, scaling_factor, topk_scope, sparsify=None):
    """TIES in paddle on the current device, on the task vectors θ_i − θ₀ (sparsified first by the
    parsed spec `sparsify`, e.g. DARE)."""
    pd = paddle()
    source = task_vector_source(base, models, sparsify)
    trimmed = trimmed_source(base, models, threshold, topk_scope, source)
    keys = float_key_shapes(base)

    majority = None
    if topk_scope == "global":  # FusionBench resolves zero signs with the sign count of the whole vector
        count = sum(float(pd.sign(pd.add_n([trimmed(i, k) for i in range(len(models))])).sum()) for k in keys)
        majority = float(np.sign(count))

    def combine(key, theta0, taus):
        total = pd.add_n(taus)
        tensor_majority = majority if majority is not None else float(np.sign(float(pd.sign(total).sum())))
        sign = elected_sign(total, tensor_majority)
        return theta0 + scaling_factor * disjoint_merge(taus, sign, merge_func)

    return merge_task_vectors(base, models, combine, source=trimmed)


