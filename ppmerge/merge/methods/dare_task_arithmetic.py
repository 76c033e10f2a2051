"""dare_task_arithmetic: DARE (Yu et al. 2024, "drop and rescale") then task arithmetic: θ₀ + Σ λ_i·DARE(τ_i).

DARE drops each task-vector entry with probability p and rescales the kept ones by 1/(1 − p); the masks
come from `seed`, per model and tensor (ppmerge.merge.sparsify.random_keep), as in FusionBench.
"""
from ppmerge.merge.method_params import DARE_PARAMS, dare_spec, scaling_factor_param, scaling_factors
from ppmerge.merge.registry import register
from ppmerge.merge.streaming import stream_linear
from ppmerge.merge.task_vector import merge_task_vectors, task_vector_source


def dare_task_arithmetic(base, models, scaling_factor=0.3, sparsity_ratio=0.5, rescale=True, seed=0):
    lambdas = scaling_factors(scaling_factor, len(models))
    source = task_vector_source(base, models, dare_spec(sparsity_ratio, rescale, seed))
    return merge_task_vectors(base, models, lambda key, theta0, taus: theta0 + sum(
        lam * tau for lam, tau in zip(lambdas, taus)), source)


def stream_dare_task_arithmetic(base, models, scaling_factor=0.3, sparsity_ratio=0.5, rescale=True, seed=0,
                                consume=False):
    lambdas = scaling_factors(scaling_factor, len(models))
    return stream_linear(base, models, 1.0 - sum(lambdas), lambdas, dare_spec(sparsity_ratio, rescale, seed), consume)


register("dare_task_arithmetic", params={"scaling_factor": scaling_factor_param(0.3), **DARE_PARAMS},
         doc="θ₀ + λ·Σ DARE(τ_i)", stream=stream_dare_task_arithmetic)(dare_task_arithmetic)
