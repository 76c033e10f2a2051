"""simple_average: θ = mean_i θ_i (the base is not one of them); dare_simple_average: θ₀ + mean_i DARE(τ_i).

With `sparsify` each θ_i stands for θ₀ + τ̂_i (ppmerge.merge.sparsify). DARE (Yu et al. 2024, "drop and
rescale") drops each task-vector entry with probability p and rescales the kept ones by 1/(1 − p); the
masks come from `seed`, per model and tensor, as in FusionBench.
"""
from ppmerge.merge.executor import Linear
from ppmerge.merge.method_params import DARE_PARAMS, SPARSIFY_PARAM, dare_spec
from ppmerge.merge.registry import register_plan


def simple_average(num_models, **_):
    """θ = 0·θ₀ + Σ_i (1/n)·θ_i."""
    return 0.0, [1.0 / num_models] * num_models


register_plan("simple_average", Linear(simple_average, on="models"), params={"sparsify": SPARSIFY_PARAM},
              doc="θ = mean_i θ_i; with `sparsify`, θ = θ₀ + mean_i τ̂_i.", needs_base=lambda p: bool(p["sparsify"]))
register_plan("dare_simple_average", Linear(simple_average, on="models", sparsify=dare_spec), params=DARE_PARAMS,
              doc="θ₀ + mean_i DARE(τ_i)")
