"""Merging T5 pools: the whole model is merged (no heads), evaluated by generation; formulas vs numpy."""
import json
import os

import numpy as np
import pytest

from ppmerge.errors import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EMBEDDINGS = ("t5.shared.weight", "t5.encoder.embed_tokens.weight", "t5.decoder.embed_tokens.weight")


@pytest.fixture(scope="module")
def t5_pool(glue_suite, t5_spiece, tmp_path_factory):
    """A seeded tiny T5 base and two 'fine-tuned' models (base + random task vectors; the three
    embedding keys, one parameter in the model, get the same vector)."""
    from ppmerge.data.t5_tokenizer import load_t5_tokenizer
    from ppmerge.models.checkpoint import save_state_dict
    from ppmerge.models.families import get_family
    from ppmerge.runtime import import_paddle

    paddle = import_paddle()
    vocab = load_t5_tokenizer(t5_spiece).vocab_size
    paddle.seed(3)
    base = {k: v.numpy() for k, v in get_family({"name": "t5-tiny", "vocab_size": vocab}).build().state_dict().items()}
    folder = tmp_path_factory.mktemp("t5pool")
    paths = {"base": str(folder / "base.pdparams")}
    save_state_dict(base, paths["base"])
    models = {}
    for i, task in enumerate(("SST2", "RTE")):
        rng = np.random.default_rng(i)
        tau = {k: (0.02 * rng.standard_normal(v.shape)).astype(np.float32) for k, v in base.items()}
        for key in EMBEDDINGS[1:]:
            tau[key] = tau[EMBEDDINGS[0]]
        models[task] = {k: base[k] + tau[k] for k in base}
        paths[task] = str(folder / f"{task}.pdparams")
        save_state_dict(models[task], paths[task])
    return base, models, paths, vocab


def _merge(glue_suite, t5_spiece, t5_pool, tmp_path, config, extra=()):
    from ppmerge.config import load_config
    from ppmerge.config.merge_schema import MERGE_SCHEMA
    from ppmerge.merge.runner import run_merge

    base, models, paths, vocab = t5_pool
    overrides = ["Global.device=cpu", f"ModelPool.base={paths['base']}",
                 f"ModelPool.models={json.dumps({t: paths[t] for t in ('SST2', 'RTE')})}",
                 "TaskPool.tasks=[SST2, RTE]", f"TaskPool.data_root={glue_suite['glue']}",
                 "TaskPool.model.name=t5-tiny", f"TaskPool.model.vocab_size={vocab}",
                 f"TaskPool.tokenizer.spiece_model={t5_spiece}", "TaskPool.max_examples=24",
                 "TaskPool.max_length=96", f"Output.dir={tmp_path / 'out'}", *extra]
    cfg = load_config(os.path.join(ROOT, "configs", "merge", config), overrides, MERGE_SCHEMA)
    return run_merge(cfg, progress=False)


def _saved(tmp_path):
    from ppmerge.models.checkpoint import load_numpy_state_dict

    return load_numpy_state_dict(str(tmp_path / "out" / "merged_model.pdparams"))


def test_simple_average_whole_model_and_generation_metrics(glue_suite, t5_spiece, t5_pool, tmp_path):
    base, models, _, _ = t5_pool
    result = _merge(glue_suite, t5_spiece, t5_pool, tmp_path, "flan_t5_glue_simple_average.yaml")
    merged = _saved(tmp_path)
    # every key merged, lm_head and the shared embedding included (once: its embed_tokens copies are one
    # parameter, dropped by the pool and filled back when loaded); no heads.* keys
    assert set(merged) == set(base) - set(EMBEDDINGS[1:])
    for key in merged:
        np.testing.assert_allclose(merged[key], (models["SST2"][key] + models["RTE"][key]) / 2, rtol=1e-6, atol=1e-7)
    row = result["rows"][-1]
    for task in ("SST2", "RTE"):
        m = row["metrics"][task]
        assert m["main"] == m["accuracy"] and 0.0 <= m["invalid_rate"] <= 1.0 and m["num_examples"] == 24
        words = ("negative", "positive") if task == "SST2" else ("yes", "no")
        assert sum(m[f"confusion.{a}.{b}"] for a in words for b in words) == 24 - m["num_invalid"]
    assert result["main_metric"] == {"SST2": "ExactMatch", "RTE": "ExactMatch"}
    assert os.path.isfile(tmp_path / "out" / "report.xlsx")


def test_reference_rows_and_cross_task_matrix(glue_suite, t5_spiece, t5_pool, tmp_path):
    result = _merge(glue_suite, t5_spiece, t5_pool, tmp_path, "flan_t5_glue_simple_average.yaml",
                    ["TaskPool.max_examples=8", "Output.reference_rows.base=true", "Output.reference_rows.finetuned=true",
                     "Output.reference_rows.cross_task=true"])
    kinds = [row["kind"] for row in result["rows"]]
    assert kinds.count("base") == 1 and kinds.count("merged") == 1 and kinds.count("finetuned") >= 1
    cross = [row for row in result["rows"] if row["kind"] == "cross_task"]
    assert len(cross) == 2 and all(set(row["metrics"]) == {"SST2", "RTE"} for row in cross)
    assert os.path.isfile(tmp_path / "out" / "cross_task.png")


def test_task_arithmetic_and_ties(glue_suite, t5_spiece, t5_pool, tmp_path):
    base, models, _, _ = t5_pool
    _merge(glue_suite, t5_spiece, t5_pool, tmp_path, "flan_t5_glue_task_arithmetic.yaml",
           ["Merge.scaling_factor=0.4", "TaskPool.max_examples=4"])
    merged = _saved(tmp_path)
    for key in merged:
        tau = (models["SST2"][key] - base[key]) + (models["RTE"][key] - base[key])
        np.testing.assert_allclose(merged[key], base[key] + 0.4 * tau, rtol=1e-5, atol=1e-6)

    _merge(glue_suite, t5_spiece, t5_pool, tmp_path / "ties", "flan_t5_glue_ties_merging.yaml",
           ["TaskPool.max_examples=4", "Merge.topk_scope=tensor", "Merge.threshold=50"])
    ties = _saved(tmp_path / "ties")
    # numpy TIES per tensor: keep |tau| >= the median, elect sign(sum), sum the agreeing entries, x 0.3
    key = "lm_head.weight"
    taus = [models[t][key].astype(np.float64) - base[key] for t in ("SST2", "RTE")]
    trimmed = []
    for tau in taus:
        k = tau.size - int(np.floor(tau.size * 0.5))
        threshold = np.partition(np.abs(tau).ravel(), k - 1)[k - 1]
        trimmed.append(np.where(np.abs(tau) >= threshold, tau, 0.0))
    sign = np.sign(sum(trimmed))
    agree = sum(np.where(np.sign(t) == sign, t, 0.0) for t in trimmed)
    np.testing.assert_allclose(ties[key], base[key] + 0.3 * agree, rtol=1e-5, atol=1e-6)
    assert EMBEDDINGS[0] in ties and not any(key in ties for key in EMBEDDINGS[1:])


@pytest.mark.parametrize("config", ["gpt_glue_fisher_merging.yaml", "gpt_glue_regmean.yaml", "gpt_glue_simple_ensemble.yaml"])
def test_data_dependent_methods_refused_on_t5(glue_suite, t5_spiece, t5_pool, tmp_path, config):
    from ppmerge.config.yamlio import read_yaml

    method = read_yaml(os.path.join(ROOT, "configs", "merge", config))["Merge"]["method"]
    with pytest.raises(ConfigError, match=f"{method} is not available for t5"):
        _merge(glue_suite, t5_spiece, t5_pool, tmp_path, "flan_t5_glue_base.yaml", [f"Merge.method={method}"])
    assert not os.path.exists(tmp_path / "out" / "merged_model.pdparams")
