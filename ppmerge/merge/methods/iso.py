"""iso_c and iso_cts (Marczak et al., "No Task Left Behind", ICML 2025): isotropic merging.

Iso-C, per weight matrix: Σ_i τ_i = U S Vᵀ, every singular value replaced by their mean s̄ (an isotropic
spectrum): Δ = s̄·U Vᵀ.

Iso-CTS, per weight matrix (r = the smaller dimension, T models): the common subspace is the top c
singular directions of Σ_i τ_i, c = ⌊common_space_fraction·r⌋ to start with; each task gets
k = round((r − c)/T) directions (Python's round, as FusionBench's code) and c becomes r − T·k, so the
spaces fill exactly r; task i's directions are the top k singular directions of τ_i − U_c U_cᵀ τ_i (the
common subspace projected out). The stacked left and right singular vectors (tasks first, then the common
ones) are orthogonalised (polar factor), the spectrum made isotropic: Δ = s̄·U⊥ V⊥ᵀ, s̄ the mean of the
stacked singular values. (The issue text says ⌊(r − c)/T⌋; we follow FusionBench, which rounds: the two
differ only when (r − c)/T has a fractional part ≥ 0.5.)

Both: θ = θ₀ + scaling_factor·Δ; other keys (biases, LayerNorms) Δ = mean_i τ_i.
"""
import numpy as np

from ppmerge.errors import ConfigError
from ppmerge.merge.lowrank import merge_matrices, polar, svd
from ppmerge.merge.registry import Param, register


def _fraction(value, where):
    if not 0.0 <= value <= 1.0:
        raise ConfigError(f"{where}: expected a fraction in [0, 1], got {value}")
    return float(value)


def iso_c_matrix(taus):
    u, s, vh = svd(taus.total())
    return (u * s.mean()) @ vh


def iso_cts_sizes(rank, num_tasks, common_space_fraction):
    """(common directions, directions per task) for a matrix of rank r (FusionBench's rounding)."""
    common = int(rank * common_space_fraction)
    per_task = round((rank - common) / num_tasks)
    if per_task * num_tasks > rank:  # rounding up past r (e.g. fraction 0): what fits
        per_task = rank // num_tasks
    return rank - per_task * num_tasks, per_task


def iso_cts_matrix(taus, common_space_fraction=0.8):
    common, per_task = iso_cts_sizes(min(taus.shape), len(taus), common_space_fraction)
    u, s, vh = svd(taus.total())
    u_c, s_c, vh_c = u[:, :common], s[:common], vh[:common]
    us, ss, vhs = [], [], []
    if per_task > 0:
        for tau in taus:
            ut, st, vht = svd(tau - u_c @ (u_c.T @ tau))
            us.append(ut[:, :per_task])
            ss.append(st[:per_task])
            vhs.append(vht[:per_task])
    us.append(u_c)
    ss.append(s_c)
    vhs.append(vh_c)
    mean = np.concatenate(ss).mean()
    return (polar(np.concatenate(us, axis=1)) * mean) @ polar(np.concatenate(vhs, axis=0))


SCALING = Param("float", 1.0, "α: θ₀ + α·Δ")


@register("iso_c", params={"scaling_factor": SCALING},
          doc="Iso-C: per matrix, Σ τ_i = U S Vᵀ with every singular value set to their mean, θ₀ + α·s̄ U Vᵀ; "
              "other keys θ₀ + α·mean τ_i")
def iso_c(base, models, scaling_factor=1.0):
    return merge_matrices(base, models, iso_c_matrix, scale=scaling_factor)


@register("iso_cts", params={
    "scaling_factor": SCALING,
    "common_space_fraction": Param("float", 0.8, "share of the r directions taken from Σ τ_i (the common "
                                   "subspace); the rest is split among the tasks", check=_fraction),
}, doc="Iso-CTS: per matrix, the top directions of Σ τ_i plus each task's top directions outside them, "
       "orthogonalised, isotropic spectrum, θ₀ + α·s̄ U⊥ V⊥ᵀ; other keys θ₀ + α·mean τ_i")
def iso_cts(base, models, scaling_factor=1.0, common_space_fraction=0.8):
    return merge_matrices(base, models, lambda taus: iso_cts_matrix(taus, common_space_fraction),
                          scale=scaling_factor)
