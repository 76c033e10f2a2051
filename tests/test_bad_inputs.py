"""A catalogue of bad inputs and faults across every tool (train, eval, merge, convert, make_glue_data,
extract_task_vector). Each case runs the tool in-process through `run_tool(main, argv)` (what
`python tools/x.py` does) and asserts: exit code 2, exactly one `error:` line on stderr naming the
file / key / row, no traceback, no output left behind, and no existing file touched (the whole
workspace hashed before and after). The fault cases (kill -9 during a save, Ctrl-C, a full disk, a
read-only folder, a diverging loss) follow the table."""
import contextlib
import hashlib
import importlib.util
import io
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from test_engine_support import ROOT, TINY, task_overrides
from test_merge_runner_support import TASKS, make_pool, raw_config, write_yaml

_TOOLS = {}


def tool(name):
    if name not in _TOOLS:
        spec = importlib.util.spec_from_file_location(f"bad_inputs_tool_{name}", os.path.join(ROOT, "tools", f"{name}.py"))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        _TOOLS[name] = module
    return _TOOLS[name]


def run_in_process(name, argv):
    """(exit code, stdout, stderr) of `python tools/<name>.py argv`, in this process."""
    from ppmerge.cli import run_tool

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            run_tool(tool(name).main, [str(a) for a in argv])
            code = 0
        except SystemExit as exc:
            code = exc.code
    return code, out.getvalue(), err.getvalue()


def tree_hash(*folders, content=True):
    """path -> sha1 of every file (and the names of folders) under `folders`; content=False: size and
    mtime in ns instead (cheap, for the big shared model files)."""
    state = {}
    for folder in folders:
        for root, dirs, files in os.walk(folder):
            for d in dirs:
                state[os.path.join(root, d)] = "dir"
            for f in files:
                path = os.path.join(root, f)
                if content:
                    with open(path, "rb") as fh:
                        state[path] = hashlib.sha1(fh.read()).hexdigest()
                else:
                    st = os.stat(path)
                    state[path] = (st.st_size, st.st_mtime_ns, st.st_ino)
    return state


# ------------------------------------------------------------------------------------------ fixtures

@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Shared, never-modified inputs: a generated suite, a model pool (base + 3 fine-tuned), configs."""
    from ppmerge.data.synthetic import write_glue_suite

    base = tmp_path_factory.mktemp("world")
    data = str(base / "data")
    write_glue_suite(data, layout="glue", n_train=16, n_dev=8, n_test=4, seed=0, tasks=TASKS)
    paths, sds = make_pool(str(base / "pool"))
    world = {"dir": str(base), "data": data, "paths": paths, "sds": sds}
    before = tree_hash(str(base))
    yield world
    assert tree_hash(str(base)) == before  # and by content, once, after every case


class Ctx:
    """What a case's setup gets: its own empty folder, the shared world, and writers."""

    def __init__(self, world, folder):
        self.world, self.dir = world, str(folder)
        self.out = os.path.join(self.dir, "out")

    def path(self, name):
        return os.path.join(self.dir, name)

    def write(self, name, text, mode="w"):
        path = self.path(name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, mode) as f:
            f.write(text)
        return path

    def train(self, *overrides, task="SST2", out=None):
        """tools/train.py argv on the tiny config and the world's `task` data."""
        argv = ["-c", TINY]
        for o in task_overrides(task, self.world["data"], out or self.out) + [
                "Engine.num_train_epochs=1", "Data.Train.sampler.batch_size=4", "Data.Eval.sampler.batch_size=8",
                "Data.Train.dataset.max_length=16", "Data.Eval.dataset.max_length=16"] + list(overrides):
            argv += ["-o", o]
        return argv

    def data_copy(self, task="SST2"):
        """A private copy of the task's data folder (to damage)."""
        from ppmerge.data import task_root

        src = task_root(task, self.world["data"], "glue")
        dst = self.path("data_" + task)
        shutil.copytree(src, dst)
        return dst

    def model(self, name, sd=None, **changes):
        """A model file: the world's SST2 model with `changes` (key -> value) applied."""
        from ppmerge.models import save_state_dict

        sd = dict(self.world["sds"]["SST2"] if sd is None else sd)
        for key, value in changes.items():
            sd[key.replace("__", ".")] = value
        path = self.path(name)
        save_state_dict(sd, path)
        return path

    def nan_model(self, name, value=np.nan, source="SST2"):
        sd = {k: v.copy() for k, v in self.world["sds"][source].items()}
        sd["gpt.embeddings.word_embeddings.weight"][3, 5] = value
        return self.model(name, sd)

    def merge_yaml(self, out=None, models=None, **changes):
        """A merge config file for the world's pool; `changes`: section -> {key: value} updates."""
        paths = dict(self.world["paths"])
        paths.update(models or {})
        cfg = raw_config(paths, self.world["data"], out or self.out)
        for section, values in changes.items():
            if values is None or cfg[section] is None:
                cfg[section] = values
            else:
                cfg[section].update(values)
        return write_yaml(cfg, self.path("merge.yaml"))

    def eval(self, *overrides, weights=None, extra=()):
        argv = self.train(*overrides, out=self.path("unused_train_out"))
        argv += ["-o", f"Model.pretrained={weights or self.world['paths']['SST2']}", *extra]
        return argv


def deep_pickle(path, depth=100_000):
    """A pickle of {"a": [[[...]]]} nested `depth` lists deep, written opcode by opcode."""
    with open(path, "wb") as f:
        f.write(b"\x80\x02}X\x01\x00\x00\x00a" + b"]" * depth + b"a" * (depth - 1) + b"s.")
    return path


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch /tmp/ppmerge_pwned",))


def _sst2_rows(ctx, rows, name="train.tsv"):
    folder = ctx.data_copy("SST2")
    with open(os.path.join(folder, name), "w") as f:
        f.write("sentence\tlabel\n" + "".join(r + "\n" for r in rows))
    return folder


def _stsb(ctx, score):
    folder = ctx.data_copy("STSB")
    with open(os.path.join(folder, "train.tsv")) as f:
        lines = f.read().splitlines()
    cols = lines[2].split("\t")
    cols[-1] = score
    lines[2] = "\t".join(cols)
    with open(os.path.join(folder, "train.tsv"), "w") as f:
        f.write("\n".join(lines) + "\n")
    return folder


def _train_data(ctx, folder, task="SST2", split=None):
    extra = [f"Data.Train.dataset.root={folder}", f"Data.Eval.dataset.root={folder}"]
    return ctx.train(*extra, *([f"Data.Train.dataset.split={split}"] if split else []), task=task)


def _foreign_dir(ctx, name="out"):
    """A user's folder with their own files (must come through untouched)."""
    path = ctx.path(name)
    ctx.write(f"{name}/notes.txt", "my notes\n")
    ctx.write(f"{name}/thesis/chapter1.tex", "\\chapter{One}\n")
    return path


def _marked(ctx, kind, name="out"):
    path = ctx.path(name)
    ctx.write(f"{name}/.ppmerge-output", f"{kind}\n")
    ctx.write(f"{name}/report.json", "{}\n")
    return path


# ------------------------------------------------------------------------------------------ the table
# (id, tool, setup(ctx) -> (argv, substring the error line must contain))

CASES = []


def case(name, tool_name):
    def wrap(fn):
        CASES.append(pytest.param(tool_name, fn, id=f"{tool_name}-{name}"))
        return fn
    return wrap


def _train_cfg(name, overrides, expect):
    case(name, "train")(lambda ctx: (ctx.train(*overrides), expect))


# --- train: config values
for _name, _ov, _exp in [
    ("batch-size-0", ["Data.Train.sampler.batch_size=0"], "Data.Train.sampler.batch_size"),
    ("batch-size-negative", ["Data.Train.sampler.batch_size=-3"], "Data.Train.sampler.batch_size"),
    ("eval-batch-size-0", ["Data.Eval.sampler.batch_size=0"], "Data.Eval.sampler.batch_size"),
    ("max-length-0", ["Data.Train.dataset.max_length=0"], "Data.Train.dataset.max_length"),
    ("max-length-over-positions", ["Data.Train.dataset.max_length=2048"], "Data.Train.dataset.max_length"),
    ("eval-max-length-over-positions", ["Data.Eval.dataset.max_length=513"], "Data.Eval.dataset.max_length"),
    ("max-length-over-explicit-positions", ["Model.max_position_embeddings=8"], "max_position_embeddings"),
    ("lr-nan", ["Optimizer.lr.learning_rate=.nan"], "Optimizer.lr.learning_rate"),
    ("lr-inf", ["Optimizer.lr.learning_rate=.inf"], "Optimizer.lr.learning_rate"),
    ("lr-negative", ["Optimizer.lr.learning_rate=-1e-3"], "Optimizer.lr.learning_rate"),
    ("seed-negative", ["Global.seed=-1"], "Global.seed"),
    ("seed-too-big", ["Global.seed=99999999999"], "Global.seed"),
    ("accumulate-0", ["Engine.accumulate_steps=0"], "Engine.accumulate_steps"),
    ("logging-freq-0", ["Engine.logging_freq=0"], "Engine.logging_freq"),
    ("eval-freq-negative", ["Engine.eval_freq=-2"], "Engine.eval_freq"),
    ("epochs-negative", ["Engine.num_train_epochs=-1"], "Engine.num_train_epochs"),
    ("beta1-above-1", ["Optimizer.beta1=1.5"], "Optimizer.beta1"),
    ("beta2-nan", ["Optimizer.beta2=.nan"], "Optimizer.beta2"),
    ("epsilon-negative", ["Optimizer.epsilon=-1.0"], "Optimizer.epsilon"),
    ("weight-decay-negative", ["Optimizer.weight_decay=-0.1"], "Optimizer.weight_decay"),
    ("warmup-negative", ["Optimizer.lr.warmup=-1"], "Optimizer.lr.warmup"),
    ("clip-norm-inf", ["Optimizer.grad_clip.clip_norm=.inf"], "Optimizer.grad_clip.clip_norm"),
    ("dropout-above-1", ["Model.hidden_dropout_prob=2.0"], "Model.hidden_dropout_prob"),
    ("num-classes-0", ["Model.num_classes=0"], "Model.num_classes"),
    ("hidden-size-0", ["Model.hidden_size=0"], "Model.hidden_size"),
    ("scale-loss-0", ["Engine.mix_precision.scale_loss=0"], "Engine.mix_precision.scale_loss"),
    ("num-workers-negative", ["Data.Train.loader.num_workers=-1"], "Data.Train.loader.num_workers"),
    ("dp-degree-0", ["Distributed.dp_degree=0"], "Distributed.dp_degree"),
    ("micro-batch-0", ["Global.micro_batch_size=0"], "Global.micro_batch_size"),
    ("micro-batch-mismatch", ["Global.micro_batch_size=5"], "Global.micro_batch_size"),
    ("vocab-over-int32", ["Model.vocab_size=100000000000"], "Model.vocab_size"),
    ("model-too-big-for-memory", ["Model.vocab_size=2000000000", "Model.hidden_size=1024",
                                  "Model.num_attention_heads=16"], "out of memory"),
    ("unknown-key", ["Engine.num_train_epoch=2"], "Engine.num_train_epoch"),
    ("wrong-type", ["Data.Train.sampler.batch_size=many"], "Data.Train.sampler.batch_size"),
    ("bool-as-int", ["Engine.accumulate_steps=true"], "Engine.accumulate_steps"),
    ("unknown-model-name", ["Model.name=gpt-9000"], "Model.name"),
    ("bad-split-name", ["Data.Train.dataset.split=validation"], "validation"),
    ("unknown-task", ["Data.Train.dataset.name=SQuAD"], "SQuAD"),
    ("bad-device", ["Global.device=tpu:x"], "tpu:x"),
    ("run-mode-step-without-max-steps", ["Engine.run_mode=step"], "Engine.max_steps"),
]:
    _train_cfg(_name, _ov, _exp)


@case("config-missing", "train")
def _(ctx):
    return ["-c", ctx.path("nope.yaml")], "nope.yaml"


@case("config-is-folder", "train")
def _(ctx):
    os.makedirs(ctx.path("cfgdir"))
    return ["-c", ctx.path("cfgdir")], "cfgdir"


@case("config-invalid-yaml", "train")
def _(ctx):
    return ["-c", ctx.write("bad.yaml", "Engine: [1, 2\n")], "bad.yaml"


@case("config-not-utf8", "train")
def _(ctx):
    return ["-c", ctx.write("latin.yaml", b"Engine:\n  name: caf\xe9\n", "wb")], "latin.yaml"


@case("config-top-level-list", "train")
def _(ctx):
    return ["-c", ctx.write("list.yaml", "- a\n- b\n")], "list.yaml"


@case("config-duplicate-key", "train")
def _(ctx):
    return ["-c", ctx.write("dup.yaml", f"_base_: {TINY}\nEngine:\n  logging_freq: 1\n  logging_freq: 2\n")], "dup.yaml"


@case("config-missing-base", "train")
def _(ctx):
    return ["-c", ctx.write("child.yaml", "_base_: ./missing_base.yaml\n")], "missing_base.yaml"


@case("config-nested-20000", "train")
def _(ctx):
    return ["-c", ctx.write("deep.yaml", "Global:\n  seed: " + "[" * 20000 + "]" * 20000 + "\n")], "deep.yaml"


@case("config-nested-mapping-5000", "train")
def _(ctx):
    text = "Global:\n" + "".join("  " * i + f"k{i}:\n" for i in range(1, 5000))
    return ["-c", ctx.write("deepmap.yaml", text)], "deepmap.yaml"


@case("override-nested-20000", "train")
def _(ctx):
    return ctx.train("Engine.mix_precision.custom_white_list=" + "[" * 20000 + "]" * 20000), "custom_white_list"


# --- train: output folder
@case("output-dir-is-a-file", "train")
def _(ctx):
    return ctx.train(out=ctx.write("outfile", "mine\n")), "outfile"


@case("output-dir-foreign-files", "train")
def _(ctx):
    return ctx.train(out=_foreign_dir(ctx)), "notes.txt"


@case("output-dir-other-kind", "train")
def _(ctx):
    return ctx.train(out=_marked(ctx, "merge")), "merge output"


@case("output-dir-under-a-file", "train")
def _(ctx):
    ctx.write("afile", "x")
    return ctx.train(out=ctx.path("afile/sub")), "afile"


# --- train: data
@case("data-root-missing", "train")
def _(ctx):
    return _train_data(ctx, ctx.path("no_data")), "no_data"


@case("train-file-missing", "train")
def _(ctx):
    folder = ctx.data_copy()
    os.remove(os.path.join(folder, "train.tsv"))
    return _train_data(ctx, folder), "train.tsv"


@case("train-file-header-only", "train")
def _(ctx):
    return _train_data(ctx, _sst2_rows(ctx, [])), "no examples"


@case("train-file-empty", "train")
def _(ctx):
    folder = ctx.data_copy()
    open(os.path.join(folder, "train.tsv"), "w").close()
    return _train_data(ctx, folder), "no examples"


@case("train-file-blank-lines", "train")
def _(ctx):
    folder = ctx.data_copy()
    with open(os.path.join(folder, "train.tsv"), "w") as f:
        f.write("sentence\tlabel\n\n\n")
    return _train_data(ctx, folder), "train.tsv: file has no examples"


@case("train-file-is-folder", "train")
def _(ctx):
    folder = ctx.data_copy()
    os.remove(os.path.join(folder, "train.tsv"))
    os.makedirs(os.path.join(folder, "train.tsv"))
    return _train_data(ctx, folder), "train.tsv"


@case("dev-file-header-only", "train")
def _(ctx):
    folder = ctx.data_copy()
    with open(os.path.join(folder, "dev.tsv"), "w") as f:
        f.write("sentence\tlabel\n")
    return _train_data(ctx, folder), "dev.tsv: file has no examples"


@case("row-wrong-columns", "train")
def _(ctx):
    return _train_data(ctx, _sst2_rows(ctx, ["a good film\t1", "too\tmany\tcolumns"])), "train.tsv:3"


@case("row-bad-label", "train")
def _(ctx):
    return _train_data(ctx, _sst2_rows(ctx, ["a good film\t1", "a bad film\tmaybe"])), "train.tsv:3"


@case("row-huge-field-wrong-columns", "train")
def _(ctx):
    return _train_data(ctx, _sst2_rows(ctx, ["x" * 300_000 + "\t1\textra"])), "train.tsv:2"


@case("stsb-score-above-5", "train")
def _(ctx):
    return _train_data(ctx, _stsb(ctx, "7.5"), task="STSB"), "train.tsv:3"


@case("stsb-score-negative", "train")
def _(ctx):
    return _train_data(ctx, _stsb(ctx, "-0.5"), task="STSB"), "train.tsv:3"


@case("stsb-score-nan", "train")
def _(ctx):
    return _train_data(ctx, _stsb(ctx, "nan"), task="STSB"), "train.tsv:3"


@case("stsb-score-text", "train")
def _(ctx):
    return _train_data(ctx, _stsb(ctx, "high"), task="STSB"), "train.tsv:3"


@case("fewer-examples-than-a-batch", "train")
def _(ctx):
    return _train_data(ctx, _sst2_rows(ctx, ["a good film\t1", "a bad film\t0"])), "train.tsv"


@case("output-dir-is-the-data-folder", "train")
def _(ctx):
    return ctx.train(out=ctx.data_copy()), "train.tsv"


@case("data-not-utf8", "train")
def _(ctx):
    folder = ctx.data_copy()
    with open(os.path.join(folder, "train.tsv"), "wb") as f:
        f.write(b"sentence\tlabel\ncaf\xe9 film\t1\n")
    return _train_data(ctx, folder), "train.tsv"


@case("train-on-test-split", "train")
def _(ctx):
    return ctx.train("Data.Train.dataset.split=test"), "test.tsv"


@case("eval-on-test-split", "train")
def _(ctx):
    return ctx.train("Data.Eval.dataset.split=test"), "test.tsv"


@case("header-too-short", "train")
def _(ctx):
    folder = ctx.data_copy("MNLI")
    with open(os.path.join(folder, "train.tsv"), "w") as f:
        f.write("index\tsentence1\n0\ta\n")
    return _train_data(ctx, folder, task="MNLI"), "train.tsv:1"


# --- train: pretrained weights
def _pretrained(name, make, expect):
    case(name, "train")(lambda ctx: (ctx.train(f"Model.pretrained={make(ctx)}"), expect))


_pretrained("pretrained-missing", lambda ctx: ctx.path("none.pdparams"), "none.pdparams")
_pretrained("pretrained-bad-extension", lambda ctx: ctx.write("w.bin", "x"), "w.bin")
_pretrained("pretrained-text-file", lambda ctx: ctx.write("t.pdparams", "not a pickle"), "t.pdparams")
_pretrained("pretrained-truncated", lambda ctx: ctx.write(
    "cut.pdparams", open(ctx.world["paths"]["SST2"], "rb").read()[:5000], "wb"), "cut.pdparams")
_pretrained("pretrained-empty-file", lambda ctx: ctx.write("zero.pdparams", ""), "zero.pdparams")
_pretrained("pretrained-malicious-pickle", lambda ctx: ctx.write(
    "evil.pdparams", pickle.dumps({"a": _Evil()}), "wb"), "evil.pdparams")
_pretrained("pretrained-not-a-dict", lambda ctx: ctx.write(
    "list.pdparams", pickle.dumps([1, 2, 3], protocol=2), "wb"), "list.pdparams")
_pretrained("pretrained-deep-nested", lambda ctx: deep_pickle(ctx.path("deep.pdparams")), "deep.pdparams")
_pretrained("pretrained-nan", lambda ctx: ctx.nan_model("nan.pdparams"), "nan.pdparams")
_pretrained("pretrained-inf", lambda ctx: ctx.nan_model("inf.pdparams", np.inf), "inf.pdparams")
_pretrained("pretrained-nan-safetensors", lambda ctx: ctx.nan_model("nan.safetensors"), "nan.safetensors")
_pretrained("pretrained-shape-mismatch", lambda ctx: ctx.model(
    "shape.pdparams", gpt__embeddings__position_embeddings__weight=np.zeros((8, 64), np.float32)),
    "gpt.embeddings.position_embeddings.weight")
_pretrained("pretrained-missing-keys", lambda ctx: ctx.model(
    "few.pdparams", {"score.weight": np.zeros((64, 2), np.float32)}), "few.pdparams")
_pretrained("pretrained-corrupt-safetensors", lambda ctx: ctx.write("c.safetensors", b"\x10\x00" * 20, "wb"),
            "c.safetensors")
_pretrained("pretrained-empty-folder", lambda ctx: (os.makedirs(ctx.path("empty_w")), ctx.path("empty_w"))[1],
            "empty_w")


@case("resume-dir-not-a-checkpoint", "train")
def _(ctx):
    os.makedirs(ctx.path("ck"))
    return ctx.train(f"Engine.save_load.ckpt_dir={ctx.path('ck')}"), "ck"


@case("resume-from-nan-checkpoint", "train")
def _(ctx):
    from ppmerge.models.safe_pickle import write_pickle

    folder = ctx.path("ck_nan")
    os.makedirs(folder)
    ctx.nan_model("ck_nan/model.pdparams")
    write_pickle({}, os.path.join(folder, "model_state.pdopt"))
    write_pickle({"epoch": 0}, os.path.join(folder, "meta_state.pdopt"))
    return ctx.train(f"Engine.save_load.ckpt_dir={folder}"), "ck_nan/model.pdparams"


# --- eval
@case("no-weights", "eval")
def _(ctx):
    return ctx.train("Model.pretrained=null", out=ctx.path("o")), "Model.pretrained"


@case("weights-missing", "eval")
def _(ctx):
    return ctx.eval(weights=ctx.path("gone.pdparams")), "gone.pdparams"


@case("weights-nan", "eval")
def _(ctx):
    return ctx.eval(weights=ctx.nan_model("nan.pdparams")), "nan.pdparams"


@case("weights-deep-nested", "eval")
def _(ctx):
    return ctx.eval(weights=deep_pickle(ctx.path("deep.pdparams"))), "deep.pdparams"


@case("output-dir-foreign", "eval")
def _(ctx):
    return ctx.eval(extra=["--output-dir", _foreign_dir(ctx)]), "notes.txt"


@case("output-dir-is-file", "eval")
def _(ctx):
    return ctx.eval(extra=["--output-dir", ctx.write("f.txt", "x")]), "f.txt"


@case("result-file-exists-in-user-folder", "eval")
def _(ctx):
    weights = ctx.model("mine/model.pdparams")
    for name in ("eval_results_dev.json", "eval_results_SST2_dev.json"):  # the old and the per-task name
        ctx.write(f"mine/{name}", "my own results\n")
    return ctx.eval(weights=weights), "eval_results_"


@case("dev-header-only", "eval")
def _(ctx):
    folder = ctx.data_copy()
    with open(os.path.join(folder, "dev.tsv"), "w") as f:
        f.write("sentence\tlabel\n")
    return ctx.eval(f"Data.Eval.dataset.root={folder}"), "dev.tsv: file has no examples"


@case("test-file-empty", "eval")
def _(ctx):
    folder = ctx.data_copy()
    with open(os.path.join(folder, "test.tsv"), "w") as f:
        f.write("index\tsentence\n")
    return ctx.eval(f"Data.Eval.dataset.root={folder}", extra=["--split", "test"]), "test.tsv"


@case("max-length-over-positions", "eval")
def _(ctx):
    return ctx.eval("Data.Eval.dataset.max_length=4096"), "Data.Eval.dataset.max_length"


@case("eval-batch-0", "eval")
def _(ctx):
    return ctx.eval("Data.Eval.sampler.batch_size=0"), "Data.Eval.sampler.batch_size"


@case("merged-model-without-task-head", "eval")
def _(ctx):
    sd = {k: v for k, v in ctx.world["sds"]["SST2"].items() if k != "score.weight"}
    sd["heads.MNLI.score.weight"] = ctx.world["sds"]["MNLI"]["score.weight"]
    return ctx.eval(weights=ctx.model("merged.pdparams", sd)), "SST"


# --- merge
def _merge(name, make, expect):
    case(name, "merge")(lambda ctx: (["-c", make(ctx)], expect))


_merge("output-dir-foreign-files", lambda ctx: ctx.merge_yaml(out=_foreign_dir(ctx)), "notes.txt")
_merge("output-dir-holds-its-own-inputs", lambda ctx: ctx.merge_yaml(
    out=ctx.path("models"), models={"SST2": ctx.model("models/SST2.pdparams")}), "SST2.pdparams")
_merge("output-dir-is-a-file", lambda ctx: ctx.merge_yaml(out=ctx.write("out.txt", "x")), "out.txt")
_merge("output-dir-other-kind", lambda ctx: ctx.merge_yaml(out=_marked(ctx, "train")), "train output")
_merge("scaling-factor-nan", lambda ctx: ctx.merge_yaml(Merge={"method": "task_arithmetic", "scaling_factor": float("nan")}),
       "Merge.scaling_factor")
_merge("scaling-factor-inf", lambda ctx: ctx.merge_yaml(Merge={"method": "task_arithmetic", "scaling_factor": float("inf")}),
       "Merge.scaling_factor")
_merge("scaling-factor-list-nan", lambda ctx: ctx.merge_yaml(
    Merge={"method": "task_arithmetic", "scaling_factor": [0.3, float("nan"), 0.3]}), "Merge.scaling_factor")
_merge("ties-threshold-nan", lambda ctx: ctx.merge_yaml(Merge={"method": "ties_merging", "threshold": float("nan")}),
       "Merge.threshold")
_merge("cabs-nm-more-models-than-blocks", lambda ctx: ctx.merge_yaml(Merge={"method": "cabs", "n": 2, "m": 4}),
       "Merge.n / Merge.m")
_merge("sweep-value-nan", lambda ctx: ctx.merge_yaml(
    Merge={"method": "task_arithmetic"}, Sweep={"grid": {"Merge.scaling_factor": [0.3, float("nan")]}}),
    "scaling_factor")
_merge("unknown-method", lambda ctx: ctx.merge_yaml(Merge={"method": "averaging"}), "Merge.method")
_merge("unknown-method-param", lambda ctx: ctx.merge_yaml(Merge={"method": "ties_merging", "treshold": 20}),
       "Merge.treshold")
_merge("method-param-wrong-type", lambda ctx: ctx.merge_yaml(Merge={"method": "ties_merging", "threshold": "high"}),
       "Merge.threshold")
_merge("task-pool-max-length-over-positions", lambda ctx: ctx.merge_yaml(TaskPool={"max_length": 2048}),
       "TaskPool.max_length")
_merge("task-pool-max-length-0", lambda ctx: ctx.merge_yaml(TaskPool={"max_length": 0}), "TaskPool.max_length")
_merge("task-pool-batch-0", lambda ctx: ctx.merge_yaml(TaskPool={"batch_size": 0}), "TaskPool.batch_size")
_merge("task-pool-test-split", lambda ctx: ctx.merge_yaml(TaskPool={"split": "test"}), "TaskPool.split")
_merge("task-pool-test-split-for-one-task", lambda ctx: ctx.merge_yaml(TaskPool={"splits": {"MNLI": "test_mismatched"}}),
       "TaskPool.splits.MNLI")
_merge("task-pool-test-view", lambda ctx: ctx.merge_yaml(TaskPool={"tasks": ["SST2", "MNLI", "STSB", "SST2:test"]}),
       "'SST2:test'")
_merge("task-pool-max-examples-negative", lambda ctx: ctx.merge_yaml(TaskPool={"max_examples": -5}),
       "TaskPool.max_examples")
_merge("seed-negative", lambda ctx: ctx.merge_yaml(Global={"seed": -1}), "Global.seed")
_merge("base-missing", lambda ctx: ctx.merge_yaml(ModelPool={"base": ctx.path("nobase.pdparams")}), "nobase.pdparams")
_merge("model-nan", lambda ctx: ctx.merge_yaml(models={"MNLI": ctx.nan_model("nan.pdparams", source="MNLI")}),
       "nan.pdparams")
_merge("model-inf", lambda ctx: ctx.merge_yaml(models={"MNLI": ctx.nan_model("inf.pdparams", np.inf, "MNLI")}),
       "inf.pdparams")
_merge("model-deep-nested", lambda ctx: ctx.merge_yaml(models={"MNLI": deep_pickle(ctx.path("deep.pdparams"))}),
       "deep.pdparams")
_merge("model-truncated", lambda ctx: ctx.merge_yaml(models={"MNLI": ctx.write(
    "cut.pdparams", open(ctx.world["paths"]["MNLI"], "rb").read()[:4000], "wb")}), "cut.pdparams")
_merge("model-malicious", lambda ctx: ctx.merge_yaml(models={"MNLI": ctx.write(
    "evil.pdparams", pickle.dumps({"a": _Evil()}), "wb")}), "evil.pdparams")
_merge("config-nested-20000", lambda ctx: ctx.write("deep.yaml", "Merge:\n  method: " + "[" * 20000 + "]" * 20000 + "\n"),
       "deep.yaml")
_merge("task-without-model", lambda ctx: ctx.merge_yaml(
    TaskPool={"tasks": ["SST2", "MNLI", "STSB", "RTE"]}), "RTE")
_merge("task-pool-data-missing", lambda ctx: ctx.merge_yaml(TaskPool={"data_root": ctx.path("nodata")}), "nodata")


@case("task-pool-dev-header-only", "merge")
def _(ctx):
    from ppmerge.data import task_root

    root = ctx.path("suite")
    for task in TASKS:
        shutil.copytree(task_root(task, ctx.world["data"], "glue"), task_root(task, root, "glue"))
    with open(os.path.join(task_root("SST2", root, "glue"), "dev.tsv"), "w") as f:
        f.write("sentence\tlabel\n")
    return ["-c", ctx.merge_yaml(TaskPool={"data_root": root})], "dev.tsv: file has no examples"


# --- convert
@case("output-exists", "convert")
def _(ctx):
    out = ctx.write("conv.pdparams", "keep me")
    return ["--from", "paddlenlp", "--to", "pdparams", "--input", ctx.world["paths"]["SST2"], "--output", out], "conv.pdparams"


@case("output-is-folder", "convert")
def _(ctx):
    os.makedirs(ctx.path("conv.pdparams"))
    return ["--from", "paddlenlp", "--to", "pdparams", "--input", ctx.world["paths"]["SST2"], "--output",
            ctx.path("conv.pdparams")], "conv.pdparams"


@case("output-folder-is-a-file", "convert")
def _(ctx):
    ctx.write("plain", "x")
    return ["--from", "paddlenlp", "--to", "pdparams", "--input", ctx.world["paths"]["SST2"], "--output",
            ctx.path("plain/conv.pdparams")], "plain"


@case("input-missing", "convert")
def _(ctx):
    return ["--from", "paddlenlp", "--to", "pdparams", "--input", ctx.path("in.pdparams"), "--output",
            ctx.path("o.pdparams")], "in.pdparams"


@case("input-deep-nested", "convert")
def _(ctx):
    return ["--from", "paddlenlp", "--to", "pdparams", "--input", deep_pickle(ctx.path("deep.pdparams")),
            "--output", ctx.path("o.pdparams")], "deep.pdparams"


@case("output-extension-mismatch", "convert")
def _(ctx):
    return ["--from", "paddlenlp", "--to", "pdparams", "--input", ctx.world["paths"]["SST2"], "--output",
            ctx.path("o.safetensors")], "o.safetensors"


# --- make_glue_data
@case("out-is-a-file", "make_glue_data")
def _(ctx):
    return ["--out", ctx.write("suite", "x"), "--tasks", "RTE", "--n-train", "4"], "suite"


@case("out-foreign-files", "make_glue_data")
def _(ctx):
    return ["--out", _foreign_dir(ctx), "--tasks", "RTE", "--n-train", "4"], "notes.txt"


@case("out-real-glue-data", "make_glue_data")
def _(ctx):
    folder = ctx.path("dataset")
    ctx.write("dataset/RTE/train.tsv", "index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n")
    return ["--out", folder, "--tasks", "RTE", "--n-train", "4"], "RTE"


@case("out-other-kind", "make_glue_data")
def _(ctx):
    return ["--out", _marked(ctx, "merge"), "--tasks", "RTE"], "merge output"


@case("both-layout-foreign-subfolder", "make_glue_data")
def _(ctx):
    ctx.write("suite/fleetx/mine.txt", "x")
    return ["--out", ctx.path("suite"), "--layout", "both", "--tasks", "RTE"], "fleetx"


@case("n-train-0", "make_glue_data")
def _(ctx):
    return ["--out", ctx.path("s"), "--n-train", "0"], "--n-train"


@case("unknown-task", "make_glue_data")
def _(ctx):
    return ["--out", ctx.path("s"), "--tasks", "SQuAD"], "SQuAD"


# --- init_model
@case("output-exists", "init_model")
def _(ctx):
    return ["--preset", "gpt-tiny", "--output", ctx.write("base.pdparams", "keep")], "base.pdparams"


@case("output-is-folder", "init_model")
def _(ctx):
    os.makedirs(ctx.path("base.pdparams"))
    return ["--preset", "gpt-tiny", "--output", ctx.path("base.pdparams")], "base.pdparams"


@case("output-folder-is-a-file", "init_model")
def _(ctx):
    ctx.write("plain", "x")
    return ["--preset", "gpt-tiny", "--output", ctx.path("plain/base.pdparams")], "plain"


# --- extract_task_vector
def _tv(ctx, finetuned=None, base=None, save=None):
    return ["--finetuned_model_path", finetuned or ctx.world["paths"]["SST2"],
            "--base_model_path", base or ctx.world["paths"]["base"], "--save_path", save or ctx.path("tau.pdparams")]


case("save-path-exists", "extract_task_vector")(
    lambda ctx: (_tv(ctx, save=ctx.write("tau.pdparams", "keep")), "tau.pdparams"))
case("save-path-is-folder", "extract_task_vector")(
    lambda ctx: (os.makedirs(ctx.path("tau.pdparams")), (_tv(ctx), "tau.pdparams"))[1])
case("save-path-bad-extension", "extract_task_vector")(
    lambda ctx: (_tv(ctx, save=ctx.path("tau.npy")), "tau.npy"))
case("finetuned-missing", "extract_task_vector")(
    lambda ctx: (_tv(ctx, finetuned=ctx.path("ft.pdparams")), "ft.pdparams"))
case("base-nan", "extract_task_vector")(
    lambda ctx: (_tv(ctx, base=ctx.nan_model("nanbase.pdparams", source="SST2")), "nanbase.pdparams"))
case("finetuned-deep-nested", "extract_task_vector")(
    lambda ctx: (_tv(ctx, finetuned=deep_pickle(ctx.path("deep.pdparams"))), "deep.pdparams"))
case("shape-mismatch", "extract_task_vector")(
    lambda ctx: (_tv(ctx, finetuned=ctx.model("s.pdparams", gpt__embeddings__position_embeddings__weight=np.zeros(
        (3, 64), np.float32))), "gpt.embeddings.position_embeddings.weight"))
case("save-folder-is-a-file", "extract_task_vector")(
    lambda ctx: (ctx.write("plain", "x"), (_tv(ctx, save=ctx.path("plain/tau.pdparams")), "plain"))[1])


def test_catalogue_is_large_enough():
    assert len(CASES) >= 100


@pytest.mark.parametrize("tool_name,setup", CASES)
def test_bad_input(world, tmp_path, tool_name, setup):
    ctx = Ctx(world, tmp_path)
    argv, expect = setup(ctx)
    before_world, before = tree_hash(world["dir"], content=False), tree_hash(ctx.dir)
    listing = set(os.listdir(ctx.dir))
    code, out, err = run_in_process(tool_name, argv)
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert code == 2, (code, err[-3000:], out[-2000:])
    assert len(errors) == 1 and "Traceback" not in err, err[-3000:]
    assert expect in errors[0], errors[0]
    # nothing touched, nothing left (no output folder, no temporaries)
    assert tree_hash(ctx.dir) == before, errors[0]
    assert set(os.listdir(ctx.dir)) == listing
    assert tree_hash(world["dir"], content=False) == before_world
    assert not os.path.exists("/tmp/ppmerge_pwned")


# ------------------------------------------------------------------------------------------ the rule itself

def test_output_folder_rule(tmp_path):
    """prepare_output_dir / atomic_dir: never delete, merge file by file, marker, overwrite."""
    from ppmerge.errors import UserError
    from ppmerge.fileio import MARKER, atomic_dir, output_kind, prepare_output_dir

    out = tmp_path / "o"
    prepare_output_dir(out, "merge")            # missing: fine, and nothing is created
    assert not out.exists()
    with atomic_dir(out, kind="merge") as tmp:
        (open(os.path.join(tmp, "a.txt"), "w")).write("1")
    assert output_kind(out) == "merge" and (out / "a.txt").read_text() == "1"
    (out / "user.txt").write_text("mine")       # a user's file in an earlier output stays
    prepare_output_dir(out, "merge")
    with atomic_dir(out, kind="merge") as tmp:
        (open(os.path.join(tmp, "a.txt"), "w")).write("2")
    assert (out / "a.txt").read_text() == "2" and (out / "user.txt").read_text() == "mine"
    with atomic_dir(out, kind="merge") as tmp:  # a rerun that no longer writes a.txt: ours, unchanged: it goes
        (open(os.path.join(tmp, "b.txt"), "w")).write("3")
        (open(os.path.join(tmp, "c.txt"), "w")).write("3")
    assert sorted(os.listdir(out)) == [MARKER, "b.txt", "c.txt", "user.txt"]
    (out / "c.txt").write_text("edited by the user")  # changed since: no longer ours to remove
    with atomic_dir(out, kind="merge") as tmp:
        (open(os.path.join(tmp, "b.txt"), "w")).write("4")
    assert sorted(os.listdir(out)) == [MARKER, "b.txt", "c.txt", "user.txt"]
    outside = tmp_path / "outside.txt"
    outside.write_text("not in the folder")
    stat = os.stat(outside)
    (out / MARKER).write_text(f"merge\nfile: {stat.st_size} {stat.st_mtime_ns} ../outside.txt\n"
                              f"file: {stat.st_size} {stat.st_mtime_ns} {outside}\n")
    with atomic_dir(out, kind="merge") as tmp:  # a hand-made marker cannot reach outside the folder
        (open(os.path.join(tmp, "b.txt"), "w")).write("5")
    assert outside.exists() and (out / "b.txt").read_text() == "5"
    outside.unlink()
    with pytest.raises(UserError, match="merge output"):
        prepare_output_dir(out, "train")
    foreign = tmp_path / "f"
    foreign.mkdir()
    (foreign / "x").write_text("x")
    with pytest.raises(UserError, match="--overwrite"):
        prepare_output_dir(foreign, "merge")
    prepare_output_dir(foreign, "merge", overwrite=True)
    with atomic_dir(foreign, kind="merge") as tmp:
        os.makedirs(os.path.join(tmp, "sub"))
        open(os.path.join(tmp, "sub", "y"), "w").write("y")
    assert (foreign / "x").read_text() == "x" and (foreign / "sub" / "y").read_text() == "y"
    assert sorted(os.listdir(foreign)) == sorted([MARKER, "sub", "x"])
    with pytest.raises(RuntimeError):           # a failure inside: nothing of it appears
        with atomic_dir(tmp_path / "new", kind="merge") as tmp:
            open(os.path.join(tmp, "half"), "w").write("h")
            raise RuntimeError("boom")
    assert sorted(os.listdir(tmp_path)) == ["f", "o"]
    big = 1 << 60
    with pytest.raises(UserError, match="not enough free space"):
        prepare_output_dir(tmp_path / "z", "merge", need_bytes=big)


def test_merge_into_an_earlier_output_keeps_user_files(world, tmp_path):
    """The data-loss case: rerunning a merge into its Output.dir replaces its own files only."""
    ctx = Ctx(world, tmp_path)
    cfg = ctx.merge_yaml(TaskPool={"tasks": [], "max_examples": 4})
    code, out, err = run_in_process("merge", ["-c", cfg])
    assert code == 0, err[-3000:]
    first = tree_hash(ctx.out)
    ctx.write("out/my_notes.txt", "keep")
    code, _, err = run_in_process("merge", ["-c", cfg, "-o", "Merge.method=task_arithmetic"])
    assert code == 0, err[-3000:]
    assert open(ctx.path("out/my_notes.txt")).read() == "keep"
    assert set(first) <= set(tree_hash(ctx.out))  # same files (rewritten), plus the user's
    # --overwrite writes into a foreign folder, touching only the merge's files
    foreign = _foreign_dir(ctx, "foreign")
    theirs = tree_hash(foreign)
    code, _, err = run_in_process("merge", ["-c", cfg, "-o", f"Output.dir={foreign}", "--overwrite"])
    assert code == 0, err[-3000:]
    after = tree_hash(foreign)
    assert all(after[p] == h for p, h in theirs.items())
    assert os.path.isfile(os.path.join(foreign, "merged_model.pdparams"))


# ------------------------------------------------------------------------------------------ faults

_HOLD = """
import os, sys, time
sys.path.insert(0, {root!r})
from ppmerge.fileio import atomic_dir
with atomic_dir({out!r}, kind="train") as tmp:
    with open(os.path.join(tmp, "model.pdparams"), "wb") as f:
        f.write(b"x" * 1000)
    print("ready", flush=True)
    time.sleep(60)
"""


def _start_holder(out):
    proc = subprocess.Popen([sys.executable, "-c", _HOLD.format(root=ROOT, out=str(out))], stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline().strip() == "ready"
    return proc


def test_kill_9_during_a_save_leaves_debris_the_next_run_removes(tmp_path):
    from ppmerge.fileio import clean_stale_temps, prepare_output_dir

    parent = tmp_path / "run"
    parent.mkdir()
    (parent / ".notes.tmp").write_text("a user's hidden file: not our pattern")
    (parent / ".x.abc.tmp").write_text("not our pattern either")
    dead = _start_holder(parent / "epoch_0_step_5")
    live = _start_holder(parent / "epoch_0_step_6")
    try:
        dead.send_signal(signal.SIGKILL)
        dead.wait()
        debris = sorted(n for n in os.listdir(parent) if n.startswith(".epoch_0_step_"))
        assert len(debris) == 2 and not (parent / "epoch_0_step_5").exists()
        removed = clean_stale_temps(str(parent))
        assert removed == [n for n in debris if f"ppm{dead.pid}-" in n]  # the live run's temporary stays
        assert sorted(os.listdir(parent)) == sorted([".notes.tmp", ".x.abc.tmp"] + [n for n in debris if n not in removed])
    finally:
        live.kill()
        live.wait()
    prepare_output_dir(parent, "train", overwrite=True)  # the next run in that folder cleans up
    assert sorted(os.listdir(parent)) == [".notes.tmp", ".x.abc.tmp"]


def test_ctrl_c_exits_130_and_leaves_nothing(tmp_path):
    out = tmp_path / "suite"
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "tools", "make_glue_data.py"), "--out", str(out),
                             "--n-train", "400000", "--tasks", "MNLI"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT)
    deadline = time.time() + 30
    while time.time() < deadline and not any(n.startswith(".") for n in os.listdir(tmp_path)):
        time.sleep(0.05)
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and err.strip().splitlines() == ["error: interrupted"], err[-2000:]
    assert os.listdir(tmp_path) == []


@contextlib.contextmanager
def _tmpfs(path, options):
    os.makedirs(path, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield str(path)
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def test_full_disk_is_one_line_and_leaves_nothing(world, tmp_path):
    with _tmpfs(tmp_path / "small", "size=512k") as disk:
        # the generator cannot know the size up front: it fails while writing, cleanly
        code, _, err = run_in_process("make_glue_data", ["--out", os.path.join(disk, "suite"), "--n-train", "20000",
                                                          "--tasks", "MNLI"])
        assert code == 2 and err.strip().startswith("error: ") and len(err.strip().splitlines()) == 1, err
        assert "no space left on device" in err and "Traceback" not in err
        assert os.listdir(disk) == []
        # the merge knows the model's size: refused before any work
        ctx = Ctx(world, tmp_path)
        code, _, err = run_in_process("merge", ["-c", ctx.merge_yaml(out=os.path.join(disk, "merged"))])
        assert code == 2 and "not enough free space" in err and len(err.strip().splitlines()) == 1, err
        assert os.listdir(disk) == []
        # training knows its checkpoint's size: refused before the first step
        code, _, err = run_in_process("train", ctx.train(out=os.path.join(disk, "run")))
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and "not enough free space" in lines[0], err[-2000:]
        assert os.listdir(disk) == []


def test_read_only_folder_is_one_line(world, tmp_path):
    with _tmpfs(tmp_path / "ro", "size=1m,ro") as disk:
        ctx = Ctx(world, tmp_path)
        for name, argv in [("merge", ["-c", ctx.merge_yaml(out=os.path.join(disk, "m"))]),
                           ("train", ctx.train(out=os.path.join(disk, "t"))),
                           ("make_glue_data", ["--out", os.path.join(disk, "d"), "--tasks", "RTE"]),
                           ("extract_task_vector", _tv(ctx, save=os.path.join(disk, "tau.pdparams")))]:
            code, _, err = run_in_process(name, argv)
            lines = err.strip().splitlines()
            assert code == 2 and len(lines) == 1 and "read-only file system" in lines[0], (name, err[-2000:])
        assert os.listdir(disk) == []


def test_os_error_while_writing_is_one_line(tmp_path, monkeypatch):
    """An OSError the up-front checks cannot foresee (here: the disk fails mid-write) -> `error: <path>: ...`."""
    import errno

    import ppmerge.data.synthetic as synthetic

    def failing(path, header, rows):
        raise OSError(errno.EIO, "Input/output error", path)

    monkeypatch.setattr(synthetic, "_write_tsv", failing)
    code, _, err = run_in_process("make_glue_data", ["--out", str(tmp_path / "s"), "--tasks", "RTE"])
    assert code == 2 and err.strip().startswith("error: ") and "Input/output error" in err
    assert "train.tsv" in err and len(err.strip().splitlines()) == 1
    assert os.listdir(tmp_path) == []


def test_training_stops_when_the_loss_diverges_and_keeps_the_last_good_checkpoint(world, tmp_path):
    ctx = Ctx(world, tmp_path)
    argv = ctx.train("Optimizer.lr.learning_rate=1e30", "Optimizer.lr.warmup=0", "Optimizer.grad_clip.clip_norm=1e30",
                     "Engine.save_load.save_steps=1", "Data.Eval.dataset.max_length=8")
    code, out, err = run_in_process("train", argv)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "loss became" in lines[0] and "at step 2" in lines[0], err[-3000:]
    good = os.path.join(ctx.out, "epoch_0_step_1")
    assert good in lines[0] and os.path.isfile(os.path.join(good, "model.pdparams"))
    assert not any(n.startswith("epoch_0_step_2") for n in os.listdir(ctx.out))
    from ppmerge.models import load_numpy_state_dict

    assert all(np.isfinite(v).all() for v in load_numpy_state_dict(os.path.join(good, "model.pdparams")).values())


def test_long_fields_are_read(tmp_path):
    """A 300 KB text field (over the csv module's default limit) is a normal example."""
    from ppmerge.data.readers import read_examples

    folder = tmp_path / "SST-2"
    folder.mkdir()
    (folder / "train.tsv").write_text("sentence\tlabel\n" + "word " * 60_000 + "\t1\nshort\t0\n")
    examples = read_examples("SST2", str(folder), "train")
    assert len(examples) == 2 and len(examples[0].text_a) == 300_000 and examples[0].label == 1


def test_old_style_temporaries_are_removed_only_in_marked_outputs(tmp_path):
    """Temporaries of earlier versions (`.<name>.<8 random>.tmp`, no pid) are removed only inside a marked
    ppmerge output and only when older than this run: a user's folder is never cleaned by name alone."""
    from ppmerge.fileio import clean_stale_temps, mark_output_dir

    old = time.time() - 3600
    for folder in ("user", "ours"):
        (tmp_path / folder).mkdir()
        for name in (".model.pdparams.abcd1234.tmp", ".report.json.k2j4h5g6.tmp"):
            (tmp_path / folder / name).write_text("x")
            os.utime(tmp_path / folder / name, (old, old))
        (tmp_path / folder / ".fresh.pdparams.zzzz9999.tmp").write_text("x")  # newer than this run
    mark_output_dir(str(tmp_path / "ours"), "merge")
    assert clean_stale_temps(str(tmp_path / "user")) == []
    assert sorted(clean_stale_temps(str(tmp_path / "ours"))) == [".model.pdparams.abcd1234.tmp",
                                                                 ".report.json.k2j4h5g6.tmp"]
    assert sorted(os.listdir(tmp_path / "ours")) == [".fresh.pdparams.zzzz9999.tmp", ".ppmerge-output"]
    assert len(os.listdir(tmp_path / "user")) == 3


def test_error_lines_name_the_real_file_not_the_temporary(tmp_path, monkeypatch):
    """A disk error while a folder is written names the file the user will look for."""
    import errno

    from ppmerge.cli import error_line
    from ppmerge.fileio import atomic_dir, atomic_path

    for existing in (False, True):
        out = tmp_path / f"out{existing}"
        if existing:
            out.mkdir()
        with pytest.raises(OSError) as info:
            with atomic_dir(out) as tmp:
                with atomic_path(os.path.join(tmp, "model.pdparams")) as part:
                    raise OSError(errno.ENOSPC, "No space left on device", part)
        assert error_line(info.value) == f"{out}/model.pdparams: no space left on device (free some space or write elsewhere)"
        assert os.listdir(out) == [] if existing else not out.exists()


def test_temporaries_of_another_machine_are_judged_by_age_not_pid(tmp_path):
    """A folder shared with another host or container: its pids mean nothing here, so its temporaries
    are kept while fresh (that run may be alive) and removed only after a day untouched."""
    from ppmerge.fileio import _HOST, clean_stale_temps

    other = "000000" if _HOST != "000000" else "111111"
    dead_pid = 4_000_000  # above pid_max: no such process here
    fresh = tmp_path / f".model.pdparams.ppm{dead_pid}-{other}-abc123.tmp"
    old = tmp_path / f".report.json.ppm{dead_pid}-{other}-def456.tmp"
    ours = tmp_path / f".config.yaml.ppm{dead_pid}-{_HOST}-ghi789.tmp"
    for path in (fresh, old, ours):
        path.write_text("x")
    two_days = time.time() - 2 * 24 * 3600
    os.utime(old, (two_days, two_days))
    assert sorted(clean_stale_temps(str(tmp_path))) == sorted([old.name, ours.name])
    assert os.listdir(tmp_path) == [fresh.name]


def test_a_conflict_inside_an_existing_folder_moves_nothing(tmp_path):
    """A user's folder where ppmerge writes a file: refused before any file is moved (no mixed state)."""
    from ppmerge.errors import UserError
    from ppmerge.fileio import atomic_dir

    out = tmp_path / "out"
    (out / "report.json").mkdir(parents=True)      # the user's folder, named like one of our files
    (out / "config.yaml").write_text("old")
    with pytest.raises(UserError, match="report.json: is a folder"):
        with atomic_dir(out, kind="merge") as tmp:
            for name in ("a.txt", "config.yaml", "report.json"):
                with open(os.path.join(tmp, name), "w") as f:
                    f.write("new")
    assert (out / "config.yaml").read_text() == "old" and sorted(os.listdir(out)) == ["config.yaml", "report.json"]


def test_eval_into_a_merge_output_keeps_its_marker(world, tmp_path):
    """eval.py --output-dir = the merge's own folder: results are written beside the merged model, and the
    folder stays a merge output (a later merge into it is still accepted)."""
    from ppmerge.fileio import output_kind

    ctx = Ctx(world, tmp_path)
    cfg = ctx.merge_yaml(TaskPool={"tasks": [], "max_examples": 4})
    assert run_in_process("merge", ["-c", cfg])[0] == 0
    weights = os.path.join(ctx.out, "merged_model.pdparams")
    code, _, err = run_in_process("eval", ctx.eval(weights=weights, extra=["--output-dir", ctx.out]))
    assert code == 0, err[-3000:]
    assert output_kind(ctx.out) == "merge" and any(n.startswith("eval_results_") for n in os.listdir(ctx.out))
    assert run_in_process("merge", ["-c", cfg])[0] == 0


def test_task_pool_refuses_an_unlabelled_split_built_in_code(world):
    """The Python API's task pool (no config checks): a test split is still refused where it is read."""
    from ppmerge.errors import DataError
    from ppmerge.evaluation.task_pool import TaskPool

    pool = TaskPool(["SST2"], {"name": "gpt-tiny"}, data_root=world["data"], max_length=16, progress=False)
    with pytest.raises(DataError, match="SST-2/test.tsv: the SST2 test split has no labels"):
        pool.dataset("SST2", "test")


def test_task_pool_refuses_a_max_length_over_the_positions_built_in_code(world):
    from ppmerge.errors import ConfigError
    from ppmerge.evaluation.task_pool import TaskPool

    with pytest.raises(ConfigError, match="TaskPool.max_length' is 600, longer than the model's 512 positions"):
        TaskPool(["SST2"], {"name": "gpt-tiny"}, data_root=world["data"], max_length=600, progress=False)
    TaskPool(["SST2"], {"name": "gpt-tiny"}, data_root=world["data"], max_length=512, progress=False)
