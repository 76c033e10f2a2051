"""The tiny T5 workflow a new user runs from the README (issue 11's gaps): a sentencepiece model from
tools/make_spiece.py, a seeded T5 base from tools/init_model.py --preset t5-tiny, a LoRA run refused
without Model.pretrained, and a LoRA pool refused when the adapter names another local base."""
import importlib.util
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from ppmerge.errors import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tool(name):
    spec = importlib.util.spec_from_file_location(f"{name}_tool", os.path.join(ROOT, "tools", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(name, *args):
    return subprocess.run([sys.executable, os.path.join(ROOT, "tools", f"{name}.py"), *map(str, args)],
                          capture_output=True, text=True)


def one_line_error(result, quiet=True):
    assert result.returncode == 2 and (result.stdout == "" or not quiet), (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in result.stderr, result.stderr
    return lines[0]


@pytest.fixture(scope="module")
def journey(glue_suite, tmp_path_factory):
    """make_spiece (vocab 400) then init_model --preset t5-tiny with that vocabulary, in process."""
    folder = tmp_path_factory.mktemp("journey")
    spiece = str(folder / "spiece.model")
    assert tool("make_spiece").main(["--data", glue_suite["glue"], "--out", spiece, "--vocab-size", "400"]) == 0
    from ppmerge.data.t5_tokenizer import load_t5_tokenizer

    vocab = load_t5_tokenizer(spiece).vocab_size
    base = str(folder / "base.pdparams")
    assert tool("init_model").main(["--preset", "t5-tiny", "-o", f"vocab_size={vocab}", "--seed", "0",
                                    "--output", base]) == 0
    return {"folder": folder, "spiece": spiece, "vocab": vocab, "base": base, "data": glue_suite["glue"]}


def test_make_spiece_writes_a_t5_tokenizer_of_the_asked_size(journey):
    import sentencepiece

    from ppmerge.data.t5_tokenizer import suite_texts

    sp = sentencepiece.SentencePieceProcessor(model_file=journey["spiece"])  # the package itself, not our wrapper
    assert journey["vocab"] == sp.get_piece_size() == 400
    assert (sp.pad_id(), sp.eos_id(), sp.unk_id(), sp.bos_id()) == (0, 1, 2, -1)
    texts = suite_texts(journey["data"])
    for text in texts[:50:7]:  # it learnt the suite's text: encoding round-trips without unknown pieces
        ids = sp.encode(text)
        assert 2 not in ids and sp.decode(ids) == text


def test_make_spiece_errors_are_one_line_and_write_nothing(journey, tmp_path):
    line = one_line_error(run("make_spiece", "--data", journey["data"], "--out", journey["spiece"]))
    assert "--out already exists" in line and "--overwrite" in line
    assert "--data" in one_line_error(run("make_spiece", "--data", tmp_path / "nope", "--out", tmp_path / "a.model"))
    assert "--vocab-size" in one_line_error(run("make_spiece", "--data", journey["data"], "--out",
                                                tmp_path / "b.model", "--vocab-size", "3"))
    line = one_line_error(run("make_spiece", "--data", journey["data"], "--out", tmp_path / "d.model",
                              "--vocab-size", "100000"))
    assert "100000-piece" in line and "Vocabulary size too high" in line
    (tmp_path / "empty").mkdir()
    assert "no GLUE task folder" in one_line_error(run("make_spiece", "--data", tmp_path / "empty",
                                                       "--out", tmp_path / "c.model"))
    assert sorted(os.listdir(tmp_path)) == ["empty"]


def test_init_model_t5_tiny_is_a_seeded_base_of_the_t5_layout(journey, tmp_path):
    from ppmerge.models.checkpoint import load_numpy_state_dict
    from ppmerge.models.t5 import t5_state_shapes

    a = load_numpy_state_dict(journey["base"])
    # layout from the paddle-free shape table, t5-tiny's sizes written out here
    assert {k: tuple(v.shape) for k, v in a.items()} == {k: tuple(s) for k, s in
                                                        t5_state_shapes({"name": "t5-tiny", "vocab_size": 400}).items()}
    assert a["t5.shared.weight"].shape == (400, 64) and a["lm_head.weight"].shape == (64, 400)
    assert a["t5.encoder.block.1.layer.1.DenseReluDense.wi_0.weight"].shape == (64, 128)
    assert all(v.dtype == np.float32 and np.isfinite(v).all() for v in a.values())
    # the same seed in another process: the same bytes; another seed: other values
    same, other = tmp_path / "same.pdparams", tmp_path / "other.pdparams"
    for path, seed in ((same, 0), (other, 1)):
        result = run("init_model", "--preset", "t5-tiny", "-o", "vocab_size=400", "--seed", seed, "--output", path)
        assert result.returncode == 0 and f"wrote {len(a)} tensors" in result.stdout, result.stderr
    b, c = load_numpy_state_dict(str(same)), load_numpy_state_dict(str(other))
    assert all(a[k].tobytes() == b[k].tobytes() for k in a)
    assert not np.array_equal(a["t5.shared.weight"], c["t5.shared.weight"])
    # the demo's base is this function (moved from ppmerge.demo, no second copy)
    from ppmerge.demo import write_t5_base

    write_t5_base(str(tmp_path / "demo.pdparams"), {"name": "t5-tiny", "vocab_size": 400}, 0)
    d = load_numpy_state_dict(str(tmp_path / "demo.pdparams"))
    assert all(a[k].tobytes() == d[k].tobytes() for k in a)


def test_init_model_t5_bad_options_exit_2(tmp_path):
    out = tmp_path / "t5.pdparams"
    assert "--num-classes" in one_line_error(run("init_model", "--preset", "t5-tiny", "--num-classes", 2, "--output", out))
    line = one_line_error(run("init_model", "--preset", "t5-tiny", "-o", "hidden_dropout_prob=0.1", "--output", out))
    assert "hidden_dropout_prob" in line and "vocab_size" in line
    assert "vocab_size" in one_line_error(run("init_model", "--preset", "t5-tiny", "-o", "vocab_size=0", "--output", out))
    assert not os.listdir(tmp_path)


def test_lora_run_without_a_base_is_refused(journey, tmp_path):
    from ppmerge.config import load_config
    from ppmerge.data import task_root
    from ppmerge.engine import FinetuneModule

    root = task_root("SST2", journey["data"], "glue")
    overrides = [f"Tokenizer.spiece_model={journey['spiece']}", f"Model.vocab_size={journey['vocab']}",
                 f"Data.Train.dataset.root={root}", f"Data.Eval.dataset.root={root}", "Model.lora.r=4",
                 f"Engine.save_load.output_dir={tmp_path / 'run'}"]
    cfg = load_config(os.path.join(ROOT, "configs", "t5", "finetune_t5_tiny_glue.yaml"), overrides)
    with pytest.raises(ConfigError, match=r"^Model\.pretrained: .*set Model\.pretrained"):
        FinetuneModule(cfg)
    line = one_line_error(run("train", "-c", os.path.join(ROOT, "configs", "t5", "finetune_t5_tiny_glue.yaml"),
                              *[a for o in overrides for a in ("-o", o)]), quiet=False)  # train prints the config
    assert "Model.pretrained" in line and "Model.lora" in line
    assert not (tmp_path / "run").exists()
    # with the base it builds (LoRA layers on the loaded base weights)
    cfg = load_config(os.path.join(ROOT, "configs", "t5", "finetune_t5_tiny_glue.yaml"),
                      overrides + [f"Model.pretrained={journey['base']}"])
    module = FinetuneModule(cfg)
    from ppmerge.models.checkpoint import load_numpy_state_dict

    base = load_numpy_state_dict(journey["base"])
    state = module.network.state_dict()
    np.testing.assert_array_equal(state["t5.encoder.block.0.layer.0.SelfAttention.q.weight"].numpy(),
                                  base["t5.encoder.block.0.layer.0.SelfAttention.q.weight"])


def _adapter(folder, base_file, named):
    """A PEFT LoRA folder (our key names) on q of block 0 of `base_file`, naming `named` as its base."""
    from safetensors.numpy import save_file

    from ppmerge.models.checkpoint import load_numpy_state_dict

    key = "t5.encoder.block.0.layer.0.SelfAttention.q"
    w = load_numpy_state_dict(base_file)[key + ".weight"]
    rng = np.random.default_rng(0)
    os.makedirs(folder)
    save_file({f"base_model.model.{key}.lora_A.weight": rng.standard_normal((2, w.shape[0])).astype(np.float32),
               f"base_model.model.{key}.lora_B.weight": rng.standard_normal((w.shape[1], 2)).astype(np.float32)},
              os.path.join(folder, "adapter_model.safetensors"))
    with open(os.path.join(folder, "adapter_config.json"), "w") as f:
        json.dump({"peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": ["q"], "bias": "none",
                   "base_model_name_or_path": named}, f)
    return str(folder)


def test_lora_pool_checks_the_base_the_adapter_names(journey, tmp_path):
    from ppmerge.merge.model_pool import NO_HEADS, ModelPool

    base = journey["base"]
    other = str(tmp_path / "other.pdparams")
    assert tool("init_model").main(["--preset", "t5-tiny", "-o", f"vocab_size={journey['vocab']}", "--seed", "1",
                                    "--output", other]) == 0
    copy = str(tmp_path / "copy.pdparams")
    shutil.copyfile(base, copy)
    good = _adapter(tmp_path / "good", base, base)
    hub = _adapter(tmp_path / "hub", base, "google/flan-t5-base")  # no local path: not checked
    assert ModelPool(base, {"SST2": good, "RTE": hub}, NO_HEADS).lora is not None
    assert ModelPool(copy, {"SST2": good}, NO_HEADS).lora is not None  # a byte-identical copy is the same base
    with pytest.raises(ConfigError) as err:
        ModelPool(other, {"SST2": good}, NO_HEADS)
    message = str(err.value)
    assert "\n" not in message and "ModelPool.base" in message
    assert os.path.abspath(base) in message and os.path.abspath(other) in message


def test_the_readme_tiny_t5_block_runs_as_written(tmp_path):
    """The README's tiny T5 block, verbatim, in a fresh folder (tools/ and configs/ linked in, this python
    first on PATH): every step exits 0 and the merge writes its report over both tasks."""
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        text = f.read()
    block = text.split("<!-- tiny-t5-workflow -->\n```bash\n", 1)[1].split("\n```", 1)[0]
    for name in ("tools", "configs"):
        os.symlink(os.path.join(ROOT, name), tmp_path / name)
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""),
               PYTHONPATH=ROOT, PPMERGE_NO_TQDM="1")
    result = subprocess.run(["bash", "-e", "-c", block], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "200 pieces" in result.stdout and "t5-tiny" in result.stdout
    for task in ("SST2", "RTE"):
        assert (tmp_path / "t5tiny" / task / "lora" / "adapter_model.pdparams").is_file()
    with open(tmp_path / "t5tiny" / "merge" / "report.json", encoding="utf-8") as f:
        report = json.load(f)
    assert [m["name"] for m in report["pool"]] == ["SST2", "RTE"]
    assert os.path.isfile(os.path.join(tmp_path, report["model_file"]))  # relative or absolute
