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


def elected_sign(stacked, majority):
    pd = paddle()
    sign = pd.sign(stacked.sum(axis=0))
    return pd.where(sign == 0, pd.full_like(sign, majority), sign)


def disjoint_merge(stacked, sign, merge_func):
    """Combine the entries of `stacked` ([n, ...]) whose sign agrees with `sign`."""
    pd = paddle()
    agree = pd.where(sign > 0, stacked > 0, stacked < 0)
    selected = stacked * agree.astype("float32")
    if merge_func == "sum":
        return selected.sum(axis=0)
    if merge_func == "mean":
        count = agree.astype("float32").sum(axis=0)
        return selected.sum(axis=0) / pd.clip(count, min=1.0)
    return selected.abs().max(axis=0) * sign  # max


def ties_merge(base, models, threshold, merge_func, scaling_factor, topk_scope, source):
    """TIES on the task vectors given by `source(i, key)` (raw or already sparsified, e.g. by DARE)."""
    pd = paddle()
    trimmed = trimmed_source(base, models, threshold, topk_scope, source)
    keys = float_key_shapes(base)

    def majority_sign(stacked):
        return float(pd.sign(pd.sign(stacked.sum(axis=0)).sum()))

    majority = None
    if topk_scope == "global":  # FusionBench resolves zero signs with the sign count of the whole vector
        total = sum(float(pd.sign(pd.stack([trimmed(i, k) for i in range(len(models))]).sum(axis=0)).sum())
                    for k in keys)
        majority = float(np.sign(total))

    def combine(key, theta0, taus):
        stacked = pd.stack(taus)
        sign = elected_sign(stacked, majority if majority is not None else majority_sign(stacked))
        return theta0 + scaling_factor * disjoint_merge(stacked, sign, merge_func)

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
