"""mergekit's method family against reference formulas written here from mergekit's documented semantics and
the papers (not the package's helpers): slerp, multislerp, karcher, model_stock, breadcrumbs(_ties),
della(_linear), and the option sets of ties_merging / dare_ties_merging that reproduce mergekit's TIES and
DARE-TIES exactly."""
import zlib

import numpy as np
import pytest

from ppmerge.errors import UserError
from ppmerge.merge import METHODS

SHAPES = {"w": (12, 10), "b": (10,), "q": (4, 6)}


def pool(seed, n=3, integer=False, spread=0.3):
    rng = np.random.default_rng(seed)
    base = {k: rng.normal(size=s).astype(np.float32) for k, s in SHAPES.items()}
    if integer:  # quarters: ties in |τ| and exact zero sums
        base = {k: (rng.integers(-8, 8, size=s) / 4).astype(np.float32) for k, s in SHAPES.items()}
        return base, [{k: base[k] + rng.integers(-3, 4, size=s).astype(np.float32) for k, s in SHAPES.items()}
                      for _ in range(n)]
    return base, [{k: (base[k] + spread * rng.normal(size=s)).astype(np.float32) for k, s in SHAPES.items()}
                  for _ in range(n)]


def close(got, expected, atol=1e-5):
    for k in expected:
        np.testing.assert_allclose(got[k], expected[k], atol=atol, rtol=1e-5, err_msg=k)


def uniform(shape, seed, i, key):  # the documented seeded draws
    return np.random.default_rng([seed, i, zlib.crc32(key.encode("utf-8"))]).random(shape, dtype=np.float32)


# --- mergekit's GTA (generalized task arithmetic), transcribed from its documented semantics ----------

def gta(base, models, sparsify, weights, consensus, normalize, lam=1.0):
    out = {}
    for k in base:
        deltas = np.stack([sparsify(i, k, m[k].astype(np.float64) - base[k]) for i, m in enumerate(models)])
        w = np.asarray(weights, dtype=np.float64).reshape(-1, *[1] * base[k].ndim)
        weighted = deltas * w
        if consensus:
            majority = np.where(weighted.sum(axis=0) >= 0, 1.0, -1.0)
            mask = np.sign(weighted) == majority
            mixed, divisor = (weighted * mask).sum(axis=0), (w * mask).sum(axis=0)
            divisor[divisor == 0] = 1
        else:
            mixed, divisor = weighted.sum(axis=0), np.broadcast_to(w.sum(axis=0), base[k].shape).copy()
            divisor[np.abs(divisor) < 1e-8] = 1
        out[k] = base[k] + lam * (mixed / divisor if normalize else mixed)
    return out


def magnitude_topk(density):  # mergekit's `magnitude`: argsort descending, first int(density·n)
    def apply(i, k, tau):
        flat = tau.ravel()
        mask = np.zeros(flat.size)
        mask[np.argsort(-np.abs(flat), kind="stable")[:int(density * flat.size)]] = 1
        return (flat * mask).reshape(tau.shape)
    return apply


@pytest.mark.parametrize("integer", [False, True])
def test_ties_with_the_mergekit_option_set_is_mergekit_ties(integer):
    base, models = pool(1, n=4, integer=integer)
    weights = [0.7, 1.0, 0.4, 1.3]
    expected = gta(base, models, magnitude_topk(0.4), weights, consensus=True, normalize=True)
    got = METHODS["ties_merging"](base, models, threshold=40, topk_scope="tensor", topk_rule="count",
                                  zero_sign="positive", merge_func="mean", scaling_factor=1.0, weights=weights)
    close(got, expected)
    if integer:  # the FusionBench default really differs here (kept ties, majority sign, no weights)
        default = METHODS["ties_merging"](base, models, threshold=40, topk_scope="tensor", merge_func="mean",
                                          scaling_factor=1.0)
        assert any(not np.allclose(default[k], expected[k]) for k in base)


def test_dare_ties_with_the_mergekit_option_set_is_mergekit_dare_ties():
    base, models = pool(2, n=4, integer=True)
    p, seed, weights = 0.5, 3, [1.0, 0.5, 2.0, 1.0]
    dare = lambda i, k, tau: tau * (uniform(tau.shape, seed, i, k) >= p) / (1 - p)  # noqa: E731
    expected = gta(base, models, dare, weights, consensus=True, normalize=False)
    got = METHODS["dare_ties_merging"](base, models, sparsity_ratio=p, seed=seed, threshold=100, topk_scope="tensor",
                                       zero_sign="positive", merge_func="sum", scaling_factor=1.0, weights=weights)
    close(got, expected)


def breadcrumbs_mask(density, gamma):
    def apply(i, k, tau):
        flat, d = tau.ravel(), tau.size
        top, bottom = int(gamma * d), d - int(density * d) - int(gamma * d)
        if bottom < 0:
            top, bottom = top + bottom, 0
        order = np.argsort(np.abs(flat), kind="stable")
        mask = np.zeros(d)
        mask[order[bottom:d - top]] = 1
        return (flat * mask).reshape(tau.shape)
    return apply


def test_breadcrumbs_and_breadcrumbs_ties():
    base, models = pool(3)
    weights = [0.5, 0.8, 0.3]
    mask = breadcrumbs_mask(0.6, 0.1)
    got = METHODS["breadcrumbs"](base, models, weights=weights, density=0.6, gamma=0.1)
    close(got, gta(base, models, mask, weights, consensus=False, normalize=False))
    got = METHODS["breadcrumbs_ties"](base, models, weights=weights, density=0.6, gamma=0.1)
    close(got, gta(base, models, mask, weights, consensus=True, normalize=False))
    for k in base:  # exactly int(density·d) entries of each tensor survive, none of the int(γ·d) largest
        tau = models[0][k].astype(np.float64) - base[k]
        kept = mask(0, k, tau) != 0
        assert kept.sum() == int(0.6 * tau.size)
        assert not kept.ravel()[np.argsort(-np.abs(tau.ravel()))[:int(0.1 * tau.size)]].any()


def della_mask(density, epsilon, seed):
    def apply(i, k, tau):
        rows = tau.reshape(-1, tau.shape[-1])
        m = rows.shape[1]
        rank = np.empty_like(rows)
        for r in range(rows.shape[0]):
            rank[r, np.argsort(np.abs(rows[r]), kind="stable")] = np.arange(m)
        prob = np.float32(density - epsilon) + rank.astype(np.float32) * np.float32(2 * epsilon / (m - 1))
        keep = uniform(rows.shape, seed, i, k) < prob
        return (rows * keep / prob).reshape(tau.shape)
    return apply


def test_della_and_della_linear():
    base, models = pool(4)
    weights, lam = [0.6, 1.0, 0.9], 0.8
    mask = della_mask(0.6, 0.2, 7)
    params = dict(weights=weights, density=0.6, epsilon=0.2, seed=7, scaling_factor=lam)
    close(METHODS["della"](base, models, **params),
          gta(base, models, mask, weights, consensus=True, normalize=True, lam=lam))
    close(METHODS["della_linear"](base, models, **params),
          gta(base, models, mask, weights, consensus=False, normalize=False, lam=lam))


# --- slerp, multislerp, karcher, model_stock ------------------------------------------------------------

def slerp_reference(t, a, b):
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    cos = a @ b / np.linalg.norm(a) / np.linalg.norm(b)
    if abs(cos) > 0.9995:
        return (1 - t) * a + t * b
    omega = np.arccos(cos)
    return np.sin((1 - t) * omega) / np.sin(omega) * a + np.sin(t * omega) / np.sin(omega) * b


def test_slerp_two_models_one_model_and_colinear_fallback():
    base, models = pool(5, n=2, spread=1.0)
    for t in (0.0, 0.25, 1.0):
        got = METHODS["slerp"](base, models, t=t)
        close(got, {k: slerp_reference(t, models[0][k], models[1][k]).reshape(SHAPES[k]) for k in base})
        got = METHODS["slerp"](base, models[:1], t=t)  # mergekit's form: from the base to the model
        close(got, {k: slerp_reference(t, base[k], models[0][k]).reshape(SHAPES[k]) for k in base})
    colinear = [{k: 2.0 * base[k] for k in base}]
    close(METHODS["slerp"](base, colinear, t=0.3), {k: 1.3 * base[k] for k in base})
    with pytest.raises(UserError, match="slerp interpolates two models"):
        METHODS["slerp"](base, pool(5, n=3)[1])


def test_slerp_keeps_the_norm_of_equal_norm_endpoints():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(8, 8)).astype(np.float32)
    b = rng.normal(size=(8, 8)).astype(np.float32)
    b *= np.linalg.norm(a) / np.linalg.norm(b)
    got = METHODS["slerp"]({"w": a}, [{"w": b}], t=0.4)["w"]
    assert np.isclose(np.linalg.norm(got), np.linalg.norm(a), rtol=1e-5)


def test_multislerp_formula_and_two_model_case_is_slerp_of_task_vectors_direction():
    base, models = pool(6, n=3)
    weights = [1.0, 2.0, 1.0]
    got = METHODS["multislerp"](base, models, weights=weights)
    for k in base:
        w = np.array(weights) / sum(weights)
        x = np.stack([m[k].astype(np.float64).ravel() - base[k].ravel() for m in models])
        norms = np.linalg.norm(x, axis=1)
        u = x / (norms[:, None] + 1e-8)
        mu = w @ u
        mu /= np.linalg.norm(mu)
        tangent = sum(wi * (ui - (ui @ mu) * mu) for wi, ui in zip(w, u))
        length = np.linalg.norm(tangent) + 1e-8
        expected = (np.cos(length) * mu + np.sin(length) / length * tangent) * (w @ norms) + base[k].ravel()
        np.testing.assert_allclose(got[k].ravel(), expected, atol=1e-5, err_msg=k)


def test_karcher_two_models_is_the_geodesic_midpoint_and_n_models_a_fixed_point():
    base, models = pool(7, n=2, spread=1.0)
    got = METHODS["karcher"](base, models)
    for k in base:
        a, b = (m[k].astype(np.float64).ravel() for m in models)
        mid = a / np.linalg.norm(a) + b / np.linalg.norm(b)
        expected = mid / np.linalg.norm(mid) * (np.linalg.norm(a) + np.linalg.norm(b)) / 2
        np.testing.assert_allclose(got[k].ravel(), expected, atol=1e-4, err_msg=k)
    base, models = pool(8, n=4, spread=1.0)
    got = METHODS["karcher"](base, models, max_iter=100, tol=1e-9)
    for k in base:  # Σ_i w_i log_μ(u_i) = 0 at the Karcher mean
        mu = got[k].astype(np.float64).ravel()
        mu /= np.linalg.norm(mu)
        grad = 0
        for m in models:
            u = m[k].astype(np.float64).ravel()
            u /= np.linalg.norm(u)
            angle = np.arccos(np.clip(mu @ u, -1, 1))
            grad = grad + angle / np.sin(angle) * (u - (mu @ u) * mu)
        assert np.linalg.norm(grad) < 1e-4, k


def test_model_stock_formula():
    base, models = pool(9, n=3)
    got = METHODS["model_stock"](base, models)
    for k in base:
        taus = [m[k].astype(np.float64).ravel() - base[k].ravel() for m in models]
        cos = np.mean([a @ b / np.linalg.norm(a) / np.linalg.norm(b) for i, a in enumerate(taus) for b in taus[i + 1:]])
        t = 3 * cos / (1 + 2 * cos)
        expected = t * np.mean([m[k] for m in models], axis=0) + (1 - t) * base[k]
        np.testing.assert_allclose(got[k], expected, atol=1e-5, err_msg=k)
    two = METHODS["model_stock"](base, models[:2], filter_wise=True)["w"]  # k = 2, one t per row
    a, b = (m["w"].astype(np.float64) - base["w"] for m in models[:2])
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    t = (2 * cos / (1 + cos))[:, None]
    np.testing.assert_allclose(two, t * (models[0]["w"] + models[1]["w"]) / 2 + (1 - t) * base["w"], atol=1e-5)
    with pytest.raises(UserError, match="two or more"):
        METHODS["model_stock"](base, models[:1])


def test_model_stock_at_its_pole_is_an_error_not_nan():
    base = {"v": np.zeros(1, np.float32)}
    models = [{"v": np.array([s], np.float32)} for s in (1.0, 1.0, -1.0, -1.0)]  # mean cos = −1/3: 1 + 3·cos = 0
    with pytest.raises(UserError, match="non-finite values on 'v'"):
        METHODS["model_stock"](base, models)


# --- parameter ranges: refused at resolve time, the message names the key the user wrote --------------

@pytest.mark.parametrize("method, params, message", [
    ("slerp", {"t": 2.0}, r"Merge\.t: expected an interpolation factor in \[0\.0, 1\.0\], got 2\.0"),
    ("slerp", {"t": -0.5}, r"Merge\.t: .* got -0\.5"),
    ("karcher", {"tol": -1.0}, r"Merge\.tol: expected a number > 0"),
    ("karcher", {"tol": 0.0}, r"Merge\.tol: expected a number > 0"),
    ("karcher", {"max_iter": 0}, r"Merge\.max_iter: expected an integer >= 1, got 0"),
    ("karcher", {"weights": [1.0, -1.0, 1.0]}, r"Merge\.weights: expected non-negative weights"),
    ("multislerp", {"eps": 0.0}, r"Merge\.eps: expected a number > 0"),
    ("multislerp", {"weights": [0.0, 0.0, 0.0]}, r"Merge\.weights: .*positive sum"),
    ("breadcrumbs", {"gamma": 1.5}, r"Merge\.gamma: expected a fraction in \[0\.0, 1\.0\]"),
    ("breadcrumbs_ties", {"density": 0.0}, r"Merge\.density: expected a fraction in \(0, 1\]"),
    ("della", {"density": 1.0}, r"Merge\.density: expected a probability in \(0\.0, 1\.0\)"),
    ("della_linear", {"epsilon": -0.1}, r"Merge\.epsilon: expected a number >= 0"),
    ("della", {"seed": -1}, r"Merge\.seed: expected an integer >= 0"),
    ("dare_simple_average", {"seed": -1}, r"Merge\.seed: expected an integer >= 0"),
])
def test_out_of_range_parameters_are_refused_naming_the_key(method, params, message):
    with pytest.raises(UserError, match=message):
        METHODS[method].resolve(params)


@pytest.mark.parametrize("method", ["della", "della_linear"])
@pytest.mark.parametrize("params", [{"density": 0.9}, {"density": 0.2, "epsilon": 0.2}])
def test_della_keep_probabilities_outside_0_1_name_density_and_epsilon(method, params):
    """density ± epsilon must stay in (0, 1); the error names Merge.epsilon / Merge.density (what the user
    wrote), never the internal Merge.sparsify spec or its ratio."""
    base, models = pool(7)
    with pytest.raises(UserError) as info:
        METHODS[method](base, models, **params)
    text = str(info.value)
    assert text.startswith("Merge.epsilon: ") and "Merge.density" in text and "sparsify" not in text
    assert "ratio" not in text


def test_range_edges_are_accepted_and_slerp_ends_are_the_endpoints():
    base, models = pool(8, n=2)
    for t, expected in ((0.0, models[0]), (1.0, models[1])):
        close(METHODS["slerp"](base, models, t=t), expected)
    METHODS["karcher"].resolve({"max_iter": 1, "tol": 1e-12, "weights": [0.0, 1.0]})
    METHODS["della"].resolve({"density": 0.5, "epsilon": 0.0, "seed": 0})
    METHODS["breadcrumbs"].resolve({"gamma": 0.0, "density": 1.0})
