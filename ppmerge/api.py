"""ppmerge's Python API, for notebooks and scripts (`import ppmerge`; paddle is imported on first use).

    import ppmerge
    pool = ppmerge.load_pool({"SST2": "sst2.pdparams", "MNLI": "mnli.pdparams"}, base="base.pdparams")
    merged = ppmerge.merge(pool, "ties_merging", threshold=20, scaling_factor=0.5)    # writes nothing
    tasks = ppmerge.task_pool(["SST2", "MNLI"], data_root="dataset", model="gpt-345m")
    print(ppmerge.evaluate(merged, pool, tasks))                 # {task: {accuracy, ..., main}}
    ppmerge.save(merged, "merged.pdparams", pool=pool, dtype="bfloat16")
    ppmerge.convert("merged.pdparams", "merged_hf", to="hf")     # one HF folder per task

The same objects the tools use: `load_pool` is `ppmerge.merge.model_pool.ModelPool`, `task_pool` a
`ppmerge.evaluation.TaskPool`, methods and parameters those of `ppmerge.merge.METHODS` (the README's
table; per-model parameters may be given as {model name: value}). `merge` keeps every model of the pool
in memory (cached on the pool, so a second merge of the same pool reads nothing); `tools/merge.py`
streams big pools instead. Errors are `ppmerge.errors.UserError`s naming what was wrong.
"""
import numpy as np

__all__ = ["load_pool", "merge", "task_pool", "evaluate", "save", "load", "convert", "init_model", "methods"]


def load_pool(models, base=None, head_keys=r"^score\.", task_heads=None, lora=None):
    """A model pool: `models` {name: path} in pool order (a GLUE task name as the name, e.g. `SST2`, is
    that task's model; or {name: {"path": p, "task": "SST2"}}), `base` the pretrained model (None: only
    methods that never read it). Files are checked now and read on first use. A path may be a LoRA
    adapter folder over `base`; `lora={"mode": "lowrank"}` merges from its factors (default: unload)."""
    from ppmerge.merge.model_pool import ModelPool

    return ModelPool(base, models, head_keys, task_heads, lora=lora)


def methods():
    """{method name: one-line description} of every registered merge method."""
    from ppmerge.merge import METHODS

    return {name: (m.doc or "").strip().splitlines()[0] if m.doc else "" for name, m in sorted(METHODS.items())}


def _as_backbone(merged, base):
    """The method's result as numpy arrays in the base's dtypes and shapes (read-only views may come back)."""
    from ppmerge.merge.tensor_ops import as_numpy

    missing = [k for k in base if k not in merged]
    if missing:
        raise RuntimeError(f"merge method returned no value for {missing[0]!r} ({len(missing)} keys missing)")
    return {k: np.asarray(as_numpy(merged[k])).astype(np.asarray(base[k]).dtype, copy=False)
            .reshape(np.shape(base[k])) for k in base}


class _NoTaskPool:
    """The context's task pool when none was given: a method that reads data (fisher_merging, regmean,
    ...) gets a UserError saying what to pass; one that does not (simple_ensemble) runs."""

    def __init__(self, method):
        self.method = method

    def __getattr__(self, name):
        from ppmerge.errors import UserError

        raise UserError(f"merge(..., {self.method!r}): this method reads each model's task data; pass "
                        f"task_pool=ppmerge.task_pool([...], data_root=..., model=...)")


def merge(pool, method, *, task_pool=None, device="cpu", seed=0, **params):
    """Merge the pool's backbones with `method` and its parameters; returns {key: numpy array} (the
    merged backbone, the base's dtypes; heads stay in the pool), or for `simple_ensemble` an Ensemble.
    Nothing is written. Data-dependent methods (fisher_merging, regmean, ...) need `task_pool`."""
    from ppmerge.merge import MergeContext, get_method
    from ppmerge.merge.runner import check_base, per_model_params
    from ppmerge.runtime import import_paddle, set_device

    m = get_method(method)
    device = set_device(device)
    np.random.seed(seed)
    import_paddle().seed(seed)
    resolved = m.resolve(per_model_params(m, dict(params), pool))
    check_base(m, [resolved], pool)
    backbones = pool.backbones()
    models = [backbones[name] for name in pool.names]
    base = pool.base
    if m.data_dependent:
        heads = pool.load_heads()
        data = task_pool if task_pool is not None else _NoTaskPool(m.name)
        context = MergeContext(task_names=[pool.task_of[n] for n in pool.names], heads=[heads[n] for n in pool.names],
                               task_pool=data, model_cfg=dict(getattr(task_pool, "model_cfg", {}) or {}),
                               device=device, seed=seed)
        merged = m.fn(base, models, context=context, **resolved)
    else:
        merged = m.fn(base, models, **resolved)
    if getattr(merged, "is_ensemble", False):
        return merged
    return _as_backbone(merged, base)


def task_pool(tasks, data_root="./dataset", model="gpt-345m", layout="glue", split="dev", max_examples=-1,
              batch_size=32, max_length=128, progress=False, **options):
    """The evaluation data: `tasks` (GLUE names) under `data_root` (`layout` glue | fleetx), evaluated on
    `split` (the first `max_examples`, -1 all) with models of architecture `model` (a preset name or a
    Model section dict). `options`: the other TaskPool config keys (roots, splits, tokenizer, seed, ...)."""
    from ppmerge.evaluation.task_pool import TaskPool

    section = {"tasks": list(tasks), "data_root": str(data_root), "layout": layout, "split": split,
               "max_examples": max_examples, "batch_size": batch_size, "max_length": max_length,
               "model": {"name": model} if isinstance(model, str) else dict(model), **options}
    return TaskPool.from_config(section, progress=progress)


def evaluate(backbone, pool, task_pool, tasks=None):
    """{task: metrics} of a backbone (or an Ensemble from `merge`) with each task's head from `pool`;
    metrics hold the task metric's values, `main` (the reported one), `num_examples`, `seconds`."""
    heads = pool.task_heads()
    tasks = list(tasks or task_pool.tasks)
    if getattr(backbone, "is_ensemble", False):
        return backbone.evaluate(task_pool, heads, tasks)
    return task_pool.evaluate(backbone, heads, tasks)


def save(state_dict, path, pool=None, dtype=None):
    """Write a state dict to `path` (.pdparams | .safetensors, atomically). With `pool`, a merged
    model file as tools/merge.py writes it: the backbone plus every head as `heads.<name>.<key>` (what
    tools/eval.py and `convert(..., to="hf")` read). `dtype`: float32 | float16 | bfloat16 (None: as is)."""
    from ppmerge.models.checkpoint import save_state_dict

    if pool is not None:
        from ppmerge.merge.runner import merged_state_dict

        state_dict = merged_state_dict(state_dict, pool.saved_heads())
    else:
        state_dict = dict(state_dict)
    if dtype is not None:
        from ppmerge.models.dtypes import cast_state_dict

        state_dict = cast_state_dict(state_dict, dtype, where="dtype")
    save_state_dict(state_dict, path)
    return str(path)


def load(path):
    """{key: numpy array} of a .pdparams / .safetensors file (bf16 as uint16 bits, paddle's convention)."""
    from ppmerge.models.checkpoint import load_numpy_state_dict

    return load_numpy_state_dict(path)


def convert(input, output, to, source="ppmerge", dtype="float32", num_heads=None, task=None):
    """tools/convert.py as a function: `source` ppmerge | fleetx | paddlenlp | hf, `to` pdparams |
    safetensors | hf | paddlenlp | fleetx. Returns the written path (file or folder)."""
    from ppmerge.models.convert import convert_checkpoint

    path, _, _ = convert_checkpoint(source, to, str(input), str(output), num_heads, dtype=dtype, task=task)
    return path


def init_model(path, preset="gpt-tiny", seed=0, num_classes=None, dtype="float32"):
    """tools/init_model.py as a function: a seeded fresh model (backbone only unless num_classes)."""
    from ppmerge.models.init import write_initial_model

    write_initial_model(path, preset, seed, num_classes, dtype)
    return str(path)
