"""T5's shared embedding in merges: paddlenlp lists it three times (t5.shared.weight and the encoder /
decoder embed_tokens copies); the model pool merges it once, so key-seeded masks (DARE) cannot make the
copies differ. DARE over a T5 pool loads and evaluates; the result equals a numpy DARE formula."""
import json
import os
import zlib

import numpy as np
import pytest

from ppmerge.errors import CheckpointError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EMBEDDINGS = ("t5.shared.weight", "t5.encoder.embed_tokens.weight", "t5.decoder.embed_tokens.weight")
TASKS = ("SST2", "RTE")


@pytest.fixture(scope="module")
def pool_files(glue_suite, t5_spiece, tmp_path_factory):
    """A seeded tiny T5 base, two 'fine-tuned' models (base + random τ, the same τ on the three embedding
    keys: one parameter), and a broken model whose decoder copy differs from t5.shared.weight."""
    from ppmerge.data.t5_tokenizer import load_t5_tokenizer
    from ppmerge.models.checkpoint import save_state_dict
    from ppmerge.models.families import get_family
    from ppmerge.runtime import import_paddle

    paddle = import_paddle()
    vocab = load_t5_tokenizer(t5_spiece).vocab_size
    paddle.seed(5)
    base = {k: v.numpy() for k, v in get_family({"name": "t5-tiny", "vocab_size": vocab}).build().state_dict().items()}
    folder = tmp_path_factory.mktemp("t5tied")
    paths = {"base": str(folder / "base.pdparams")}
    save_state_dict(base, paths["base"])
    models = {}
    for i, task in enumerate(TASKS):
        rng = np.random.default_rng(10 + i)
        tau = {k: (0.02 * rng.standard_normal(v.shape)).astype(np.float32) for k, v in base.items()}
        for key in EMBEDDINGS[1:]:
            tau[key] = tau[EMBEDDINGS[0]]
        models[task] = {k: base[k] + tau[k] for k in base}
        paths[task] = str(folder / f"{task}.pdparams")
        save_state_dict(models[task], paths[task])
    broken = dict(models["RTE"])
    broken[EMBEDDINGS[2]] = broken[EMBEDDINGS[2]] + 1e-3
    paths["broken"] = str(folder / "broken.pdparams")
    save_state_dict(broken, paths["broken"])
    return base, models, paths, vocab


def _merge(glue_suite, t5_spiece, pool_files, tmp_path, extra=(), models=None):
    from ppmerge.config import load_config
    from ppmerge.config.merge_schema import MERGE_SCHEMA
    from ppmerge.merge.runner import run_merge

    base, _, paths, vocab = pool_files
    models = models or {t: paths[t] for t in TASKS}
    overrides = ["Global.device=cpu", f"ModelPool.base={paths['base']}", f"ModelPool.models={json.dumps(models)}",
                 f"TaskPool.tasks=[{', '.join(TASKS)}]", f"TaskPool.data_root={glue_suite['glue']}",
                 "TaskPool.model.name=t5-tiny", f"TaskPool.model.vocab_size={vocab}",
                 f"TaskPool.tokenizer.spiece_model={t5_spiece}", "TaskPool.max_examples=6", "TaskPool.max_length=96",
                 "Merge.method=dare_task_arithmetic", "Merge.scaling_factor=0.5", "Merge.sparsity_ratio=0.4",
                 "Merge.seed=7", f"Output.dir={tmp_path / 'out'}", *extra]
    cfg = load_config(os.path.join(ROOT, "configs", "merge", "flan_t5_glue_base.yaml"), overrides, MERGE_SCHEMA)
    return run_merge(cfg, progress=False)


def _numpy_dare(base, models, key, scaling=0.5, ratio=0.4, seed=7):
    """θ₀ + λ Σ_i m_i ⊙ τ_i / (1 − p), m_i kept where default_rng([seed, i, crc32(key)]).random >= p."""
    total = np.zeros(base[key].shape, dtype=np.float64)
    for i, task in enumerate(TASKS):
        draw = np.random.default_rng([seed, i, zlib.crc32(key.encode())]).random(base[key].shape, dtype=np.float32)
        keep = draw >= ratio
        total += np.where(keep, models[task][key].astype(np.float64) - base[key], 0.0) / (1 - ratio)
    return base[key] + scaling * total


@pytest.mark.parametrize("form", ["streamed", "in_memory"])
def test_dare_over_t5_pool_loads_and_evaluates(glue_suite, t5_spiece, pool_files, tmp_path, form):
    from ppmerge.models.checkpoint import load_numpy_state_dict

    base, models, _, _ = pool_files
    # the finetuned reference row needs every backbone in memory (the in-memory form) and evaluates
    # the pool's backbones, which hold t5.shared.weight only
    extra = ["Output.reference_rows.finetuned=true"] if form == "in_memory" else []
    result = _merge(glue_suite, t5_spiece, pool_files, tmp_path, extra)
    merged = load_numpy_state_dict(str(tmp_path / "out" / "merged_model.pdparams"))
    assert set(merged) == set(base) - set(EMBEDDINGS[1:])
    for key in (EMBEDDINGS[0], "lm_head.weight", "t5.encoder.block.0.layer.0.SelfAttention.q.weight"):
        np.testing.assert_allclose(merged[key], _numpy_dare(base, models, key), rtol=1e-5, atol=1e-6)
    rows = {row["kind"]: row for row in result["rows"]}
    for task in TASKS:
        assert rows["merged"]["metrics"][task]["num_examples"] == 6
        if form == "in_memory":
            assert rows["finetuned"]["metrics"][task]["num_examples"] == 6

    # the saved model loads into paddlenlp's T5 (the copies filled from t5.shared.weight) and its
    # embeddings are the merged ones
    from ppmerge.models.families import get_family
    from ppmerge.models.t5 import load_t5_state_dict

    vocab = pool_files[3]
    network = get_family({"name": "t5-tiny", "vocab_size": vocab}).build()
    load_t5_state_dict(network, merged, source="merged")
    state = network.state_dict()
    for key in EMBEDDINGS:
        np.testing.assert_array_equal(state[key].numpy(), merged[EMBEDDINGS[0]])


def test_mask_seeds_would_have_split_the_copies():
    """The reason for the fix: DARE masks are seeded by the key's name, so the three names of the shared
    embedding would get three different masks."""
    shape = (50, 8)
    masks = [np.random.default_rng([7, 0, zlib.crc32(k.encode())]).random(shape, dtype=np.float32) >= 0.4
             for k in EMBEDDINGS]
    assert not np.array_equal(masks[0], masks[1]) and not np.array_equal(masks[0], masks[2])


@pytest.mark.parametrize("form", ["streamed", "in_memory"])
def test_copy_that_differs_from_shared_is_refused(glue_suite, t5_spiece, pool_files, tmp_path, form):
    _, _, paths, _ = pool_files
    extra = ["Output.reference_rows.finetuned=true"] if form == "in_memory" else []
    with pytest.raises(CheckpointError, match=r"model RTE \(.*broken\.pdparams\): t5\.decoder\.embed_tokens\.weight "
                                              r"differs from t5\.shared\.weight"):
        _merge(glue_suite, t5_spiece, pool_files, tmp_path, extra,
               models={"SST2": paths["SST2"], "RTE": paths["broken"]})
    assert not os.path.exists(tmp_path / "out" / "merged_model.pdparams")


def test_gpt_pool_keeps_every_key():
    """A family without tied keys (GPT) keeps all of its keys: nothing is dropped."""
    from ppmerge.models.families import get_family

    assert not getattr(get_family("gpt-tiny"), "tied_keys", None)
    assert set(get_family("t5-tiny").tied_keys) == set(EMBEDDINGS[1:])
