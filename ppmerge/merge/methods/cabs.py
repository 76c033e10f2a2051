"""cabs (CABS, Yang et al. 2025): Conflict-Aware and Balanced Sparsification, then θ₀ + Σ λ_i τ̂_i.

CA: masks are made one model after another (`order`), each on the positions no earlier model kept, so
the kept sets are disjoint; BS: n:m masks (each block of m keeps its n largest |τ|), or magnitude masks
(`mask_method: magnitude`, dropping `sparsity_ratio`). Two models with `scaling_factor: [lamb1, lamb2]`
is CABS's θ₀ + lamb1·τ_A + lamb2·τ_B; its grid is a Sweep over Merge.scaling_factor.0 × .1.
"""
from ppmerge.errors import ConfigError
from ppmerge.merge.method_params import SPARSITY_RATIO, scaling_factor_param
from ppmerge.merge.methods.task_arithmetic import task_arithmetic
from ppmerge.merge.executor import Linear
from ppmerge.merge.registry import Param, register_plan


def cabs(num_models, scaling_factor=1.0, mask_method="nm", n=2, m=4, **_):
    """θ₀ + Σ λ_i τ̂_i on the conflict-aware masks of `cabs_spec`."""
    if mask_method == "nm" and n > 0 and num_models > m // n:
        # Disjoint n:m masks: each block of m has room for m // n models; the ones after that would
        # find every block already taken and contribute nothing at all.
        raise ConfigError(f"Merge.n / Merge.m: cabs with {n}:{m} masks gives each block of {m} entries to at most "
                          f"{m // n} models (masks are disjoint), but the pool has {num_models}: models after the "
                          f"first {m // n} would contribute nothing; use n:m with m // n >= {num_models} "
                          f"(e.g. Merge.n=1 Merge.m={num_models}), or Merge.mask_method=magnitude")
    return task_arithmetic(num_models, scaling_factor)


def cabs_spec(p):
    """CA + BS: the conflict-aware sparsify spec of the cabs parameters."""
    return {"name": p["mask_method"], "n": p["n"], "m": p["m"], "ratio": p["sparsity_ratio"], "scope": p["scope"],
            "rescale": p["rescale"], "conflict_aware": True, "order": p["order"]}


register_plan("cabs", Linear(cabs, sparsify=cabs_spec), params={
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
}, doc="CABS: conflict-aware n:m (or magnitude) masks, then θ₀ + Σ λ_i τ̂_i")
