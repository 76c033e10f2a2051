"""ties_merging (TIES-Merging, Yadav et al. 2023) and dare_ties_merging (DARE first, Yu et al. 2024).

The math, on the task vectors τ_i = θ_i − θ₀ of one scope (the whole model for `topk_scope: global`, as
FusionBench; each tensor alone for `tensor`, as mergekit), one row per model:
  1. trim: keep the `threshold`% largest |τ_i| of each row. `topk_rule: ge_kth` keeps every |τ| ≥ the
     k-th smallest, k = d − floor(d·q) (FusionBench: ties at the threshold are all kept); `count` keeps
     exactly int(q·d) entries, ties broken by the lower index (mergekit).
  2. weigh: τ̂_i × w_i (`weights`, default all 1; mergekit weighs before the election).
  3. elect: the sign of Σ_i τ̂_i; where that sum is exactly 0, `zero_sign: majority` takes the sign of
     Σ of the elected signs over the scope (FusionBench), `positive` takes +1 (mergekit).
  4. disjoint merge of the entries whose sign agrees with the elected one: `sum`; `mean` = their sum
     ÷ Σ w_i over them (their count when w = 1; 0 where none agree); `max` = the largest agreeing |τ̂|
     with the elected sign.
  θ = θ₀ + λ·τ_m.

mergekit's `ties` is ties_merging with {topk_scope: tensor, topk_rule: count, zero_sign: positive,
merge_func: mean, scaling_factor: 1.0, threshold: 100·density, weights: [w_i]}; its `dare_ties` is
dare_ties_merging with {topk_scope: tensor, threshold: 100, zero_sign: positive, merge_func: sum,
scaling_factor: 1.0, sparsity_ratio: 1 − density, weights} (DARE's masks come from ppmerge's seeded
draws, not torch's generator).

This file is the math only. ppmerge.merge.executor runs the FusionBench options (no weights, ge_kth,
majority, masks that do not look at τ) with the streamed kernels of executor_ties — one pass over the
models, equal to this form up to float rounding (tests/test_merge_contract.py) — and runs `ties`
below as it is for any other option.
"""
import numpy as np

from ppmerge.merge.executor import Consensus
from ppmerge.merge.method_params import DARE_PARAMS, SPARSIFY_PARAM, THRESHOLD, TOPK_SCOPE, dare_spec, weights_of, weights_param
from ppmerge.merge.registry import Param, register_plan
from ppmerge.merge.sparsify import kth_smallest_rank


def trim(tau, density, topk_rule):
    """One row τ with all but its largest |τ| set to 0."""
    magnitude = np.abs(tau)
    if topk_rule == "count":  # exactly int(q·d) entries, ties by the lower index
        keep = np.zeros(tau.size, dtype=bool)
        keep[np.argsort(-magnitude, kind="stable")[:int(density * tau.size)]] = True
        return np.where(keep | (density >= 1), tau, 0)
    if density <= 0:
        return np.zeros_like(tau)
    k = kth_smallest_rank(tau.size, density)
    return tau if k is None else np.where(magnitude >= np.partition(magnitude, k - 1)[k - 1], tau, 0)


def elect(total, zero_sign):
    """sign(Σ τ̂), with the rule for exact zeros."""
    sign = np.sign(total)
    sign[sign == 0] = 1.0 if zero_sign == "positive" else np.sign(np.sign(total).sum())
    return sign


def disjoint_merge(kept, weights, sign, merge_func):
    """Combine the rows' entries that agree with `sign` (an elected 0 selects the negative entries, as
    FusionBench's where(sign > 0, τ > 0, τ < 0)), one row at a time."""
    total, divisor = np.zeros_like(sign), np.zeros_like(sign)
    for w, row in zip(weights, kept):
        agree = np.where(sign > 0, row > 0, row < 0)
        if merge_func == "max":
            np.maximum(total, np.abs(row) * agree, out=total)
        else:
            total += row * agree
            divisor += w * agree
    if merge_func == "max":
        return total * sign
    if merge_func == "mean":
        total = total / np.where(divisor == 0, 1.0, divisor)
    return total


def ties(theta0, taus, threshold, merge_func, scaling_factor, weights=None, topk_rule="ge_kth",
         zero_sign="majority"):
    """θ of one scope: theta0 [d], taus [n, d] (already sparsified when a sparsifier is set)."""
    weights = np.asarray(weights_of(weights, len(taus)))
    kept = np.stack([trim(tau, threshold / 100.0, topk_rule) for tau in taus]) * weights[:, None].astype(taus.dtype)
    sign = elect(kept.sum(axis=0), zero_sign)
    return theta0 + scaling_factor * disjoint_merge(kept, weights, sign, merge_func).astype(theta0.dtype)


TIES_PARAMS = {
    "threshold": THRESHOLD,
    "merge_func": Param("str", "sum", "how agreeing entries combine (mean: ÷ Σ w_i of the agreeing)",
                        choices=("sum", "mean", "max")),
    "scaling_factor": Param("float", 0.3, "λ: θ₀ + λ·τ_m"),
    "topk_scope": TOPK_SCOPE,
    "weights": weights_param("TIES: τ̂_i × w_i before the election (mergekit's `weight`)"),
    "topk_rule": Param("str", "ge_kth", "trim: keep |τ| ≥ the k-th smallest (FusionBench) or exactly int(q·d) "
                       "entries per scope (mergekit)", choices=("ge_kth", "count")),
    "zero_sign": Param("str", "majority", "elected sign where Σ τ̂ = 0: the scope's majority (FusionBench) or "
                       "+1 (mergekit)", choices=("majority", "positive")),
}

register_plan("ties_merging", Consensus(ties), params={**TIES_PARAMS, "sparsify": SPARSIFY_PARAM},
              doc="Trim, elect sign, disjoint merge; θ₀ + λ·τ_m (FusionBench semantics; mergekit's with "
                  "topk_rule: count, zero_sign: positive)")
register_plan("dare_ties_merging", Consensus(ties, options=lambda p: {**p, "sparsify": dare_spec(p)}),
              params={**TIES_PARAMS, **DARE_PARAMS}, doc="TIES on DARE(τ_i)")
