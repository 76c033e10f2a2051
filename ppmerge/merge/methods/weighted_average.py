"""weighted_average: Σ w_i θ_i, divided by Σ w_i when `normalize`."""
from ppmerge.errors import ConfigError
from ppmerge.merge.executor import Linear
from ppmerge.merge.method_params import SPARSIFY_PARAM
from ppmerge.merge.registry import Param, register_plan


def _coefficients(weights, normalize, n):
    weights = [1.0] * n if weights is None else [float(w) for w in weights]
    if len(weights) != n:
        raise ConfigError(f"Merge.weights: expected one weight per model ({n}), got {len(weights)}")
    if normalize:
        total = sum(weights)
        if total == 0:
            raise ConfigError("Merge.weights: sum to 0, cannot normalize (set Merge.normalize: false)")
        weights = [w / total for w in weights]
    return weights


def weighted_average(num_models, weights=None, normalize=True, **_):
    """θ = 0·θ₀ + Σ_i c_i·θ_i with c = w (/ Σ w); with `sparsify` each θ_i is θ₀ + τ̂_i."""
    return 0.0, _coefficients(weights, normalize, num_models)


register_plan("weighted_average", Linear(weighted_average, on="models"), params={
    "weights": Param("list[float]", None, "one weight per model, pool order (null: all 1)", nullable=True),
    "normalize": Param("bool", True, "divide the weights by their sum"),
    "sparsify": SPARSIFY_PARAM,
}, doc="θ = Σ c_i θ_i with c = w (/Σw); with `sparsify` each θ_i is θ₀ + τ̂_i.",
   needs_base=lambda p: bool(p["sparsify"]))
