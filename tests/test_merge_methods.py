"""Data-free merge methods against plain-numpy formulas written here (not the package's helpers)."""
import copy
from collections.abc import Mapping

import numpy as np
import pytest

from ppmerge.errors import ConfigError
from ppmerge.merge import METHODS, get_method

SHAPES = {"emb": (6, 12), "bias": (10,), "attn": (3, 4, 8), "odd": (5, 9)}
N_MODELS = 4


def make_pool(seed=0, integer=False, n=N_MODELS):
    """A base and n fine-tuned state dicts; integer task vectors create exact ties and sign cancellations."""
    rng = np.random.default_rng(seed)
    base = {k: rng.normal(size=s).astype(np.float32) for k, s in SHAPES.items()}
    if integer:  # quarters: θ_i − θ₀ is exact in float32 as in float64
        base = {k: (rng.integers(-8, 8, size=s) / 4).astype(np.float32) for k, s in SHAPES.items()}
    models = []
    for _ in range(n):
        if integer:
            delta = {k: rng.integers(-3, 4, size=s).astype(np.float32) for k, s in SHAPES.items()}
        else:
            delta = {k: rng.normal(size=s).astype(np.float32) for k, s in SHAPES.items()}
        models.append({k: base[k] + delta[k] for k in SHAPES})
    return base, models


def taus(base, models):
    return [{k: m[k].astype(np.float64) - base[k] for k in base} for m in models]


def assert_close(merged, expected, atol=1e-5):
    assert set(merged) == set(expected)
    for k in expected:
        assert merged[k].dtype == np.float32
        np.testing.assert_allclose(merged[k], expected[k], atol=atol, rtol=1e-5, err_msg=k)


# --- linear methods --------------------------------------------------------------------------------

def test_simple_average_is_mean_of_models():
    base, models = make_pool()
    expected = {k: np.mean([m[k] for m in models], axis=0) for k in base}
    assert_close(METHODS["simple_average"](base, models), expected)


@pytest.mark.parametrize("normalize", [True, False])
def test_weighted_average(normalize):
    base, models = make_pool()
    w = np.array([0.5, 1.0, 2.0, 0.25])
    c = w / w.sum() if normalize else w
    expected = {k: sum(ci * m[k] for ci, m in zip(c, models)) for k in base}
    assert_close(METHODS["weighted_average"](base, models, weights=w.tolist(), normalize=normalize), expected)


@pytest.mark.parametrize("scaling", [0.3, [0.1, 0.7, -0.2, 1.0]])
def test_task_arithmetic(scaling):
    base, models = make_pool()
    lam = scaling if isinstance(scaling, list) else [scaling] * N_MODELS
    expected = {k: base[k] + sum(l * t[k] for l, t in zip(lam, taus(base, models))) for k in base}
    assert_close(METHODS["task_arithmetic"](base, models, scaling_factor=scaling), expected)


# --- TIES: FusionBench's flattened formulation in numpy --------------------------------------------

def ties_reference(base, models, threshold, merge_func, lam, scope):
    keys = list(base)
    tv = taus(base, models)

    def merge_flat(flat):  # flat: [n, d] task vectors, FusionBench ties_merging on rows
        n, d = flat.shape
        kept = np.zeros_like(flat)
        k = d - int(d * threshold / 100)
        for i in range(n):
            kth = np.sort(np.abs(flat[i]))[k - 1]  # k-th smallest magnitude
            kept[i] = np.where(np.abs(flat[i]) >= kth, flat[i], 0.0)
        sign = np.sign(kept.sum(axis=0))
        sign[sign == 0] = np.sign(sign.sum())
        agree = np.where(sign > 0, kept > 0, kept < 0)
        sel = kept * agree
        if merge_func == "sum":
            return sel.sum(axis=0)
        if merge_func == "mean":
            return sel.sum(axis=0) / np.maximum((sel != 0).sum(axis=0), 1)
        return np.abs(sel).max(axis=0) * sign

    if scope == "global":
        flat = np.stack([np.concatenate([t[k].ravel() for k in keys]) for t in tv])
        merged_flat, out, at = merge_flat(flat), {}, 0
        for k in keys:
            size = base[k].size
            out[k] = base[k] + lam * merged_flat[at:at + size].reshape(base[k].shape)
            at += size
        return out
    return {k: base[k] + lam * merge_flat(np.stack([t[k].ravel() for t in tv])).reshape(base[k].shape)
            for k in keys}


@pytest.mark.parametrize("scope", ["global", "tensor"])
@pytest.mark.parametrize("merge_func", ["sum", "mean", "max"])
def test_ties_merging_matches_fusionbench_formula(scope, merge_func):
    for integer in (False, True):  # integer task vectors: ties at the threshold and exact sign cancellations
        base, models = make_pool(seed=1, integer=integer)
        got = METHODS["ties_merging"](base, models, threshold=30, merge_func=merge_func, scaling_factor=0.4,
                                      topk_scope=scope)
        assert_close(got, ties_reference(base, models, 30, merge_func, 0.4, scope))


def test_ties_scopes_differ_and_full_threshold_sum_is_sign_filtered_sum():
    base, models = make_pool(seed=2)
    g = METHODS["ties_merging"](base, models, threshold=20, topk_scope="global")
    t = METHODS["ties_merging"](base, models, threshold=20, topk_scope="tensor")
    assert any(not np.allclose(g[k], t[k]) for k in base)
    # threshold 100 keeps everything: sum of the entries that agree with sign(Σ τ)
    full = METHODS["ties_merging"](base, models, threshold=100, scaling_factor=1.0)
    for k in base:
        stacked = np.stack([t[k] for t in taus(base, models)])
        sign = np.sign(stacked.sum(0))
        np.testing.assert_allclose(full[k], base[k] + (stacked * (np.sign(stacked) == sign)).sum(0), atol=1e-5)


# --- DARE ------------------------------------------------------------------------------------------

def dare_reference_mask(shape, p, seed, i, key):
    """The documented draw: numpy default_rng([seed, model index, crc32(key)]).random(shape, float32) >= p."""
    import zlib

    return np.random.default_rng([seed, i, zlib.crc32(key.encode())]).random(shape, dtype=np.float32) >= p


def test_dare_task_arithmetic_matches_documented_masks():
    base, models = make_pool(seed=3)
    p, lam, seed = 0.4, 0.5, 7
    tv = taus(base, models)
    expected = {k: base[k] + lam * sum(t[k] * dare_reference_mask(base[k].shape, p, seed, i, k) / (1 - p)
                                       for i, t in enumerate(tv)) for k in base}
    got = METHODS["dare_task_arithmetic"](base, models, scaling_factor=lam, sparsity_ratio=p, seed=seed)
    assert_close(got, expected)
    # the masks do not depend on the order the tensors are visited in
    reordered = {k: base[k] for k in reversed(list(base))}
    again = METHODS["dare_task_arithmetic"](reordered, models, scaling_factor=lam, sparsity_ratio=p, seed=seed)
    assert_close(again, expected)


def test_dare_simple_average_and_ties():
    base, models = make_pool(seed=4)
    p, seed = 0.3, 1
    tv = taus(base, models)
    dropped = [{k: t[k] * dare_reference_mask(base[k].shape, p, seed, i, k) / (1 - p) for k in base}
               for i, t in enumerate(tv)]
    expected = {k: base[k] + np.mean([d[k] for d in dropped], axis=0) for k in base}
    assert_close(METHODS["dare_simple_average"](base, models, sparsity_ratio=p, seed=seed), expected)
    # dare_ties = TIES on the DARE'd models
    dared_models = [{k: base[k] + d[k] for k in base} for d in dropped]
    for scope in ("global", "tensor"):
        got = METHODS["dare_ties_merging"](base, models, sparsity_ratio=p, seed=seed, threshold=50,
                                           merge_func="mean", topk_scope=scope)
        assert_close(got, ties_reference(base, dared_models, 50, "mean", 0.3, scope), atol=1e-4)


# --- CABS ------------------------------------------------------------------------------------------

def nm_reference(x, n, m):
    """Keep the n largest |x| of every block of m along the last axis (trailing block: min(n, r))."""
    rows = x.reshape(-1, x.shape[-1])
    keep = np.zeros(rows.shape, dtype=bool)
    for r in range(rows.shape[0]):
        for start in range(0, rows.shape[1], m):
            block = np.abs(rows[r, start:start + m])
            top = np.argsort(-block, kind="stable")[:n]
            keep[r, start + top] = True
    return keep.reshape(x.shape) & (x != 0)


def test_cabs_matches_sequential_nm_reference():
    base, models = make_pool(seed=5, n=3)
    tv = taus(base, models)
    lam, order = [0.7, 1.2, 0.4], [2, 0, 1]
    expected = {}
    for k in base:
        taken = np.zeros(base[k].shape, dtype=bool)
        merged = base[k].astype(np.float64)
        for i in order:
            residual = np.where(taken, 0.0, tv[i][k])
            keep = nm_reference(residual, 2, 6) & ~taken
            merged = merged + lam[i] * tv[i][k] * keep
            taken |= keep
        expected[k] = merged
    assert_close(METHODS["cabs"](base, models, scaling_factor=lam, n=2, m=6, order=order), expected)


def test_cabs_two_models_magnitude_is_ca_magnitude_then_task_arithmetic():
    base, models = make_pool(seed=6, n=2)
    tv = taus(base, models)
    expected = {}
    for k in base:
        a, b = tv[0][k], tv[1][k]
        d = a.size
        kth = np.sort(np.abs(a).ravel())[d - int(d * 0.5) - 1]
        keep_a = np.abs(a) >= kth
        b_res = b * ~keep_a
        kth_b = np.sort(np.abs(b_res).ravel())[d - int(d * 0.5) - 1]
        keep_b = (np.abs(b_res) >= kth_b) & ~keep_a & (b_res != 0)
        expected[k] = base[k] + 0.6 * a * keep_a + 0.9 * b * keep_b
    got = METHODS["cabs"](base, models, scaling_factor=[0.6, 0.9], mask_method="magnitude", sparsity_ratio=0.5)
    assert_close(got, expected)


# --- streaming, input types, validation ------------------------------------------------------------

STREAMING = [("simple_average", {}), ("weighted_average", {"weights": [1.0, 2.0, 3.0, 4.0]}),
             ("task_arithmetic", {"scaling_factor": [0.2, 0.4, 0.1, 0.3]}),
             ("task_arithmetic", {"sparsify": {"name": "dare", "ratio": 0.5, "seed": 3}}),
             ("dare_task_arithmetic", {"sparsity_ratio": 0.3, "seed": 2}),
             ("dare_simple_average", {"sparsity_ratio": 0.6})]


@pytest.mark.parametrize("name,params", STREAMING)
def test_stream_equals_in_memory(name, params):
    base, models = make_pool(seed=7)
    method = METHODS[name]
    resolved = method.resolve(params)
    assert method.can_stream(resolved)
    expected = method.fn(base, models, **resolved)
    for consume in (False, True):
        b, ms = copy.deepcopy(base), copy.deepcopy(models)
        got = method.stream(b, iter_sized(ms), consume=consume, **resolved)
        assert_close(got, expected)
        if consume:  # accumulated in the base's buffers, models emptied
            assert all(got[k] is b[k] for k in base) and all(not m for m in ms)
        else:
            assert all(np.array_equal(b[k], base[k]) for k in base) and all(len(m) == len(SHAPES) for m in ms)


class iter_sized:
    """A sized, single-pass iterable, like the runner's lazy model pool."""

    def __init__(self, items):
        self.items = items

    def __len__(self):
        return len(self.items)

    def __iter__(self):
        return iter(self.items)


def test_which_methods_stream():
    """TIES and DARE-TIES stream on CPU (every aggregate is a sum / max over the models); masks that look
    at τ (magnitude, conflict-aware, CABS) and data-dependent methods need whole models."""
    for name in ("ties_merging", "dare_ties_merging"):
        method = METHODS[name]
        for scope in ("global", "tensor"):
            assert method.can_stream(method.resolve({"topk_scope": scope})), name
    ties = METHODS["ties_merging"]
    assert ties.can_stream(ties.resolve({"sparsify": {"name": "dare", "ratio": 0.3}}))
    assert not ties.can_stream(ties.resolve({"sparsify": {"name": "magnitude"}}))
    assert not ties.can_stream(ties.resolve({"sparsify": {"name": "nm"}}))
    assert not ties.can_stream(ties.resolve({"sparsify": {"name": "dare", "conflict_aware": True}}))
    assert not METHODS["cabs"].can_stream(METHODS["cabs"].resolve({}))
    for name in ("fisher_merging", "regmean", "simple_ensemble"):
        assert METHODS[name].data_dependent and not METHODS[name].can_stream(METHODS[name].resolve({}))
    ta = METHODS["task_arithmetic"]
    assert not ta.can_stream(ta.resolve({"sparsify": {"name": "magnitude"}}))
    assert not ta.can_stream(ta.resolve({"sparsify": {"name": "dare", "conflict_aware": True}}))


def test_ties_does_not_stream_off_the_cpu(monkeypatch):
    """On other devices the paddle path runs on the whole pool (the streamed form is numpy only)."""
    from ppmerge.merge import executor

    monkeypatch.setattr(executor, "on_host", lambda: False)
    for name in ("ties_merging", "dare_ties_merging"):
        assert not METHODS[name].can_stream(METHODS[name].resolve({}))


class CountingModel(Mapping):
    """A model whose `[key]` is counted (the runner's streamed models re-read the file on each access)."""

    def __init__(self, state_dict):
        self.data, self.reads = dict(state_dict), {}

    def __getitem__(self, key):
        self.reads[key] = self.reads.get(key, 0) + 1
        return self.data[key]

    def __iter__(self):
        return iter(self.data)

    def __len__(self):
        return len(self.data)

    def pop(self, key):
        value = self[key]
        del self.data[key]
        return value

    def clear(self):
        self.data.clear()


class CountingPool(iter_sized):
    """A sized iterable that counts how often it is iterated and how many models it yields."""

    def __init__(self, items):
        super().__init__(items)
        self.passes = self.yielded = 0

    def __iter__(self):
        self.passes += 1
        for item in self.items:
            self.yielded += 1
            yield item


def stream_checked(name, base, models, consume, **params):
    """Run method.stream on counted copies; check one pass, one read per key and model, what consume
    leaves behind; return the merged dict."""
    method = METHODS[name]
    resolved = method.resolve(params)
    assert method.can_stream(resolved)
    b = copy.deepcopy(base)
    counted = [CountingModel(copy.deepcopy(m)) for m in models]
    pool = CountingPool(counted)
    got = method.stream(b, pool, consume=consume, **resolved)
    assert pool.passes == 1 and pool.yielded == len(models)
    assert all(m.reads == {k: 1 for k in base} for m in counted)
    if consume:  # the models are emptied, the base holds the merged values
        assert all(not m.data for m in counted) and all(got[k] is b[k] for k in base)
    else:
        assert all(np.array_equal(b[k], base[k]) for k in base)
        assert all(len(m.data) == len(base) and all(np.array_equal(m.data[k], o[k]) for k in o)
                   for m, o in zip(counted, models))
    return got


def assert_identical(got, expected):
    assert set(got) == set(expected)
    for k in expected:
        assert got[k].dtype == expected[k].dtype and got[k].shape == expected[k].shape
        np.testing.assert_array_equal(got[k], expected[k], err_msg=k)


def cancelled_with_kept_entries(base, models, threshold, scope):
    """How many entries have Σ τ̂ exactly 0 although some τ̂ is kept (the majority sign decides them)."""
    tv = taus(base, models)
    count = 0
    for group in ([list(base)] if scope == "global" else [[k] for k in base]):
        flat = np.stack([np.concatenate([t[k].ravel() for k in group]) for t in tv])
        d = flat.shape[1]
        kth = np.sort(np.abs(flat), axis=1)[:, d - int(d * threshold / 100) - 1:][:, :1]
        kept = np.where(np.abs(flat) >= kth, flat, 0.0)
        count += int(((kept.sum(0) == 0) & (kept != 0).any(0)).sum())
    return count


@pytest.mark.parametrize("scope", ["global", "tensor"])
@pytest.mark.parametrize("merge_func", ["sum", "mean", "max"])
def test_ties_stream_equals_in_memory_and_formula(scope, merge_func):
    """One pass over the models, each key read once; bit-identical to the in-memory form and equal to
    the FusionBench formula, with ties at the threshold and exact cancellations (integer task vectors)."""
    for integer in (True, False):
        base, models = make_pool(seed=12, integer=integer, n=5)
        params = dict(threshold=40, merge_func=merge_func, scaling_factor=0.6, topk_scope=scope)
        if integer:  # the data really exercises the majority-sign rule
            assert cancelled_with_kept_entries(base, models, 40, scope) > 0
        expected = METHODS["ties_merging"](base, models, **params)
        assert_close(expected, ties_reference(base, models, 40, merge_func, 0.6, scope))
        for consume in (False, True):
            assert_identical(stream_checked("ties_merging", base, models, consume, **params), expected)


@pytest.mark.parametrize("scope", ["global", "tensor"])
def test_dare_ties_stream_equals_in_memory_and_formula(scope):
    base, models = make_pool(seed=13, integer=True)
    p, seed = 0.5, 4  # rescale × 2: exact in float32, so ties and cancellations survive
    dropped = [{k: t[k] * dare_reference_mask(base[k].shape, p, seed, i, k) / (1 - p) for k in base}
               for i, t in enumerate(taus(base, models))]
    reference = ties_reference(base, [{k: base[k] + d[k] for k in base} for d in dropped], 30, "sum", 0.5, scope)
    params = dict(sparsity_ratio=p, seed=seed, threshold=30, scaling_factor=0.5, topk_scope=scope)
    expected = METHODS["dare_ties_merging"](base, models, **params)
    assert_close(expected, reference, atol=1e-4)
    sparsify = {"name": "dare", "ratio": p, "seed": seed}  # the same through ties_merging's sparsify
    for consume in (False, True):
        assert_identical(stream_checked("dare_ties_merging", base, models, consume, **params), expected)
        assert_identical(stream_checked("ties_merging", base, models, consume, threshold=30, scaling_factor=0.5,
                                        topk_scope=scope, sparsify=sparsify), expected)


def test_ties_stream_keeps_dtypes_and_counts_the_models():
    from ppmerge.errors import UserError

    base, models = make_pool(seed=14)
    half = lambda sd: {k: v.astype(np.float16) for k, v in sd.items()}  # noqa: E731
    base16, models16 = half(base), [half(m) for m in models]
    base16["steps"] = np.arange(3, dtype=np.int64)  # non-float tensors are copied from the base
    expected = METHODS["ties_merging"](base16, [dict(m, steps=base16["steps"]) for m in models16])
    method = METHODS["ties_merging"]
    got = method.stream(dict(base16), iter_sized(models16), **method.resolve({}))
    assert got["steps"].dtype == np.int64 and got["emb"].dtype == np.float16
    assert_identical(got, expected)
    with pytest.raises(UserError, match="expected 4 models but the pool yielded 3"):
        method.stream(base, _short(models[:3]), **method.resolve({}))


class _short(iter_sized):
    """Claims one model more than it yields."""

    def __len__(self):
        return len(self.items) + 1


@pytest.mark.parametrize("name", ["simple_average", "task_arithmetic", "ties_merging", "dare_ties_merging", "cabs"])
def test_paddle_tensor_inputs_give_numpy_result(name):
    import paddle

    base, models = make_pool(seed=8)
    params = {"n": 1, "m": 4} if name == "cabs" else {}  # 4 models: disjoint 1:4 masks
    expected = METHODS[name](base, models, **params)
    as_tensors = lambda sd: {k: paddle.to_tensor(v) for k, v in sd.items()}  # noqa: E731
    got = METHODS[name](as_tensors(base), [as_tensors(m) for m in models], **params)
    assert all(isinstance(v, np.ndarray) for v in got.values())
    assert_close(got, expected, atol=0)


def test_float16_inputs_keep_their_dtype():
    base, models = make_pool(seed=9)
    half = lambda sd: {k: v.astype(np.float16) for k, v in sd.items()}  # noqa: E731
    got = METHODS["task_arithmetic"](half(base), [half(m) for m in models])
    assert all(v.dtype == np.float16 for v in got.values())


def test_parameter_validation():
    ties = get_method("ties_merging")
    with pytest.raises(ConfigError, match=r"Merge\.treshold: unknown parameter.*did you mean Merge\.threshold"):
        ties.resolve({"treshold": 20})
    with pytest.raises(ConfigError, match=r"Merge\.scaling_factor: expected float"):
        ties.resolve({"scaling_factor": "big"})
    with pytest.raises(ConfigError, match=r"Merge\.merge_func: expected one of sum, mean, max"):
        ties.resolve({"merge_func": "median"})
    with pytest.raises(ConfigError, match=r"Merge\.threshold: expected a percentage"):
        ties.resolve({"threshold": 120})
    with pytest.raises(ConfigError, match=r"Merge\.normalize: expected bool"):
        get_method("weighted_average").resolve({"normalize": 1})
    with pytest.raises(ConfigError, match=r"Merge\.sparsify\.ration: unknown sparsify key; did you mean Merge\.sparsify\.ratio"):
        get_method("task_arithmetic").resolve({"sparsify": {"name": "magnitude", "ration": 0.5}})
    with pytest.raises(ConfigError, match=r"Merge\.method: unknown merge method 'ties_mergin'; did you mean 'ties_merging'"):
        get_method("ties_mergin")
    assert ties.resolve({"threshold": 10}) == {"threshold": 10, "merge_func": "sum", "scaling_factor": 0.3,
                                               "topk_scope": "global", "sparsify": None, "weights": None,
                                               "topk_rule": "ge_kth", "zero_sign": "majority"}
    base, models = make_pool(n=3)
    with pytest.raises(ConfigError, match=r"Merge\.scaling_factor: expected one factor per model \(3\)"):
        METHODS["task_arithmetic"](base, models, scaling_factor=[0.1, 0.2])


@pytest.mark.parametrize("scope", ["global", "tensor"])
def test_ties_cpu_slices_and_chunks_match_formula_and_paddle_path(scope, monkeypatch):
    """The numpy CPU path cut into small row slices and chunks (and the sampled threshold selection,
    d > 65536) against the FusionBench formula and against the paddle path used on other devices."""
    from ppmerge.merge import executor as ties, executor_ties, sparsify

    monkeypatch.setattr(sparsify, "CHUNK", 512)
    monkeypatch.setattr(executor_ties, "CHUNK", 512)
    shapes = {"emb": (700, 100), "w": (33, 45), "b": (7,)}
    rng = np.random.default_rng(11)
    base = {k: (rng.integers(-8, 8, size=s) / 4).astype(np.float32) for k, s in shapes.items()}
    models = [{k: base[k] + rng.integers(-3, 4, size=s).astype(np.float32) for k, s in shapes.items()}
              for _ in range(4)]
    for merge_func in ("sum", "mean", "max"):
        params = dict(threshold=30, merge_func=merge_func, scaling_factor=0.7, topk_scope=scope)
        got = METHODS["ties_merging"](base, models, **params)
        assert_close(got, ties_reference(base, models, 30, merge_func, 0.7, scope))
        assert_identical(stream_checked("ties_merging", base, models, merge_func == "mean", **params), got)
        with monkeypatch.context() as m:
            m.setattr(ties, "on_host", lambda: False)
            on_device = METHODS["ties_merging"](base, models, **params)
        assert_close(got, on_device, atol=1e-6)
    magnitude = dict(threshold=50, topk_scope=scope, sparsify={"name": "magnitude", "ratio": 0.4})  # paddle masks
    got = METHODS["ties_merging"](base, models, **magnitude)
    with monkeypatch.context() as m:
        m.setattr(ties, "on_host", lambda: False)
        assert_close(got, METHODS["ties_merging"](base, models, **magnitude), atol=1e-6)
    dare = dict(threshold=40, merge_func="mean", topk_scope=scope, sparsity_ratio=0.3, seed=5)
    got = METHODS["dare_ties_merging"](base, models, **dare)
    assert_identical(stream_checked("dare_ties_merging", base, models, True, **dare), got)
    with monkeypatch.context() as m:
        m.setattr(ties, "on_host", lambda: False)
        assert_close(got, METHODS["dare_ties_merging"](base, models, **dare), atol=1e-6)
