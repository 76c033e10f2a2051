"""breadcrumbs and breadcrumbs_ties (Model Breadcrumbs, Davari & Belilovsky 2024; as mergekit defines them).

Each task vector is sparsified per tensor by dropping its largest-magnitude outliers (the int(γ·d)
largest |τ|) and the smallest, keeping int(density·d) entries (ppmerge.merge.sparsify, `outliers`). Then
  breadcrumbs:       θ = θ₀ + Σ_i w_i·τ̂_i                                  (mergekit: no consensus, no normalize)
  breadcrumbs_ties:  θ = θ₀ + TIES sign election and disjoint sum of w_i·τ̂_i (+1 where Σ = 0; mergekit)
"""
from ppmerge.merge.executor import Consensus, Linear
from ppmerge.merge.method_params import check_range, weights_of
from ppmerge.merge.methods.ties_merging import ties
from ppmerge.merge.registry import Param, register_plan


def breadcrumbs_spec(p):
    return {"name": "outliers", "ratio": 1.0 - p["density"], "gamma": p["gamma"]}


def breadcrumbs(num_models, weights=1.0, **_):
    """θ = 1·θ₀ + Σ_i w_i·τ̂_i."""
    return 1.0, weights_of(weights, num_models)


def breadcrumbs_ties(p):
    """TIES options: no further trim (threshold 100), +1 where Σ w_i·τ̂_i = 0, disjoint sum, λ = 1."""
    return {"threshold": 100.0, "merge_func": "sum", "scaling_factor": 1.0, "topk_scope": "tensor",
            "weights": p["weights"], "zero_sign": "positive", "sparsify": breadcrumbs_spec(p)}


def _density(value, where):
    if not 0.0 < value <= 1.0:
        from ppmerge.errors import ConfigError

        raise ConfigError(f"{where}: expected a fraction in (0, 1], got {value}")
    return value


PARAMS = {
    "weights": Param("float|list[float]", 1.0, "w_i (mergekit's `weight`); a float applies to every model, a list "
                     "is one per model (pool order)", nullable=True),
    "density": Param("float", 0.9, "fraction of each tensor's entries kept, in (0, 1]", check=_density),
    "gamma": Param("float", 0.01, "fraction in [0, 1] of each tensor's largest |τ| dropped as outliers (when "
                   "density + gamma > 1, fewer outliers are dropped so that density is kept)",
                   check=check_range(0.0, 1.0, what="a fraction")),
}

register_plan("breadcrumbs", Linear(breadcrumbs, sparsify=breadcrumbs_spec), params=PARAMS,
              doc="Model Breadcrumbs: drop each tensor's outliers and smallest |τ|, θ₀ + Σ w_i τ̂_i (mergekit)")
register_plan("breadcrumbs_ties", Consensus(ties, options=breadcrumbs_ties), params=PARAMS,
              doc="Model Breadcrumbs masks, then TIES' sign election and disjoint sum of w_i τ̂_i (mergekit)")
