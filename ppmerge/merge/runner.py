"""The merge runner: a validated merge config in, a merged model and its reports out.

    device, seed -> model pool (each model loaded once) -> method, for every sweep point
    -> merged backbone + per-task heads -> task pool evaluation -> reference rows -> reports

`Output.dir` is checked first (ppmerge.fileio.prepare_output_dir: a new or empty folder, an earlier merge
output, or `overwrite`; writable; room for the merged model). Everything is written through `atomic_dir`:
a new folder appears complete at the end or not at all, an existing one gets its files replaced one by
one (nothing else in it is touched), so a failed run (bad checkpoint, NaN, unknown parameter, ...) leaves
nothing behind.
"""
import os
import sys
import threading
import time

import numpy as np
from ppmerge.progress import progress_bar as tqdm  # a tqdm bar on a terminal, plain lines in a log

from ppmerge.errors import ConfigError, UserError
from ppmerge.evaluation.reports import average
from ppmerge.merge.model_pool import ModelPool
from ppmerge.merge.sweep import sweep_axes, sweep_points

MODEL_FILE = "merged_model.pdparams"


def _import_report_modules():
    """pandas + openpyxl (the reports' writers, ~0.4 s of imports) in a background thread while the
    models load: the load is kernel time on one core, so the import is free instead of coming after the save."""
    def load():
        try:
            import openpyxl  # noqa: F401
            import pandas  # noqa: F401
        except Exception:  # only a head start: the reports import them again and report any problem
            pass

    threading.Thread(target=load, name="import-report-modules", daemon=True).start()


def _seed_everything(seed):
    from ppmerge.runtime import import_paddle

    np.random.seed(seed)
    import_paddle().seed(seed)


class _Layout:
    """Shape and dtype of a base tensor (what a merged tensor must come back as)."""

    def __init__(self, shape, dtype):
        self.shape, self.dtype = tuple(shape), dtype


def _to_numpy_backbone(merged, base):
    """The method's result (numpy or paddle values) as numpy arrays in the base's dtypes and shapes."""
    from ppmerge.merge.tensor_ops import as_numpy

    missing = [k for k in base if k not in merged]
    if missing:
        raise RuntimeError(f"merge method returned no value for {missing[0]!r} ({len(missing)} keys missing)")
    return {k: as_numpy(merged[k]).astype(base[k].dtype, copy=False).reshape(base[k].shape) for k in base}


def merged_state_dict(backbone, heads):
    """The merged model file's content: the backbone plus `heads.<name>.<head key>` for every head
    (`ModelPool.saved_heads()`: each model's under its name, each task's under the task's name)."""
    state_dict = dict(backbone)
    for task, head in heads.items():
        for key, value in head.items():
            state_dict[f"heads.{task}.{key}"] = value
    return state_dict


class _Merger:
    """Runs one method on the pool, in the right form: streamed, all in memory, or with data."""

    def __init__(self, method, pool, context_factory, stream, consume, progress):
        self.consume = consume
        self.method = method
        self.pool = pool
        self.context_factory = context_factory
        self.stream = stream
        self.progress = progress

    def __call__(self, params, desc):
        pool = self.pool
        if self.stream:
            # The fine-tuned models are read tensor by tensor (pool.stream); with consume, the sum is
            # accumulated into the base's own buffers: peak ~1 x one model + one tensor (the base is
            # spent afterwards), else ~2 x (base + accumulator).
            with tqdm(total=len(pool.tasks), desc=desc, unit="model", file=sys.stderr, leave=False,
                      disable=not self.progress, dynamic_ncols=True) as bar:
                base = pool.base
                layout = {k: _Layout(np.shape(v), np.asarray(v).dtype) for k, v in base.items()}
                merged = self.method.stream(base, pool.sized_stream(lambda: bar.update(1)), consume=self.consume, **params)
                if self.consume:
                    pool.forget_base()
            return _to_numpy_backbone(merged, layout)
        base = pool.base
        models = [pool.backbones()[task] for task in pool.tasks]
        with tqdm(total=1, desc=desc, file=sys.stderr, leave=False, disable=not self.progress,
                  dynamic_ncols=True) as bar:
            if self.method.data_dependent:
                merged = self.method.fn(base, models, context=self.context_factory(), **params)
            else:
                merged = self.method.fn(base, models, **params)
            bar.update(1)
        self.info = getattr(merged, "method_info", None)  # e.g. AdaMerging's learned λ table, for the row
        if getattr(merged, "is_ensemble", False):
            return merged
        return _to_numpy_backbone(merged, base)


def _row(name, kind, metrics, tasks, params=None, **extra):
    return {"name": name, "kind": kind, "params": params or {}, "metrics": metrics,
            "average": average(metrics, tasks), "best": False, **extra}


def custom_task_names(task_pool_section):
    """Names of the TaskPool's custom datasets (tasks a model of the pool may name besides GLUE's)."""
    return tuple((task_pool_section or {}).get("datasets") or {})


def per_model_params(method, section, pool):
    """The Merge section with per-model parameters given as `{model name: value}` maps turned into
    lists in pool order (CABS's `order`, pool indices in masking order, also as a list of model names or
    a map {model name: position}): the ONE place where names become positions, before the method's
    parameters are checked."""
    out = dict(section)
    for key, value in section.items():
        param = method.params.get(key)
        if param is None:
            continue
        where = f"Merge.{key}"
        if isinstance(value, dict) and "list[" in param.kind:
            unknown = [k for k in value if k not in pool.paths]
            if unknown:
                raise ConfigError(f"{where}: {unknown[0]!r} is not a model of the pool "
                                  f"(its models: {', '.join(pool.names)})")
            missing = [n for n in pool.names if n not in value]
            if missing:
                raise ConfigError(f"{where}: no value for model {missing[0]} (a map needs one value per model: "
                                  f"{', '.join(pool.names)})")
            out[key] = [value[n] for n in pool.names]
            if key == "order":  # {name: position in the masking order} -> pool indices in that order
                positions = out[key]
                if sorted(positions) != list(range(len(positions))):
                    raise ConfigError(f"{where}: a map gives each model its position in the order, 0..{len(positions) - 1} "
                                      f"once each; got {value!r}")
                out[key] = sorted(range(len(positions)), key=lambda i: positions[i])
        elif key == "order" and isinstance(value, (list, tuple)) and any(isinstance(v, str) for v in value):
            unknown = [v for v in value if v not in pool.paths]
            if unknown:
                raise ConfigError(f"{where}: {unknown[0]!r} is not a model of the pool "
                                  f"(its models: {', '.join(pool.names)})")
            out[key] = [pool.names.index(v) for v in value]
    return out


def check_base(method, points, pool):
    """A pool without ModelPool.base only runs methods that never read the base."""
    if pool.has_base or not any(method.base_needed(params) for params in points):
        return
    from ppmerge.merge import METHODS

    free = sorted(name for name, m in METHODS.items() if m.needs_base is not True)
    raise ConfigError(f"Merge.method {method.name} needs ModelPool.base (the pretrained model the task vectors "
                      f"θ_i − θ₀ are taken from; with a sparsifier, averages need it too); without a base "
                      f"run one of: {', '.join(free)}")


def eval_tasks(task_pool_section, pool):
    """TaskPool.tasks as canonical names (views such as MNLI-mm kept as views), each needing a model of
    its task in the pool (its head)."""
    from ppmerge.evaluation.task_pool import parse_eval_view, view_name
    from ppmerge.merge.model_pool import _canonical_task

    custom = custom_task_names(task_pool_section)
    tasks, bases = [], []
    for t in task_pool_section["tasks"]:
        view = parse_eval_view(str(t))
        base = _canonical_task(str(view[0] if view else t), "TaskPool.tasks", custom)
        if view is not None:
            from ppmerge.data.readers import normalize_split

            if base in custom:  # a custom dataset's split names are its files' keys (checked by the task pool)
                tasks.append(view_name(base, view[1]))
            else:
                try:
                    tasks.append(view_name(base, normalize_split(base, view[1])))
                except UserError as exc:
                    raise ConfigError(f"TaskPool.tasks: {t!r}: {exc}") from None
        else:
            tasks.append(base)
        bases.append(base)
    if len(set(tasks)) != len(tasks):
        raise ConfigError(f"TaskPool.tasks: a task is listed twice ({', '.join(tasks)})")
    pool_tasks = pool.pool_tasks()
    no_model = [t for t, b in zip(tasks, bases) if b not in pool_tasks]
    if no_model:
        raise ConfigError(f"TaskPool.tasks: task {no_model[0]} has no fine-tuned model in ModelPool.models "
                          f"(its head is needed to evaluate it; the pool's tasks: {', '.join(pool_tasks) or 'none'})")
    return tasks


def finetuned_metrics(task_pool, pool, tasks):
    """{task: metrics} of the pool's own models: each task's first model (pool order) with its own head."""
    own = {}
    for task in tasks:
        name = pool.models_of(task_pool.base_task(task))[0]
        own.update(task_pool.evaluate(pool.backbones()[name], {task: pool.heads[name]}, [task],
                                      desc=f"evaluate {name} model"))
    return own


def _score(row):
    return -np.inf if row["average"] is None else row["average"]


def _check_output_dir(cfg, overwrite):
    """Output.dir may be written (see ppmerge.fileio.prepare_output_dir), with room for the merged model."""
    from ppmerge.fileio import prepare_output_dir

    base = cfg["ModelPool"].get("base")
    need = os.path.getsize(base) if cfg["Output"]["save_model"] and base and os.path.isfile(base) else 0
    return prepare_output_dir(cfg["Output"]["dir"], "merge", overwrite=overwrite, need_bytes=need,
                              what="Output.dir")


def _check_inputs_not_replaced(cfg, out_dir):
    """A pool model (or the base) must not be a file this run writes or removes in Output.dir: the
    merged model of an earlier run merged again into the same folder would be replaced by its own result."""
    from ppmerge.fileio import _marker_files
    from ppmerge.merge.methods.emr_merging import FILE as EMR_FILE
    from ppmerge.merge.methods.tsv_compression import FILE as TSV_C_FILE

    written = {MODEL_FILE, EMR_FILE, TSV_C_FILE, "config.yaml", *_marker_files(out_dir)}
    written = {os.path.realpath(os.path.join(out_dir, name)) for name in written}
    pool = cfg["ModelPool"]
    entries = [("ModelPool.base", pool.get("base"))] + [
        (f"ModelPool.models.{name}", entry.get("path") if isinstance(entry, dict) else entry)
        for name, entry in (pool.get("models") or {}).items()]
    for key, path in entries:
        if isinstance(path, str) and os.path.realpath(path) in written:
            raise ConfigError(f"{key}: {path} is a file this merge writes in Output.dir {out_dir} (the merge would "
                              f"replace its own input); copy it elsewhere or choose another Output.dir")


def _pool_section(cfg, method):
    """ModelPool with the model family's head keys: a family without per-task heads (T5) merges the
    whole model (ModelPool.head_keys is ignored). Methods that need heads / class logits
    (data-dependent ones, the ensemble) are refused on such pools."""
    from ppmerge.merge.model_pool import NO_HEADS
    from ppmerge.models.families import get_family

    family = get_family(cfg["TaskPool"]["model"])
    if family.head_keys is not None:
        return cfg["ModelPool"]
    if method.data_dependent or method.name == "simple_ensemble":
        raise ConfigError(f"Merge.method {method.name} is not available for {family.name} (text-to-text) pools: it "
                          f"needs per-task heads / class logits; use a data-free method (simple_average, "
                          f"task_arithmetic, ties_merging, dare_*, ...)")
    return {**cfg["ModelPool"], "head_keys": NO_HEADS, "tied_keys": getattr(family, "tied_keys", None)}


def run_merge(cfg, progress=True, overwrite=False):
    """Run the merge described by `cfg` (a MERGE_SCHEMA-validated dict); return the result dict
    (also saved as report.json). `overwrite`: write into a non-empty Output.dir that is not an earlier
    merge output (only the merge's own files are replaced). See docs/ARCHITECTURE.md
    "ppmerge.merge — runner and config"."""
    from ppmerge.evaluation.plots import write_plots
    from ppmerge.evaluation.reports import write_reports
    from ppmerge.fileio import atomic_dir
    from ppmerge.merge import MergeContext, get_method
    from ppmerge.runtime import set_device

    start = time.perf_counter()
    timings = {}
    device = set_device(cfg["Global"]["device"])
    seed = int(cfg["Global"]["seed"])
    _seed_everything(seed)

    # Everything that can be checked without loading a model is checked first.
    out_dir = _check_output_dir(cfg, overwrite)
    _check_inputs_not_replaced(cfg, out_dir)
    method = get_method(cfg["Merge"]["method"])
    base_params = {k: v for k, v in cfg["Merge"].items() if k != "method"}
    axes = sweep_axes(cfg["Sweep"])
    pool = ModelPool.from_config(_pool_section(cfg, method), known_tasks=custom_task_names(cfg["TaskPool"]))
    points = [(label, assigned, method.resolve(per_model_params(method, section, pool)))
              for label, assigned, section in sweep_points(base_params, cfg["Sweep"])]
    check_base(method, [p for _, _, p in points], pool)
    tasks = eval_tasks(cfg["TaskPool"], pool)
    refs = cfg["Output"]["reference_rows"]
    task_pool = None  # `TaskPool.tasks: []` turns evaluation off: merge and save only (benchmarks)
    if tasks:
        from ppmerge.evaluation.task_pool import TaskPool

        task_pool = TaskPool.from_config({**cfg["TaskPool"], "tasks": tasks, "seed": seed}, progress=progress)
    elif any(refs.values()):
        raise ConfigError("Output.reference_rows: reference rows are evaluations, but TaskPool.tasks is empty")
    if refs["base"] and not pool.has_base:
        raise ConfigError("Output.reference_rows.base: the model pool has no base (set ModelPool.base or turn the row off)")
    # Stream (one model in memory at a time) when nothing needs all the fine-tuned backbones at once.
    stream = (len(points) == 1 and not method.data_dependent and method.can_stream(points[0][2])
              and not refs["finetuned"] and not refs["cross_task"])

    def context():
        heads = pool.load_heads()
        no_task = [name for name in pool.names if pool.task_of[name] is None]
        if no_task:
            raise ConfigError(f"Merge.method {method.name} reads each model's own task data, but model {no_task[0]} "
                              f"has no task (set ModelPool.models.{no_task[0]}.task)")
        return MergeContext(task_names=[pool.task_of[n] for n in pool.names], heads=[heads[n] for n in pool.names],
                            task_pool=task_pool, model_cfg=dict(cfg["TaskPool"]["model"]),
                            device=device, seed=seed)

    _import_report_modules()
    tick = time.perf_counter()
    if not stream:
        pool.backbones()  # every model loaded (and checked) once, also for the whole sweep
    pool.base  # (after the backbones: a pool without base makes its zeros from the first one)
    timings["load"] = time.perf_counter() - tick
    # A streamed merge may accumulate into the base's own buffers unless the base row needs the base.
    # (Not when the models share the base's arrays: a LoRA pool's models read θ₀ from them.)
    merger = _Merger(method, pool, context, stream, consume=not refs["base"] and not pool.models_share_base,
                     progress=progress)

    rows, best_model, best_row = [], None, None
    timings["merge"] = timings["evaluate"] = 0.0
    sweep_bar = tqdm(points, desc="sweep", unit="point", file=sys.stderr, disable=not progress or len(points) == 1,
                     dynamic_ncols=True)
    for label, assigned, params in sweep_bar:
        tick = time.perf_counter()
        merged = merger(params, desc=f"merge {label}" if axes else f"merge {method.name}")
        timings["merge"] += time.perf_counter() - tick
        tick = time.perf_counter()
        heads = pool.task_heads()
        if task_pool is None:
            metrics = {}
        elif getattr(merged, "is_ensemble", False):
            metrics = merged.evaluate(task_pool, heads, tasks)
        else:
            metrics = task_pool.evaluate(merged, heads, tasks, desc=f"evaluate {label}")
        timings["evaluate"] += time.perf_counter() - tick
        row = _row(label if axes else method.name, "sweep" if axes else "merged", metrics, tasks,
                   params=params, sweep_values=assigned)
        if getattr(merger, "info", None):
            row["method_info"] = merger.info
        rows.append(row)
        if best_row is None or _score(row) > _score(best_row):
            best_row, best_model = row, merged
        del merged
    if axes and tasks:
        best_row["best"] = True

    tick = time.perf_counter()
    reference = []
    if refs["base"]:
        reference.append(_row("base", "base", task_pool.evaluate(pool.base, pool.task_heads(), tasks,
                                                                 desc="evaluate base"), tasks))
    cross = []
    if refs["cross_task"]:
        matrix = task_pool.cross_task_matrix(pool.backbones(), pool.task_heads(), tasks)
        cross = [_row(f"cross_task:{name}", "cross_task", metrics, tasks, model=name)
                 for name, metrics in matrix.items()]
    if refs["finetuned"]:
        reference.append(_row("finetuned", "finetuned", finetuned_metrics(task_pool, pool, tasks), tasks,
                              models={t: pool.models_of(task_pool.base_task(t))[0] for t in tasks}))
    timings["reference"] = time.perf_counter() - tick

    result = {
        "method": method.name,
        "params": points[0][2] if not axes else base_params,
        "sweep": [[key, values] for key, values in axes] or None,
        "best": best_row["name"] if axes and tasks else None,
        "tasks": tasks,
        "main_metric": {t: task_pool.metric_name(t) for t in tasks} if task_pool else {},
        "splits": {t: task_pool.split_of(t) for t in tasks} if task_pool else {},
        "pool": [{"name": n, "task": pool.task_of[n], "path": pool.paths[n]} for n in pool.names],
        "pool_order": pool.describe_order(),
        "base": pool.base_path,
        "device": device,
        "rows": reference + rows + cross,
        "config": cfg,
        "timings": timings,
    }
    with atomic_dir(out_dir, kind="merge") as tmp:
        tick = time.perf_counter()
        if cfg["Output"]["save_model"] and hasattr(best_model, "save"):  # a per-task result (EMR-Merging)
            result["model_file"] = os.path.join(out_dir, best_model.save(tmp, pool.saved_heads()))
        elif cfg["Output"]["save_model"] and not getattr(best_model, "is_ensemble", False):
            from ppmerge.models.checkpoint import check_finite, save_state_dict

            merged_model = merged_state_dict(best_model, pool.saved_heads())
            check_finite(merged_model, "the merged model (check the method's parameters)")
            if cfg["Output"].get("dtype"):  # one cast, tensor by tensor (ppmerge.models.dtypes)
                from ppmerge.models.dtypes import cast_state_dict

                merged_model = cast_state_dict(merged_model, cfg["Output"]["dtype"], where="Output.dtype")
            save_state_dict(merged_model, os.path.join(tmp, MODEL_FILE))
            result["model_file"] = os.path.join(out_dir, MODEL_FILE)
        else:
            result["model_file"] = None
        from ppmerge.config import save_config

        save_config(cfg, os.path.join(tmp, "config.yaml"))
        timings["save"] = time.perf_counter() - tick
        timings["total"] = time.perf_counter() - start
        write_plots(result, tmp)
        write_reports(result, tmp)
    result["output_dir"] = out_dir
    return result
