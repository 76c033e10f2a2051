"""della and della_linear (DELLA-Merging, Deep et al. 2024; as mergekit defines them).

MagPrune: each row of a task vector keeps entry j with probability p_j = density − ε + 2ε·rank_j/(m − 1)
(rank by |τ| in the row: larger entries are kept more often) and, rescaled, is divided by its p_j
(ppmerge.merge.sparsify, `della`; the draws come from `seed`, per model and tensor). Then
  della:         θ = θ₀ + λ·[TIES sign election (+1 where Σ = 0), Σ_agreeing w_i τ̂_i / Σ_agreeing w_i]
  della_linear:  θ = θ₀ + λ·Σ_i w_i·τ̂_i
"""
from ppmerge.errors import ConfigError
from ppmerge.merge.executor import Consensus, Linear
from ppmerge.merge.method_params import check_range, weights_of
from ppmerge.merge.methods.ties_merging import ties
from ppmerge.merge.registry import Param, register_plan


def check_della(density, epsilon, where="Merge"):
    """MagPrune's keep probabilities density ± epsilon must lie in (0, 1); the message names the user's keys."""
    if not 0.0 < density - epsilon <= density + epsilon < 1.0:
        raise ConfigError(f"{where}.epsilon: della needs 0 < {where}.density ± {where}.epsilon < 1 (keep "
                          f"probabilities), got density = {density}, epsilon = {epsilon}")


def della_spec(p):
    check_della(p["density"], p["epsilon"])
    return {"name": "della", "ratio": 1.0 - p["density"], "epsilon": p["epsilon"], "rescale": p["rescale"],
            "seed": p["seed"]}


def della_linear(num_models, weights=1.0, scaling_factor=1.0, **_):
    """θ = 1·θ₀ + Σ_i λ·w_i·τ̂_i."""
    return 1.0, [scaling_factor * w for w in weights_of(weights, num_models)]


def della(p):
    """TIES options: no further trim, +1 where the weighted sum is 0, weighted mean of the agreeing, λ."""
    return {"threshold": 100.0, "merge_func": "mean", "scaling_factor": p["scaling_factor"], "topk_scope": "tensor",
            "weights": p["weights"], "zero_sign": "positive", "sparsify": della_spec(p)}


PARAMS = {
    "weights": Param("float|list[float]", 1.0, "w_i (mergekit's `weight`); a float applies to every model, a list "
                     "is one per model (pool order)", nullable=True),
    "density": Param("float", 0.7, "mean keep probability, in (0, 1)",
                     check=check_range(0.0, 1.0, lo_open=True, hi_open=True, what="a probability")),
    "epsilon": Param("float", 0.15, "keep probabilities span density ± epsilon (>= 0; checked to stay in (0, 1))",
                     check=check_range(0.0)),
    "scaling_factor": Param("float", 1.0, "λ (mergekit's `lambda`)"),
    "rescale": Param("bool", True, "divide each kept entry by its keep probability"),
    "seed": Param("int", 0, "seed of the MagPrune draws (per model and tensor, device independent; >= 0)",
                  check=check_range(0, what="an integer")),
}

register_plan("della", Consensus(ties, options=della), params=PARAMS,
              doc="DELLA: MagPrune masks, TIES sign election, weighted mean of the agreeing w_i τ̂_i, θ₀ + λ·τ_m")
register_plan("della_linear", Linear(della_linear, sparsify=della_spec), params=PARAMS,
              doc="DELLA's MagPrune masks, then θ₀ + λ·Σ w_i τ̂_i")
