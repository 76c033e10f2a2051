"""The fused streamed merge: each fine-tuned tensor is read from its file block by block into a small
scratch buffer and added to the accumulator right away. It must give exactly (bit for bit) what the
whole-tensor path and a plain numpy formula give, for every dtype and layout, never materialise a
tensor, and still name a NaN / Inf (model and key) wherever it sits."""
import tracemalloc

import numpy as np
import pytest

from ppmerge.errors import CheckpointError

TASKS = ["SST2", "MNLI", "RTE"]
# Odd sizes (no block size divides them), 1-D tensors above and below the lazy reader's 64 KiB
# threshold (small ones live inside pickle frames and take the whole-read fallback).
SHAPES = {"gpt.embeddings.word_embeddings.weight": (4001, 67), "gpt.decoder.norm.weight": (37,),
          "gpt.decoder.layers.0.linear1.weight": (67, 403), "gpt.decoder.layers.0.linear1.bias": (20011,),
          "gpt.decoder.layers.0.linear2.weight": (403, 67)}
FORTRAN = "gpt.decoder.layers.0.linear2.weight"
SCRATCH = 3001  # bytes: blocks that straddle rows and elements of every size


def _write_pool(folder, dtype=np.float32, nan_at=None):
    """base (float32) + models of `dtype` ("bf16": uint16 bits); linear2 stored in Fortran order."""
    from ppmerge.models.checkpoint import save_state_dict, to_float32

    rng = np.random.default_rng(0)
    base = {k: rng.standard_normal(s, dtype=np.float32) for k, s in SHAPES.items()}
    base[FORTRAN] = np.asfortranarray(base[FORTRAN])
    paths = {"base": str(folder / "base.pdparams")}
    save_state_dict(base, paths["base"])
    models = {}
    for task in TASKS:
        sd = {}
        for key, value in base.items():
            noisy = value + rng.standard_normal(value.shape, dtype=np.float32)
            if dtype == "bf16":
                noisy = (noisy.view(np.uint32) >> 16).astype(np.uint16)
            else:
                noisy = noisy.astype(dtype)
            sd[key] = np.asfortranarray(noisy) if key == FORTRAN else noisy
        if nan_at and nan_at[0] == task:
            _, key, where, bad = nan_at
            sd[key].reshape(-1, order="A")[where] = bad  # a view for C and Fortran order alike
        sd["score.weight"] = rng.standard_normal((67, 2), dtype=np.float32)
        paths[task] = str(folder / f"{task}.pdparams")
        save_state_dict(sd, paths[task])
        models[task] = {k: to_float32(v) if k != "score.weight" else v for k, v in sd.items()}
    return paths, base, models


def _pool(paths):
    from ppmerge.merge.model_pool import ModelPool

    return ModelPool(paths["base"], {t: paths[t] for t in TASKS})


@pytest.fixture
def small_scratch(monkeypatch):
    from ppmerge.merge import executor_linear as streaming

    monkeypatch.setattr(streaming, "SCRATCH_BYTES", SCRATCH)


def _merge(method, paths, fused, **params):
    """The method streamed over the pool: fused (StreamedBackbone: block reads) or whole-tensor (dicts)."""
    from ppmerge.merge import METHODS
    from ppmerge.merge.model_pool import StreamedBackbone

    pool = _pool(paths)
    if fused:
        models = pool.sized_stream()
        assert all(isinstance(b, StreamedBackbone) for _, b in pool.stream())
    else:
        models = [dict(pool.load(t)) for t in TASKS]
    return METHODS[method].stream(pool.base, models, consume=True, **params)


def _numpy_linear(base, models, base_coef, coefs):
    """The streaming formula in plain numpy, in its order of float32 operations: equal coefficients c
    accumulate (c0/c)·θ0 + Σ θ_i, then × c; otherwise c0·θ0 + Σ c_i·θ_i."""
    f32 = np.float32
    out = {}
    for key, value in base.items():
        if len(set(coefs)) == 1:
            acc = value * f32(base_coef / coefs[0])
            for m in models:
                acc = acc + m[key]
            acc = acc * f32(coefs[0])
        else:
            acc = value * f32(base_coef)
            for m, c in zip(models, coefs):
                acc = acc + m[key] * f32(c)
        out[key] = acc
    return out


@pytest.mark.parametrize("dtype,threads", [(np.float32, 1), (np.float32, 3), (np.float16, None), ("bf16", None)])
def test_fused_merges_equal_numpy_formula_exactly(tmp_path, small_scratch, monkeypatch, dtype, threads):
    from ppmerge.merge import executor_linear as streaming

    monkeypatch.setattr(streaming, "THREADS", threads)
    paths, base, models = _write_pool(tmp_path, dtype)
    ordered = [models[t] for t in TASKS]
    cases = [("simple_average", {}, 0.0, [1 / 3] * 3),
             ("task_arithmetic", {"scaling_factor": 0.3}, 1 - 0.9, [0.3] * 3),
             ("task_arithmetic", {"scaling_factor": [0.3, 0.5, -0.2]}, 1 - 0.6, [0.3, 0.5, -0.2]),
             ("weighted_average", {"weights": [1.0, 2.0, 3.0]}, 0.0, [1 / 6, 2 / 6, 3 / 6])]
    for method, params, base_coef, coefs in cases:
        fused = _merge(method, paths, True, **params)
        whole = _merge(method, paths, False, **params)
        expected = _numpy_linear(base, ordered, base_coef, coefs)
        for key in base:
            np.testing.assert_array_equal(fused[key], whole[key], err_msg=f"{method} {key}")
            np.testing.assert_array_equal(fused[key], expected[key], err_msg=f"{method} {key}")
            assert fused[key].dtype == np.float32 and fused[key].shape == base[key].shape
        textbook = {k: v * base_coef + sum(c * m[k] for m, c in zip(ordered, coefs)) for k, v in base.items()}
        for key in base:  # and the formula as written in the papers, to float32 rounding
            np.testing.assert_allclose(fused[key], textbook[key], rtol=1e-5, atol=1e-5, err_msg=key)


def test_fused_dare_equals_whole_tensor_path(tmp_path, small_scratch):
    """Per-entry coefficients (DARE masks × rescale): the same bits by either path, near the formula."""
    from ppmerge.merge.sparsify import random_keep

    paths, base, models = _write_pool(tmp_path)
    params = {"scaling_factor": 0.3, "sparsity_ratio": 0.5, "rescale": True, "seed": 7}
    fused = _merge("dare_task_arithmetic", paths, True, **params)
    whole = _merge("dare_task_arithmetic", paths, False, **params)
    for key, value in base.items():
        np.testing.assert_array_equal(fused[key], whole[key], err_msg=key)
        masks = [random_keep(value.shape, 0.5, 7, i, key) for i in range(len(TASKS))]
        expected = value + 0.3 * sum(m * 2.0 * (models[t][key] - value) for m, t in zip(masks, TASKS))
        np.testing.assert_allclose(fused[key], expected, rtol=1e-4, atol=1e-4, err_msg=key)


def test_fused_merge_reads_blocks_never_whole_tensors(tmp_path, small_scratch, monkeypatch):
    """Big tensors are never materialised (a whole read would fail here), and the merge's peak is the
    scratch buffers, far below one tensor."""
    from ppmerge.merge import METHODS
    from ppmerge.models.safe_pickle import LazyPickle

    paths, base, models = _write_pool(tmp_path)
    pool = _pool(paths)
    pool.base
    METHODS["task_arithmetic"].stream({"w": np.ones(4, np.float32)}, [{"w": np.ones(4, np.float32)}])  # warm-up

    def refuse(self, lazy):
        raise AssertionError("a whole tensor was read")

    monkeypatch.setattr(LazyPickle, "read", refuse)
    tracemalloc.start()
    try:
        start = tracemalloc.get_traced_memory()[0]
        merged = METHODS["task_arithmetic"].stream(pool.base, pool.sized_stream(), consume=True, scaling_factor=0.3)
        peak = tracemalloc.get_traced_memory()[1] - start
    finally:
        tracemalloc.stop()
    largest = max(v.nbytes for v in base.values())
    assert peak < 0.25 * largest, (peak, largest)
    expected = _numpy_linear(base, [models[t] for t in TASKS], 1 - 0.9, [0.3] * 3)
    for key in base:
        np.testing.assert_array_equal(merged[key], expected[key], err_msg=key)


@pytest.mark.parametrize("nan_at", [("RTE", "gpt.decoder.layers.0.linear1.weight", -1, np.nan),
                                    ("MNLI", "gpt.decoder.layers.0.linear1.bias", -1, -np.inf),
                                    ("SST2", FORTRAN, 0, np.inf),
                                    ("RTE", "gpt.decoder.norm.weight", 36, np.nan)])
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_fused_merge_names_nan_inf_in_any_block(tmp_path, small_scratch, nan_at, dtype):
    """A bad value in the last block of the last model (or the first block, or a small in-frame tensor)
    is found and named, model and key."""
    from ppmerge.merge import METHODS

    paths, _, _ = _write_pool(tmp_path, dtype, nan_at=nan_at)
    task, key, _, bad = nan_at
    kind = "NaN" if np.isnan(bad) else "Inf"
    pool = _pool(paths)
    with pytest.raises(CheckpointError, match=f"model {task} .*{task}.pdparams.*'{key}' contains {kind}"):
        METHODS["simple_average"].stream(pool.base, pool.sized_stream(), consume=True)


def test_finite_sum_overflow_is_not_a_false_alarm(tmp_path, small_scratch):
    """Large finite values whose block sum overflows float32 are checked exactly, not refused."""
    from ppmerge.merge import METHODS

    paths, base, models = _write_pool(tmp_path, nan_at=("MNLI", "gpt.decoder.layers.0.linear1.bias", slice(0, 400), 3e38))
    pool = _pool(paths)
    merged = METHODS["simple_average"].stream(pool.base, pool.sized_stream(), consume=True)
    expected = _numpy_linear(base, [models[t] for t in TASKS], 0.0, [1 / 3] * 3)
    np.testing.assert_array_equal(merged["gpt.decoder.layers.0.linear1.bias"], expected["gpt.decoder.layers.0.linear1.bias"])


@pytest.mark.parametrize("threads", [1, 2, 4])
def test_first_bad_key_in_key_order_is_named_whatever_the_threads(tmp_path, small_scratch, monkeypatch, threads):
    """Two bad tensors in one model: the one a sequential loop meets first is named, even though the
    workers take the (larger) later one first."""
    from ppmerge.merge import METHODS, executor_linear as streaming

    monkeypatch.setattr(streaming, "THREADS", threads)
    paths, _, _ = _write_pool(tmp_path, nan_at=("MNLI", "gpt.decoder.layers.0.linear1.bias", -1, np.nan))
    from ppmerge.models.checkpoint import load_numpy_state_dict, save_state_dict

    sd = load_numpy_state_dict(paths["MNLI"])
    sd[FORTRAN][-1, -1] = np.inf  # larger than linear1.bias and later in key order: handed out before it
    save_state_dict(sd, paths["MNLI"])
    keys = list(SHAPES)
    assert keys.index("gpt.decoder.layers.0.linear1.bias") < keys.index(FORTRAN)
    assert np.prod(SHAPES[FORTRAN]) > np.prod(SHAPES["gpt.decoder.layers.0.linear1.bias"])
    pool = _pool(paths)
    with pytest.raises(CheckpointError, match="model MNLI .*'gpt.decoder.layers.0.linear1.bias' contains NaN"):
        METHODS["simple_average"].stream(pool.base, pool.sized_stream(), consume=True)
