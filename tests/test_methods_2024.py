"""The 2024-2025 merging methods (TSV-M, Iso-C, Iso-CTS, ...) against plain numpy formulas written here
(float64, FusionBench's zero-padded layout), and on matrices with known spectra."""
import numpy as np
import pytest

from ppmerge.errors import ConfigError
from ppmerge.merge import get_method


def _svd(a):
    return np.linalg.svd(np.asarray(a, dtype=np.float64), full_matrices=False)


def _polar(a):
    p, _, qh = _svd(a)
    return p @ qh


def ref_tsv(taus):
    """TSV-M as in the paper's code: r-wide zero-padded U/S/V, polar factors, U⊥ S V⊥ᵀ."""
    m, n = taus[0].shape
    r, t = min(m, n), len(taus)
    k = int(r * (1.0 / t))
    su, ss, sv = np.zeros((m, r)), np.zeros(r), np.zeros((r, n))
    for i, tau in enumerate(taus):
        u, s, vh = _svd(tau)
        su[:, i * k:(i + 1) * k], ss[i * k:(i + 1) * k], sv[i * k:(i + 1) * k] = u[:, :k], s[:k], vh[:k]
    return _polar(su) @ np.diag(ss) @ _polar(sv)


def ref_iso_c(taus):
    u, s, vh = _svd(sum(np.asarray(t, np.float64) for t in taus))
    return u @ np.diag(np.full_like(s, s.mean())) @ vh


def ref_iso_cts(taus, frac):
    m, n = taus[0].shape
    r, t = min(m, n), len(taus)
    common = int(r * frac)
    common = r - round((r - common) / t) * t
    k = (r - common) // t
    u, s, vh = _svd(sum(np.asarray(x, np.float64) for x in taus))
    uc = u[:, :common]
    su, ss, sv = np.zeros((m, r)), np.zeros(r), np.zeros((r, n))
    for i, tau in enumerate(taus):
        ut, st, vt = _svd(tau - uc @ uc.T @ tau)
        su[:, i * k:(i + 1) * k], ss[i * k:(i + 1) * k], sv[i * k:(i + 1) * k] = ut[:, :k], st[:k], vt[:k]
    su[:, t * k:], ss[t * k:], sv[t * k:] = uc, s[:common], vh[:common]
    return _polar(su) @ np.diag(np.full(r, ss.mean())) @ _polar(sv)


def _pool(shapes, n, seed=0, scale=0.1):
    rng = np.random.default_rng(seed)
    base = {k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()}
    base["step"] = np.array([3], dtype=np.int64)
    models = [{k: (v + scale * rng.normal(size=v.shape)).astype(np.float32) if v.dtype == np.float32 else v
               for k, v in base.items()} for _ in range(n)]
    return base, models


SHAPES = {"w": (12, 20), "wt": (18, 7), "b": (20,), "ln": (5, 2, 3)}


@pytest.mark.parametrize("name,ref,params", [
    ("task_singular_vectors", ref_tsv, {"alpha": 0.7}),
    ("iso_c", ref_iso_c, {"scaling_factor": 0.7}),
    ("iso_cts", lambda taus: ref_iso_cts(taus, 0.8), {"scaling_factor": 0.7}),
    ("iso_cts", lambda taus: ref_iso_cts(taus, 0.5), {"scaling_factor": 0.7, "common_space_fraction": 0.5}),
])
def test_svd_methods_match_numpy_formula(name, ref, params):
    base, models = _pool(SHAPES, 3)
    merged = get_method(name)(base, models, **params)
    assert merged["step"].dtype == np.int64 and merged["step"][0] == 3
    for key in SHAPES:
        taus = [m[key].astype(np.float64) - base[key] for m in models]
        delta = ref(taus) if len(SHAPES[key]) == 2 else np.mean(taus, axis=0)
        expected = base[key] + 0.7 * delta
        assert merged[key].dtype == np.float32 and merged[key].shape == base[key].shape
        np.testing.assert_allclose(merged[key], expected, rtol=1e-4, atol=2e-5, err_msg=key)


def test_tsv_alpha_list_scales_each_task_vector_first():
    base, models = _pool({"w": (10, 9), "b": (4,)}, 3, seed=1)
    alphas = [0.5, 1.0, 2.0]
    merged = get_method("task_singular_vectors")(base, models, alpha=alphas)
    taus = [a * (m["w"].astype(np.float64) - base["w"]) for a, m in zip(alphas, models)]
    np.testing.assert_allclose(merged["w"], base["w"] + ref_tsv(taus), rtol=1e-4, atol=2e-5)
    np.testing.assert_allclose(merged["b"], base["b"] + np.mean(
        [a * (m["b"] - base["b"]) for a, m in zip(alphas, models)], axis=0), rtol=1e-5, atol=1e-6)
    with pytest.raises(ConfigError, match="Merge.alpha: expected one factor per model"):
        get_method("task_singular_vectors")(base, models, alpha=[1.0, 2.0])


def _orthogonal_tasks(m, n, t, rank, seed=0, equal=None):
    """t task vectors on disjoint blocks of one orthogonal basis (each of the given rank)."""
    rng = np.random.default_rng(seed)
    qu, _ = np.linalg.qr(rng.normal(size=(m, m)))
    qv, _ = np.linalg.qr(rng.normal(size=(n, n)))
    taus = []
    for i in range(t):
        s = np.full(rank, equal) if equal else rng.uniform(0.5, 2.0, rank)
        cols = slice(i * rank, (i + 1) * rank)
        taus.append((qu[:, cols] * s) @ qv[:, cols].T)
    return taus


def _merge_taus(name, taus, **params):
    base = {"w": np.zeros(taus[0].shape, np.float32)}
    models = [{"w": tau.astype(np.float32)} for tau in taus]
    return get_method(name)(base, models, **params)["w"].astype(np.float64)


def test_known_spectra_one_task():
    rng = np.random.default_rng(3)
    tau = rng.normal(size=(9, 14))
    # TSV-M keeps all r components of a single task: τ itself, × alpha.
    np.testing.assert_allclose(_merge_taus("task_singular_vectors", [tau], alpha=0.5), 0.5 * tau, atol=1e-5)
    # Iso-C / Iso-CTS of one task: τ's singular vectors with the mean singular value.
    u, s, vh = np.linalg.svd(tau, full_matrices=False)
    iso = s.mean() * u @ vh
    np.testing.assert_allclose(_merge_taus("iso_c", [tau]), iso, atol=1e-4)
    np.testing.assert_allclose(_merge_taus("iso_cts", [tau]), iso, atol=1e-4)


def test_known_spectra_orthogonal_tasks_sum():
    # rank 3 per task, 4 tasks on disjoint directions of a 12 x 16 matrix (r = 12, r/T = 3): TSV-M = Σ τ_i
    taus = _orthogonal_tasks(12, 16, 4, 3)
    np.testing.assert_allclose(_merge_taus("task_singular_vectors", taus), sum(taus), atol=1e-5)
    # equal singular values filling all r directions: Σ τ_i is already isotropic, so Iso-C/CTS = Σ τ_i
    taus = _orthogonal_tasks(12, 16, 4, 3, equal=0.7)
    np.testing.assert_allclose(_merge_taus("iso_c", taus), sum(taus), atol=1e-5)
    # Iso-CTS: with no common part each task keeps exactly its own 3 directions (with a common part the
    # top directions of a degenerate spectrum are any basis of it, and the sum is not recovered)
    np.testing.assert_allclose(_merge_taus("iso_cts", taus, common_space_fraction=0.0), sum(taus), atol=1e-5)
    np.testing.assert_allclose(_merge_taus("iso_cts", taus, common_space_fraction=1.0), sum(taus), atol=1e-5)
    # more tasks than the rank: no component per task, Δ = 0 on the matrix
    assert np.abs(_merge_taus("task_singular_vectors", _orthogonal_tasks(2, 2, 1, 1) * 3)).max() == 0


def test_iso_cts_sizes_and_bad_fraction():
    from ppmerge.merge.methods.iso import iso_cts_sizes

    assert iso_cts_sizes(64, 3, 0.8) == (52, 4)     # 51 common, 13/3 -> 4 per task, remainder to common
    assert iso_cts_sizes(10, 4, 0.8) == (10, 0)     # 2/4 rounds to 0 (round half to even, as FusionBench)
    assert iso_cts_sizes(3, 2, 0.0) == (1, 1)       # round(1.5) = 2 would overflow r: what fits
    with pytest.raises(ConfigError, match="Merge.common_space_fraction: expected a fraction"):
        get_method("iso_cts")({"w": np.zeros((2, 2), np.float32)}, [], common_space_fraction=1.5)
