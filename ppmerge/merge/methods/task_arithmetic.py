"""task_arithmetic (Ilharco et al. 2023): θ = θ₀ + Σ_i λ_i·τ_i, τ_i = θ_i − θ₀ (one λ for all, or one per
model as in CABS's θ₀ + λ₁τ_A + λ₂τ_B); dare_task_arithmetic: the same on DARE(τ_i) (drop each entry with
probability p, rescale the kept by 1/(1 − p); masks from `seed`, per model and tensor, as in FusionBench).
"""
from ppmerge.merge.executor import Linear
from ppmerge.merge.method_params import DARE_PARAMS, SPARSIFY_PARAM, dare_spec, scaling_factor_param, scaling_factors
from ppmerge.merge.registry import register_plan


def task_arithmetic(num_models, scaling_factor, **_):
    """θ = 1·θ₀ + Σ_i λ_i·τ_i."""
    return 1.0, scaling_factors(scaling_factor, num_models)


register_plan("task_arithmetic", Linear(task_arithmetic),
              params={"scaling_factor": scaling_factor_param(0.3), "sparsify": SPARSIFY_PARAM}, doc="θ₀ + λ·Σ τ_i")
register_plan("dare_task_arithmetic", Linear(task_arithmetic, sparsify=dare_spec),
              params={"scaling_factor": scaling_factor_param(0.3), **DARE_PARAMS}, doc="θ₀ + λ·Σ DARE(τ_i)")
