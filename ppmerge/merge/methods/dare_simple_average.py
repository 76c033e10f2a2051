"""dare_simple_average: DARE (Yu et al. 2024, "drop and rescale") then the average: θ₀ + mean_i DARE(τ_i).

DARE drops each task-vector entry with probability p and rescales the kept ones by 1/(1 − p); the masks
come from `seed`, per model and tensor (ppmerge.merge.sparsify.random_keep), as in FusionBench.
"""
from ppmerge.merge.method_params import DARE_PARAMS, dare_spec
from ppmerge.merge.registry import register
from ppmerge.merge.streaming import stream_linear
from ppmerge.merge.task_vector import merge_task_vectors, task_vector_source


def dare_simple_average(base, models, sparsity_ratio=0.5, rescale=True, seed=0):
    source = task_vector_source(base, models, dare_spec(sparsity_ratio, rescale, seed))
    return merge_task_vectors(base, models, lambda key, theta0, taus: theta0 + sum(taus) / len(taus), source)


def stream_dare_simple_average(base, models, sparsity_ratio=0.5, rescale=True, seed=0, consume=False):
    n = len(models)
    return stream_linear(base, models, 0.0, [1.0 / n] * n, dare_spec(sparsity_ratio, rescale, seed), consume)


register("dare_simple_average", params=DARE_PARAMS, doc="θ₀ + mean_i DARE(τ_i)",
         stream=stream_dare_simple_average)(dare_simple_average)
