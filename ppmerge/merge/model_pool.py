"""The model pool: the pretrained base and the fine-tuned models of a merge, loaded once and checked.

The pool is a list of named models in the order the config writes them (`ModelPool.models`), each
with an optional task: `{sst2_seed1: {path: a.pdparams, task: SST2}, mine: b.pdparams}`; a plain path
under a task's name (`SST2: a.pdparams`) is that task's model. Every model is split into its backbone
(merged) and its head (keys matching `head_keys`, never merged, kept per model). A task's head is
its model's head, or for several models of one task (a soup) the average of their heads unless
`ModelPool.task_heads` names one model. A merged model (a file of ppmerge's merges, its heads stored
as `heads.<name>.<key>`) can be a pool input as it is: its `heads.` keys are never part of the backbone;
with a task it contributes that task's head (`select_task_head`: the head saved under the task's or a
model's name), without a task it contributes no head (its heads are left out, not merged). All backbones must have the same keys and shapes as the base
(without a base: as the first model), and no NaN / Inf, else a UserError says which model and key --
raised before the runner writes anything.

Two ways to get the fine-tuned backbones:
  - `backbones()`: all of them in memory at once (cached: a sweep loads each file once);
  - `stream()`: one at a time, never cached, and each read tensor by tensor from its file (a
    `StreamedBackbone`): a linear merge then holds the base (its accumulator) and one tensor.
Both fill `heads` as a side effect. Arrays are numpy; the merge methods move them to the device.
"""
import os
import re

import numpy as np

from ppmerge.errors import CheckpointError, ConfigError
from ppmerge.models.checkpoint import HEADS_PREFIX, TensorsOnDemand

DEFAULT_HEAD_KEYS = r"^score\."
NO_HEADS = "(?!)"   # a regex matching no key: a model family without per-task heads (T5), all merged


def _load(path, what, name):
    """A whole model file, read tensor by tensor on every core and checked for NaN / Inf as read."""
    from ppmerge.models.checkpoint import open_state_dict

    if not os.path.exists(path):
        raise CheckpointError(f"ModelPool.{what}: model file {path!r} does not exist")
    with open_state_dict(path) as lazy:
        return lazy.read_all(check=lambda key, value: _check_finite({key: value}, name, path))


def _all_finite(value):
    # A sum is NaN / Inf when an entry is, and needs no temporary (isfinite(value) is a bool array the
    # size of the tensor); only a non-finite sum (maybe a mere overflow) is checked entry by entry.
    # For contiguous float32 / float64 values BLAS's Σx² is 2.5x faster than numpy's sum (same NaN / Inf).
    with np.errstate(over="ignore", invalid="ignore"):
        if value.dtype in (np.float32, np.float64) and (value.flags.c_contiguous or value.flags.f_contiguous):
            flat = value.ravel(order="K")  # a view: contiguous
            total = np.dot(flat, flat)
        else:
            total = value.sum(dtype=np.promote_types(value.dtype, np.float32))
    return bool(np.isfinite(total)) or bool(np.isfinite(value).all())


def _check_finite(state_dict, name, path):
    for key, value in state_dict.items():
        value = np.asarray(value)
        if np.issubdtype(value.dtype, np.floating) and not _all_finite(value):
            _raise_not_finite(value, name, path, key)


def _raise_not_finite(value, name, path, key):
    bad = "NaN" if np.isnan(value).any() else "Inf"
    raise CheckpointError(f"model {name} ({path}): key {key!r} contains {bad} values")


class Shapes(dict):
    """key -> shape, standing in for a backbone in `compare_backbones`."""


def _shapes(backbone):
    """key -> shape, without reading a streamed backbone's tensors."""
    if isinstance(backbone, Shapes):
        return dict(backbone)
    if isinstance(backbone, TensorsOnDemand):  # a StreamedBackbone, a LoRA pool's LowRankModel
        return dict(backbone.shapes)
    return {key: tuple(np.shape(value)) for key, value in backbone.items()}


def compare_backbones(reference, other, ref_name, other_name, limit=3):
    """A one-line description of the first key / shape differences of two backbones, or ''."""
    problems = []
    reference, other = _shapes(reference), _shapes(other)
    for key in reference:
        if key not in other:
            problems.append(f"{key}: in {ref_name} but missing from {other_name}")
        elif reference[key] != other[key]:
            problems.append(f"{key}: {ref_name} {list(reference[key])} vs {other_name} {list(other[key])}")
    for key in other:
        if key not in reference:
            problems.append(f"{key}: in {other_name} but missing from {ref_name}")
    if not problems:
        return ""
    more = f" (and {len(problems) - limit} more)" if len(problems) > limit else ""
    return "; ".join(problems[:limit]) + more


def _zeros_like_entry(lazy, key):
    """Zeros shaped and typed like `lazy[key]`: from a .pdparams file's index when it has the dtype (no
    read; np.zeros pages are only touched when written), else from the tensor read once."""
    entry = getattr(lazy, "_entries", {}).get(key)
    dtype = getattr(entry, "dtype", None)
    if dtype is not None:
        return np.zeros(lazy.shapes[key], dtype=dtype)
    return np.zeros_like(lazy[key])


class StreamedBackbone(TensorsOnDemand):
    """A fine-tuned model's backbone read tensor by tensor from its open file (a `LazyStateDict`):
    `bb[key]` reads the tensor (and checks it for NaN / Inf), nothing is kept; `pop(key)` also drops
    the key, `clear()` all of them (what a consuming merge calls)."""

    def __init__(self, lazy, keys, name):
        self.lazy, self.name = lazy, name
        self.shapes = {key: lazy.shapes[key] for key in keys}

    def read_tensor(self, key):
        value = self.lazy[key]
        _check_finite({key: value}, self.name, self.lazy.path)
        return value

    def storage_order(self, key):
        return self.lazy.storage_order(key)

    def iter_blocks(self, key, scratch):
        """`LazyStateDict.iter_blocks`, each block checked for NaN / Inf while it is in cache: a bad
        value is reported (model and key) before the merge result is used, let alone written."""
        if key not in self.shapes:
            raise KeyError(key)
        for start, block in self.lazy.iter_blocks(key, scratch):
            if np.issubdtype(block.dtype, np.floating) and not _all_finite(block):
                _raise_not_finite(block, self.name, self.lazy.path, key)
            yield start, block

    def clear(self):
        self.shapes.clear()


class _TiedView:
    """The tied keys of an open file (read when compared), for `ModelPool.tied_copies`."""

    def __init__(self, lazy, tied_keys):
        self.lazy, self.keys, self.read = lazy, set(tied_keys) | set(tied_keys.values()), {}

    def __contains__(self, key):
        return key in self.keys and key in self.lazy.shapes

    def __getitem__(self, key):
        if key not in self.read:  # the shared key is compared with each copy: read once
            self.read[key] = self.lazy[key]
        return self.read[key]


class _SizedStream:
    def __init__(self, pool, after_each):
        self.pool, self.after_each = pool, after_each

    def __len__(self):
        return len(self.pool.tasks)

    def __iter__(self):
        for _, backbone in self.pool.stream():
            yield backbone
            del backbone  # not alive while the next model is opened
            if self.after_each is not None:
                self.after_each()


class PoolModel:
    """One entry of `ModelPool.models`: its name (as written), file path and task (None: no task)."""

    def __init__(self, name, path, task):
        self.name, self.path, self.task = name, path, task

    def __repr__(self):
        return f"PoolModel({self.name!r}, {self.path!r}, task={self.task!r})"


def _canonical_task(task, where, known_tasks=()):
    """A GLUE task's canonical name, or a task named in `known_tasks` (custom datasets), else ConfigError."""
    from ppmerge.data import get_task
    from ppmerge.errors import UserError

    if task in known_tasks:
        return task
    try:
        return get_task(task).name
    except UserError:
        extra = f" or one of the TaskPool's custom tasks ({', '.join(known_tasks)})" if known_tasks else ""
        raise ConfigError(f"{where}: unknown task {task!r}: expected a GLUE task name{extra}") from None


def _task_name_of(name, known_tasks=()):
    """The task a model name stands for (legacy `{TASK: path}` entries), or None."""
    from ppmerge.data import get_task
    from ppmerge.errors import UserError

    if name in known_tasks:
        return name
    try:
        return get_task(name).name
    except UserError:
        return None


def parse_models(models, known_tasks=()):
    """`ModelPool.models` -> [PoolModel] in the order written.

    An entry is a plain path or `{path: ..., task: ...}` (task optional). A plain path under a task's
    name (`SST-2: path`) is that task's model, named by the task's canonical name (`SST2`), as before
    named models existed. A model's name must not be another task's name (the merged file stores the
    task's head under `heads.<TASK>`)."""
    if not isinstance(models, dict) or not models:
        raise ConfigError("ModelPool.models: expected a mapping of model name -> model path "
                          "(or {path: ..., task: ...}), got none")
    out, seen = [], {}
    for name, entry in models.items():
        name = str(name)
        where = f"ModelPool.models.{name}"
        if isinstance(entry, dict):
            unknown = sorted(set(entry) - {"path", "task"})
            if unknown:
                raise ConfigError(f"{where}: unknown key {unknown[0]!r}; expected path and (optional) task")
            if not isinstance(entry.get("path"), str) or not entry["path"]:
                raise ConfigError(f"{where}.path: expected the model file's path")
            path = entry["path"]
            task = entry.get("task")
            task = None if task is None else _canonical_task(str(task), f"{where}.task", known_tasks)
            named = _task_name_of(name, known_tasks)
            if named is not None and task != named:
                raise ConfigError(f"{where}: a model named like task {named} must be fine-tuned on it "
                                  f"(task: {task}); rename the model")
        elif isinstance(entry, str) and entry:
            path = entry
            task = _task_name_of(name, known_tasks)
            if task is not None:
                name = task  # legacy {TASK: path}: the canonical task name (SST-2 -> SST2)
        else:
            raise ConfigError(f"{where}: expected a model path or {{path: ..., task: ...}}, got {entry!r}")
        if name in seen:
            raise ConfigError(f"ModelPool.models: model {name} is listed twice ({seen[name]!r} and {where})")
        seen[name] = where
        out.append(PoolModel(name, str(path), task))
    by_task = {}
    for model in out:
        if model.task is not None:
            by_task.setdefault(model.task, []).append(model.name)
    for model in out:
        if model.name in by_task and len(by_task[model.name]) > 1:
            raise ConfigError(f"ModelPool.models.{model.name}: {len(by_task[model.name])} models are fine-tuned on "
                              f"{model.name} ({', '.join(by_task[model.name])}), so heads.{model.name} holds their "
                              f"soup head: give this model another name")
    return out


class ModelPool:
    """base: path of the pretrained model (None: no base, for methods that do not need one);
    models: {name: path | {path, task}} (see `parse_models`); head_keys: regex of head keys;
    task_heads: {task: model name | "average"} (how a task with several models gets its head);
    tied_keys: {copy key: key it copies} (the model family's keys that list one parameter again, e.g.
    T5's embed_tokens copies of t5.shared.weight): each copy must equal its key and is dropped, so a
    merge treats the parameter once (key-seeded masks cannot make the copies differ)."""

    def __init__(self, base, models, head_keys=DEFAULT_HEAD_KEYS, task_heads=None, known_tasks=(), tied_keys=None,
                 lora=None):
        self.models = parse_models(models, tuple(known_tasks))
        self.base_path = None if base in (None, "") else str(base)
        self.names = [m.name for m in self.models]      # pool order: the order written in the config
        self.tasks = self.names                         # (the runner's name for the pool's model list)
        self.paths = {m.name: m.path for m in self.models}
        self.task_of = {m.name: m.task for m in self.models}
        try:
            self.head_pattern = re.compile(head_keys)
        except re.error as exc:
            raise ConfigError(f"ModelPool.head_keys: {head_keys!r} is not a valid regex ({exc})") from None
        self.task_heads_choice = self._check_task_heads(task_heads or {})
        self.tied_keys = dict(tied_keys or {})
        # Fail fast on a missing file, before loading gigabytes of the others.
        checks = ([("base", self.base_path)] if self.base_path else []) + [(f"models.{m.name}", m.path)
                                                                         for m in self.models]
        for what, path in checks:
            if not os.path.exists(path):
                raise CheckpointError(f"ModelPool.{what}: model file {path!r} does not exist")
        # models that are LoRA adapter folders over the base (ppmerge.merge.lora_pool; `lora`: ModelPool.lora)
        from ppmerge.merge.lora_pool import lora_pool

        self.lora = lora_pool(self, lora)
        self.heads = {}        # model name -> {head key: array}
        self._base = None
        self._backbones = None
        self._first_shapes = None

    @classmethod
    def from_config(cls, section, known_tasks=()):
        return cls(section.get("base"), section["models"], section.get("head_keys") or DEFAULT_HEAD_KEYS,
                   section.get("task_heads"), known_tasks, tied_keys=section.get("tied_keys"),
                   lora=section.get("lora"))

    # ---- tasks and names ---------------------------------------------------------------------
    @property
    def has_base(self):
        return self.base_path is not None

    @property
    def models_share_base(self):
        """Do the models hold the base's own arrays (LoRA adapters)? Then a merge must not accumulate
        into the base's buffers."""
        return self.lora is not None

    def pool_tasks(self):
        """The distinct tasks of the pool's models, in pool order (models without a task skipped)."""
        return list(dict.fromkeys(t for t in self.task_of.values() if t is not None))

    def models_of(self, task):
        """Names of the models fine-tuned on `task`, pool order."""
        return [name for name in self.names if self.task_of[name] == task]

    def describe_order(self):
        """'a (SST2), b (SST2), mine' -- the pool order as reports name it."""
        return ", ".join(f"{n} ({self.task_of[n]})" if self.task_of[n] else n for n in self.names)

    def _check_task_heads(self, choice):
        if not isinstance(choice, dict):
            raise ConfigError(f"ModelPool.task_heads: expected a mapping task -> model name | average, got {choice!r}")
        out = {}
        for task, value in choice.items():
            where = f"ModelPool.task_heads.{task}"
            canonical = _task_name_of(str(task), tuple(t for t in self.task_of.values() if t))
            if canonical is None or canonical not in self.task_of.values():
                raise ConfigError(f"{where}: no model of the pool is fine-tuned on {task!r} "
                                  f"(the pool's tasks: {', '.join(self.pool_tasks()) or 'none'})")
            if value != "average" and (value not in self.task_of or self.task_of[value] != canonical):
                raise ConfigError(f"{where}: expected 'average' or the name of a model fine-tuned on {canonical} "
                                  f"({', '.join(self.models_of(canonical))}), got {value!r}")
            out[canonical] = value
        return out

    # ---- heads ---------------------------------------------------------------------------------
    def split(self, state_dict, name="base", path=None):
        """(backbone, head): the keys matching head_keys go to the head; tied copies are dropped."""
        backbone, head = {}, {}
        for key, value in state_dict.items():
            (head if self.is_head(key) else backbone)[key] = value
        for key in self.tied_copies(backbone, name, path or self.base_path):
            del backbone[key]
        return backbone, head

    def is_head(self, key):
        """A head key: matches head_keys, or a merged model's stored head (`heads.<name>.<key>`)."""
        return key.startswith(HEADS_PREFIX) or bool(self.head_pattern.search(key))

    def _model_head(self, name, head):
        """A model's head from its head keys: a merged model's heads (`heads.<name>.…`) give the head of
        the model's task (select_task_head), or none without a task; a plain model's head as it is."""
        from ppmerge.models.checkpoint import merged_task_names, select_task_head

        if not merged_task_names(head):
            return head
        task = self.task_of[name]
        if task is None:
            return {}
        try:
            return select_task_head(head, task)
        except CheckpointError as exc:
            raise CheckpointError(f"model {name} ({self.paths[name]}): {exc}") from None

    def tied_copies(self, state_dict, name, path):
        """The keys of `state_dict` that copy another key present in it (`tied_keys`); a copy that
        differs from its key is a CheckpointError (they are one parameter of the model)."""
        copies = [key for key, source in self.tied_keys.items() if key in state_dict and source in state_dict]
        for key in copies:
            source = self.tied_keys[key]
            if not np.array_equal(np.asarray(state_dict[key]), np.asarray(state_dict[source])):
                raise CheckpointError(f"model {name} ({path}): {key} differs from {source}; in the model they are "
                                      f"one shared parameter")
        return copies

    def task_head(self, task):
        """The head evaluated on `task`: its model's head; with several models of the task (a soup),
        the average of their heads (key by key, float32 mean cast back), or the one model named in
        `ModelPool.task_heads`."""
        names = self.models_of(task)
        if not names:
            raise CheckpointError(f"no head for task {task!r}: no model of the pool is fine-tuned on it")
        heads = self.load_heads()
        choice = self.task_heads_choice.get(task, "average")
        if len(names) == 1 or choice != "average":
            return heads[names[0] if choice == "average" else choice]
        first = heads[names[0]]
        for name in names[1:]:
            if {k: np.shape(v) for k, v in heads[name].items()} != {k: np.shape(v) for k, v in first.items()}:
                raise CheckpointError(f"heads of {names[0]} and {name} (both {task}) differ in keys or shapes: "
                                      f"they cannot be averaged; pick one with ModelPool.task_heads.{task}")
        return {key: (sum(np.asarray(heads[n][key], dtype=np.float32) for n in names) / len(names))
                .astype(np.asarray(first[key]).dtype) for key in first}

    def task_heads(self):
        """{task: head} for every task of the pool (what the task pool evaluates with)."""
        return {task: self.task_head(task) for task in self.pool_tasks()}

    def saved_heads(self):
        """{name: head} stored in a merged file as `heads.<name>.<key>`: every model's own head under
        its model name, plus each task's head (`task_head`) under the task's name unless a model has
        that name (then it is the task's only model and the same head)."""
        heads = dict(self.load_heads())
        for task, head in self.task_heads().items():
            if task not in heads:
                heads[task] = head
        return heads

    # ---- backbones -----------------------------------------------------------------------------
    @property
    def base(self):
        """The pretrained backbone (its head, if any, is dropped: heads come from the fine-tuned models).
        Without ModelPool.base: zeros shaped like the first model (the layout the result takes; only
        methods that declare `needs_base=False`, which never read base values, run on such a pool)."""
        if self._base is None:
            if not self.has_base:
                self._base = self._zero_base()
            else:
                state_dict = self.lora.base_state_dict() if self.lora else _load(self.base_path, "base", "base")
                self._base, _ = self.split(state_dict)
                if not self._base:
                    raise CheckpointError(f"ModelPool.base ({self.base_path}): no backbone keys "
                                          f"(every key matches head_keys {self.head_pattern.pattern!r})")
        return self._base

    def _zero_base(self):
        first = self.names[0]
        if self._backbones is not None:
            return {k: np.zeros_like(v) for k, v in self._backbones[first].items()}
        from ppmerge.models.checkpoint import open_state_dict

        with open_state_dict(self.paths[first]) as lazy:  # dtype and shape from the index, else one tensor
            tied = set(k for k, source in self.tied_keys.items() if k in lazy.shapes and source in lazy.shapes)
            return {key: _zeros_like_entry(lazy, key) for key in lazy
                    if not self.is_head(key) and key not in tied}

    def forget_base(self):
        """Drop the cached base (a streamed merge consumed its buffers); it is reloaded if asked for."""
        self._base = None

    def load(self, name):
        """Load one fine-tuned model: check it, keep its head, return its backbone."""
        path = self.paths[name]
        if self.lora is not None and name in self.lora.adapters:  # base + the adapter's τ (lora_pool)
            return self._checked(name, *self.lora.backbone_and_head(name, self.base))
        state_dict = _load(path, f"models.{name}", name)
        backbone, head = self.split(state_dict, name, path)
        return self._checked(name, backbone, head)

    def _reference(self, name):
        """(backbone or Shapes, label) every model is compared with: the base, or without one the
        first model (its keys and shapes, read from the file's index without loading it)."""
        if self.has_base:
            return self.base, "base"
        first = self.names[0]
        if name == first:
            return None, None
        if self._first_shapes is None:
            from ppmerge.models.checkpoint import open_state_dict

            with open_state_dict(self.paths[first]) as lazy:
                tied = set(k for k, source in self.tied_keys.items() if k in lazy.shapes and source in lazy.shapes)
                self._first_shapes = Shapes({k: tuple(v) for k, v in lazy.shapes.items()
                                             if not self.is_head(k) and k not in tied})
        return self._first_shapes, first

    def _checked(self, name, backbone, head):
        path = self.paths[name]
        head = self._model_head(name, head)
        if not head and self.task_of[name] is not None and self.head_pattern.pattern != NO_HEADS:
            raise CheckpointError(f"model {name} ({path}): no head keys match ModelPool.head_keys "
                                  f"{self.head_pattern.pattern!r} (a model with a task needs its head)")
        reference, label = self._reference(name)
        if reference is not None:
            problem = compare_backbones(reference, backbone, label, name)
            if problem:
                raise CheckpointError(f"model pool backbones differ: {problem}")
        self.heads[name] = head
        return backbone

    def _open(self, name, lazy):
        """A StreamedBackbone of an opened model file; its head is read (small) and checked now."""
        head_keys = [key for key in lazy if self.is_head(key)]
        head = {key: lazy[key] for key in head_keys}
        _check_finite(head, name, self.paths[name])
        tied = set(self.tied_copies(_TiedView(lazy, self.tied_keys), name, self.paths[name]))
        backbone = StreamedBackbone(lazy, [key for key in lazy if key not in head and key not in tied], name)
        return self._checked(name, backbone, head)

    def backbones(self):
        """{name: backbone} of every fine-tuned model, loaded once and kept."""
        if self._backbones is None:
            self._backbones = {name: self.load(name) for name in self.names}
        return self._backbones

    def stream(self):
        """Yield (name, backbone) one model at a time, without keeping them: each backbone is a
        StreamedBackbone whose tensors are read from the file when asked for (the file is open
        until the next model is asked for). NaN / Inf are found as the tensors are read."""
        if self._backbones is not None:
            yield from self._backbones.items()
            return
        from ppmerge.models.checkpoint import open_state_dict

        for name in self.names:
            path = self.paths[name]
            if self.lora is not None and name in self.lora.adapters:
                yield name, self.load(name)  # its factors only (lowrank), or its adapted weights (unload)
                continue
            if not os.path.exists(path):
                raise CheckpointError(f"ModelPool.models.{name}: model file {path!r} does not exist")
            with open_state_dict(path) as lazy:
                yield name, self._open(name, lazy)

    def sized_stream(self, after_each=None):
        """The backbones of `stream()` as an iterable with len() (streaming methods need the count up
        front); `after_each()` runs once a model is done with (e.g. a progress bar's update)."""
        return _SizedStream(self, after_each)

    def load_heads(self):
        """Every model's head, {name: head} in pool order (loads a model whose head is not known yet)."""
        for name in self.names:
            if name not in self.heads:
                self.load(name)
        return {name: self.heads[name] for name in self.names}
