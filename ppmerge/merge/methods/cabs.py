"""cabs (CABS, Yang et al. 2025): Conflict-Aware and Balanced Sparsification, then θ₀ + Σ λ_i τ̂_i.

CA: masks are made one model after another (`order`), each on the positions no earlier model kept, so
the kept sets are disjoint; BS: n:m masks (each block of m keeps its n largest |τ|), or magnitude masks
(`mask_method: magnitude`, dropping `sparsity_ratio`). Two models with `scaling_factor: [lamb1, lamb2]`
is CABS's θ₀ + lamb1·τ_A + lamb2·τ_B; its grid is a Sweep over Merge.scaling_factor.0 × .1.
"""
from ppmerge.merge.method_params import SPARSITY_RATIO, scaling_factor_param
from ppmerge.merge.methods.task_arithmetic import task_arithmetic
from ppmerge.merge.registry import Param, register


def cabs(base, models, scaling_factor=1.0, mask_method="nm", n=2, m=4, sparsity_ratio=0.5, scope="tensor",
         rescale=False, order=None):
    spec = {"name": mask_method, "n": n, "m": m, "ratio": sparsity_ratio, "scope": scope, "rescale": rescale,
            "conflict_aware": True}
    return task_arithmetic(base, models, scaling_factor=scaling_factor, sparsify=spec, order=order)


register("cabs", params={
    "scaling_factor": scaling_factor_param(1.0),
    "mask_method": Param("str", "nm", "BS with n:m masks, or magnitude masks", choices=("nm", "magnitude")),
    "n": Param("int", 2, "nm: entries kept per block"),
    "m": Param("int", 4, "nm: block size"),
    "sparsity_ratio": Param("float", SPARSITY_RATIO.default, "magnitude: fraction of each task vector dropped",
                            check=SPARSITY_RATIO.check),
    "scope": Param("str", "tensor", "magnitude: rank per tensor or over the whole task vector",
                   choices=("tensor", "global")),
    "rescale": Param("bool", False, "multiply kept entries by m/n (magnitude: 1/(1 − sparsity_ratio))"),
    "order": Param("list[int]", None, "pool indices in masking order (null: pool order)", nullable=True),
}, doc="CABS: conflict-aware n:m (or magnitude) masks, then θ₀ + Σ λ_i τ̂_i")(cabs)
