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


# ---- EMR-Merging ------------------------------------------------------------------------------------
def _emr(base, models, tasks=None):
    from ppmerge.merge import MergeContext

    tasks = tasks or [f"T{i}" for i in range(len(models))]
    ctx = MergeContext(task_names=tasks, heads=[{} for _ in tasks], task_pool=None, model_cfg={})
    return get_method("emr_merging")(base, models, context=ctx)


def test_emr_hand_made_vectors():
    base = {"a": np.zeros(5, np.float32), "b": np.ones((2, 2), np.float32), "n": np.array([7], np.int32)}
    taus = [{"a": [1.0, -2.0, 0.5, 0.0, 1.0], "b": [[1, 0], [0, -1]]},
            {"a": [2.0, 1.0, -0.5, 0.0, -1.0], "b": [[-3, 0], [2, 1]]},
            {"a": [-1.0, -1.0, 0.0, 0.0, 0.0], "b": [[0, 0], [0, 0]]}]
    models = [{"a": base["a"] + np.float32(t["a"]), "b": base["b"] + np.float32(t["b"]), "n": base["n"]} for t in taus]
    emr = _emr(base, models)
    # a: sums 2, -2, 0 (-> negative), 0 (-> negative), 0 (-> negative)
    np.testing.assert_array_equal(emr.tau_uni["a"], [2.0, -2.0, -0.5, 0.0, -1.0])
    # b: sums -2, 0 (-> negative), 2, 0 (-> negative)
    np.testing.assert_array_equal(emr.tau_uni["b"], [[-3, 0], [2, -1]])
    masks_a = [[1, 1, 0, 0, 0], [1, 0, 1, 0, 1], [0, 1, 0, 0, 0]]
    masks_b = [[[0, 0], [0, 1]], [[1, 0], [1, 0]], [[0, 0], [0, 0]]]
    for t in range(3):
        np.testing.assert_array_equal(np.unpackbits(emr.masks["a"][t], count=5), masks_a[t])
        np.testing.assert_array_equal(np.unpackbits(emr.masks["b"][t], count=4).reshape(2, 2), masks_b[t])
    # λ_t = Σ_keys mean|τ_t| / Σ_keys mean|M_t ⊙ τ_uni|
    uni = {"a": np.array([2.0, -2.0, -0.5, 0.0, -1.0]), "b": np.array([[-3, 0], [2, -1.0]])}
    for t, expected_masks in enumerate(zip(masks_a, masks_b)):
        own = sum(np.abs(np.float64(taus[t][k])).mean() for k in ("a", "b"))
        kept = sum(np.abs(np.multiply(m, uni[k])).mean() for k, m in zip(("a", "b"), expected_masks))
        assert emr.scales[t] == pytest.approx(own / kept if kept else 0.0, rel=1e-6)
    # by hand: T0 (0.9 + 0.5) / (0.8 + 0.25); T2 (0.4 + 0) / (0.4 + 0)
    assert emr.scales[0] == pytest.approx(4 / 3) and emr.scales[2] == pytest.approx(1.0)
    # task t's backbone: θ₀ + λ_t M_t ⊙ τ_uni; the non-float key is the base's
    for t in range(3):
        bb = emr.task_backbone(f"T{t}")
        np.testing.assert_allclose(bb["a"], emr.scales[t] * np.multiply(masks_a[t], uni["a"]), rtol=1e-6)
        np.testing.assert_allclose(bb["b"], 1 + emr.scales[t] * np.multiply(masks_b[t], uni["b"]), rtol=1e-6)
        assert bb["n"].dtype == np.int32 and bb["n"][0] == 7


def test_emr_random_against_formula_and_save_roundtrip(tmp_path):
    import safetensors.numpy

    from ppmerge.merge.methods.emr_merging import FILE, load_emr

    base, models = _pool({"w": (6, 11), "b": (13,)}, 4, seed=5)
    emr = _emr(base, models)
    taus = {k: np.stack([m[k].astype(np.float64) - base[k] for m in models]) for k in ("w", "b")}
    sign = {k: np.where(t.sum(0) > 0, 1.0, -1.0) for k, t in taus.items()}
    uni = {k: sign[k] * np.max(np.where(t * sign[k] > 0, np.abs(t), 0), axis=0) for k, t in taus.items()}
    lam = [sum(np.abs(taus[k][i]).mean() for k in taus) / sum(np.abs((taus[k][i] * sign[k] > 0) * uni[k]).mean()
                                                             for k in taus) for i in range(4)]
    np.testing.assert_allclose(emr.scales, lam, rtol=1e-5)
    for i in range(4):
        bb = emr.task_backbone(i)
        for k in taus:
            expected = base[k] + lam[i] * (taus[k][i] * sign[k] > 0) * uni[k]
            np.testing.assert_allclose(bb[k], expected, rtol=1e-5, atol=1e-6)
    heads = {f"T{i}": {"score.weight": np.full((3, 2), i, np.float32)} for i in range(4)}
    assert emr.save(str(tmp_path), heads) == FILE
    raw = safetensors.numpy.load_file(str(tmp_path / FILE))
    assert raw["mask.w"].shape == (4, 9) and raw["mask.w"].dtype == np.uint8   # 66 bits -> 9 bytes per task
    assert raw["tau_uni.w"].shape == (6, 11) and raw["scales"].shape == (4,)
    loaded, loaded_heads = load_emr(str(tmp_path / FILE), base)
    assert loaded.task_names == emr.task_names and set(loaded_heads) == set(heads)
    np.testing.assert_array_equal(loaded_heads["T3"]["score.weight"], heads["T3"]["score.weight"])
    for i in range(4):
        for k, v in emr.task_backbone(i).items():
            np.testing.assert_array_equal(loaded.task_backbone(i)[k], v)
    with pytest.raises(ConfigError, match="no model for task 'T9'"):
        emr.task_backbone("T9")


# ---- WUDI-Merging -----------------------------------------------------------------------------------
def _wudi_grad(m, taus):
    """dL/dM of L = Σ_i ‖(M − T_i) T_iᵀ‖²_F / ‖T_i‖²_F (torch layout [out, in])."""
    return sum(2.0 * (m - t) @ t.T @ t / np.sum(t * t) for t in taus)


def _wudi_loss(m, taus):
    return sum(np.sum(((m - t) @ t.T) ** 2) / np.sum(t * t) for t in taus)


def _numpy_adam(taus, steps, lr, b1=0.9, b2=0.999, eps=1e-8):
    m = sum(taus)
    mom, vel = np.zeros_like(m), np.zeros_like(m)
    for step in range(1, steps + 1):
        g = _wudi_grad(m, taus)
        mom = b1 * mom + (1 - b1) * g
        vel = b2 * vel + (1 - b2) * g * g
        m = m - lr * (mom / (1 - b1 ** step)) / (np.sqrt(vel / (1 - b2 ** step)) + eps)
    return m


def test_wudi_iter_num_zero_is_the_sum():
    base, models = _pool({"w": (6, 5), "embed.weight": (7, 3), "b": (5,)}, 3, seed=2)
    merged = get_method("wudi_merging")(base, models, iter_num=0)
    for key in ("w", "embed.weight"):
        expected = base[key] + sum(m[key] - base[key] for m in models)
        np.testing.assert_allclose(merged[key], expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(merged["b"], base["b"] + np.mean([m["b"] - base["b"] for m in models], axis=0),
                               rtol=1e-5, atol=1e-6)
    assert merged["step"][0] == 3


def test_wudi_adam_steps_match_numpy_adam_in_both_layouts():
    base, models = _pool({"w": (6, 5), "tok_embed.weight": (7, 3)}, 3, seed=4, scale=1.0)
    lr, steps = 1e-2, 3
    merged = get_method("wudi_merging")(base, models, iter_num=steps, lr=lr)
    # Paddle Linear [in, out]: the paper's formula on the transposes
    taus = [(m["w"].astype(np.float64) - base["w"]).T for m in models]
    np.testing.assert_allclose(merged["w"], base["w"] + _numpy_adam(taus, steps, lr).T, rtol=1e-4, atol=1e-5)
    # embedding tables: the formula as written
    taus = [m["tok_embed.weight"].astype(np.float64) - base["tok_embed.weight"] for m in models]
    np.testing.assert_allclose(merged["tok_embed.weight"], base["tok_embed.weight"] + _numpy_adam(taus, steps, lr),
                               rtol=1e-4, atol=1e-5)


def test_wudi_loss_decreases_and_is_the_papers_loss():
    from ppmerge.merge.methods.wudi_merging import wudi_matrix

    rng = np.random.default_rng(8)
    taus = [rng.normal(size=(8, 6)).astype(np.float32) for _ in range(3)]
    merged, losses = wudi_matrix(taus, iter_num=100, lr=3e-2, rows_are_outputs=True)
    t64 = [t.astype(np.float64) for t in taus]
    assert losses[0] == pytest.approx(_wudi_loss(sum(t64), t64), rel=1e-4)
    assert losses[-1] < 0.5 * losses[0] and all(b <= a * (1 + 1e-6) for a, b in zip(losses, losses[1:]))
    assert _wudi_loss(merged.astype(np.float64), t64) < losses[-1]
    again, _ = wudi_matrix(taus, iter_num=100, lr=3e-2, rows_are_outputs=True)
    np.testing.assert_array_equal(merged, again)   # deterministic
    with pytest.raises(ConfigError, match="Merge.iter_num: expected a non-negative integer"):
        get_method("wudi_merging")({}, [], iter_num=-1)


def test_paddle_svd_branch_agrees_with_numpy():
    """The accelerator branch of lowrank.svd (run here on CPU paddle): same factorisation as numpy's."""
    from ppmerge.merge.lowrank import paddle_svd, polar

    a = np.random.default_rng(11).normal(size=(9, 5)).astype(np.float32)
    u, s, vh = paddle_svd(a)
    np.testing.assert_allclose((u * s) @ vh, a, atol=1e-5)
    np.testing.assert_allclose(s, np.linalg.svd(a, compute_uv=False), rtol=1e-5)
    p = polar(a)
    np.testing.assert_allclose(p.T @ p, np.eye(5), atol=1e-5)
    np.testing.assert_allclose(p, _polar(a), atol=1e-5)


def test_emr_needs_one_model_per_task():
    base, models = _pool({"w": (3, 2)}, 2)
    with pytest.raises(ConfigError, match="ModelPool.models: emr_merging builds one model per task, but the pool "
                                          "has two models for task T0"):
        _emr(base, models, tasks=["T0", "T0"])
    with pytest.raises(ConfigError, match="a model without a task"):
        _emr(base, models, tasks=["T0", None])


# ---- TSV-C (per-task low-rank task vectors) ---------------------------------------------------------
def _tsv_c(base, models, tasks=None, **params):
    from ppmerge.merge import MergeContext

    tasks = tasks or [f"T{i}" for i in range(len(models))]
    ctx = MergeContext(task_names=tasks, heads=[{} for _ in tasks], task_pool=None, model_cfg={})
    return get_method("tsv_compression")(base, models, context=ctx, **params)


def test_tsv_compression_keeps_each_tasks_top_components(tmp_path):
    from ppmerge.merge.methods.tsv_compression import FILE, load_tsv_c

    base, models = _pool({"w": (12, 20), "b": (20,)}, 3, seed=6)
    result = _tsv_c(base, models)           # default: k = ⌊12/3⌋ = 4 per task
    for i, m in enumerate(models):
        tau = m["w"].astype(np.float64) - base["w"]
        u, s, vh = np.linalg.svd(tau, full_matrices=False)
        bb = result.task_backbone(i)
        np.testing.assert_allclose(bb["w"], base["w"] + (u[:, :4] * s[:4]) @ vh[:4], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(bb["b"], m["b"], rtol=1e-6, atol=1e-6)
        assert bb["step"][0] == 3
    # the whole spectrum: each task's own model back
    full = _tsv_c(base, models, rank_fraction=1.0)
    np.testing.assert_allclose(full.task_backbone("T2")["w"], models[2]["w"], rtol=1e-4, atol=1e-5)
    heads = {f"T{i}": {"score.weight": np.full((2, 2), i, np.float32)} for i in range(3)}
    assert result.save(str(tmp_path), heads) == FILE
    loaded, loaded_heads = load_tsv_c(str(tmp_path / FILE), base)
    assert loaded.task_names == ["T0", "T1", "T2"] and loaded.factors["w"][0].shape == (3, 12, 4)
    np.testing.assert_array_equal(loaded_heads["T1"]["score.weight"], heads["T1"]["score.weight"])
    for i in range(3):
        for k, v in result.task_backbone(i).items():
            np.testing.assert_array_equal(loaded.task_backbone(i)[k], v)
    with pytest.raises(ConfigError, match="Merge.rank_fraction: expected a fraction in \\(0, 1\\]"):
        _tsv_c(base, models, rank_fraction=0.0)
    with pytest.raises(ConfigError, match="two models for task T0"):
        _tsv_c(base, models, tasks=["T0", "T0", "T1"])
