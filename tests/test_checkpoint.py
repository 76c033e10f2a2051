"""ppmerge.models.checkpoint: safe .pdparams loading, round trips with paddle.save/load and
safetensors, atomic writes, load_pretrained errors, tools/convert.py end to end."""
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest

from ppmerge.errors import CheckpointError
from ppmerge.models import fleetx
from ppmerge.models.checkpoint import (load_numpy_state_dict, load_object, load_pretrained, load_state_dict,
                                       save_state_dict, select_task_head)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = {"name": "gpt-tiny", "vocab_size": 128}


@pytest.fixture(scope="module")
def paddle():
    from ppmerge.runtime import import_paddle

    return import_paddle()


@pytest.fixture(scope="module")
def small_state(paddle):
    """numpy state dict of a tiny 2-class model (vocab 128)."""
    from ppmerge.models import build_model

    paddle.seed(0)
    return {key: value.numpy() for key, value in build_model(SMALL, 2).state_dict().items()}


def fresh_model(paddle, num_classes=2, **fields):
    from ppmerge.models import build_model

    paddle.seed(5)
    return build_model(dict(SMALL, **fields), num_classes)


# ----------------------------------------------------------------------------- safe loading

class _Payload:
    """Unpickling this runs `func(*args)`: what a malicious checkpoint does to paddle.load."""

    def __init__(self, func, args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _payloads(marker):
    import builtins

    return {
        "os.system": (os.system, (f"touch {marker}",)),
        "builtins.exec": (builtins.exec, (f"open({str(marker)!r}, 'w').close()",)),
        "subprocess.call": (subprocess.call, (["touch", str(marker)],)),
    }


@pytest.mark.parametrize("kind", ["os.system", "builtins.exec", "subprocess.call"])
def test_malicious_pickle_is_refused_and_nothing_runs(tmp_path, kind):
    marker = tmp_path / "pwned"
    func, args = _payloads(marker)[kind]
    path = tmp_path / "evil.pdparams"
    with open(path, "wb") as f:
        pickle.dump({"gpt.decoder.norm.weight": np.ones(2, np.float32), "x": _Payload(func, args)}, f, protocol=4)
    refused = f"`{func.__module__}.{func.__name__}`"  # os.system pickles as posix.system
    for loader in (load_numpy_state_dict, load_object):
        with pytest.raises(CheckpointError, match=str(path)) as err:
            loader(path)
        assert refused in str(err.value)
    assert not marker.exists()


def test_missing_and_unknown_files(tmp_path):
    with pytest.raises(CheckpointError, match="not found: .*nothere.pdparams"):
        load_numpy_state_dict(tmp_path / "nothere.pdparams")
    with pytest.raises(CheckpointError, match="nothere.safetensors"):
        load_numpy_state_dict(tmp_path / "nothere.safetensors")
    with pytest.raises(CheckpointError, match="expected .pdparams or .safetensors"):
        save_state_dict({"a": np.ones(1)}, tmp_path / "model.pt")
    (tmp_path / "junk.pdparams").write_bytes(b"not a pickle at all")
    with pytest.raises(CheckpointError, match="junk.pdparams"):
        load_numpy_state_dict(tmp_path / "junk.pdparams")
    (tmp_path / "junk.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(CheckpointError, match="junk.safetensors"):
        load_numpy_state_dict(tmp_path / "junk.safetensors")


# ----------------------------------------------------------------------------- round trips

def test_pdparams_round_trip_with_paddle(paddle, tmp_path):
    tensors = {"w32": paddle.randn([3, 4]), "w16": paddle.randn([5]).astype("float16"),
               "wbf16": paddle.randn([2, 2]).astype("bfloat16"), "ids": paddle.arange(6, dtype="int64")}
    # ours → plain paddle.load
    save_state_dict(tensors, tmp_path / "ours.pdparams")
    loaded = paddle.load(str(tmp_path / "ours.pdparams"))
    for key, value in tensors.items():
        assert loaded[key].dtype == value.dtype
        np.testing.assert_array_equal(loaded[key].numpy(), value.numpy())
    # plain paddle.save of a model's state dict → ours
    model = fresh_model(paddle)
    paddle.save(model.state_dict(), str(tmp_path / "paddle.pdparams"))
    paddle.save(tensors, str(tmp_path / "dtypes.pdparams"))
    ours = load_state_dict(tmp_path / "paddle.pdparams")
    assert list(ours) == list(model.state_dict())  # paddle's StructuredToParameterName@@ entry dropped
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(ours[key].numpy(), value.numpy())
    ours = load_state_dict(tmp_path / "dtypes.pdparams")
    for key, value in tensors.items():
        assert ours[key].dtype == value.dtype
        np.testing.assert_array_equal(ours[key].numpy(), value.numpy())
    # a nested object (optimizer state style): paddle pickles its tensors as (name, ndarray)
    paddle.save({"moments": {"m": paddle.ones([2])}, "LR_Scheduler": {"last_epoch": 3}, "lst": [paddle.zeros([1])]},
                str(tmp_path / "opt.pdopt"))
    state = load_object(tmp_path / "opt.pdopt")
    np.testing.assert_array_equal(state["moments"]["m"], np.ones(2, np.float32))
    assert state["LR_Scheduler"] == {"last_epoch": 3} and state["lst"][0].shape == (1,)
    # protocol 2 (what older paddle / big files use) goes through the allow-list too
    paddle.save(tensors, str(tmp_path / "p2.pdparams"), protocol=2)
    np.testing.assert_array_equal(load_numpy_state_dict(tmp_path / "p2.pdparams")["w32"], tensors["w32"].numpy())


def test_safetensors_round_trip_preserves_dtypes(paddle, tmp_path):
    arrays = {"f32": np.arange(6, dtype=np.float32).reshape(2, 3), "f16": np.ones(3, np.float16) / 3,
              "i64": np.arange(4, dtype=np.int64), "f64": np.linspace(0, 1, 3)}
    save_state_dict(arrays, tmp_path / "np.safetensors")
    back = load_numpy_state_dict(tmp_path / "np.safetensors")
    for key, value in arrays.items():
        assert back[key].dtype == value.dtype
        np.testing.assert_array_equal(back[key], value)
    tensors = {"bf16": paddle.randn([3, 2]).astype("bfloat16"), "f16": paddle.randn([4]).astype("float16"),
               "f32": paddle.randn([2])}
    save_state_dict(tensors, tmp_path / "pd.safetensors")
    back = load_state_dict(tmp_path / "pd.safetensors")
    numpy_back = load_numpy_state_dict(tmp_path / "pd.safetensors")
    for key, value in tensors.items():
        assert back[key].dtype == value.dtype
        np.testing.assert_array_equal(back[key].numpy(), value.numpy())
        np.testing.assert_array_equal(numpy_back[key], value.numpy())  # bf16 as uint16 bits, paddle's way
    from ppmerge.models.checkpoint import to_float32

    np.testing.assert_array_equal(to_float32(numpy_back["bf16"]), tensors["bf16"].astype("float32").numpy())


@pytest.mark.parametrize("ext", [".pdparams", ".safetensors"])
def test_interrupted_save_keeps_previous_file(tmp_path, ext):
    path = tmp_path / f"model{ext}"
    save_state_dict({"w": np.ones(4, np.float32)}, path)
    before = path.read_bytes()
    # The big array is written first; the object array then fails mid-serialisation.
    broken = {"w": np.zeros(1 << 20, np.float32), "z": np.array([lambda: 0], dtype=object)}
    with pytest.raises(Exception):
        save_state_dict(broken, path)
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == [path.name]  # no temporary file left behind


def test_killed_writer_keeps_previous_file(tmp_path):
    """A writer process killed half-way through a big save: the final name still holds the old file."""
    path = tmp_path / "model.pdparams"
    save_state_dict({"w": np.ones(4, np.float32)}, path)
    before = path.read_bytes()
    code = ("import sys, numpy as np; sys.path.insert(0, %r)\n"
            "import pickle\n"
            "from ppmerge.models.checkpoint import save_state_dict\n"
            "def dump(obj, f, protocol):\n"
            "    f.write(b'x' * 1000); f.flush(); import os, signal; os.kill(os.getpid(), signal.SIGKILL)\n"
            "pickle.dump = dump\n"
            "save_state_dict({'w': np.zeros(1000, np.float32)}, %r)\n") % (ROOT, str(path))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True)
    assert result.returncode == -9
    assert path.read_bytes() == before
    # A killed process cannot clean up: its partial data stays in a hidden temporary beside it.
    leftovers = [name for name in os.listdir(tmp_path) if name != path.name]
    assert len(leftovers) == 1 and leftovers[0].startswith(".model.pdparams.") and leftovers[0].endswith(".tmp")


# ----------------------------------------------------------------------------- load_pretrained

def test_load_pretrained_paths_and_prefixes(paddle, tmp_path, small_state):
    backbone = {key: value for key, value in small_state.items() if key != "score.weight"}
    # FleetX's GPTForPretraining: `gpt.` keys, fused qkv, fp16 → FleetX prefix form
    fused = fleetx.fuse_state_dict({k: v.astype(np.float16) for k, v in backbone.items()}, num_heads=4)
    save_state_dict(fused, tmp_path / "fleetx" / "model.pdparams")
    # a bare paddlenlp GPTModel (no `gpt.`) with an LM head, in a folder as model_state.pdparams
    bare = {key[len("gpt."):]: value for key, value in backbone.items()}
    bare["lm_head.weight"] = backbone["gpt.embeddings.word_embeddings.weight"]
    save_state_dict(bare, tmp_path / "nlp" / "model_state.pdparams")
    save_state_dict(small_state, tmp_path / "full.safetensors")
    for path, fp16 in ((tmp_path / "fleetx" / "model", True), (tmp_path / "nlp", False),
                       (tmp_path / "full.safetensors", False)):
        model = fresh_model(paddle)
        missing, unexpected = load_pretrained(model, path)
        assert unexpected == []
        assert missing == ([] if str(path).endswith("safetensors") else ["score.weight"])
        for key, value in model.state_dict().items():
            if key in backbone:
                expected = backbone[key].astype(np.float16).astype(np.float32) if fp16 else backbone[key]
                assert value.dtype == paddle.float32
                np.testing.assert_array_equal(value.numpy(), expected, err_msg=key)


def test_load_pretrained_errors(paddle, tmp_path, small_state):
    broken = dict(small_state)
    del broken["gpt.decoder.layers.1.linear2.weight"]
    save_state_dict(broken, tmp_path / "missing.pdparams")
    with pytest.raises(CheckpointError, match="missing 1 weights.*gpt.decoder.layers.1.linear2.weight"):
        load_pretrained(fresh_model(paddle), tmp_path / "missing.pdparams")
    # the classic: a 50257-vocab checkpoint into a 50304-vocab model (here 128 vs 130)
    with pytest.raises(CheckpointError, match=r"word_embeddings.weight has shape \[128, 64\] .* \[130, 64\]"):
        load_pretrained(fresh_model(paddle, vocab_size=130), _saved(small_state, tmp_path / "ok.pdparams"))
    with pytest.raises(CheckpointError, match="not found"):
        load_pretrained(fresh_model(paddle), tmp_path / "nothing" / "model")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="model.pdparams"):
        load_pretrained(fresh_model(paddle), tmp_path / "empty")


def _saved(state, path):
    save_state_dict(state, path)
    return path


def test_merged_model_file(paddle, tmp_path, small_state):
    merged = {key: value for key, value in small_state.items() if key != "score.weight"}
    heads = {"SST2": np.full((64, 2), 0.5, np.float32), "MNLI": np.full((64, 3), -1.0, np.float32)}
    for task, weight in heads.items():
        merged[f"heads.{task}.score.weight"] = weight
    path = _saved(merged, tmp_path / "merged.pdparams")
    with pytest.raises(CheckpointError, match="MNLI, SST2"):
        load_pretrained(fresh_model(paddle), path)
    with pytest.raises(CheckpointError, match="no head for 'QQP'.*heads .*: SST2, MNLI"):
        select_task_head(merged, "QQP")
    plain = select_task_head(merged, "MNLI")
    assert not any(key.startswith("heads.") for key in plain)
    np.testing.assert_array_equal(plain["score.weight"], heads["MNLI"])
    model = fresh_model(paddle, num_classes=3)
    assert load_pretrained(model, path, task="MNLI") == ([], [])
    np.testing.assert_array_equal(model.score.weight.numpy(), heads["MNLI"])
    np.testing.assert_array_equal(model.gpt.decoder.norm.weight.numpy(), small_state["gpt.decoder.norm.weight"])


# ----------------------------------------------------------------------------- tools/convert.py

def run_convert(*args):
    return subprocess.run([sys.executable, os.path.join(ROOT, "tools", "convert.py"), *map(str, args)],
                          capture_output=True, text=True)


def test_convert_cli(tmp_path, small_state):
    backbone = {key: value.astype(np.float16) for key, value in small_state.items() if key != "score.weight"}
    save_state_dict(fleetx.fuse_state_dict(backbone, num_heads=4), tmp_path / "fx" / "model.pdparams")

    result = run_convert("--from", "fleetx", "--to", "safetensors", "--input", tmp_path / "fx" / "model",
                         "--output", tmp_path / "out", "--num-heads", 4)
    assert result.returncode == 0, result.stderr
    converted = load_numpy_state_dict(tmp_path / "out.safetensors")
    assert sorted(converted) == sorted(backbone)
    for key, value in backbone.items():
        assert converted[key].dtype == np.float32
        np.testing.assert_array_equal(converted[key], value.astype(np.float32))

    no_heads = run_convert("--from", "fleetx", "--to", "pdparams", "--input", tmp_path / "fx",
                           "--output", tmp_path / "x.pdparams")
    assert no_heads.returncode == 2 and no_heads.stderr.startswith("error: ") and "--num-heads" in no_heads.stderr
    assert len(no_heads.stderr.strip().splitlines()) == 1
    bad_ext = run_convert("--from", "paddlenlp", "--to", "pdparams", "--input", tmp_path / "out.safetensors",
                          "--output", tmp_path / "y.safetensors")
    assert bad_ext.returncode == 2 and "extension" in bad_ext.stderr
    usage = run_convert("--from", "torch", "--to", "pdparams", "--input", "a", "--output", "b")
    assert usage.returncode == 2

    from tests.test_models import write_hf_gpt2

    write_hf_gpt2(tmp_path / "hf", np.random.default_rng(1))
    hf = run_convert("--from", "hf", "--to", "pdparams", "--input", tmp_path / "hf", "--output", tmp_path / "hf.pdparams")
    assert hf.returncode == 0, hf.stderr
    assert "-o Model.vocab_size=100" in hf.stdout and "-o Model.num_classes=3" in hf.stdout
    assert load_numpy_state_dict(tmp_path / "hf.pdparams")["score.weight"].shape == (32, 3)


def test_split_big_params_are_reassembled(tmp_path):
    """Protocol 2/3 paddle.save files split arrays over 1 GiB into slices (`UnpackBigParamInfor@@`)."""
    whole = np.arange(12, dtype=np.float32).reshape(4, 3)
    flat = whole.reshape(-1)
    saved = {"w@@.0": flat[:5], "w@@.1": flat[5:], "b": np.ones(2, np.float32),
             "UnpackBigParamInfor@@": {"w": {"OriginShape": (4, 3), "slices": ["w@@.0", "w@@.1"]}}}
    with open(tmp_path / "big.pdparams", "wb") as f:
        pickle.dump(saved, f, protocol=2)
    loaded = load_numpy_state_dict(tmp_path / "big.pdparams")
    assert sorted(loaded) == ["b", "w"]
    np.testing.assert_array_equal(loaded["w"], whole)


def test_importing_models_does_not_import_paddle():
    """Tools import ppmerge.models before parsing arguments: --help must stay instant."""
    code = "import sys, ppmerge.models; assert 'paddle' not in sys.modules and 'paddlenlp' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)
    result = run_convert("--help")
    assert result.returncode == 0 and "--num-heads" in result.stdout and "head-interleaved" in result.stdout


# ----------------------------------------------------------------------------- memory: lazy reading, copy-free saving

def _big_state(seed=0):
    """Arrays above the lazy reader's 64 KiB threshold (C and Fortran order, several dtypes) and small ones."""
    rng = np.random.default_rng(seed)
    return {"emb": rng.standard_normal((300, 64), dtype=np.float32),
            "fortran": np.asfortranarray(rng.standard_normal((40, 300))),
            "half": rng.standard_normal(40000).astype(np.float16),
            "ids": np.arange(20000, dtype=np.int64),
            "small": np.ones(3, np.float32)}


def _writers(paddle):
    def ours(state, path):
        save_state_dict(state, path)

    def paddle_save(protocol):
        return lambda state, path: paddle.save({k: paddle.to_tensor(v) for k, v in state.items()}, str(path),
                                               protocol=protocol)

    def plain_pickle(state, path):  # protocol 4, as older ppmerge versions wrote
        with open(path, "wb") as f:
            pickle.dump(state, f, protocol=4)

    return {"ours": ours, "paddle_p4": paddle_save(4), "paddle_p2": paddle_save(2), "pickle_p4": plain_pickle}


@pytest.mark.parametrize("writer", ["ours", "paddle_p4", "paddle_p2", "pickle_p4"])
def test_lazy_reader_equals_paddle_load(paddle, tmp_path, writer):
    """open_state_dict reads every array as paddle.load does (the independent reference), one at a time."""
    from ppmerge.models.checkpoint import open_state_dict
    from ppmerge.models.safe_pickle import LazyArray, LazyPickle

    state = _big_state()
    path = tmp_path / f"{writer}.pdparams"
    _writers(paddle)[writer](state, path)
    reference = {k: v.numpy() for k, v in paddle.load(str(path)).items()}
    eager = load_numpy_state_dict(path)
    with open_state_dict(path) as lazy:
        assert sorted(lazy) == sorted(reference) == sorted(eager) and len(lazy) == len(reference)
        assert {k: lazy.shapes[k] for k in reference} == {k: v.shape for k, v in reference.items()}
        for key, want in reference.items():
            got = lazy[key]
            assert got.dtype == want.dtype and got.flags.writeable, key
            np.testing.assert_array_equal(got, want, err_msg=key)
            np.testing.assert_array_equal(eager[key], want, err_msg=key)
        assert lazy.pop("emb").shape == (300, 64) and "emb" not in lazy and len(lazy) == len(reference) - 1
    with LazyPickle(path) as opened:  # the big arrays really were left on disk (not protocol 2: no raw bytes)
        lazy_keys = {k for k, v in opened.obj.items() if isinstance(v, LazyArray)}
    assert lazy_keys == (set() if writer == "paddle_p2" else {"emb", "fortran", "half", "ids"})


def test_lazy_safetensors(tmp_path):
    from ppmerge.models.checkpoint import open_state_dict

    state = _big_state()
    save_state_dict(state, tmp_path / "m.safetensors")
    with open_state_dict(tmp_path / "m.safetensors") as lazy:
        assert lazy.shapes == {k: v.shape for k, v in state.items()}
        for key, want in state.items():
            np.testing.assert_array_equal(lazy[key], want, err_msg=key)


@pytest.mark.parametrize("kind", ["os.system", "builtins.exec", "subprocess.call"])
def test_lazy_reader_refuses_malicious_pickle(tmp_path, kind):
    """Same allow-list as the eager reader, also behind a big array whose bytes the lazy reader skips."""
    from ppmerge.models.checkpoint import open_state_dict

    marker = tmp_path / "pwned"
    func, args = _payloads(marker)[kind]
    path = tmp_path / "evil.pdparams"
    with open(path, "wb") as f:
        pickle.dump({"w": np.ones(100000, np.float32), "x": _Payload(func, args)}, f, protocol=5)
    with pytest.raises(CheckpointError, match=str(path)) as err:
        open_state_dict(path)
    assert f"`{func.__module__}.{func.__name__}`" in str(err.value)
    assert not marker.exists()


def test_lazy_reader_errors(tmp_path):
    from ppmerge.models.checkpoint import open_state_dict

    save_state_dict(_big_state(), tmp_path / "m.pdparams")
    data = (tmp_path / "m.pdparams").read_bytes()
    (tmp_path / "cut.pdparams").write_bytes(data[:len(data) // 2])
    with pytest.raises(CheckpointError, match="cut.pdparams"):
        open_state_dict(tmp_path / "cut.pdparams")
    (tmp_path / "junk.pdparams").write_bytes(b"not a pickle at all")
    with pytest.raises(CheckpointError, match="junk.pdparams"):
        open_state_dict(tmp_path / "junk.pdparams")
    with pytest.raises(CheckpointError, match="not found: .*nothere.pdparams"):
        open_state_dict(tmp_path / "nothere.pdparams")
    with open(tmp_path / "list.pdparams", "wb") as f:
        pickle.dump([np.ones(2)], f, protocol=5)
    with pytest.raises(CheckpointError, match="list.pdparams: expected a state dict"):
        open_state_dict(tmp_path / "list.pdparams")


def _traced_peak(fn):
    """Peak bytes allocated (numpy buffers and Python objects both show in tracemalloc) while fn runs."""
    import tracemalloc

    tracemalloc.start()
    try:
        start = tracemalloc.get_traced_memory()[0]
        fn()
        return tracemalloc.get_traced_memory()[1] - start
    finally:
        tracemalloc.stop()


def test_save_makes_no_second_copy(tmp_path):
    """Saving 32 MB: the old protocol-4 write (control) holds a full copy at its peak; ours holds none."""
    state = {f"w{i}": np.full((1024, 1024), i, np.float32) for i in range(8)}
    size = sum(v.nbytes for v in state.values())

    def protocol4():
        with open(tmp_path / "p4.pdparams", "wb") as f:
            pickle.dump(state, f, protocol=4)

    assert _traced_peak(protocol4) > 0.9 * size  # the control: every tobytes() copy kept by the memo
    assert _traced_peak(lambda: save_state_dict(state, tmp_path / "ours.pdparams")) < 0.05 * size
    loaded = load_numpy_state_dict(tmp_path / "ours.pdparams")
    assert all(loaded[k].flags.writeable and np.array_equal(loaded[k], v) for k, v in state.items())


def test_lazy_reading_holds_one_array(tmp_path):
    state = {f"w{i}": np.full((1024, 1024), i, np.float32) for i in range(8)}
    save_state_dict(state, tmp_path / "m.pdparams")
    from ppmerge.models.checkpoint import open_state_dict

    def read_each():
        with open_state_dict(tmp_path / "m.pdparams") as lazy:
            for key in list(lazy):
                assert lazy.pop(key)[0, 0] == int(key[1:])

    assert _traced_peak(read_each) < 1.5 * state["w0"].nbytes  # one 4 MB array at a time, not 32 MB
    assert _traced_peak(lambda: load_numpy_state_dict(tmp_path / "m.pdparams")) > 0.9 * 8 * state["w0"].nbytes


# ----------------------------------------------------------------------------- block reads (the fused merge)

def _block_state(seed=1):
    """Every dtype a checkpoint holds, odd shapes (no block size divides them), 1-D and small arrays,
    C and Fortran order; above and below the lazy reader's 64 KiB threshold."""
    rng = np.random.default_rng(seed)
    return {"emb": rng.standard_normal((301, 67), dtype=np.float32),
            "fortran": np.asfortranarray(rng.standard_normal((43, 301))),
            "half": rng.standard_normal(40003).astype(np.float16),
            "bf16": rng.integers(0, 2**16, (401, 97), dtype=np.uint16),  # paddle's bf16 bits
            "ids": np.arange(20011, dtype=np.int64),
            "bias": rng.standard_normal(30011, dtype=np.float32),
            "small": np.ones(3, np.float32)}


def _assemble(sd, key, scratch):
    """The blocks of sd.iter_blocks(key) put back together, checking their order and dtype."""
    whole = sd[key]
    flat = np.empty(whole.size, whole.dtype)
    expected_start = 0
    for start, block in sd.iter_blocks(key, scratch):
        assert start == expected_start and block.ndim == 1 and block.dtype == whole.dtype, key
        assert 0 < block.nbytes <= max(scratch.nbytes, whole.itemsize), key
        flat[start:start + block.size] = block
        expected_start += block.size
    assert expected_start == whole.size, key
    return flat, whole


@pytest.mark.parametrize("writer", ["ours", "paddle_p4", "paddle_p2", "pickle_p4", "safetensors"])
@pytest.mark.parametrize("scratch_bytes", [1003, 4096, 1 << 20])
def test_block_reads_equal_whole_reads(paddle, tmp_path, writer, scratch_bytes):
    """iter_blocks hands out exactly the elements of a whole read (paddle.load for pickles), in storage
    order, whatever the block size; big pickled arrays go through the scratch buffer, never whole."""
    from ppmerge.models.checkpoint import open_state_dict
    from ppmerge.models.safe_pickle import LazyArray

    state = _block_state()
    path = tmp_path / ("m.safetensors" if writer == "safetensors" else f"{writer}.pdparams")
    if writer == "safetensors":
        save_state_dict(state, path)
    else:
        _writers(paddle)[writer](state, path)
    scratch = np.empty(scratch_bytes, np.uint8)
    with open_state_dict(path) as sd:
        if writer != "safetensors":
            reference = paddle.load(str(path))
            for key in state:
                np.testing.assert_array_equal(sd[key], np.asarray(reference[key]), err_msg=key)
        for key in state:
            flat, whole = _assemble(sd, key, scratch)
            np.testing.assert_array_equal(flat, whole.ravel(order=sd.storage_order(key)), err_msg=key)
            np.testing.assert_array_equal(flat.reshape(whole.shape, order=sd.storage_order(key)), whole, err_msg=key)
            if isinstance(sd._entries.get(key), LazyArray):  # read through the scratch buffer, not materialised
                assert all(np.shares_memory(block, scratch) for _, block in sd.iter_blocks(key, scratch)), key
        if writer in ("ours", "pickle_p4"):
            assert sd.storage_order("fortran") == "F" and sd.storage_order("emb") == "C"
            assert isinstance(sd._entries["bf16"], LazyArray) and isinstance(sd._entries["half"], LazyArray)


def test_block_reads_interleave_and_detect_truncation(tmp_path):
    """Block reads use their own file offsets (other reads may come in between); a file cut after it
    was opened is a CheckpointError naming it, not short data."""
    from ppmerge.models.checkpoint import open_state_dict

    state = _block_state()
    path = tmp_path / "m.pdparams"
    save_state_dict(state, path)
    scratch_a, scratch_b = np.empty(5000, np.uint8), np.empty(7000, np.uint8)
    with open_state_dict(path) as sd:
        a, b = sd.iter_blocks("emb", scratch_a), sd.iter_blocks("bias", scratch_b)
        got_a, got_b = [], []
        for (_, block_a), (_, block_b) in zip(a, b):
            np.testing.assert_array_equal(sd["half"], state["half"])  # a whole read in between
            got_a.append(block_a.copy())
            got_b.append(block_b.copy())
        got_a += [block.copy() for _, block in a]
        got_b += [block.copy() for _, block in b]
        np.testing.assert_array_equal(np.concatenate(got_a), state["emb"].ravel())
        np.testing.assert_array_equal(np.concatenate(got_b), state["bias"])
        with pytest.raises(KeyError):
            next(sd.iter_blocks("nothere", scratch_a))
        with pytest.raises(ValueError, match="cannot hold one float64"):
            next(sd.iter_blocks("fortran", np.empty(7, np.uint8)))
        os.truncate(path, os.path.getsize(path) // 2)
        with pytest.raises(CheckpointError, match="m.pdparams: truncated file"):
            for _ in sd.iter_blocks("bias", scratch_a):
                pass


@pytest.mark.parametrize("threads", [1, 3])
def test_read_all_equals_whole_file_read(paddle, tmp_path, threads):
    """read_all (readers side by side, largest first) gives what paddle.load gives, keys in file order;
    a failing check is raised for the first failing key in file order, not the first to fail in time."""
    from ppmerge.models.checkpoint import open_state_dict

    state = _block_state()
    path = tmp_path / "m.pdparams"
    save_state_dict(state, path)
    reference = paddle.load(str(path))
    with open_state_dict(path) as sd:
        got = sd.read_all(threads=threads)
        assert list(got) == list(state)
        for key, value in got.items():
            assert value.dtype == state[key].dtype and value.flags.writeable, key
            np.testing.assert_array_equal(value, np.asarray(reference[key]), err_msg=key)

        def refuse(key, value):
            if key in ("half", "emb", "bf16"):  # emb first in file order; bf16 / half are read before it
                raise CheckpointError(f"bad {key}")

        with pytest.raises(CheckpointError, match="bad emb"):
            sd.read_all(threads=threads, check=refuse)
