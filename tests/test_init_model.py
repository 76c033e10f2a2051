"""tools/init_model.py: a seeded fresh GPT from a preset (backbone only unless --num-classes)."""
import os
import subprocess
import sys

import numpy as np

from ppmerge.models import load_numpy_state_dict

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(*args):
    return subprocess.run([sys.executable, os.path.join(ROOT, "tools", "init_model.py"), *map(str, args)],
                          capture_output=True, text=True)


def run_in_process(*args):
    """tools/init_model.py's main in this process (paddle imported once for the whole file)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("init_model_tool", os.path.join(ROOT, "tools", "init_model.py"))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    assert tool.main([str(a) for a in args]) == 0


def test_init_model_is_seeded_and_shaped_by_the_preset(tmp_path):
    result = run("--preset", "gpt-tiny", "--seed", 0, "--output", tmp_path / "a.pdparams", "-o", "vocab_size=300")
    assert result.returncode == 0 and "wrote 36 tensors" in result.stdout, result.stderr
    for name, seed in (("b", 0), ("c", 1)):  # the same seed in another process gives the same bytes
        run_in_process("--preset", "gpt-tiny", "--seed", seed, "--output", tmp_path / f"{name}.pdparams",
                       "-o", "vocab_size=300")
    a, b, c = (load_numpy_state_dict(tmp_path / f"{n}.pdparams") for n in "abc")
    assert not any(k.startswith("score.") for k in a)  # a base: backbone only
    assert len(a) == 4 + 2 * 16  # embeddings x2, final norm x2, 16 tensors per layer, 2 layers
    assert a["gpt.embeddings.word_embeddings.weight"].shape == (300, 64)
    assert a["gpt.decoder.layers.1.linear1.weight"].shape == (64, 256)
    for key in a:
        assert a[key].dtype == np.float32 and a[key].tobytes() == b[key].tobytes(), key
    assert not np.array_equal(a["gpt.decoder.layers.0.linear1.weight"], c["gpt.decoder.layers.0.linear1.weight"])
    # paddlenlp's GPT init: Normal(0, initializer_range = 0.02) weights, LayerNorm 1 / 0
    weights = np.concatenate([a[k].ravel() for k in a if k.endswith("linear1.weight") or "q_proj.weight" in k])
    assert abs(weights.std() - 0.02) < 0.002 and abs(weights.mean()) < 0.002
    np.testing.assert_array_equal(a["gpt.decoder.norm.weight"], np.ones(64, np.float32))
    np.testing.assert_array_equal(a["gpt.decoder.norm.bias"], np.zeros(64, np.float32))


def test_head_dtype_and_demo_base(tmp_path):
    from ppmerge.demo import write_base

    run_in_process("--preset", "gpt-tiny", "--seed", 3, "--output", tmp_path / "h.safetensors", "--num-classes", 3,
                   "--dtype", "bfloat16")
    head = load_numpy_state_dict(tmp_path / "h.safetensors")
    assert head["score.weight"].shape == (64, 3) and head["score.weight"].dtype == np.uint16  # bf16 bits
    run_in_process("--preset", "gpt-tiny", "--seed", 3, "--output", tmp_path / "base.pdparams")
    write_base(str(tmp_path / "demo.pdparams"), 3)  # the demo's base is the same command's output
    ours, demo = (load_numpy_state_dict(tmp_path / n) for n in ("base.pdparams", "demo.pdparams"))
    assert sorted(ours) == sorted(demo) and all(ours[k].tobytes() == demo[k].tobytes() for k in ours)


def test_bad_input(tmp_path):
    existing = tmp_path / "x.pdparams"
    existing.write_bytes(b"mine")
    for args, message in ((["--preset", "gpt-7b"], "unknown architecture"),
                          (["-o", "depth=3"], "-o depth=3: expected FIELD=VALUE"),
                          (["-o", "hidden_size=30"], "not divisible"),
                          (["--output", existing], "already exists")):
        argv = ["--output", tmp_path / "new.pdparams", *args] if "--output" not in args else args
        result = run(*argv)
        assert result.returncode == 2 and result.stderr.startswith("error: ") and message in result.stderr, result.stderr
    assert existing.read_bytes() == b"mine" and not (tmp_path / "new.pdparams").exists()
