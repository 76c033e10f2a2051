"""Per-layer gradients and per-module filters of method parameters (mergekit's forms), against plain
per-key formulas written here."""
import copy

import numpy as np
import pytest

from ppmerge.errors import ConfigError
from ppmerge.merge import METHODS

KEYS = ["embed.weight", "layers.0.attn.w", "layers.0.mlp.w", "layers.1.attn.w", "layers.1.mlp.w",
        "layers.2.attn.w", "layers.2.mlp.w", "norm.weight"]
POSITION = {"embed.weight": 0.0, "norm.weight": 1.0, **{k: int(k.split(".")[1]) / 2 for k in KEYS if "layers" in k}}


def pool(seed=0, n=3):
    rng = np.random.default_rng(seed)
    base = {k: rng.normal(size=(6, 5)).astype(np.float32) for k in KEYS}
    return base, [{k: (v + 0.5 * rng.normal(size=v.shape)).astype(np.float32) for k, v in base.items()}
                  for _ in range(n)]


class Sized(list):
    pass


def test_task_arithmetic_with_filters_streamed_and_in_memory():
    base, models = pool()
    lam = [{"filter": r"\.attn\.", "value": 0.5}, {"filter": "^embed", "value": -0.2}, {"value": 0.1}]
    method = METHODS["task_arithmetic"]
    resolved = method.resolve({"scaling_factor": lam})
    assert resolved["scaling_factor"] == {"filters": [{"filter": r"\.attn\.", "value": 0.5},
                                                      {"filter": "^embed", "value": -0.2},
                                                      {"filter": None, "value": 0.1}]}
    got = method(base, models, scaling_factor=lam)
    for k in KEYS:
        value = 0.5 if ".attn." in k else -0.2 if k.startswith("embed") else 0.1
        expected = base[k] + value * sum(m[k].astype(np.float64) - base[k] for m in models)
        np.testing.assert_allclose(got[k], expected, atol=1e-5, err_msg=k)
    assert method.can_stream(resolved)
    streamed = method.stream(copy.deepcopy(base), Sized(copy.deepcopy(models)), consume=True, **resolved)
    for k in KEYS:
        np.testing.assert_array_equal(streamed[k], got[k], err_msg=k)


def test_slerp_t_gradient_over_layers():
    base, models = pool(1, n=2)
    got = METHODS["slerp"](base, models, t=[0.0, 1.0])
    for k in KEYS:
        t = POSITION[k]
        a, b = (m[k].astype(np.float64).ravel() for m in models)
        omega = np.arccos(a @ b / np.linalg.norm(a) / np.linalg.norm(b))
        expected = (np.sin((1 - t) * omega) * a + np.sin(t * omega) * b) / np.sin(omega)
        np.testing.assert_allclose(got[k].ravel(), expected, atol=1e-5, err_msg=k)
    np.testing.assert_allclose(got["embed.weight"], models[0]["embed.weight"], atol=1e-5)
    np.testing.assert_allclose(got["norm.weight"], models[1]["norm.weight"], atol=1e-5)


def test_ties_threshold_gradient_is_ties_per_key():
    base, models = pool(2, n=4)
    got = METHODS["ties_merging"](base, models, threshold={"gradient": [10.0, 90.0]}, topk_scope="tensor")
    for k in KEYS:
        threshold = 10.0 + 80.0 * POSITION[k]
        one = METHODS["ties_merging"]({k: base[k]}, [{k: m[k]} for m in models], threshold=threshold,
                                      topk_scope="tensor")
        np.testing.assert_allclose(got[k], one[k], atol=1e-6, err_msg=k)


def test_per_key_errors_are_named():
    base, models = pool()
    with pytest.raises(ConfigError, match=r"Merge\.scaling_factor: no filter matches key 'embed.weight'"):
        METHODS["task_arithmetic"](base, models, scaling_factor=[{"filter": "attn", "value": 0.3}])
    with pytest.raises(ConfigError, match=r"Merge\.scaling_factor\[0\]\.filter: not a regular expression"):
        METHODS["task_arithmetic"].resolve({"scaling_factor": [{"filter": "(", "value": 0.3}]})
    with pytest.raises(ConfigError, match=r"Merge\.max_iter: a gradient needs a float parameter"):
        METHODS["karcher"].resolve({"max_iter": [1, 5]})
    with pytest.raises(ConfigError, match=r"Merge\.threshold: per-key values need topk_scope: tensor"):
        METHODS["ties_merging"](base, models, threshold=[10.0, 50.0])
    with pytest.raises(ConfigError, match=r"Merge\.sparsity_ratio: .*sparsifier"):
        METHODS["dare_task_arithmetic"](base, models, sparsity_ratio=[0.1, 0.5])
    with pytest.raises(ConfigError, match=r"Merge\.threshold\[0\]\.value: expected a percentage"):
        METHODS["ties_merging"].resolve({"threshold": [{"value": 300}]})
