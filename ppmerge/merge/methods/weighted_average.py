"""weighted_average: Σ w_i θ_i, divided by Σ w_i when `normalize`."""
from ppmerge.errors import ConfigError
from ppmerge.merge.method_params import SPARSIFY_PARAM, streams_with
from ppmerge.merge.registry import Param, register
from ppmerge.merge.streaming import stream_linear
from ppmerge.merge.task_vector import merge_per_key, merge_task_vectors, task_vector_source


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


def weighted_average(base, models, weights=None, normalize=True, sparsify=None):
    """θ = Σ c_i θ_i with c = w (/Σw); with `sparsify` each θ_i is θ₀ + τ̂_i."""
    coefs = _coefficients(weights, normalize, len(models))
    if sparsify:
        return merge_task_vectors(base, models, lambda key, theta0, taus: sum(coefs) * theta0 + sum(
            c * t for c, t in zip(coefs, taus)), task_vector_source(base, models, sparsify))
    return merge_per_key(base, models, lambda key, theta0, thetas: sum(c * t for c, t in zip(coefs, thetas)))


def stream_weighted_average(base, models, weights=None, normalize=True, sparsify=None, consume=False):
    return stream_linear(base, models, 0.0, _coefficients(weights, normalize, len(models)), sparsify, consume)


register("weighted_average", params={
    "weights": Param("list[float]", None, "one weight per model, pool order (null: all 1)", nullable=True),
    "normalize": Param("bool", True, "divide the weights by their sum"),
    "sparsify": SPARSIFY_PARAM,
}, stream=stream_weighted_average, stream_when=lambda p: streams_with(p["sparsify"]))(weighted_average)
