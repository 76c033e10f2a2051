"""slerp and multislerp: interpolation on the sphere, per tensor (as mergekit defines them).

slerp (Shoemake 1985): two models; with one fine-tuned model in the pool they are the base (t = 0) and
that model (t = 1), as in mergekit; with two they are the first (t = 0) and the second. On each tensor,
flattened: ω = arccos(û₀·û₁) between the unit directions; θ = sin((1 − t)ω)/sin ω·v₀ + sin(tω)/sin ω·v₁,
and the linear (1 − t)·v₀ + t·v₁ when |û₀·û₁| > 0.9995 (nearly colinear). t must lie in [0, 1]: mergekit
documents t as the interpolation factor (t = 0 the base, t = 1 the other model); its code does not clamp, so
t outside would extrapolate along the great circle, which ppmerge refuses rather than run undocumented.

multislerp (mergekit's barycentric interpolation on the sphere): per tensor, x_i = θ_i − θ₀ (`use_base`)
or θ_i; weights w normalised to sum 1; u_i = x_i/(‖x_i‖ + ε); mean direction μ = Σ w_i u_i / ‖·‖; the
tangent vectors u_i − (u_i·μ)μ are averaged with w into T; θ = (μ cos‖T‖ + T sin‖T‖/‖T‖)·Σ w_i ‖x_i‖
(+ θ₀). Two models whose weighted directions cancel fall back to Σ w_i x_i; more is an error.
"""
import numpy as np

from ppmerge.errors import ConfigError
from ppmerge.merge.executor import PerTensor
from ppmerge.merge.method_params import check_mean_weights, check_range
from ppmerge.merge.registry import Param, register_plan


def spherical(t, v0, v1, dot_threshold=0.9995, eps=1e-8):
    """slerp of two arrays (float64 math)."""
    a, b = v0.astype(np.float64), v1.astype(np.float64)
    norm_a, norm_b = np.linalg.norm(a), np.linalg.norm(b)
    dot = np.sum((a / norm_a if norm_a > eps else a) * (b / norm_b if norm_b > eps else b))
    if abs(dot) > dot_threshold:
        return (1 - t) * a + t * b
    omega = np.arccos(dot)
    return (np.sin((1 - t) * omega) * a + np.sin(t * omega) * b) / np.sin(omega)


def slerp(theta0, thetas, t):
    if len(thetas) not in (1, 2):
        raise ConfigError(f"Merge.method: slerp interpolates two models (the base and one fine-tuned model, or two "
                          f"fine-tuned models), but the pool has {len(thetas)}")
    v0, v1 = (theta0, thetas[0]) if len(thetas) == 1 else thetas
    return spherical(t, v0, v1)


def multislerp(theta0, thetas, weights=None, use_base=True, eps=1e-8):
    w = np.ones(len(thetas)) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.size != len(thetas) or w.sum() == 0:
        raise ConfigError(f"Merge.weights: expected one weight per model ({len(thetas)}) with a non-zero sum, got "
                          f"{weights}")
    w = w / w.sum()
    base = theta0.astype(np.float64).reshape(-1)
    x = np.stack([t.astype(np.float64).reshape(-1) - (base if use_base else 0.0) for t in thetas])
    offset = base if use_base else 0.0
    norms = np.linalg.norm(x, axis=1)
    units = x / (norms[:, None] + eps)
    mean = w @ units
    if np.linalg.norm(mean) < eps:
        if len(thetas) == 2:  # antipodal pair: the linear interpolation
            return (w @ x + offset).reshape(theta0.shape)
        raise ConfigError("Merge.weights: multislerp's weighted directions cancel on a tensor; change the weights")
    mean = mean / np.linalg.norm(mean)
    tangent = w @ (units - (units @ mean)[:, None] * mean)
    length = np.linalg.norm(tangent) + eps
    result = (mean * np.cos(length) + tangent * (np.sin(length) / length)) * (w @ norms)
    return (result + offset).reshape(theta0.shape)


register_plan("slerp", PerTensor(slerp), params={
    "t": Param("float", 0.5, "interpolation factor in [0, 1]: 0 gives the first model (the base with a one-model "
               "pool), 1 the second; no extrapolation", check=check_range(0.0, 1.0, what="an interpolation factor")),
}, doc="spherical interpolation of two models per tensor, linear when nearly colinear (mergekit)")
register_plan("multislerp", PerTensor(multislerp), params={
    "weights": Param("list[float]", None, "one weight per model, pool order (null: equal); non-negative, "
                     "normalised to sum 1", nullable=True, check=check_mean_weights),
    "use_base": Param("bool", True, "interpolate the task vectors θ_i − θ₀ (the sphere centred on the base)"),
    "eps": Param("float", 1e-8, "ε of the normalisations (> 0)", check=check_range(0.0, lo_open=True)),
}, doc="barycentric interpolation of N models on the sphere, per tensor (mergekit's multislerp)")
