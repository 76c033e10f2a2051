"""karcher: the weighted Karcher (Riemannian) mean of the models on the unit sphere, per tensor (as mergekit).

Per tensor: u_i = θ_i/‖θ_i‖ for the models with ‖θ_i‖ > tol, weights normalised over those; start at
μ = Σ w_i u_i / ‖·‖ (u_1 if that vanishes), then up to `max_iter` times: T = Σ w_i·(φ_i/sin φ_i)·(u_i −
cos φ_i·μ) with cos φ_i = clip(μ·u_i, −1, 1) (models with φ_i < tol skipped), stop when ‖T‖ < tol, else
μ ← cos‖T‖·μ + sin‖T‖·T/‖T‖, renormalised. θ = (Σ_i a_i‖θ_i‖)·μ with the un-renormalised weights a.
The base is not used (mergekit's karcher merges the models themselves).
"""
import numpy as np

from ppmerge.errors import ConfigError
from ppmerge.merge.executor import PerTensor
from ppmerge.merge.method_params import check_mean_weights, check_range
from ppmerge.merge.registry import Param, register_plan


def karcher(theta0, thetas, weights=None, max_iter=10, tol=1e-5):
    a = np.full(len(thetas), 1.0 / len(thetas)) if weights is None else np.asarray(weights, dtype=np.float64)
    if a.size != len(thetas):
        raise ConfigError(f"Merge.weights: expected one weight per model ({len(thetas)}), got {len(weights)}")
    x = [t.astype(np.float64).reshape(-1) for t in thetas]
    norms = np.array([np.linalg.norm(v) for v in x])
    valid = [i for i in range(len(x)) if norms[i] > tol]
    if not valid:
        return np.zeros(theta0.shape)
    if a[valid].sum() <= 0:  # every weighted model has a zero tensor here
        return np.zeros(theta0.shape)
    w = a[valid] / a[valid].sum()
    units = [x[i] / norms[i] for i in valid]
    mean = sum(wi * u for wi, u in zip(w, units))
    mean = units[0].copy() if np.linalg.norm(mean) < tol else mean / np.linalg.norm(mean)
    for _ in range(max_iter):
        tangent = np.zeros_like(mean)
        for wi, u in zip(w, units):
            cos = np.clip(mean @ u, -1.0, 1.0)
            angle = np.arccos(cos)
            if angle >= tol:
                tangent += wi * (angle / np.sin(angle)) * (u - cos * mean)
        length = np.linalg.norm(tangent)
        if length < tol:
            break
        mean = np.cos(length) * mean + np.sin(length) * (tangent / length)
        if np.linalg.norm(mean) > tol:
            mean = mean / np.linalg.norm(mean)
    return (float(a @ norms) * mean).reshape(theta0.shape)


register_plan("karcher", PerTensor(karcher), params={
    "weights": Param("list[float]", None, "one weight per model, pool order (null: 1/N each); non-negative with "
                     "a positive sum", nullable=True, check=check_mean_weights),
    "max_iter": Param("int", 10, "iterations of the fixed-point update (>= 1)",
                      check=check_range(1, what="an integer")),
    "tol": Param("float", 1e-5, "convergence and zero-norm tolerance (> 0)", check=check_range(0.0, lo_open=True)),
}, doc="weighted Karcher mean of the models on the sphere per tensor, × the weighted mean norm (mergekit)",
              needs_base=False)
