"""task_arithmetic: θ₀ + Σ λ_i τ_i (one λ for all, or one per model as in CABS's θ₀ + λ₁τ_A + λ₂τ_B)."""
from ppmerge.merge.method_params import SPARSIFY_PARAM, scaling_factor_param, scaling_factors, streams_with
from ppmerge.merge.registry import register
from ppmerge.merge.streaming import stream_linear
from ppmerge.merge.task_vector import merge_task_vectors, task_vector_source


def task_arithmetic(base, models, scaling_factor=0.3, sparsify=None, order=None):
    lambdas = scaling_factors(scaling_factor, len(models))
    return merge_task_vectors(base, models, lambda key, theta0, taus: theta0 + sum(
        lam * tau for lam, tau in zip(lambdas, taus)), task_vector_source(base, models, sparsify, order))


def stream_task_arithmetic(base, models, scaling_factor=0.3, sparsify=None, consume=False):
    # θ₀ + Σ λ_i (θ_i − θ₀) = (1 − Σ λ_i)·θ₀ + Σ λ_i·θ_i: the base scaled once, then one model at a time
    lambdas = scaling_factors(scaling_factor, len(models))
    return stream_linear(base, models, 1.0 - sum(lambdas), lambdas, sparsify, consume)


register("task_arithmetic", params={"scaling_factor": scaling_factor_param(0.3), "sparsify": SPARSIFY_PARAM},
         doc="θ₀ + λ·Σ τ_i", stream=stream_task_arithmetic,
         stream_when=lambda p: streams_with(p["sparsify"]))(task_arithmetic)
