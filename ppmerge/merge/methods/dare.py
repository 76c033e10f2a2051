"""DARE (Yu et al. 2024, "drop and rescale"): drop each task-vector entry with probability p, rescale the
kept ones by 1/(1 − p), then task arithmetic, TIES or the simple average (FusionBench's three variants).
Masks come from `seed`, per model and tensor (see ppmerge.merge.sparsify.random_keep)."""
from ppmerge.merge.method_params import (RESCALE, SEED, SPARSITY_RATIO, dare_spec, scaling_factor_param,
                                         scaling_factors)
from ppmerge.merge.methods.ties_merging import TIES_PARAMS, ties_merge
from ppmerge.merge.registry import register
from ppmerge.merge.streaming import stream_linear
from ppmerge.merge.task_vector import merge_task_vectors, task_vector_source

DARE_PARAMS = {"sparsity_ratio": SPARSITY_RATIO, "rescale": RESCALE, "seed": SEED}


def dare_task_arithmetic(base, models, scaling_factor=0.3, sparsity_ratio=0.5, rescale=True, seed=0):
    """θ₀ + Σ λ_i·DARE(τ_i)."""
    lambdas = scaling_factors(scaling_factor, len(models))
    source = task_vector_source(base, models, dare_spec(sparsity_ratio, rescale, seed))
    return merge_task_vectors(base, models, lambda key, theta0, taus: theta0 + sum(
        lam * tau for lam, tau in zip(lambdas, taus)), source)


def stream_dare_task_arithmetic(base, models, scaling_factor=0.3, sparsity_ratio=0.5, rescale=True, seed=0,
                                consume=False):
    lambdas = scaling_factors(scaling_factor, len(models))
    return stream_linear(base, models, 1.0 - sum(lambdas), lambdas, dare_spec(sparsity_ratio, rescale, seed), consume)


def dare_simple_average(base, models, sparsity_ratio=0.5, rescale=True, seed=0):
    """θ₀ + mean_i DARE(τ_i)."""
    source = task_vector_source(base, models, dare_spec(sparsity_ratio, rescale, seed))
    return merge_task_vectors(base, models, lambda key, theta0, taus: theta0 + sum(taus) / len(taus), source)


def stream_dare_simple_average(base, models, sparsity_ratio=0.5, rescale=True, seed=0, consume=False):
    n = len(models)
    return stream_linear(base, models, 0.0, [1.0 / n] * n, dare_spec(sparsity_ratio, rescale, seed), consume)


def dare_ties_merging(base, models, threshold=20.0, merge_func="sum", scaling_factor=0.3, topk_scope="global",
                      sparsity_ratio=0.5, rescale=True, seed=0):
    """TIES on DARE(τ_i)."""
    source = task_vector_source(base, models, dare_spec(sparsity_ratio, rescale, seed))
    return ties_merge(base, models, threshold, merge_func, scaling_factor, topk_scope, source)


register("dare_task_arithmetic", params={"scaling_factor": scaling_factor_param(0.3), **DARE_PARAMS},
         stream=stream_dare_task_arithmetic)(dare_task_arithmetic)
register("dare_simple_average", params=DARE_PARAMS, stream=stream_dare_simple_average)(dare_simple_average)
register("dare_ties_merging", params={**TIES_PARAMS, **DARE_PARAMS})(dare_ties_merging)
