"""Sparsifiers: magnitude (both scopes), DARE/random statistics and seeds, n:m counts, conflict-aware masks."""
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from ppmerge.errors import ConfigError
from ppmerge.merge import METHODS
from ppmerge.merge.sparsify import Sparsifier, parse_sparsify

SHAPES = {"w": (8, 12), "b": (12,), "c": (2, 3, 10), "odd": (4, 7)}


def make_taus(n=3, seed=0, shapes=SHAPES):
    rng = np.random.default_rng(seed)
    return [{k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()} for _ in range(n)]


def sparsified(taus, spec, order=None):
    """Run a Sparsifier on task vectors given directly (base = 0) and bring them back as numpy."""
    import paddle

    sp = Sparsifier(spec, num_models=len(taus), order=order)
    source = lambda i, key: paddle.to_tensor(taus[i][key])  # noqa: E731
    sp.prepare(source, {k: v.shape for k, v in taus[0].items()})
    return [{k: sp.apply(i, k, source(i, k)).numpy() for k in taus[0]} for i in range(len(taus))]


def test_magnitude_tensor_scope_keeps_top_fraction_per_tensor():
    taus = make_taus()
    out = sparsified(taus, {"name": "magnitude", "ratio": 0.75})
    for t, o in zip(taus, out):
        for k in t:
            a = np.abs(t[k]).ravel()
            kth = np.sort(a)[a.size - int(a.size * 0.25) - 1]
            np.testing.assert_array_equal(o[k], np.where(np.abs(t[k]) >= kth, t[k], 0))
            assert (o[k] != 0).sum() == int(a.size * 0.25) + 1  # FusionBench keeps floor(d·q) + 1 (no ties)


def test_magnitude_global_scope_ranks_over_whole_vector():
    taus = make_taus(seed=1)
    out = sparsified(taus, {"name": "magnitude", "ratio": 0.6, "scope": "global", "rescale": True})
    for t, o in zip(taus, out):
        flat = np.concatenate([np.abs(v).ravel() for v in t.values()])
        kth = np.sort(flat)[flat.size - int(flat.size * 0.4) - 1]
        for k in t:
            np.testing.assert_allclose(o[k], np.where(np.abs(t[k]) >= kth, t[k] / 0.4, 0), rtol=1e-6)
    tensor_scope = sparsified(taus, {"name": "magnitude", "ratio": 0.6, "rescale": True})
    assert any(not np.array_equal(out[0][k], tensor_scope[0][k]) for k in SHAPES)


def test_dare_drop_rate_rescale_and_seed():
    shapes = {"big": (400, 500)}
    taus = make_taus(n=2, seed=2, shapes=shapes)
    p = 0.3
    out = sparsified(taus, {"name": "dare", "ratio": p, "seed": 11})
    t, o = taus[0]["big"], out[0]["big"]
    kept = o != 0
    assert abs(1 - kept.mean() - p) < 0.005          # 200k Bernoulli draws: std ≈ 0.001
    np.testing.assert_allclose(o[kept], t[kept] / (1 - p), rtol=1e-6)  # exact 1/(1-p) on kept entries
    ones = [{"big": np.ones(shapes["big"], np.float32)}]
    mean = sparsified(ones, {"name": "dare", "ratio": p, "seed": 5})[0]["big"].mean()
    assert abs(mean - 1.0) < 0.01                    # E[τ̂] = τ
    assert not np.array_equal(out[0]["big"] != 0, out[1]["big"] != 0)  # each model its own mask
    same = sparsified(taus, {"name": "dare", "ratio": p, "seed": 11})
    other = sparsified(taus, {"name": "dare", "ratio": p, "seed": 12})
    np.testing.assert_array_equal(same[0]["big"], o)
    assert not np.array_equal(other[0]["big"], o)
    no_rescale = sparsified(taus, {"name": "dare", "ratio": p, "seed": 11, "rescale": False})[0]["big"]
    np.testing.assert_array_equal(no_rescale, np.where(kept, t, 0))


def test_random_is_dare_without_rescale():
    taus = make_taus(seed=3)
    rand = sparsified(taus, {"name": "random", "ratio": 0.5, "seed": 4})
    dare = sparsified(taus, {"name": "dare", "ratio": 0.5, "seed": 4})
    for r, d in zip(rand, dare):
        for k in r:
            np.testing.assert_allclose(r[k] * 2, d[k], rtol=1e-6)


@pytest.mark.parametrize("n,m", [(2, 4), (1, 3), (3, 5)])
def test_nm_keeps_exactly_n_per_block(n, m):
    taus = make_taus(seed=4)
    out = sparsified(taus, {"name": "nm", "n": n, "m": m})
    for t, o in zip(taus, out):
        for k in t:
            rows = o[k].reshape(-1, t[k].shape[-1])
            src = t[k].reshape(rows.shape)
            for r in range(rows.shape[0]):
                for start in range(0, rows.shape[1], m):
                    block, orig = rows[r, start:start + m], np.abs(src[r, start:start + m])
                    want = min(n, block.size)
                    assert (block != 0).sum() == want
                    top = np.sort(np.argsort(-orig)[:want])
                    np.testing.assert_array_equal(np.flatnonzero(block), top)


@pytest.mark.parametrize("spec", [{"name": "nm", "n": 2, "m": 4}, {"name": "magnitude", "ratio": 0.7},
                                  {"name": "magnitude", "ratio": 0.5, "scope": "global"},
                                  {"name": "random", "ratio": 0.5}])
def test_conflict_aware_masks_are_disjoint(spec):
    taus = make_taus(n=3, seed=5)
    out = sparsified(taus, dict(spec, conflict_aware=True), order=[1, 2, 0])
    plain = sparsified(taus, spec)
    for k in SHAPES:
        count = sum((o[k] != 0).astype(int) for o in out)
        assert count.max() <= 1
        np.testing.assert_array_equal(out[1][k], plain[1][k])  # the first in order is pruned on its own
    assert any((sum((o[k] != 0).astype(int) for o in plain) > 1).any() for k in SHAPES)


def test_conflict_aware_nm_keeps_n_among_free_positions():
    taus = make_taus(n=2, seed=6, shapes={"w": (6, 8)})
    a, b = sparsified(taus, {"name": "nm", "n": 2, "m": 4, "conflict_aware": True})
    free = (a["w"] == 0).reshape(6, 2, 4)
    kept_b = (b["w"] != 0).reshape(6, 2, 4)
    assert (kept_b & ~free).sum() == 0
    assert (kept_b.sum(-1) == np.minimum(2, free.sum(-1))).all()


def test_sparsify_parameter_on_a_method_matches_sparsified_task_vectors():
    rng = np.random.default_rng(7)
    base = {k: rng.normal(size=s).astype(np.float32) for k, s in SHAPES.items()}
    taus = make_taus(seed=8)
    models = [{k: base[k] + t[k] for k in base} for t in taus]
    spec = {"name": "magnitude", "ratio": 0.5}
    got = METHODS["task_arithmetic"](base, models, scaling_factor=0.5, sparsify=spec)
    exact = [{k: m[k] - base[k] for k in base} for m in models]  # τ as the method sees it (float32)
    sp = sparsified(exact, spec)
    for k in base:
        np.testing.assert_allclose(got[k], base[k] + 0.5 * sum(s[k] for s in sp), atol=1e-6)


def test_spec_validation():
    assert parse_sparsify("n:m")["name"] == "nm"
    assert parse_sparsify({"name": "dare"})["rescale"] is True
    assert parse_sparsify({"name": "magnitude", "sparsity_ratio": 0.8})["density"] == 0.2
    with pytest.raises(ConfigError, match=r"Merge\.sparsify\.name: expected one of"):
        parse_sparsify({"name": "topk"})
    with pytest.raises(ConfigError, match=r"Merge\.sparsify\.scop: unknown sparsify key; did you mean Merge\.sparsify\.scope"):
        parse_sparsify({"name": "magnitude", "scop": "global"})
    with pytest.raises(ConfigError, match=r"n <= m"):
        parse_sparsify({"name": "nm", "n": 5, "m": 4})
    with pytest.raises(ConfigError, match=r"ratio: expected a fraction"):
        parse_sparsify({"name": "random", "ratio": 1.5})
    with pytest.raises(ConfigError, match=r"cannot rescale"):
        parse_sparsify({"name": "dare", "ratio": 1.0})
    with pytest.raises(ConfigError, match=r"order: expected a permutation"):
        Sparsifier({"name": "nm", "conflict_aware": True}, num_models=3, order=[0, 0, 1])


def test_kth_smallest_bracket_is_exact_on_large_arrays():
    """The one k-th selector on one large flat array (the per-tensor magnitude masks use it so)."""
    from ppmerge.merge.sparsify import TaskVectorPart, kth_smallest_magnitude

    rng = np.random.default_rng(9)
    values = [np.abs(rng.standard_normal(600_000)).astype(np.float32),
              rng.integers(0, 5, 600_000).astype(np.float32),      # heavy ties
              np.concatenate([np.zeros(500_000), rng.random(100_000)]).astype(np.float32)]
    for v in values:
        ordered = np.sort(v)
        for k in (1, 1000, v.size // 2, v.size - int(v.size * 0.2), v.size):
            assert kth_smallest_magnitude([TaskVectorPart(v)], k) == ordered[k - 1]


def test_kth_smallest_magnitude_over_parts_is_exact(monkeypatch):
    """The chunked selection over task-vector parts (θ − θ₀, DARE-masked, scaled) equals a sort of the
    concatenated |τ̂|, also with heavy ties and when the sample's bracket misses (full-partition fallback)."""
    from ppmerge.merge import sparsify
    from ppmerge.merge.sparsify import TaskVectorPart, kth_smallest_magnitude, magnitude_threshold

    monkeypatch.setattr(sparsify, "CHUNK", 1000)  # many chunks, a partial last one
    rng = np.random.default_rng(10)
    sizes = [70_001, 5, 40_000]
    for integer in (False, True):
        draw = (lambda n: rng.integers(-3, 4, n).astype(np.float32)) if integer else \
            (lambda n: rng.standard_normal(n).astype(np.float32))
        xs, bs = [draw(n) for n in sizes], [draw(n) for n in sizes]
        keeps = [rng.random(n) >= 0.3 for n in sizes]
        parts = [TaskVectorPart(x, b, keep, 1 / 0.7) for x, b, keep in zip(xs, bs, keeps)]
        expected = np.sort(np.abs(np.concatenate([(x - b) * keep * np.float32(1 / 0.7)
                                                  for x, b, keep in zip(xs, bs, keeps)])))
        d = expected.size
        for k in (1, 777, d // 2, d - int(d * 0.2), d):
            assert kth_smallest_magnitude(parts, k) == expected[k - 1]
        q = 0.2
        assert magnitude_threshold(parts, q) == expected[d - int(d * q) - 1]
        assert magnitude_threshold(parts, 0.0) == float("inf") and magnitude_threshold(parts, 1.0) == float("-inf")
        with ThreadPoolExecutor(max_workers=2) as workers:  # the counting pass spread over threads
            assert magnitude_threshold(parts, q, map=workers.map) == expected[d - int(d * q) - 1]
        with monkeypatch.context() as m:  # a bracket that misses: the exact fallback answers
            m.setattr(sparsify, "_bracket_of", lambda sample, k, d: (np.float32(1e9), np.float32(2e9)))
            assert kth_smallest_magnitude(parts, d // 3) == expected[d // 3 - 1]
        assert all(np.array_equal(x, x0) for x, x0 in zip(xs, [p.x for p in parts]))  # inputs untouched


def test_packed_dare_masks_drawn_in_chunks_are_the_documented_masks():
    """The streamed DARE path draws each mask once, chunk by chunk, as packed bits: the same mask as one
    whole draw from default_rng([seed, i, crc32(key)])."""
    import zlib

    from ppmerge.merge.sparsify import random_keep_packed

    for shape, chunk in (((37, 11), 64), ((1000,), 8), ((3, 5, 7), 1 << 20), ((9,), 16)):
        rng = np.random.default_rng([4, 2, zlib.crc32(b"w.key")])
        whole = rng.random(shape, dtype=np.float32) >= 0.3
        packed = random_keep_packed(shape, 0.3, 4, 2, "w.key", chunk=chunk)
        np.testing.assert_array_equal(np.unpackbits(packed, count=whole.size).astype(bool), whole.reshape(-1))


def test_outlier_masks_equal_a_stable_sort_also_with_heavy_ties():
    """Model Breadcrumbs' mask (O(d) selection) against positions [bottom, d − top) of a stable argsort."""
    from ppmerge.merge.sparsify import outliers_keep

    rng = np.random.default_rng(12)
    for values in (np.abs(rng.normal(size=(40, 25))).astype(np.float32),
                   rng.integers(0, 4, size=(40, 25)).astype(np.float32), np.zeros((7,), np.float32)):
        d = values.size
        for density, gamma in ((0.9, 0.01), (0.5, 0.1), (0.3, 0.5), (0.99, 0.05), (0.2, 0.0)):
            target, top = int(density * d), int(gamma * d)
            bottom = d - target - top
            if bottom < 0:
                top, bottom = top + bottom, 0
            expected = np.zeros(d, bool)
            expected[np.argsort(values.ravel(), kind="stable")[bottom:d - top]] = True
            got = outliers_keep(values, density, gamma)
            np.testing.assert_array_equal(got.ravel(), expected)
            assert got.sum() == target
