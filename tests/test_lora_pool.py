"""LoRA pools: ModelPool entries that are adapter folders over ModelPool.base, merged either after
merge-and-unload (FusionBench) or from the low-rank factors key by key. Both modes give the same merged
model, equal to numpy formulas written here from the adapters' factors (τ = scale·(B·A)ᵀ on adapted
weights, 0 elsewhere): simple average, task arithmetic, TIES, on T5 and on GPT (heads kept per model)."""
import json
import os
import tracemalloc

import numpy as np
import pytest

from ppmerge.errors import CheckpointError, ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EMBEDDINGS = ("t5.shared.weight", "t5.encoder.embed_tokens.weight", "t5.decoder.embed_tokens.weight")
T5_TASKS = ("SST2", "RTE")
GPT_TASKS = ("SST2", "STSB")
R = 4


def _write_safetensors(tensors, path):
    from safetensors.numpy import save_file

    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, path)


def _write_peft_hf_t5(folder, base, rng, alpha=8.0):
    """A PEFT folder in HF T5 module names (FusionBench's layout): q and v of every attention block.
    Returns {our key: τ} from the numpy formula scale·(B·A)ᵀ (scale = α / r)."""
    os.makedirs(folder)
    tensors, taus = {}, {}
    for key in base:
        if not key.endswith((".q.weight", ".v.weight")):
            continue
        module = key[len("t5."):-len(".weight")]            # HF: encoder.block.0.layer.0.SelfAttention.q
        d_in, d_out = base[key].shape
        A = (0.3 * rng.standard_normal((R, d_in))).astype(np.float32)
        B = (0.3 * rng.standard_normal((d_out, R))).astype(np.float32)
        tensors[f"base_model.model.{module}.lora_A.weight"] = A
        tensors[f"base_model.model.{module}.lora_B.weight"] = B
        taus[key] = (alpha / R) * (B.astype(np.float64) @ A.astype(np.float64)).T
    _write_safetensors(tensors, os.path.join(folder, "adapter_model.safetensors"))
    config = {"peft_type": "LORA", "task_type": "SEQ_2_SEQ_LM", "r": R, "lora_alpha": alpha, "lora_dropout": 0.0,
              "target_modules": ["q", "v"], "bias": "none", "fan_in_fan_out": False, "base_model_name_or_path": "x"}
    with open(os.path.join(folder, "adapter_config.json"), "w") as f:
        json.dump(config, f)
    return taus


def _write_paddle_run(folder, base, rng, patterns, family, head=None, alpha=16.0):
    """The lora/ folder of our own LoRA run (ppmerge.models.families.lora.save_adapter): Paddle's layout,
    `<path>.lora_A` [in, r], `.lora_B` [r, out], scaling = α / r; a trained head saved whole.
    Returns {our key: τ} = scaling·(lora_A·lora_B)."""
    import re

    from ppmerge.models.checkpoint import save_state_dict

    os.makedirs(folder)
    tensors, taus = {}, {}
    for key in base:
        module = key[:-len(".weight")]
        if not key.endswith(".weight") or not any(re.fullmatch(p, module) for p in patterns):
            continue
        d_in, d_out = base[key].shape
        A = (0.3 * rng.standard_normal((d_in, R))).astype(np.float32)
        Bm = (0.3 * rng.standard_normal((R, d_out))).astype(np.float32)
        tensors[f"{module}.lora_A"], tensors[f"{module}.lora_B"] = A, Bm
        taus[key] = (alpha / R) * (A.astype(np.float64) @ Bm.astype(np.float64))
    tensors.update(head or {})
    save_state_dict(tensors, os.path.join(folder, "adapter_model.pdparams"))
    meta = {"peft_type": "LORA", "r": R, "lora_alpha": alpha, "scaling": alpha / R, "target_modules": patterns,
            "family": family, "base_model": None}
    with open(os.path.join(folder, "adapter_config.json"), "w") as f:
        json.dump(meta, f)
    return taus


@pytest.fixture(scope="module")
def t5_lora(t5_spiece, tmp_path_factory):
    """t5-tiny base + a PEFT (HF names) adapter for SST2 and our LoRA run's adapter for RTE."""
    from ppmerge.data.t5_tokenizer import load_t5_tokenizer
    from ppmerge.models.checkpoint import save_state_dict
    from ppmerge.models.families import get_family
    from ppmerge.runtime import import_paddle

    import_paddle().seed(11)
    vocab = load_t5_tokenizer(t5_spiece).vocab_size
    base = {k: v.numpy() for k, v in get_family({"name": "t5-tiny", "vocab_size": vocab}).build().state_dict().items()}
    folder = tmp_path_factory.mktemp("t5lora")
    save_state_dict(base, str(folder / "base.pdparams"))
    rng = np.random.default_rng(0)
    taus = {"SST2": _write_peft_hf_t5(str(folder / "SST2"), base, rng),
            "RTE": _write_paddle_run(str(folder / "RTE"), base, rng, [r".*\.q", r".*\.v"], "t5")}
    backbone = {k: v for k, v in base.items() if k not in EMBEDDINGS[1:]}  # the pool keeps t5.shared.weight only
    return {"base": backbone, "taus": taus, "paths": {t: str(folder / t) for t in T5_TASKS},
            "base_path": str(folder / "base.pdparams"), "vocab": vocab, "family": "t5", "tasks": T5_TASKS,
            "config": "flan_t5_glue_base.yaml", "model": ["TaskPool.model.name=t5-tiny",
                                                          f"TaskPool.model.vocab_size={vocab}",
                                                          f"TaskPool.tokenizer.spiece_model={t5_spiece}"]}


@pytest.fixture(scope="module")
def gpt_lora(tmp_path_factory):
    """gpt-tiny backbone base + a PEFT-like adapter (our key names, safetensors) for SST2 and our LoRA run's
    adapter for STSB, each with its trained head (score.weight) saved whole."""
    from ppmerge.models.checkpoint import save_state_dict
    from ppmerge.models.init import init_state_dict
    from ppmerge.models.peft_lora import LoraAdapter, LoraTarget, save_adapter

    base = init_state_dict("gpt-tiny", seed=3)
    folder = tmp_path_factory.mktemp("gptlora")
    save_state_dict(base, str(folder / "base.pdparams"))
    rng = np.random.default_rng(1)
    targets, taus = {}, {}
    for key in base:
        if key.endswith(("q_proj.weight", "v_proj.weight")):
            d_in, d_out = base[key].shape
            A = (0.3 * rng.standard_normal((R, d_in))).astype(np.float32)
            B = (0.3 * rng.standard_normal((d_out, R))).astype(np.float32)
            targets[key] = LoraTarget(A=A, B=B, scale=2.0)
            taus[key] = 2.0 * (B.astype(np.float64) @ A.astype(np.float64)).T
    heads = {"SST2": {"score.weight": (0.02 * rng.standard_normal((64, 2))).astype(np.float32)},
             "STSB": {"score.weight": (0.02 * rng.standard_normal((64, 1))).astype(np.float32)}}
    save_adapter(LoraAdapter(targets=targets, saved=dict(heads["SST2"]),
                             config={"r": R, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]}),
                 str(folder / "SST2"))
    all_taus = {"SST2": taus,
                "STSB": _write_paddle_run(str(folder / "STSB"), base, rng, [r".*\.q_proj", r".*\.v_proj"], "gpt",
                                          head=heads["STSB"])}
    return {"base": base, "taus": all_taus, "heads": heads, "paths": {t: str(folder / t) for t in GPT_TASKS},
            "base_path": str(folder / "base.pdparams"), "family": "gpt", "tasks": GPT_TASKS,
            "config": "gpt_glue_base.yaml", "model": ["TaskPool.model.name=gpt-tiny"]}


# ---------------------------------------------------------------------------------- numpy formulas

def _tau(setup, task, key):
    return setup["taus"][task].get(key, np.zeros(setup["base"][key].shape))


def numpy_linear(setup, coefs):
    """θ₀ + Σ c_i τ_i."""
    return {k: v + sum(c * _tau(setup, t, k) for c, t in zip(coefs, setup["tasks"])) for k, v in setup["base"].items()}


def numpy_ties(setup, threshold, scaling, scope):
    """TIES (sum): trim each τ_i to its top threshold% |τ| (over the whole model or each tensor; keep
    |τ| >= the k-th smallest, k = d - floor(d q)), elect sign(Σ τ̂) (0 → the sign of Σ of the elected signs
    over the scope), add the entries agreeing with it, θ₀ + λ·that."""
    keys = list(setup["base"])
    groups = [keys] if scope == "global" else [[k] for k in keys]
    out = {}
    for group in groups:
        flat = [np.concatenate([_tau(setup, t, k).ravel() for k in group]) for t in setup["tasks"]]
        trimmed = []
        for tau in flat:
            k = tau.size - int(np.floor(tau.size * threshold / 100))
            cut = np.partition(np.abs(tau), k - 1)[k - 1]
            trimmed.append(np.where(np.abs(tau) >= cut, tau, 0.0))
        total = sum(trimmed)
        sign = np.sign(total)
        sign[sign == 0] = 1.0 if np.sign(sign.sum()) >= 0 else -1.0
        agree = sum(np.where(np.sign(t) == sign, t, 0.0) for t in trimmed)
        at = 0
        for k in group:
            size = setup["base"][k].size
            out[k] = setup["base"][k] + scaling * agree[at:at + size].reshape(setup["base"][k].shape)
            at += size
    return out


METHODS = {
    "simple_average": ([], lambda s: numpy_linear(s, [0.5, 0.5])),
    "task_arithmetic": (["Merge.scaling_factor=0.7"], lambda s: numpy_linear(s, [0.7, 0.7])),
    "ties_merging": (["Merge.method=ties_merging", "Merge.threshold=20", "Merge.topk_scope=tensor",
                      "Merge.scaling_factor=0.6"], lambda s: numpy_ties(s, 20, 0.6, "tensor")),
}


def _run(setup, tmp_path, method, mode, extra=(), tasks=(), data=None):
    from ppmerge.config import load_config
    from ppmerge.config.merge_schema import MERGE_SCHEMA
    from ppmerge.merge.runner import run_merge

    config = ("gpt_glue_" if setup["family"] == "gpt" else "flan_t5_glue_lora_") + method + ".yaml"
    overrides = ["Global.device=cpu", f"ModelPool.base={setup['base_path']}",
                 f"ModelPool.models={json.dumps(setup['paths'])}", f"ModelPool.lora.mode={mode}",
                 f"TaskPool.tasks=[{', '.join(tasks)}]", f"Output.dir={tmp_path / 'out'}", "TaskPool.max_examples=6",
                 *setup["model"], *([f"TaskPool.data_root={data}"] if data else []), *extra]
    cfg = load_config(os.path.join(ROOT, "configs", "merge", config), overrides, MERGE_SCHEMA)
    result = run_merge(cfg, progress=False)
    from ppmerge.models.checkpoint import load_numpy_state_dict

    return result, load_numpy_state_dict(str(tmp_path / "out" / "merged_model.pdparams"))


@pytest.mark.parametrize("family", ["t5", "gpt"])
@pytest.mark.parametrize("method", list(METHODS))
def test_both_modes_equal_numpy_through_the_runner(family, method, t5_lora, gpt_lora, tmp_path):
    setup = t5_lora if family == "t5" else gpt_lora
    extra, formula = METHODS[method]
    if family == "gpt" and method == "ties_merging":
        extra = extra[1:]  # gpt_glue_ties_merging.yaml names the method
    expected = formula(setup)
    saved = {}
    for mode in ("unload", "lowrank"):
        _, saved[mode] = _run(setup, tmp_path / mode, method, mode, extra)
        backbone = {k: v for k, v in saved[mode].items() if not k.startswith("heads.")}
        assert set(backbone) == set(setup["base"])   # T5: t5.shared.weight once, no embed_tokens copies
        for key in backbone:
            np.testing.assert_allclose(backbone[key], expected[key], rtol=1e-5, atol=2e-6, err_msg=f"{mode} {key}")
    for key in saved["unload"]:  # the same merged model (the same float32 values reach the method)
        np.testing.assert_array_equal(saved["unload"][key], saved["lowrank"][key])
    if family == "gpt":  # each adapter's head, saved whole, is its model's head
        for task in GPT_TASKS:
            np.testing.assert_array_equal(saved["lowrank"][f"heads.{task}.score.weight"],
                                          setup["heads"][task]["score.weight"])


@pytest.mark.parametrize("family", ["t5", "gpt"])
def test_in_memory_forms_and_dare_agree(family, t5_lora, gpt_lora):
    """The in-memory form (every backbone held, as sweeps and non-streaming methods do) and the streamed
    one give the same result in both modes; FusionBench's global TIES and DARE too."""
    from ppmerge.merge import METHODS as REGISTRY
    from ppmerge.merge.model_pool import NO_HEADS, ModelPool
    from ppmerge.models.families import get_family

    setup = t5_lora if family == "t5" else gpt_lora
    fam = get_family("t5-tiny" if family == "t5" else "gpt-tiny")
    head_keys = fam.head_keys or NO_HEADS

    def pool(mode):
        return ModelPool(setup["base_path"], setup["paths"], head_keys, tied_keys=getattr(fam, "tied_keys", None),
                         lora={"mode": mode})

    runs = {"ties_merging": dict(threshold=20, topk_scope="global", scaling_factor=0.3),
            "task_arithmetic": dict(scaling_factor=0.5),
            "dare_task_arithmetic": dict(scaling_factor=0.5, sparsity_ratio=0.3, seed=3)}
    for name, params in runs.items():
        method = REGISTRY[name]
        results = []
        for mode in ("unload", "lowrank"):
            p = pool(mode)
            results.append(method.fn(p.base, [p.backbones()[n] for n in p.names], **params))
            p = pool(mode)
            results.append(method.stream(p.base, p.sized_stream(), consume=False, **params))
        for other in results[1:]:
            for key in results[0]:
                np.testing.assert_allclose(other[key], results[0][key], rtol=1e-6, atol=1e-7, err_msg=f"{name} {key}")
        if name == "ties_merging":
            expected = numpy_ties(setup, 20, 0.3, "global")
        elif name == "task_arithmetic":
            expected = numpy_linear(setup, [0.5, 0.5])
        else:
            continue
        for key in expected:
            np.testing.assert_allclose(results[0][key], expected[key], rtol=1e-5, atol=2e-6, err_msg=f"{name} {key}")


def test_t5_lora_pool_evaluates(glue_suite, t5_lora, tmp_path):
    """A T5 LoRA pool through the whole runner with evaluation: the merged row and the fine-tuned rows
    (each adapter's model evaluated from the factors) generate answers."""
    result, merged = _run(t5_lora, tmp_path, "task_arithmetic", "lowrank", ["Output.reference_rows.finetuned=true",
                                                                             "Output.reference_rows.base=true"],
                          tasks=T5_TASKS, data=glue_suite["glue"])
    rows = {row["kind"]: row for row in result["rows"]}
    assert set(rows) == {"base", "finetuned", "merged"}
    for row in rows.values():
        for task in T5_TASKS:
            assert row["metrics"][task]["num_examples"] == 6 and 0.0 <= row["metrics"][task]["invalid_rate"] <= 1.0
    expected = numpy_linear(t5_lora, [0.3, 0.3])
    np.testing.assert_allclose(merged["t5.encoder.block.0.layer.0.SelfAttention.q.weight"],
                               expected["t5.encoder.block.0.layer.0.SelfAttention.q.weight"], rtol=1e-5, atol=2e-6)


def test_gpt_lora_pool_evaluates_with_the_adapters_heads(glue_suite, gpt_lora, tmp_path):
    from ppmerge.evaluation.task_pool import TaskPool

    result, merged = _run(gpt_lora, tmp_path, "simple_average", "lowrank", ["Output.reference_rows.finetuned=true"],
                          tasks=GPT_TASKS, data=glue_suite["glue"])
    rows = {row["kind"]: row for row in result["rows"]}
    assert rows["merged"]["metrics"]["STSB"]["num_examples"] == 6
    # the fine-tuned row = the merged-and-unloaded model with its own head, evaluated independently
    task_pool = TaskPool.from_config({"tasks": ["SST2"], "data_root": glue_suite["glue"], "max_examples": 6,
                                      "model": {"name": "gpt-tiny"}}, progress=False)
    own = {k: (v + gpt_lora["taus"]["SST2"][k]).astype(np.float32) if k in gpt_lora["taus"]["SST2"] else v
           for k, v in gpt_lora["base"].items()}
    metrics = task_pool.evaluate(own, {"SST2": gpt_lora["heads"]["SST2"]}, ["SST2"])
    assert metrics["SST2"]["accuracy"] == rows["finetuned"]["metrics"]["SST2"]["accuracy"]


def test_lowrank_holds_factors_not_models(t5_lora):
    """In memory, lowrank models hold only their factors; unload models hold every adapted weight."""
    from ppmerge.merge.model_pool import NO_HEADS, ModelPool
    from ppmerge.merge.lora_pool import LowRankModel

    adapted = sum(t5_lora["base"][k].nbytes for k in t5_lora["taus"]["SST2"])
    peaks = {}
    for mode in ("unload", "lowrank"):
        pool = ModelPool(t5_lora["base_path"], t5_lora["paths"], NO_HEADS, lora={"mode": mode},
                         tied_keys={k: EMBEDDINGS[0] for k in EMBEDDINGS[1:]})
        pool.base
        tracemalloc.start()
        backbones = pool.backbones()
        peaks[mode] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert all(isinstance(b, LowRankModel) == (mode == "lowrank") for b in backbones.values())
    assert peaks["unload"] >= 2 * adapted          # two models' adapted weights materialised
    assert peaks["lowrank"] < adapted / 4           # nothing dense per model


# ---------------------------------------------------------------------------------- refusals

def test_refusals(t5_lora, gpt_lora, tmp_path):
    from ppmerge.merge.model_pool import NO_HEADS, ModelPool

    with pytest.raises(ConfigError, match=r"ModelPool.base: model SST2 is a LoRA adapter .* needs the base model"):
        ModelPool(None, t5_lora["paths"], NO_HEADS)
    with pytest.raises(ConfigError, match=r"ModelPool.lora.mode: expected one of unload, lowrank, got 'dense'"):
        ModelPool(t5_lora["base_path"], t5_lora["paths"], NO_HEADS, lora={"mode": "dense"})
    with pytest.raises(ConfigError, match=r"ModelPool.lora: no model of the pool is a LoRA adapter folder"):
        ModelPool(t5_lora["base_path"], {"SST2": t5_lora["base_path"]}, NO_HEADS, lora={"mode": "lowrank"})
    # an adapter over the wrong base: T5 adapters on a GPT base
    pool = ModelPool(gpt_lora["base_path"], t5_lora["paths"], NO_HEADS, lora={"mode": "lowrank"})
    with pytest.raises(CheckpointError, match=r"model SST2 \(.*SST2\): adapted weight "
                                              r"'t5\.(en|de)coder\.block\.0\..*q\.weight' "
                                              r"is not in the base model"):
        pool.backbones()
    # a shape that does not fit: the T5 adapter over a T5 base with another d_model
    from ppmerge.models.checkpoint import save_state_dict

    other = {k: v for k, v in t5_lora["base"].items()}
    key = "t5.encoder.block.0.layer.0.SelfAttention.q.weight"
    other[key] = np.zeros((8, 8), np.float32)
    save_state_dict(other, str(tmp_path / "other.pdparams"))
    pool = ModelPool(str(tmp_path / "other.pdparams"), t5_lora["paths"], NO_HEADS)
    with pytest.raises(CheckpointError, match=rf"model SST2 .*: adapted weight {key} gives shape \[64, 64\] but the "
                                              rf"base model has \[8, 8\]"):
        list(pool.stream())
    # a GPT pool (heads) whose adapter saves no head
    pool = ModelPool(t5_lora["base_path"], t5_lora["paths"], r"^lm_head\.", lora={"mode": "lowrank"})
    with pytest.raises(CheckpointError, match=r"model SST2 .*: the adapter saves no head matching ModelPool.head_keys"):
        pool.backbones()
    # NaN in an adapter's factors
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(t5_lora["paths"]["RTE"], bad)
    from ppmerge.models.checkpoint import load_numpy_state_dict

    tensors = load_numpy_state_dict(str(bad / "adapter_model.pdparams"))
    first = sorted(tensors)[0]
    tensors[first] = tensors[first].copy()
    tensors[first][0, 0] = np.nan
    save_state_dict(tensors, str(bad / "adapter_model.pdparams"))
    with pytest.raises(CheckpointError, match=r"model RTE \(.*bad\): key '.*\(lora_[AB]\)' contains NaN"):
        ModelPool(t5_lora["base_path"], {"RTE": str(bad)}, NO_HEADS)


def test_tool_error_line_for_a_lora_pool_without_base(t5_lora, tmp_path):
    import subprocess
    import sys

    out = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "merge.py"), "-c",
                          os.path.join(ROOT, "configs", "merge", "flan_t5_glue_lora_simple_average.yaml"),
                          "-o", "ModelPool.base=null", "-o", f"ModelPool.models={json.dumps(t5_lora['paths'])}",
                          "-o", "TaskPool.tasks=[]", "-o", "TaskPool.model.name=t5-tiny", "-o", "Global.device=cpu",
                          "-o", f"Output.dir={tmp_path / 'out'}"], capture_output=True, text=True, cwd=str(tmp_path))
    assert out.returncode == 2, out.stderr
    assert out.stderr.startswith("error: ModelPool.base: model SST2 is a LoRA adapter")
    assert "Traceback" not in out.stderr
    assert not os.path.exists(tmp_path / "out" / "merged_model.pdparams")


def test_pool_of_real_lora_runs_equals_their_merged_models(tmp_path):
    """Adapters written by our LoRA training's exporter (families.lora.save_adapter on a paddlenlp LoRAModel)
    pool like PEFT folders: the simple average in lowrank mode equals the mean of the runs' own
    merged_model.pdparams (W + scaling·A·B folded in float64 by the exporter)."""
    from ppmerge.merge import METHODS as REGISTRY
    from ppmerge.merge.model_pool import NO_HEADS, ModelPool
    from ppmerge.models.checkpoint import load_numpy_state_dict, save_state_dict
    from ppmerge.models.families import get_family
    from ppmerge.models.families.lora import apply_lora, save_adapter
    from ppmerge.runtime import import_paddle

    paddle = import_paddle()
    family = get_family({"name": "t5-tiny", "vocab_size": 60})
    paddle.seed(2)
    network = family.build()
    base = {k: v.numpy() for k, v in network.state_dict().items()}
    save_state_dict(base, str(tmp_path / "base.pdparams"))
    cfg = {"r": 4, "alpha": 8, "target_modules": ["q", "v"], "save_merged": True}
    folders, merged_runs = {}, []
    for i, task in enumerate(T5_TASKS):
        run = family.build()
        run.set_state_dict({k: paddle.to_tensor(v) for k, v in base.items()})
        lora_model = apply_lora(run, cfg, family)
        rng = np.random.default_rng(20 + i)
        for name, param in lora_model.model.named_parameters():
            if ".lora_" in name:  # B starts at zero: trained values
                param.set_value(paddle.to_tensor((0.2 * rng.standard_normal(param.shape)).astype(np.float32)))
        folders[task] = str(tmp_path / task / "lora")
        save_adapter(lora_model, cfg, family, folders[task])
        merged_runs.append(load_numpy_state_dict(os.path.join(folders[task], "merged_model.pdparams")))
    pool = ModelPool(str(tmp_path / "base.pdparams"), folders, NO_HEADS, tied_keys=family.tied_keys,
                     lora={"mode": "lowrank"})
    merged = REGISTRY["simple_average"].fn(pool.base, [pool.backbones()[n] for n in pool.names])
    assert set(merged) == set(base) - set(EMBEDDINGS[1:])
    changed = 0
    for key in merged:
        expected = (merged_runs[0][key].astype(np.float64) + merged_runs[1][key]) / 2
        np.testing.assert_allclose(merged[key], expected, rtol=1e-5, atol=1e-6, err_msg=key)
        changed += not np.array_equal(merged_runs[0][key], base[key])
    assert changed == 12  # q and v of 2 encoder self-, 2 decoder self- and 2 cross-attention blocks


@pytest.mark.parametrize("mode", ["unload", "lowrank"])
def test_fusionbench_layout_hf_base_and_peft_adapters(tmp_path, mode):
    """FusionBench's files: an HF Flan-T5 folder as the base and PEFT adapters in HF module names. The
    task arithmetic of the pool, in HF's layout by numpy (W [out, in] + λ·Σ scale·B·A, transposed to our
    [in, out]), equals the merged model; the tied embedding is merged once."""
    from test_t5_model import hf_t5_config, random_hf_t5, write_hf_t5

    from ppmerge.merge import METHODS as REGISTRY
    from ppmerge.merge.model_pool import NO_HEADS, ModelPool
    from ppmerge.models.families import get_family

    cfg = hf_t5_config()
    rng = np.random.default_rng(4)
    hf = random_hf_t5(cfg, rng)
    write_hf_t5(tmp_path / "flan", cfg, hf)
    expected = {k: v.astype(np.float64) for k, v in hf.items()}
    folders = {}
    for task in T5_TASKS:
        folder = tmp_path / task
        folder.mkdir()
        tensors = {}
        for key in hf:
            if key.endswith(("SelfAttention.q.weight", "EncDecAttention.v.weight")):
                module = key[:-len(".weight")]
                A = (0.2 * rng.standard_normal((R, hf[key].shape[1]))).astype(np.float32)
                B = (0.2 * rng.standard_normal((hf[key].shape[0], R))).astype(np.float32)
                tensors[f"base_model.model.{module}.lora_A.weight"] = A
                tensors[f"base_model.model.{module}.lora_B.weight"] = B
                expected[key] = expected[key] + 0.4 * (16 / np.sqrt(R)) * (B.astype(np.float64) @ A)  # rslora
        _write_safetensors(tensors, str(folder / "adapter_model.safetensors"))
        (folder / "adapter_config.json").write_text(json.dumps(
            {"peft_type": "LORA", "r": R, "lora_alpha": 16, "use_rslora": True, "target_modules": ["q", "v"],
             "task_type": "SEQ_2_SEQ_LM", "bias": "none"}))
        folders[task] = str(folder)
    family = get_family("t5-tiny")
    pool = ModelPool(str(tmp_path / "flan"), folders, NO_HEADS, tied_keys=family.tied_keys, lora={"mode": mode})
    merged = REGISTRY["task_arithmetic"].fn(pool.base, [pool.backbones()[n] for n in pool.names], scaling_factor=0.4)
    assert "t5.shared.weight" in merged and not any(k in merged for k in EMBEDDINGS[1:])
    linear = ("q", "k", "v", "o", "wi_0", "wi_1", "wo")
    for key, value in expected.items():
        if key in ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight"):
            continue
        ours = key if key == "lm_head.weight" else "t5." + key
        if key == "lm_head.weight" or key.rsplit(".", 2)[-2] in linear:
            value = value.T
        np.testing.assert_allclose(merged[ours], value, rtol=1e-5, atol=2e-6, err_msg=key)


def test_python_api_lora_pool(gpt_lora):
    """ppmerge.load_pool takes adapter folders too; lowrank and unload give the same merge."""
    import ppmerge

    results = []
    for mode in ("unload", "lowrank"):
        pool = ppmerge.load_pool(gpt_lora["paths"], base=gpt_lora["base_path"], lora={"mode": mode})
        results.append(ppmerge.merge(pool, "task_arithmetic", scaling_factor=0.7))
    expected = numpy_linear(gpt_lora, [0.7, 0.7])
    for key, value in expected.items():
        np.testing.assert_array_equal(results[0][key], results[1][key])
        np.testing.assert_allclose(results[1][key], value, rtol=1e-5, atol=2e-6, err_msg=key)
