"""RegMean: Gram matrices over real tokens only, and the merged Linear weights are the least-squares
solution on the collected inputs (numpy lstsq on the stacked inputs, collected per unpadded example
by a separate hook); one model gives that model; equal Gram matrices give the plain average."""
import numpy as np
import pytest

from test_task_pool_support import make_pool, random_backbone, random_head, tiny_model

TASKS = ["SST2", "MNLI"]
LAYERS = ["gpt.decoder.layers.0.self_attn.q_proj", "gpt.decoder.layers.1.self_attn.out_proj",
          "gpt.decoder.layers.1.linear1"]
NUM_EXAMPLES = 24


@pytest.fixture(scope="module")
def pool(glue_suite):
    return make_pool(glue_suite["glue"], TASKS)


def with_random_norms(backbone, seed):
    """Freshly initialised LayerNorms (weight 1, bias 0) emit rows that sum to zero: X^T X would be
    singular and alpha = 1 ill-posed. Random LayerNorm parameters, as after fine-tuning, avoid that."""
    rng = np.random.default_rng(seed)
    for key, value in backbone.items():
        if ".norm" in key:
            backbone[key] = (value + rng.normal(0.0, 0.3, size=value.shape)).astype(np.float32)
    return backbone


@pytest.fixture(scope="module")
def models():
    backbones = [with_random_norms(random_backbone(31), 0), with_random_norms(random_backbone(32), 1)]
    heads = [random_head(2, 0), random_head(3, 1)]
    return backbones, heads


def inputs_per_example(pool, task, backbone, head, layer_names):
    """{layer: X [tokens, in]} from unpadded single-example forwards (no mask needed)."""
    from ppmerge.runtime import import_paddle

    paddle = import_paddle()
    model = tiny_model(pool.spec(task).num_classes, seed=0)
    model.set_state_dict({**backbone, **head})
    layers = dict(model.named_sublayers())
    rows = {name: [] for name in layer_names}
    handles = [layers[name].register_forward_pre_hook(
        lambda layer, inputs, name=name: rows[name].append(inputs[0].numpy()[0])) for name in layer_names]
    with paddle.no_grad():
        for batch in pool.train_batches(task, NUM_EXAMPLES, 8, seed=0):
            for ids, length in zip(batch["input_ids"], batch["lengths"]):
                model(paddle.to_tensor(ids[None, :length]), paddle.to_tensor([int(length)]))
    for handle in handles:
        handle.remove()
    return {name: np.concatenate(r).astype(np.float64) for name, r in rows.items()}


def context_for(pool, heads, tasks=TASKS):
    from ppmerge.merge import MergeContext

    return MergeContext(task_names=tasks, heads=heads, task_pool=pool, model_cfg={"name": "gpt-tiny"}, seed=0)


def test_gram_matrices_use_real_tokens_only(pool, models):
    from ppmerge.merge.methods.regmean import gram_matrices

    backbones, heads = models
    model = pool.load_model("MNLI", backbones[1], heads[1])
    grams, tokens = gram_matrices(model, pool.train_batches("MNLI", NUM_EXAMPLES, 8, seed=0), set(backbones[1]))
    assert len(grams) == 2 * 6  # q, k, v, out, linear1, linear2 per layer; not the score head
    X = inputs_per_example(pool, "MNLI", backbones[1], heads[1], LAYERS)
    for name in LAYERS:
        assert tokens == len(X[name])
        np.testing.assert_allclose(grams[name].numpy(), X[name].T @ X[name] / len(X[name]), rtol=1e-4, atol=1e-6)


def test_reduce_non_diagonal_scales_off_diagonal_only():
    from ppmerge.runtime import import_paddle
    from ppmerge.merge.methods.regmean import reduce_non_diagonal

    paddle = import_paddle()
    G = np.random.default_rng(0).normal(size=(5, 5))
    expected = 0.3 * G
    np.fill_diagonal(expected, np.diag(G))
    np.testing.assert_allclose(reduce_non_diagonal(paddle.to_tensor(G), 0.3).numpy(), expected, rtol=1e-12)


def test_linear_layers_solve_the_least_squares_problem(pool, models):
    """alpha = 1: W* = argmin sum_i ||X_i W - X_i W_i||^2 / n_i (each model's mean over its tokens)."""
    from ppmerge.merge import METHODS

    backbones, heads = models
    merged = METHODS["regmean"](None, backbones, context=context_for(pool, heads),
                                num_regmean_examples=NUM_EXAMPLES, batch_size=8, reduce_non_diagonal_ratio=1.0)
    X = [inputs_per_example(pool, t, b, h, LAYERS) for t, b, h in zip(TASKS, backbones, heads)]
    for name in LAYERS:
        key = f"{name}.weight"
        A = np.concatenate([x[name] / np.sqrt(len(x[name])) for x in X])
        B = np.concatenate([x[name] @ b[key] / np.sqrt(len(x[name])) for x, b in zip(X, backbones)])
        expected = np.linalg.lstsq(A, B, rcond=None)[0]
        np.testing.assert_allclose(np.asarray(merged[key]), expected, rtol=1e-3, atol=2e-4)
        assert np.abs(expected - (backbones[0][key] + backbones[1][key]) / 2).max() > 1e-2  # not the average
    # Biases, LayerNorms and embeddings: the plain average.
    for key in ("gpt.decoder.layers.0.self_attn.q_proj.bias", "gpt.decoder.norm.weight",
                "gpt.embeddings.word_embeddings.weight"):
        np.testing.assert_allclose(np.asarray(merged[key]), (backbones[0][key] + backbones[1][key]) / 2, rtol=1e-6)


def test_one_model_gives_that_model(pool, models):
    from ppmerge.merge import METHODS

    backbones, heads = models
    context = context_for(pool, heads[:1], TASKS[:1])
    merged = METHODS["regmean"](None, backbones[:1], context=context, num_regmean_examples=8, batch_size=4)
    assert set(merged) == set(backbones[0])
    for key, value in backbones[0].items():
        np.testing.assert_allclose(np.asarray(merged[key]), value, rtol=1e-4, atol=1e-5)


def test_equal_grams_give_the_plain_average(pool, models):
    from ppmerge.merge.methods.regmean import gram_matrices, merge_with_grams

    backbones, heads = models
    model = pool.load_model("SST2", backbones[0], heads[0])
    grams = gram_matrices(model, pool.train_batches("SST2", 8, 4, seed=0), set(backbones[0]))[0]
    three = backbones + [random_backbone(33)]
    merged = merge_with_grams(three, [grams] * 3, 0.6)
    for key in three[0]:
        np.testing.assert_allclose(np.asarray(merged[key]), np.mean([b[key] for b in three], axis=0), rtol=1e-4, atol=1e-5)
