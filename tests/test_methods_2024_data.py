"""AdaMerging (and RegMean++) on a tiny generated pool and GLUE suite: entropy goes down, labels are never
read, a saved λ table reproduces the merge, other model families are refused."""
import json

import numpy as np
import pytest

from test_merge_runner_support import MODEL_CFG, TASKS, make_pool

from ppmerge.errors import ConfigError, UserError


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    return make_pool(str(tmp_path_factory.mktemp("pool_data2024")))


def task_pool(data_root, max_examples=24):
    from ppmerge.evaluation.task_pool import TaskPool

    return TaskPool(TASKS, dict(MODEL_CFG), data_root=data_root, layout="glue", batch_size=16, max_length=32,
                    max_examples=max_examples, progress=False)


def context(tp, sds, model_cfg=MODEL_CFG, seed=0):
    from ppmerge.merge import MergeContext

    return MergeContext(task_names=list(TASKS), heads=[{"score.weight": sds[t]["score.weight"]} for t in TASKS],
                        task_pool=tp, model_cfg=dict(model_cfg), seed=seed)


def backbones(sds):
    base = {k: v for k, v in sds["base"].items() if k != "score.weight"}
    return base, [{k: sds[t][k] for k in base} for t in TASKS]


def numpy_entropy(tp, backbone, sds):
    """Σ over the classification tasks of the mean entropy of softmax(logits) on the eval inputs (numpy)."""
    total = 0.0
    for task in TASKS:
        if tp.spec(task).is_regression:
            continue
        logits = tp.logits(task, backbone, {"score.weight": sds[task]["score.weight"]})[0].astype(np.float64)
        logits -= logits.max(-1, keepdims=True)
        p = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
        total += float(np.mean(-(p * np.log(p)).sum(-1)))
    return total


@pytest.mark.parametrize("granularity", ["task_wise", "layer_wise"])
def test_adamerging_lowers_entropy_and_merges_with_its_table(pool, glue_suite, granularity):
    from ppmerge.merge import get_method

    paths, sds = pool
    tp = task_pool(glue_suite["glue"])
    base, models = backbones(sds)
    # batch 24 = the whole (24-example) eval set each step: the objective is the same function every step
    merged = get_method("adamerging")(base, models, context=context(tp, sds), granularity=granularity,
                                      max_steps=8, lr=0.05, batch_size=24, clamp=False)
    table = merged.method_info["adamerging"]
    lam = np.asarray(table["lambdas"])
    keys = list(base)
    assert lam.shape == ((3,) if granularity == "task_wise" else (3, len(keys)))
    assert table["steps"] == 8 and len(table["entropy"]) == 8 and table["entropy"][-1] < table["entropy"][0]
    # the merged backbone is θ₀ + Σ λ τ with the reported λ (numpy)
    per_key = np.repeat(lam[:, None], len(keys), 1) if granularity == "task_wise" else lam
    for k, key in enumerate(keys):
        expected = base[key] + sum(per_key[i, k] * (m[key].astype(np.float64) - base[key])
                                   for i, m in enumerate(models))
        np.testing.assert_allclose(merged[key], expected, rtol=1e-5, atol=1e-6, err_msg=key)
    # entropy of the eval predictions, computed independently: lower than at the starting λ = 0.3
    start = {k: base[k] + 0.3 * sum(m[k] - base[k] for m in models) for k in keys}
    assert table["entropy"][0] == pytest.approx(numpy_entropy(tp, start, sds), rel=1e-4)
    assert numpy_entropy(tp, dict(merged), sds) < numpy_entropy(tp, start, sds)


class _Raising:
    def __getitem__(self, index):
        raise AssertionError("a label was read")

    def __len__(self):
        raise AssertionError("a label was read")


def test_adamerging_never_reads_a_label(pool, glue_suite):
    from ppmerge.merge import get_method

    paths, sds = pool
    base, models = backbones(sds)
    params = dict(max_steps=3, lr=0.05, batch_size=8, granularity="layer_wise")
    reference = get_method("adamerging")(base, models, context=context(task_pool(glue_suite["glue"]), sds), **params)
    tp = task_pool(glue_suite["glue"])
    for task in TASKS:
        dataset = tp.dataset(task)
        assert len(dataset.labels) > 0
        dataset.labels = _Raising()      # any label access now fails the run
    merged = get_method("adamerging")(base, models, context=context(tp, sds), **params)
    assert merged.method_info["adamerging"]["lambdas"] == reference.method_info["adamerging"]["lambdas"]
    for key in base:
        np.testing.assert_array_equal(merged[key], reference[key])


def test_adamerging_loads_a_table_and_refuses_bad_ones(pool, glue_suite, tmp_path):
    from ppmerge.merge import get_method

    paths, sds = pool
    base, models = backbones(sds)
    tp = task_pool(glue_suite["glue"])
    method = get_method("adamerging")
    table = {"granularity": "task_wise", "models": TASKS, "lambdas": [0.1, 0.7, 0.4]}
    path = tmp_path / "lambdas.json"
    path.write_text(json.dumps(table))
    merged = method(base, models, context=context(tp, sds), lambdas=str(path))
    assert merged.method_info["adamerging"]["steps"] == 0
    for key in base:
        expected = base[key] + sum(lam * (m[key].astype(np.float64) - base[key])
                                   for lam, m in zip(table["lambdas"], models))
        np.testing.assert_allclose(merged[key], expected, rtol=1e-5, atol=1e-6)
    # a report.json holding the table works too
    report = tmp_path / "report.json"
    report.write_text(json.dumps({"rows": [{"name": "base"}, {"method_info": {"adamerging": table}}]}))
    again = method(base, models, context=context(tp, sds), lambdas=str(report))
    np.testing.assert_array_equal(again[list(base)[0]], merged[list(base)[0]])
    for bad, message in [({**table, "lambdas": [0.1, 0.2]}, "expected finite lambdas of shape \\[3\\]"),
                         ({**table, "models": ["SST2", "RTE", "STSB"]}, "is for models"),
                         ({**table, "granularity": "layer_wise"}, "holds a layer_wise table")]:
        path.write_text(json.dumps(bad))
        with pytest.raises(ConfigError, match=message):
            method(base, models, context=context(tp, sds), lambdas=str(path))
    with pytest.raises(ConfigError, match="Merge.lambdas: cannot read"):
        method(base, models, context=context(tp, sds), lambdas=str(tmp_path / "missing.json"))


def test_adamerging_refuses_other_model_families(pool, glue_suite):
    from ppmerge.merge import get_method

    paths, sds = pool
    base, models = backbones(sds)
    with pytest.raises(UserError, match="adamerging runs on GPT classifiers only; TaskPool.model 't5-tiny' is a t5"):
        get_method("adamerging")(base, models, context=context(task_pool(glue_suite["glue"]), sds,
                                                                model_cfg={"name": "t5-tiny"}), max_steps=1)


# ---- RegMean++ --------------------------------------------------------------------------------------
def _pool_cfg(tp_model, data_root):
    from ppmerge.evaluation.task_pool import TaskPool

    return TaskPool(TASKS, dict(tp_model), data_root=data_root, layout="glue", batch_size=8, max_length=32,
                    max_examples=8, progress=False)


def _inputs(tp, task, backbone, head, layer_name, n, batch_size, seed):
    """The raw inputs (real tokens) of one Linear, as numpy [tokens, in] (an independent hook)."""
    import paddle

    model = tp.load_model(task, backbone, head)
    layer = dict(model.named_sublayers())[layer_name]
    rows = []

    def hook(_, inputs):
        rows.append(inputs[0].numpy())

    handle = layer.register_forward_pre_hook(hook)
    out = []
    try:
        with paddle.no_grad():
            for batch in tp.train_batches(task, n, batch_size, seed=seed):
                rows.clear()
                model(paddle.to_tensor(batch["input_ids"]), paddle.to_tensor(batch["lengths"]))
                x = rows[0]
                out += [x[r, :length] for r, length in enumerate(batch["lengths"])]
    finally:
        handle.remove()
    return np.concatenate(out).astype(np.float64)


def _lstsq_weight(xs, ws):
    """argmin_W Σ_i ‖X_i W − X_i W_i‖² / n_i (stacked least squares)."""
    a = np.concatenate([x / np.sqrt(len(x)) for x in xs])
    b = np.concatenate([x @ w.astype(np.float64) / np.sqrt(len(x)) for x, w in zip(xs, ws)])
    return np.linalg.lstsq(a, b, rcond=None)[0]


def _regmean_context(tp, sds, seed=3):
    return context(tp, sds, model_cfg=tp.model_cfg, seed=seed)


def test_regmean_plusplus_is_regmean_on_one_layer(tmp_path, glue_suite):
    from ppmerge.merge import get_method

    cfg = {"name": "gpt-tiny", "num_layers": 1}
    paths, sds = make_pool(str(tmp_path), seed=1)  # (its heads; the backbones are one-block ones made here)
    # one block; embeddings and final norm equal to the base in every model, so block 0's inputs match
    import paddle

    from ppmerge.models import build_model

    paddle.seed(1)
    base = {k: v.numpy() for k, v in build_model(cfg, 2).state_dict().items() if k != "score.weight"}
    rng = np.random.default_rng(0)
    models = [{k: (v + rng.normal(0, 0.05, v.shape)).astype(v.dtype) if ".layers." in k else v
               for k, v in base.items()} for _ in TASKS]
    tp = _pool_cfg(cfg, glue_suite["glue"])
    params = dict(num_regmean_examples=8, batch_size=8, reduce_non_diagonal_ratio=0.6)
    plus = get_method("regmean_plusplus")(base, models, context=_regmean_context(tp, sds), **params)
    plain = get_method("regmean")(base, models, context=_regmean_context(tp, sds), **params)
    for key in base:
        np.testing.assert_allclose(plus[key], plain[key], rtol=1e-4, atol=1e-6, err_msg=key)


def test_regmean_plusplus_two_layers_against_lstsq_per_layer(tmp_path, glue_suite):
    from ppmerge.merge import get_method

    paths, sds = make_pool(str(tmp_path), seed=2)
    base, models = backbones(sds)
    tp = _pool_cfg(MODEL_CFG, glue_suite["glue"])
    heads = [{"score.weight": sds[t]["score.weight"]} for t in TASKS]
    params = dict(num_regmean_examples=8, batch_size=8, reduce_non_diagonal_ratio=1.0)
    plus = get_method("regmean_plusplus")(base, models, context=_regmean_context(tp, sds), **params)
    plain = get_method("regmean")(base, models, context=_regmean_context(tp, sds), **params)
    emb = "gpt.embeddings.word_embeddings.weight"
    np.testing.assert_allclose(plus[emb], np.mean([m[emb] for m in models], axis=0), rtol=1e-6, atol=1e-7)
    for block in (0, 1):
        below = {k: v for k, v in plus.items() if ".layers." not in k and "decoder.norm" not in k}
        below.update({k: v for k, v in plus.items() if any(f".layers.{b}." in k for b in range(block))})
        for linear in ("self_attn.q_proj", "linear2"):
            name = f"gpt.decoder.layers.{block}.{linear}"
            xs = [_inputs(tp, t, {**m, **below}, h, name, 8, 8, 3) for t, m, h in zip(TASKS, models, heads)]
            expected = _lstsq_weight(xs, [m[f"{name}.weight"] for m in models])
            np.testing.assert_allclose(plus[f"{name}.weight"], expected, rtol=2e-3, atol=2e-4, err_msg=name)
            bias = f"{name}.bias"
            np.testing.assert_allclose(plus[bias], np.mean([m[bias] for m in models], axis=0), rtol=1e-6, atol=1e-7)
    # the documented difference: the inputs come from merged layers, so the Linear weights move away from
    # plain RegMean's (which uses each model's own layers below)
    for block in (0, 1):
        key = f"gpt.decoder.layers.{block}.linear1.weight"
        assert np.abs(plus[key] - plain[key]).max() > 1e-4, key
