"""Export (tools/convert.py --to hf | paddlenlp | fleetx) and storage dtypes, checked against an
independent numpy GPT-2 forward, paddlenlp's own from_pretrained, and the FleetX import's inverse."""
import json
import os
import struct
import subprocess
import sys

import numpy as np
import pytest

from ppmerge.models import load_numpy_state_dict, save_state_dict
from ppmerge.models.checkpoint import to_float32
from tests.test_models import numpy_gpt2_logits, write_hf_gpt2

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = {"name": "gpt-tiny", "vocab_size": 120, "max_position_embeddings": 32, "hidden_size": 32,
        "num_attention_heads": 4, "ffn_hidden_size": 64}
TEXTS = [[5, 17, 99, 0, 42], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]]


@pytest.fixture(scope="module")
def paddle():
    from ppmerge.runtime import import_paddle

    return import_paddle()


def run_convert(*args):
    return subprocess.run([sys.executable, os.path.join(ROOT, "tools", "convert.py"), *map(str, args)],
                          capture_output=True, text=True)


def convert(*args):
    result = run_convert(*args)
    assert result.returncode == 0, result.stderr
    return result.stdout


def model_state(paddle, num_classes=3, seed=0):
    """A tiny model's numpy state dict with weights large enough to make distinct logits."""
    from ppmerge.models import build_model

    paddle.seed(seed)
    model = build_model(TINY, num_classes)
    rng = np.random.default_rng(seed)
    return {k: (v.numpy() + rng.standard_normal(v.shape).astype(np.float32) * 0.1) for k, v in model.state_dict().items()}


def our_logits(paddle, state_dict, num_classes, fields=TINY):
    from ppmerge.models import build_model

    model = build_model(fields, num_classes)
    model.set_state_dict({k: paddle.to_tensor(to_float32(v)) for k, v in state_dict.items()})
    model.eval()
    with paddle.no_grad():
        return [model(paddle.to_tensor([ids]), paddle.to_tensor([len(ids)])).numpy()[0] for ids in TEXTS]


def safetensors_header(path):
    with open(path, "rb") as f:
        size = struct.unpack("<Q", f.read(8))[0]
        return json.loads(f.read(size))


def test_hf_export_matches_numpy_gpt2_forward(paddle, tmp_path):
    from ppmerge.models.hf_gpt2 import load_folder

    sd = model_state(paddle)
    save_state_dict(sd, tmp_path / "ft.pdparams")
    convert("--from", "ppmerge", "--to", "hf", "--input", tmp_path / "ft.pdparams", "--output", tmp_path / "hf",
            "--num-heads", 4)
    folder = tmp_path / "hf"
    assert sorted(os.listdir(folder)) == ["config.json", "model.safetensors"]
    config = json.loads((folder / "config.json").read_text())
    assert config["architectures"] == ["GPT2ForSequenceClassification"] and config["model_type"] == "gpt2"
    assert (config["n_embd"], config["n_layer"], config["n_head"], config["n_inner"], config["vocab_size"],
            config["n_positions"]) == (32, 2, 4, 64, 120, 32)
    assert config["pad_token_id"] == 50256 and config["num_labels"] == len(config["id2label"]) == 3
    assert safetensors_header(folder / "model.safetensors")["__metadata__"] == {"format": "pt"}
    hf = load_numpy_state_dict(folder / "model.safetensors")
    assert hf["score.weight"].shape == (3, 32) and hf["transformer.h.0.attn.c_attn.weight"].shape == (32, 96)
    want = our_logits(paddle, sd, 3)
    for ids, logits in zip(TEXTS, want):  # an independent forward on the exported HF weights
        np.testing.assert_allclose(numpy_gpt2_logits(hf, np.array(ids), n_head=4), logits, rtol=1e-5, atol=1e-5)
    # ... and read back by our HF importer: the same tensors as before
    fields, num_classes, back = load_folder(str(folder))
    assert num_classes == 3 and fields["num_attention_heads"] == 4
    assert sorted(back) == sorted(sd)
    for key, value in sd.items():
        np.testing.assert_array_equal(back[key], value)


def test_hf_round_trip_is_bit_exact(tmp_path):
    sd = write_hf_gpt2(tmp_path / "orig", np.random.default_rng(3))
    convert("--from", "hf", "--to", "pdparams", "--input", tmp_path / "orig", "--output", tmp_path / "ours.pdparams")
    convert("--from", "ppmerge", "--to", "hf", "--input", tmp_path / "ours.pdparams", "--output", tmp_path / "back",
            "--num-heads", 4)
    back = load_numpy_state_dict(tmp_path / "back" / "model.safetensors")
    weights = {k: v for k, v in sd.items() if not k.endswith((".attn.bias", ".attn.masked_bias"))}  # buffers
    assert sorted(back) == sorted(weights)
    for key, value in weights.items():
        assert back[key].dtype == value.dtype and back[key].tobytes() == value.tobytes(), key
    orig = json.loads((tmp_path / "orig" / "config.json").read_text())
    new = json.loads((tmp_path / "back" / "config.json").read_text())
    for key in ("vocab_size", "n_embd", "n_layer", "n_head", "n_positions", "activation_function",
                "layer_norm_epsilon", "bos_token_id", "eos_token_id", "id2label"):
        assert new[key] == orig[key], key
    assert new["n_inner"] == 4 * orig["n_embd"]


def test_merged_model_gives_one_folder_per_task(paddle, tmp_path):
    sd = model_state(paddle, num_classes=2)
    merged = {k: v for k, v in sd.items() if k != "score.weight"}
    merged["heads.SST2.score.weight"] = sd["score.weight"]
    merged["heads.MNLI.score.weight"] = np.random.default_rng(0).standard_normal((32, 3)).astype(np.float32)
    save_state_dict(merged, tmp_path / "merged.pdparams")
    out = convert("--from", "ppmerge", "--to", "hf", "--input", tmp_path / "merged.pdparams",
                  "--output", tmp_path / "hf", "--num-heads", 4)
    assert "one folder per task" in out
    assert sorted(os.listdir(tmp_path / "hf")) == ["MNLI", "SST2"]
    mnli = json.loads((tmp_path / "hf" / "MNLI" / "config.json").read_text())
    assert mnli["id2label"] == {"0": "entailment", "1": "neutral", "2": "contradiction"}
    assert mnli["finetuning_task"] == "MNLI"
    hf = load_numpy_state_dict(tmp_path / "hf" / "MNLI" / "model.safetensors")
    np.testing.assert_array_equal(hf["score.weight"], merged["heads.MNLI.score.weight"].T)
    sst2 = load_numpy_state_dict(tmp_path / "hf" / "SST2" / "model.safetensors")
    np.testing.assert_array_equal(sst2["score.weight"], sd["score.weight"].T)
    # --task: one model, written as a plain folder
    convert("--from", "ppmerge", "--to", "hf", "--input", tmp_path / "merged.pdparams", "--output", tmp_path / "one",
            "--num-heads", 4, "--task", "sst-2")
    assert sorted(os.listdir(tmp_path / "one")) == ["config.json", "model.safetensors"]
    # an existing output is never replaced
    again = run_convert("--from", "ppmerge", "--to", "hf", "--input", tmp_path / "merged.pdparams",
                        "--output", tmp_path / "one", "--num-heads", 4)
    assert again.returncode == 2 and again.stderr.startswith("error: ") and "already exists" in again.stderr
    assert sorted(os.listdir(tmp_path / "one")) == ["config.json", "model.safetensors"]


def test_head_count_is_needed_when_not_known(paddle, tmp_path):
    save_state_dict(model_state(paddle), tmp_path / "ft.pdparams")
    result = run_convert("--from", "ppmerge", "--to", "hf", "--input", tmp_path / "ft.pdparams", "--output",
                         tmp_path / "hf")
    assert result.returncode == 2 and "--num-heads" in result.stderr and len(result.stderr.splitlines()) == 1
    assert not os.path.exists(tmp_path / "hf")


def test_paddlenlp_export_loads_with_from_pretrained(paddle, tmp_path):
    from ppmerge.runtime import import_paddlenlp_transformers

    sd = model_state(paddle, num_classes=3)
    save_state_dict(sd, tmp_path / "ft.pdparams")
    convert("--from", "ppmerge", "--to", "paddlenlp", "--input", tmp_path / "ft.pdparams", "--output",
            tmp_path / "pn", "--num-heads", 4)
    assert sorted(os.listdir(tmp_path / "pn")) == ["config.json", "model_state.pdparams"]
    transformers = import_paddlenlp_transformers()
    model = transformers.GPTForSequenceClassification.from_pretrained(str(tmp_path / "pn"))
    model.eval()
    assert model.num_labels == 3
    want = our_logits(paddle, sd, 3)
    with paddle.no_grad():
        for ids, logits in zip(TEXTS, want):  # no eos in the texts: paddlenlp pools the last token too
            np.testing.assert_allclose(model(paddle.to_tensor([ids])).numpy()[0], logits, rtol=1e-5, atol=1e-6)


def test_fleetx_export_is_the_inverse_of_the_import(paddle, tmp_path):
    from ppmerge.models import fleetx

    sd = model_state(paddle, num_classes=2)
    original = {k: v.astype(np.float16) for k, v in fleetx.fuse_state_dict(sd, num_heads=4).items()}
    save_state_dict(original, tmp_path / "fx" / "model.pdparams")
    convert("--from", "fleetx", "--to", "pdparams", "--input", tmp_path / "fx" / "model", "--output",
            tmp_path / "ours.pdparams", "--num-heads", 4)
    convert("--from", "ppmerge", "--to", "fleetx", "--input", tmp_path / "ours.pdparams", "--output",
            tmp_path / "back" / "model", "--num-heads", 4, "--dtype", "float16")
    back = load_numpy_state_dict(tmp_path / "back" / "model.pdparams")
    assert list(back) == list(original)
    for key, value in original.items():
        assert back[key].dtype == np.float16 and back[key].tobytes() == value.tobytes(), key
    # a merged model: one FleetX file per task, each with its own head
    merged = {k: v for k, v in sd.items() if k != "score.weight"}
    merged["heads.RTE.score.weight"] = sd["score.weight"]
    merged["heads.QNLI.score.weight"] = -sd["score.weight"]
    save_state_dict(merged, tmp_path / "merged.pdparams")
    convert("--from", "ppmerge", "--to", "fleetx", "--input", tmp_path / "merged.pdparams", "--output",
            tmp_path / "fx_tasks", "--num-heads", 4)
    assert sorted(os.listdir(tmp_path / "fx_tasks")) == ["QNLI", "RTE"]
    qnli = load_numpy_state_dict(tmp_path / "fx_tasks" / "QNLI" / "model.pdparams")
    np.testing.assert_array_equal(qnli["score.weight"], -sd["score.weight"])
    want = fleetx.fuse_state_dict(sd, num_heads=4)
    assert sorted(qnli) == sorted(want)
    np.testing.assert_array_equal(qnli["gpt.decoder.layers.1.self_attn.qkv_proj.weight"],
                                  want["gpt.decoder.layers.1.self_attn.qkv_proj.weight"])


@pytest.mark.parametrize("ext", ["pdparams", "safetensors"])
def test_convert_dtypes(paddle, tmp_path, ext):
    import ml_dtypes

    from ppmerge.models import build_model, load_pretrained

    sd = model_state(paddle, num_classes=2)
    sd["ids"] = np.arange(5, dtype=np.int64)  # never cast
    save_state_dict(sd, tmp_path / "ft.pdparams")
    for dtype, want in (("float16", np.float16), ("bfloat16", np.uint16), ("float32", np.float32)):
        out = tmp_path / f"{dtype}.{ext}"
        convert("--from", "ppmerge", "--to", ext, "--input", tmp_path / "ft.pdparams", "--output", out, "--dtype", dtype)
        back = load_numpy_state_dict(out)
        assert back["ids"].dtype == np.int64 and back["ids"].tolist() == list(range(5))
        for key, value in sd.items():
            if key == "ids":
                continue
            assert back[key].dtype == want, (dtype, key)
            reference = value.astype(ml_dtypes.bfloat16).view(np.uint16) if dtype == "bfloat16" else value.astype(want)
            assert back[key].tobytes() == reference.tobytes(), (dtype, key)
        if ext == "safetensors":
            header = safetensors_header(out)
            assert header["gpt.decoder.norm.weight"]["dtype"] == {"float16": "F16", "bfloat16": "BF16",
                                                                  "float32": "F32"}[dtype]
    # a bf16 file loads into a float32 model (decoded exactly) and computes nearly the same logits
    model = build_model(TINY, 2)
    del sd["ids"]
    load_pretrained(model, tmp_path / f"bfloat16.{ext}")
    decoded = to_float32(load_numpy_state_dict(tmp_path / f"bfloat16.{ext}")["gpt.decoder.norm.weight"])
    np.testing.assert_array_equal(model.gpt.decoder.norm.weight.numpy(), decoded)


def test_hf_export_in_bfloat16(paddle, tmp_path):
    sd = model_state(paddle)
    save_state_dict(sd, tmp_path / "ft.pdparams")
    convert("--from", "ppmerge", "--to", "hf", "--input", tmp_path / "ft.pdparams", "--output", tmp_path / "hf",
            "--num-heads", 4, "--dtype", "bfloat16")
    header = safetensors_header(tmp_path / "hf" / "model.safetensors")
    assert {v["dtype"] for k, v in header.items() if k != "__metadata__"} == {"BF16"}
    assert header["__metadata__"] == {"format": "pt"}
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["torch_dtype"] == "bfloat16"


def test_float16_overflow_is_refused():
    from ppmerge.errors import UserError
    from ppmerge.models.dtypes import cast_state_dict, check_dtype, float32_to_bf16_bits

    with pytest.raises(UserError, match="big.*float16"):
        cast_state_dict({"ok": np.ones(2, np.float32), "big": np.array([1e6], np.float32)}, "float16")
    assert cast_state_dict({"inf": np.array([np.inf], np.float32)}, "float16")["inf"][0] == np.inf
    with pytest.raises(UserError, match="Output.dtype.*float64"):
        check_dtype("float64", "Output.dtype")
    assert check_dtype("BF16") == "bfloat16"
    bits = float32_to_bf16_bits(np.array([1.0, np.nan, 1.00390625, 1.01171875], np.float32))  # ties to even
    assert bits[0] == 0x3F80 and np.isnan(to_float32(bits[1:2]))[0] and bits[2] == 0x3F80 and bits[3] == 0x3F82


def test_tool_lists_match_the_tables():
    sys.path.insert(0, os.path.join(ROOT, "tools"))
    import importlib.util

    from ppmerge.models.convert import SOURCES, TARGETS

    spec = importlib.util.spec_from_file_location("convert_tool", os.path.join(ROOT, "tools", "convert.py"))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    assert tool.SOURCE_NAMES == list(SOURCES) and tool.TARGET_NAMES == list(TARGETS)


# ----------------------------------------------------------------------------- Output.dtype of merges

@pytest.mark.parametrize("dtype", [None, "float16", "bf16"])
def test_merge_output_dtype(tmp_path, dtype):
    import ml_dtypes

    from ppmerge.config.merge_schema import MERGE_SCHEMA
    from ppmerge.config.schema import validate
    from ppmerge.merge.runner import run_merge
    from ppmerge.models import build_model, load_pretrained
    from test_merge_runner_support import TASKS, make_pool, raw_config

    paths, sds = make_pool(str(tmp_path / "pool"), tasks=TASKS[:2])
    raw = raw_config(paths, str(tmp_path / "no-data"), str(tmp_path / "out"), tasks=TASKS[:2])
    raw["TaskPool"]["tasks"] = []
    raw["ModelPool"]["models"] = {t: paths[t] for t in TASKS[:2]}
    raw["Output"]["dtype"] = dtype
    result = run_merge(validate(raw, MERGE_SCHEMA), progress=False)
    merged = load_numpy_state_dict(result["model_file"])
    for key, value in sds["base"].items():
        if key == "score.weight":
            continue
        mean = np.mean([sds[t][key] for t in TASKS[:2]], axis=0, dtype=np.float32)
        if dtype is None:
            assert merged[key].dtype == np.float32
            np.testing.assert_allclose(merged[key], mean, rtol=1e-6, atol=1e-7)
        else:
            want = mean.astype(ml_dtypes.bfloat16 if dtype == "bf16" else np.float16)
            got = merged[key].view(ml_dtypes.bfloat16) if dtype == "bf16" else merged[key]
            assert got.dtype == want.dtype, key
            # the cast is of the float32 merge: equal, or one rounding step apart where the float32 sum
            # order differs from numpy's mean by an ulp
            np.testing.assert_allclose(got.astype(np.float32), want.astype(np.float32), rtol=1e-2 if dtype == "bf16"
                                       else 1e-3, atol=1e-6)
    for task in TASKS[:2]:
        assert f"heads.{task}.score.weight" in merged
    model = build_model({"name": "gpt-tiny"}, 2)
    load_pretrained(model, result["model_file"], task="SST2")  # reads back into a float32 model


def test_a_float16_pool_gives_a_float16_model(tmp_path):
    from ppmerge.config.merge_schema import MERGE_SCHEMA
    from ppmerge.config.schema import validate
    from ppmerge.merge.runner import run_merge
    from test_merge_runner_support import make_pool, raw_config

    paths, sds = make_pool(str(tmp_path / "pool"), tasks=["SST2", "MNLI"])
    for name, sd in sds.items():
        save_state_dict({k: v.astype(np.float16) for k, v in sd.items()}, paths[name])
    raw = raw_config(paths, str(tmp_path / "no-data"), str(tmp_path / "out"), tasks=["SST2", "MNLI"])
    raw["TaskPool"]["tasks"] = []
    merged = load_numpy_state_dict(run_merge(validate(raw, MERGE_SCHEMA), progress=False)["model_file"])
    assert {v.dtype for v in merged.values()} == {np.dtype(np.float16)}  # Output.dtype null: the base's
    key = "gpt.decoder.layers.0.linear1.weight"
    mean = (sds["SST2"][key].astype(np.float16).astype(np.float32) + sds["MNLI"][key].astype(np.float16)) / 2
    np.testing.assert_allclose(merged[key].astype(np.float32), mean, rtol=1e-3, atol=1e-4)
