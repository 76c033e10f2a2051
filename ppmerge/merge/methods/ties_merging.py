"""ties_merging (TIES-Merging, Yadav et al. 2023): trim, elect sign, disjoint merge, θ₀ + λ·τ_m.

Follows FusionBench: trim keeps each task vector's top `threshold`% by |τ| (see
ppmerge.merge.sparsify.magnitude_mask for the exact rank rule), over the whole task vector
(`topk_scope: global`) or per tensor (`tensor`, as mergekit). The elected sign is sign(Σ_i τ̂_i); where
that sum is 0 it is the majority sign, sign(Σ of the elected signs) over the same scope. Only entries
whose sign agrees with the elected one (and are non-zero) are merged: `sum`, `mean` (÷ their count, 0
where none), or `max` (the largest agreeing |τ̂| with the elected sign).
"""
import numpy as np

from ppmerge.merge.method_params import MERGE_FUNC, SPARSIFY_PARAM, THRESHOLD, TOPK_SCOPE
from ppmerge.merge.registry import Param, register
from ppmerge.merge.sparsify import Sparsifier, parse_sparsify
from ppmerge.merge.task_vector import float_key_shapes, merge_task_vectors, task_vector_source
from ppmerge.merge.tensor_ops import paddle


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
    agreeing = [relu(tau * direction) for tau in taus]
    if merge_func == "max":
        largest = agreeing[0]
        for magnitude in agreeing[1:]:
            largest = pd.maximum(largest, magnitude)
        return largest * sign
    total = pd.add_n(agreeing)
    if merge_func == "mean":
        count = pd.add_n([(magnitude > 0).astype("float32") for magnitude in agreeing])
        total = total / pd.clip(count, min=1.0)
    return total * direction


def ties_merge(base, models, threshold, merge_func, scaling_factor, topk_scope, source):
    """TIES on the task vectors given by `source(i, key)` (raw or already sparsified, e.g. by DARE)."""
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


def ties_merging(base, models, threshold=20.0, merge_func="sum", scaling_factor=0.3, topk_scope="global",
                 sparsify=None):
    """Trim, elect sign, disjoint merge; θ₀ + λ·τ_m (FusionBench semantics)."""
    source = task_vector_source(base, models, sparsify)
    return ties_merge(base, models, threshold, merge_func, scaling_factor, topk_scope, source)


TIES_PARAMS = {
    "threshold": THRESHOLD,
    "merge_func": MERGE_FUNC,
    "scaling_factor": Param("float", 0.3, "λ: θ₀ + λ·τ_m"),
    "topk_scope": TOPK_SCOPE,
}

register("ties_merging", params={**TIES_PARAMS, "sparsify": SPARSIFY_PARAM})(ties_merging)
