"""Fisher merging: the per-example Fisher against closed forms and finite differences, the merge
against a plain-numpy formula, and the properties that pin it (one model, equal Fisher)."""
import numpy as np
import pytest

from test_task_pool_support import make_pool, random_backbone, random_head, split_state, tiny_model


def random_batches(seed, n=6, batch_size=4, max_len=9):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(2, max_len + 1, size=n)
    for start in range(0, n, batch_size):
        lens = lengths[start:start + batch_size]
        ids = np.full((len(lens), lens.max()), 50256, dtype=np.int64)
        for row, length in zip(ids, lens):
            row[:length] = rng.integers(0, 50000, size=length)
        yield {"input_ids": ids, "lengths": lens.astype(np.int64), "labels": np.zeros(len(lens), np.int64)}


def examples(seed):
    return [(ids[:length], length) for batch in random_batches(seed) for ids, length in zip(batch["input_ids"], batch["lengths"])]


def pooled(model, ids, length):
    from ppmerge.runtime import import_paddle

    paddle = import_paddle()
    with paddle.no_grad():
        return model.pooled_hidden(paddle.to_tensor(ids[None]), paddle.to_tensor([length])).numpy()[0].astype(np.float64)


@pytest.mark.parametrize("num_classes", [2, 3])
def test_head_fisher_matches_closed_form(num_classes):
    """For logits z = h W: d log p_y / dW = h (e_y - p)^T, so F = sum_y p_y (h (e_y - p)^T)^2."""
    from ppmerge.merge.methods.fisher_merging import fisher_information

    model = tiny_model(num_classes, seed=3)
    W = model.score.weight.numpy().astype(np.float64)
    expected = np.zeros_like(W)
    for ids, length in examples(0):
        h = pooled(model, ids, length)
        z = h @ W
        p = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
        for y in range(num_classes):
            g = np.outer(h, np.eye(num_classes)[y] - p)
            expected += p[y] * g * g
    expected /= len(examples(0))
    fisher = fisher_information(model, random_batches(0), ["score.weight"])
    np.testing.assert_allclose(fisher["score.weight"].numpy(), expected, rtol=2e-3, atol=1e-9)


def test_regression_fisher_is_squared_output_gradient():
    """STS-B: one output f = h w, so d f / d w = h and F = mean h^2."""
    from ppmerge.merge.methods.fisher_merging import fisher_information

    model = tiny_model(1, seed=4)
    expected = np.mean([pooled(model, ids, n)[:, None] ** 2 for ids, n in examples(1)], axis=0)
    fisher = fisher_information(model, random_batches(1), ["score.weight"], regression=True)
    np.testing.assert_allclose(fisher["score.weight"].numpy(), expected, rtol=2e-3, atol=1e-9)


def test_backbone_fisher_matches_finite_differences():
    """A backbone parameter (the final LayerNorm bias): gradients of log p_y by central differences."""
    from ppmerge.runtime import import_paddle
    from ppmerge.merge.methods.fisher_merging import fisher_information

    paddle = import_paddle()
    model = tiny_model(2, seed=5)
    name = "gpt.decoder.norm.bias"
    param = dict(model.named_parameters())[name]
    original = param.numpy().copy()
    sample = examples(2)[:2]

    def log_probs(values):
        param.set_value(values.astype(np.float32))
        out = []
        with paddle.no_grad():
            for ids, length in sample:
                z = model(paddle.to_tensor(ids[None]), paddle.to_tensor([length])).numpy()[0].astype(np.float64)
                out.append(z - np.log(np.exp(z - z.max()).sum()) - z.max())
        return np.array(out)  # [examples, classes]

    entries = [0, 7, 31, 63]
    step = 1e-2
    expected = np.zeros(len(entries))
    probs = np.exp(log_probs(original))
    for j, entry in enumerate(entries):
        plus, minus = original.copy(), original.copy()
        plus[entry] += step
        minus[entry] -= step
        grads = (log_probs(plus) - log_probs(minus)) / (2 * step)  # [examples, classes]
        expected[j] = np.mean((probs * grads ** 2).sum(axis=1))
    param.set_value(original)

    def two_examples():
        for ids, length in sample:
            yield {"input_ids": ids[None], "lengths": np.array([length])}

    fisher = fisher_information(model, two_examples(), [name])[name].numpy()[entries]
    np.testing.assert_allclose(fisher, expected, rtol=3e-2, atol=1e-7)


def test_sparse_embedding_fisher_equals_the_dense_gradient():
    """Word and position embeddings through the per-token-id path vs paddle's dense table gradient,
    on examples with repeated tokens (their gradients must be summed before squaring)."""
    from ppmerge.merge.methods.fisher_merging import fisher_information

    model = tiny_model(3, seed=6)
    ids = np.array([[464, 3290, 464, 464, 318, 50256, 50256], [11, 12, 11, 13, 14, 15, 11]], dtype=np.int64)
    batch = {"input_ids": ids, "lengths": np.array([5, 7], dtype=np.int64)}
    names = ["gpt.embeddings.word_embeddings.weight", "gpt.embeddings.position_embeddings.weight",
             "gpt.decoder.layers.0.linear1.weight"]
    sparse = fisher_information(model, [batch], names, sparse_embeddings=True)
    dense = fisher_information(model, [batch], names, sparse_embeddings=False)
    assert set(sparse) == set(dense) == set(names)
    for name in names:
        np.testing.assert_allclose(sparse[name].numpy(), dense[name].numpy(), rtol=1e-4, atol=1e-12)
    assert sparse[names[0]].numpy()[464].sum() > 0 and sparse[names[0]].numpy()[465].sum() == 0


def numpy_fisher_merge(backbones, fishers, normalize, eps):
    norms = np.array([np.sqrt(sum((f[k].astype(np.float64) ** 2).sum() for k in f)) for f in fishers])
    c = 1.0 / (norms + eps) if normalize else np.ones(len(fishers))
    c = c / c.sum() if normalize else c
    out = {}
    for key in backbones[0]:
        if key in fishers[0]:
            w = [ci * (f[key] + eps) for ci, f in zip(c, fishers)]
            out[key] = sum(wi * b[key] for wi, b in zip(w, backbones)) / sum(w)
        else:
            out[key] = sum(b[key] for b in backbones) / len(backbones)
    return out


@pytest.mark.parametrize("normalize", [True, False])
def test_merge_with_fisher_matches_numpy(normalize):
    from ppmerge.runtime import import_paddle
    from ppmerge.merge.methods.fisher_merging import merge_with_fisher

    paddle = import_paddle()
    rng = np.random.default_rng(0)
    shapes = {"a.weight": (4, 3), "b.bias": (5,), "c.weight": (2, 2, 2), "no_grad": (3,)}
    backbones = [{k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()} for _ in range(3)]
    fishers = [{k: rng.gamma(0.5, scale=10.0 ** i, size=s).astype(np.float32) for k, s in shapes.items() if k != "no_grad"}
               for i in range(3)]
    merged = merge_with_fisher(backbones, [{k: paddle.to_tensor(v) for k, v in f.items()} for f in fishers],
                               normalize, 1e-6)
    expected = numpy_fisher_merge(backbones, fishers, normalize, 1e-6)
    assert set(merged) == set(shapes)
    for key in shapes:
        np.testing.assert_allclose(np.asarray(merged[key]), expected[key], rtol=1e-5, atol=1e-6)


def test_equal_fisher_gives_plain_average():
    from ppmerge.runtime import import_paddle
    from ppmerge.merge.methods.fisher_merging import merge_with_fisher

    paddle = import_paddle()
    backbones = [random_backbone(seed) for seed in (1, 2, 3)]
    rng = np.random.default_rng(1)
    fisher = {k: paddle.to_tensor(rng.uniform(0.5, 2.0, size=v.shape).astype(np.float32))
              for k, v in backbones[0].items()}
    # The same Fisher for every model, and (normalised) the same Fisher up to a per-model scale
    # (entries well above minimal_fisher_weight, which is added unscaled).
    for fishers, normalize in (([fisher] * 3, False), ([{k: v * s for k, v in fisher.items()} for s in (1, 10, 100)], True)):
        merged = merge_with_fisher(backbones, fishers, normalize, 1e-6)
        for key in backbones[0]:
            np.testing.assert_allclose(np.asarray(merged[key]), np.mean([b[key] for b in backbones], axis=0),
                                       rtol=1e-4, atol=1e-6)


@pytest.fixture(scope="module")
def pool(glue_suite):
    return make_pool(glue_suite["glue"], ["SST2", "MNLI", "STSB"])


def context_for(pool, tasks, heads):
    from ppmerge.merge.registry import MergeContext

    return MergeContext(task_names=tasks, heads=heads, task_pool=pool, model_cfg={"name": "gpt-tiny"}, seed=0)


def test_fisher_merging_one_model_gives_that_model(pool):
    import ppmerge.merge.methods.fisher_merging  # noqa: F401  (registers it)
    from ppmerge.merge.registry import METHODS

    backbone = random_backbone(7)
    merged = METHODS["fisher_merging"](None, [backbone], context=context_for(pool, ["SST2"], [random_head(2, 0)]),
                                       num_fisher_examples=4, batch_size=2)
    for key, value in backbone.items():
        np.testing.assert_allclose(np.asarray(merged[key]), value, rtol=1e-5, atol=1e-6)


def test_fisher_merging_is_an_entrywise_convex_combination(pool):
    """Three tasks (2, 3 classes and regression): every merged entry lies between the models', and
    the merge differs from the plain average (the Fisher really weights)."""
    import ppmerge.merge.methods.fisher_merging  # noqa: F401  (registers it)
    from ppmerge.merge.registry import METHODS

    tasks = ["SST2", "MNLI", "STSB"]
    backbones = [random_backbone(seed) for seed in (11, 12, 13)]
    heads = [random_head(pool.spec(t).num_classes, i) for i, t in enumerate(tasks)]
    merged = METHODS["fisher_merging"](None, backbones, context=context_for(pool, tasks, heads),
                                       num_fisher_examples=3, batch_size=2)
    differs = 0.0
    for key in backbones[0]:
        stack = np.stack([b[key] for b in backbones])
        value = np.asarray(merged[key])
        assert np.all(value >= stack.min(0) - 1e-5) and np.all(value <= stack.max(0) + 1e-5), key
        differs = max(differs, float(np.abs(value - stack.mean(0)).max()))
    assert differs > 1e-3


@pytest.mark.parametrize("method, key, value", [
    ("fisher_merging", "num_fisher_examples", 0), ("fisher_merging", "batch_size", 0),
    ("fisher_merging", "minimal_fisher_weight", -1.0), ("regmean", "reduce_non_diagonal_ratio", 1.5),
    ("regmean", "num_regmean_examples", -2)])
def test_bad_parameters_are_config_errors(method, key, value):
    from ppmerge.errors import ConfigError
    from ppmerge.merge import METHODS

    with pytest.raises(ConfigError, match=f"Merge.{key}: expected"):
        METHODS[method].resolve({key: value})
