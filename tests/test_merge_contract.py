"""The execution layer's contract: for every method declared by a plan, what the executor runs (fused
kernels, streamed or in memory, one thread or several) equals the method's plain reference form
(ppmerge.merge.executor.reference_form) on random pools: within 2 ulp of the entry's scale (the largest
|value| among θ₀, the θ_i and the result there) where the operations differ, bit for bit where they are
the same (streamed vs in memory, inputs left alone vs consumed)."""
import copy

import numpy as np
import pytest

from ppmerge.merge import METHODS
from ppmerge.merge.executor import reference_form

SHAPES = {"emb": (33, 20), "bias": (17,), "attn": (3, 4, 8), "pair": (2,)}

# Parameters per case: defaults, and the options that pick other paths (per-model lists, data-free and
# τ-dependent sparsifiers, the mergekit-exact TIES options, every merge_func and scope).
CASES = [
    ("simple_average", {}), ("simple_average", {"sparsify": {"name": "dare", "ratio": 0.4, "seed": 2}}),
    ("weighted_average", {"weights": [0.5, 1.0, 2.0, 0.25]}),
    ("weighted_average", {"weights": [1.0, 2.0, 3.0, 4.0], "normalize": False, "sparsify": "magnitude"}, 10),
    ("task_arithmetic", {}), ("task_arithmetic", {"scaling_factor": [0.1, 0.7, -0.2, 1.0]}),
    ("task_arithmetic", {"sparsify": {"name": "nm", "n": 1, "m": 4}}),
    ("dare_task_arithmetic", {"sparsity_ratio": 0.3, "seed": 5}),
    ("dare_simple_average", {"sparsity_ratio": 0.6}),
    ("cabs", {"n": 1, "m": 4}), ("cabs", {"mask_method": "magnitude", "scaling_factor": [0.5, 0.4, 0.3, 0.2]}),
    ("ties_merging", {}), ("ties_merging", {"merge_func": "mean", "topk_scope": "tensor"}),
    ("ties_merging", {"merge_func": "max", "threshold": 50}),
    ("ties_merging", {"sparsify": {"name": "dare", "ratio": 0.3}}),
    ("ties_merging", {"sparsify": {"name": "magnitude", "ratio": 0.5}, "topk_scope": "tensor"}),
    ("ties_merging", {"topk_scope": "tensor", "topk_rule": "count", "zero_sign": "positive", "merge_func": "mean",
                      "scaling_factor": 1.0, "weights": [0.5, 1.0, 0.3, 0.8]}),
    ("dare_ties_merging", {"topk_scope": "tensor", "merge_func": "mean"}),
    ("dare_ties_merging", {"threshold": 100, "zero_sign": "positive", "scaling_factor": 1.0, "weights": 0.7}),
    ("breadcrumbs", {"weights": [0.3, 0.5, 0.2, 0.4], "density": 0.8, "gamma": 0.05}),
    ("breadcrumbs_ties", {"density": 0.8, "gamma": 0.05}),
    ("della", {"density": 0.6, "epsilon": 0.2, "scaling_factor": 0.8}), ("della_linear", {"weights": 0.4}),
    ("slerp", {"t": 0.3}), ("multislerp", {}), ("karcher", {}), ("model_stock", {}),
]


def make_pool(seed, n=4, dtype=np.float32):
    rng = np.random.default_rng(seed)
    base = {k: rng.normal(size=s).astype(dtype) for k, s in SHAPES.items()}
    models = [{k: np.asarray(v + 0.1 * rng.normal(size=v.shape), dtype=dtype) for k, v in base.items()} for _ in range(n)]
    return base, models


class Sized:
    def __init__(self, items):
        self.items = items

    def __len__(self):
        return len(self.items)

    def __iter__(self):
        return iter(self.items)


def assert_within_ulp(got, expected, base, models, ulps=2):
    for key in expected:
        assert got[key].dtype == base[key].dtype and got[key].shape == base[key].shape, key
        scale = np.max(np.abs(np.stack([base[key], expected[key], *[m[key] for m in models]])), axis=0)
        tolerance = ulps * np.spacing(scale.astype(base[key].dtype))
        error = np.abs(got[key].astype(np.float64) - expected[key].astype(np.float64))
        assert np.all(error <= tolerance), (key, float(np.max(error / tolerance)))


def test_every_plan_method_has_a_case():
    planned = {name for name, method in METHODS.items() if method.plan is not None}
    assert planned == {case[0] for case in CASES}


@pytest.mark.parametrize("name,params,gain", [(c + (1,))[:3] for c in CASES],
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_executor_equals_reference_form(name, params, gain):
    """gain: how much larger than its inputs a result's terms can be (Σ|w| = 10 unnormalised: ×10)."""
    method = METHODS[name]
    n = 2 if name == "slerp" else 4
    for seed in (0, 1):
        base, models = make_pool(seed, n)
        got = method(base, models, **params)
        assert_within_ulp(got, reference_form(method, base, models, **params), base, models, 2 * gain)
        resolved = method.resolve(params)
        if method.can_stream(resolved):  # streamed: the same kernels, bit for bit, inputs kept or consumed
            for consume in (False, True):
                b, ms = copy.deepcopy(base), copy.deepcopy(models)
                streamed = method.stream(b, Sized(ms), consume=consume, **resolved)
                for key in got:
                    np.testing.assert_array_equal(streamed[key], got[key], err_msg=key)


@pytest.mark.parametrize("name", ["task_arithmetic", "dare_task_arithmetic", "ties_merging", "dare_ties_merging"])
def test_kernels_give_the_same_bits_on_one_thread_and_several(name, monkeypatch):
    from ppmerge.merge import executor_linear

    base, models = make_pool(3)
    results = []
    for threads in (1, 3):
        monkeypatch.setattr(executor_linear, "THREADS", threads)
        results.append(METHODS[name](base, models))
    for key in base:
        np.testing.assert_array_equal(results[0][key], results[1][key], err_msg=key)


def test_fp16_pool_keeps_its_dtype_through_every_form():
    base, models = make_pool(4, dtype=np.float16)
    for name, params, *_ in CASES:
        got = METHODS[name](base, models[:2] if name == "slerp" else models, **params)
        assert all(got[k].dtype == np.float16 for k in base), name
