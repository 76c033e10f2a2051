"""task_singular_vectors (TSV-M, Gargiulo et al., CVPR 2025): per weight matrix, each task keeps the top
⌊r/T⌋ singular components of its τ_i (r = the smaller dimension, T = number of models); the kept left and
right singular vectors are stacked and orthogonalised (polar factor: U⊥ = P Qᵀ for U = P Σ Qᵀ, same for V),
and Δ = U⊥ diag(S) V⊥ᵀ with the kept singular values S. θ = θ₀ + α·Δ. Other keys (biases, LayerNorms):
Δ = mean_i τ_i (as FusionBench's code). `alpha` a list: τ_i × α_i before the SVDs and no global factor
(FusionBench's rule). With T > r no component is kept (Δ = 0 on that matrix).

FusionBench pads the stacked U with zero columns up to r; here only the T·⌊r/T⌋ kept columns are stacked:
the same polar factor on those columns whenever they are linearly independent (the generic case).
"""
import numpy as np

from ppmerge.merge.lowrank import merge_matrices, polar, svd
from ppmerge.merge.method_params import scaling_factors
from ppmerge.merge.registry import Param, register


def tsv_matrix(taus):
    """TSV-M's Δ for one 2-D key (`TaskVectors`: one τ_i in memory at a time; numpy float32 out)."""
    rank = min(taus.shape)
    k = rank // len(taus)
    if k == 0:
        return np.zeros(taus.shape, np.float32)
    us, ss, vhs = [], [], []
    for tau in taus:
        u, s, vh = svd(tau)
        us.append(u[:, :k])
        ss.append(s[:k])
        vhs.append(vh[:k])
    return polar(np.concatenate(us, axis=1)) @ (np.concatenate(ss)[:, None] * polar(np.concatenate(vhs, axis=0)))


@register("task_singular_vectors", params={
    "alpha": Param("float|list[float]", 1.0, "α: θ₀ + α·Δ; a list scales each τ_i by its α_i before the SVDs "
                   "(one per model, pool order)"),
}, doc="TSV-M: per matrix, each τ_i's top ⌊r/T⌋ singular components, stacked U and V orthogonalised "
       "(polar factor), θ₀ + α·U⊥ S V⊥ᵀ; other keys θ₀ + α·mean τ_i")
def task_singular_vectors(base, models, alpha=1.0):
    if isinstance(alpha, (list, tuple)):
        return merge_matrices(base, models, tsv_matrix, tau_scales=scaling_factors(alpha, len(models), "Merge.alpha"))
    return merge_matrices(base, models, tsv_matrix, scale=alpha)
