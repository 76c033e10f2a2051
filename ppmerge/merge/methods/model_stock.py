"""model_stock (Model Stock, Jang et al. 2024; as mergekit defines it).

Per tensor (or per row with `filter_wise`): cos θ = the mean over pairs i < j of the cosine between the
task vectors τ_i = θ_i − θ₀ (each clipped to [−1, 1], the norm product floored at 1e-6); with k models
t = k·cos θ / (1 + (k − 1)·cos θ) and θ = t·mean_i θ_i + (1 − t)·θ₀. Needs two or more fine-tuned models.
"""
import numpy as np

from ppmerge.errors import ConfigError
from ppmerge.merge.executor import PerTensor
from ppmerge.merge.registry import Param, register_plan


def model_stock(theta0, thetas, filter_wise=False):
    k = len(thetas)
    if k < 2:
        raise ConfigError(f"Merge.method: model_stock needs two or more fine-tuned models, the pool has {k}")
    rows = (lambda a: a.reshape(-1, a.shape[-1]) if a.ndim else a.reshape(1, 1)) if filter_wise else \
        (lambda a: a.reshape(1, -1))
    base = rows(theta0)
    tau = lambda i: rows(thetas[i]) - base  # noqa: E731  (recomputed per pair: two task vectors in memory)
    norms = [np.linalg.norm(tau(i).astype(np.float64), axis=-1) for i in range(k)]
    cosines = []
    for i in range(k):
        for j in range(i + 1, k):
            dot = np.einsum("rd,rd->r", tau(i), tau(j), dtype=np.float64)
            cosines.append(np.clip(dot / np.maximum(norms[i] * norms[j], 1e-6), -1.0, 1.0))
    cos = np.mean(cosines, axis=0)[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):  # at the pole the executor names the key
        t = (k * cos / (1 + (k - 1) * cos)).astype(np.float32)
    average = np.zeros(base.shape, dtype=np.float32)
    for theta in thetas:
        average += rows(theta)
    average /= np.float32(k)
    with np.errstate(invalid="ignore"):
        return (t * average + (1 - t) * base).reshape(theta0.shape)


register_plan("model_stock", PerTensor(model_stock), params={
    "filter_wise": Param("bool", False, "one t per row (output filter) instead of per tensor"),
}, doc="Model Stock: θ₀ + t·(mean θ_i − θ₀), t = k·cos/(1 + (k − 1)·cos) from the task vectors' mean pairwise "
       "angle, per tensor (mergekit)")
