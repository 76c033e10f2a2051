"""ties_merging (TIES-Merging, Yadav et al. 2023): trim, elect sign, disjoint merge, θ₀ + λ·τ_m.

Follows FusionBench: trim keeps each task vector's top `threshold`% by |τ| (see
ppmerge.merge.sparsify.magnitude_mask for the exact rank rule), over the whole task vector
(`topk_scope: global`) or per tensor (`tensor`, as mergekit). The elected sign is sign(Σ_i τ̂_i); where
that sum is 0 it is the majority sign, sign(Σ of the elected signs) over the same scope. Only entries
whose sign agrees with the elected one (and are non-zero) are merged: `sum`, `mean` (÷ their count, 0
where none), or `max` (the largest agreeing |τ̂| with the elected sign).

How it is computed on CPU (numpy; other devices run the same math in paddle, key by key): the trim
thresholds are found exactly without storing any |τ| (sparsify.magnitude_threshold), then each tensor
is merged in slices of rows, and within a slice chunk by chunk, with per-entry running sums over the
models — Σ τ̂_i, Σ max(τ̂_i, 0) (the agreeing sum for either sign), counts or extremes — so τ_i = θ_i − θ₀
is never stored and no list of N tensors exists. The majority sign only matters where Σ τ̂_i is exactly
0 with non-zero entries (cancellation); those few positions get both candidates and are settled when the
scope's sign count is known.

Streamed (`stream_ties_merging`, what the runner uses for a single merge on CPU): the same running sums
kept for whole tensors, filled in one pass over the models, one model in memory at a time (see
stream_ties_host); the result is bit-identical to the in-memory form.
"""
import os
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ppmerge.merge.method_params import MERGE_FUNC, SPARSIFY_PARAM, THRESHOLD, TOPK_SCOPE, streams_with
from ppmerge.merge.registry import Param, register
from ppmerge.merge.sparsify import (CHUNK, Sparsifier, TaskVectorPart, magnitude_threshold, parse_sparsify,
                                    random_keep_host)
from ppmerge.merge.streaming import each_model
from ppmerge.merge.task_vector import float_key_shapes, merge_task_vectors, task_vector_source
from ppmerge.merge.tensor_ops import as_numpy, numpy_dtype, paddle

SLICE = 1 << 22  # entries of a tensor merged together (16 MB of float32): bounds the working set


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


class TaskVectors:
    """τ̂_i over flat slices of one key, as TaskVectorParts: θ_i − θ₀, DARE-style dropped when the
    sparsify spec is data-free, or taken from a paddle `source` for masks that need whole models."""

    def __init__(self, base, models, sparsify):
        self.base, self.models = base, models
        self.spec = parse_sparsify(sparsify) if sparsify else None
        self.source = None
        if self.spec is not None and not streams_with(sparsify):  # masks that look at τ: paddle's Sparsifier
            self.source = task_vector_source(base, models, sparsify)

    @property
    def sliceable(self):
        """Can a key be read in slices of rows? (Masks are drawn for whole tensors.)"""
        return self.spec is None

    def part(self, i, key, start=0, stop=None):
        if self.source is not None:
            return TaskVectorPart(_flat32(self.source(i, key)))
        b = _flat32(self.base[key])  # a view for float32 numpy (what the runner gives): no copy
        if self.spec is not None:
            return task_vector_part(self.models[i][key], b, self.spec, i, key, np.shape(self.base[key]))
        stop = b.size if stop is None else stop
        return TaskVectorPart(_flat32(self.models[i][key])[start:stop], b[start:stop])


class Scratch:
    """Chunk-sized work buffers (one set per thread, shared by all the tensors it adds)."""

    def __init__(self):
        self.tau = np.empty(CHUNK, dtype=np.float32)
        self.work = np.empty(CHUNK, dtype=np.float32)
        self.mask = np.empty(CHUNK, dtype=bool)


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
        scratch = scratch or Scratch()
        threshold = np.float32(threshold) if np.isfinite(threshold) else threshold
        for start, tau in part.chunks(scratch.tau):
            n = tau.size
            span = slice(start, start + n)
            work, mask = scratch.work[:n], scratch.mask[:n]
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


def _threads():
    return max(1, min(os.cpu_count() or 1, 4))


def ties_merge_host(base, models, threshold, merge_func, scaling_factor, topk_scope, sparsify=None):
    """TIES on CPU with numpy (see the module docstring). Inputs are left untouched. Tensors (and the
    models' global thresholds) are spread over one thread per core: numpy releases the GIL."""
    density = threshold / 100.0
    shapes = float_key_shapes(base)
    vectors = TaskVectors(base, models, sparsify)
    n = len(models)
    threads = 1 if vectors.source is not None else _threads()  # paddle's source: one
    with ThreadPoolExecutor(max_workers=threads) as workers:
        thresholds = None
        if topk_scope == "global":
            thresholds = list(workers.map(lambda i: magnitude_threshold([vectors.part(i, key) for key in shapes],
                                                                        density), range(n)))

        def merge_key(key):
            theta0 = _flat32(base[key])
            out = np.empty(theta0.size, dtype=np.float32)
            undecided = Undecided()
            scratch = Scratch()
            cutoffs = thresholds or [magnitude_threshold([vectors.part(i, key)], density) for i in range(n)]
            step = SLICE if vectors.sliceable else max(theta0.size, 1)
            for start in range(0, theta0.size, step):
                stop = min(start + step, theta0.size)
                running = RunningMerge(stop - start, merge_func, n)
                for i in range(n):
                    running.add(vectors.part(i, key, start, stop), cutoffs[i], scratch)
                undecided.sign_count += running.sign_count()
                undecided.add(out[start:stop], running.merged_into(out[start:stop], theta0[start:stop], scaling_factor))
                del running
            if topk_scope == "tensor":
                undecided.settle(scaling_factor)
            return out, undecided

        # biggest tensors first, so that the two threads finish together
        order = sorted(shapes, key=lambda key: -int(np.prod(shapes[key])))
        results = dict(zip(order, workers.map(merge_key, order)))
    scope = Undecided()  # global scope: the majority sign of the whole task vector settles the rest
    for _, undecided in results.values():
        scope.items += undecided.items
        scope.sign_count += undecided.sign_count
    scope.settle(scaling_factor)
    merged = {}
    for key, value in base.items():
        if key in results:
            merged[key] = results[key][0].reshape(np.shape(value)).astype(numpy_dtype(value), copy=False)
        else:  # non-float tensors are copied from the base
            merged[key] = np.array(as_numpy(value))
    return merged


# --- CPU, streamed: one pass over the models ------------------------------------------------------

def stream_ties_host(base, models, threshold, merge_func, scaling_factor, topk_scope, sparsify=None,
                     consume=False):
    """TIES in ONE pass over `models` (a sized iterable yielding one state dict at a time): every
    aggregate is a sum / max over the models, so model i is read (each key once), its own trim
    threshold found, its τ̂ added into per-key RunningMerges, and it is dropped. The sign is elected at
    the end; the majority sign (exact zero sums) needs only the final Σ τ̂. Equal, bit for bit, to
    ties_merge_host (same per-entry operations in the same model order).

    Memory: base + accumulators (sum: 2, mean: 2.5, max: 3 float32 copies of the backbone) + one model
    (`topk_scope: global` holds model i whole while its threshold is found; `tensor` one tensor at a
    time, a few in flight on the worker threads). The result is written into the Σ τ̂ accumulator, so
    no extra buffer. consume=True: each model dict is emptied as it is read, and the base dict ends up
    holding the merged values (its old buffers are released key by key at the end)."""
    spec = parse_sparsify(sparsify) if sparsify else None
    if spec is not None and not streams_with(sparsify):
        raise ValueError("stream_ties_host: only dare / random masks can stream (check MergeMethod.can_stream)")
    density = threshold / 100.0
    n = len(models)
    shapes = float_key_shapes(base)
    keys = sorted(shapes, key=lambda key: -int(np.prod(shapes[key])))  # biggest first: threads finish together
    dtypes = {key: numpy_dtype(value) for key, value in base.items()}
    theta0 = {key: _flat32(base[key]) for key in keys}  # views for float32 numpy (what the runner gives)
    running = {key: RunningMerge(theta0[key].size, merge_func, n) for key in keys}
    threads = _threads()
    local = threading.local()

    def scratch():
        if not hasattr(local, "scratch"):
            local.scratch = Scratch()
        return local.scratch

    def add(part, key, cutoff):
        if cutoff is None:  # tensor scope: the model's own threshold on this tensor
            cutoff = magnitude_threshold([part], density)
        running[key].add(part, cutoff, scratch())

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
    merged = {}
    for key, value in list(base.items()):
        if key in results:
            merged[key] = results.pop(key)[0].reshape(np.shape(value)).astype(dtypes[key], copy=False)
            if consume:
                base[key] = merged[key]  # the base's old buffer is released
        else:  # non-float tensors are copied from the base
            merged[key] = np.array(as_numpy(value))
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


def ties_merge(base, models, threshold, merge_func, scaling_factor, topk_scope, source):
    """TIES in paddle on the current device, on the task vectors given by `source(i, key)` (raw or
    already sparsified, e.g. by DARE)."""
    pd = paddle()
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


def run_ties(base, models, threshold, merge_func, scaling_factor, topk_scope, sparsify=None):
    """numpy on CPU, paddle on any other device; the same result up to float rounding."""
    if on_host():
        return ties_merge_host(base, models, threshold, merge_func, scaling_factor, topk_scope, sparsify)
    source = task_vector_source(base, models, sparsify)
    return ties_merge(base, models, threshold, merge_func, scaling_factor, topk_scope, source)


def on_host():
    """Is the merge device the CPU (where numpy is the faster way to run elementwise math)?"""
    return paddle().get_device() == "cpu"


def ties_merging(base, models, threshold=20.0, merge_func="sum", scaling_factor=0.3, topk_scope="global",
                 sparsify=None):
    """Trim, elect sign, disjoint merge; θ₀ + λ·τ_m (FusionBench semantics)."""
    return run_ties(base, models, threshold, merge_func, scaling_factor, topk_scope, sparsify)


TIES_PARAMS = {
    "threshold": THRESHOLD,
    "merge_func": MERGE_FUNC,
    "scaling_factor": Param("float", 0.3, "λ: θ₀ + λ·τ_m"),
    "topk_scope": TOPK_SCOPE,
}


def stream_ties_merging(base, models, threshold=20.0, merge_func="sum", scaling_factor=0.3, topk_scope="global",
                        sparsify=None, consume=False):
    """ties_merging over a sized iterable of models, one model in memory at a time (CPU only)."""
    return stream_ties_host(base, models, threshold, merge_func, scaling_factor, topk_scope, sparsify, consume)


def stream_on_host(params):
    """TIES streams on CPU (numpy) unless its sparsifier looks at τ (magnitude / n:m / conflict-aware
    masks need a whole model beside the base). On other devices the runner holds all the models and
    the paddle path runs: the streamed form is numpy only."""
    return on_host() and streams_with(params.get("sparsify"))


register("ties_merging", params={**TIES_PARAMS, "sparsify": SPARSIFY_PARAM}, stream=stream_ties_merging,
         stream_when=stream_on_host)(ties_merging)
