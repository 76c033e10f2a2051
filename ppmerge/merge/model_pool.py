"""The model pool: the pretrained base and the fine-tuned models of a merge, loaded once and checked.

Every model is split into its backbone (merged) and its head (keys matching `head_keys`, never merged,
kept per task). All backbones must have the same keys and shapes as the base, and no NaN / Inf, else
a UserError says which model and key -- raised before the runner writes anything.

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
from ppmerge.models.checkpoint import TensorsOnDemand

DEFAULT_HEAD_KEYS = r"^score\."


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


def _shapes(backbone):
    """key -> shape, without reading a streamed backbone's tensors."""
    if isinstance(backbone, StreamedBackbone):
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


class ModelPool:
    """base: path of the pretrained model; models: {task name: path}; head_keys: regex of head keys."""

    def __init__(self, base, models, head_keys=DEFAULT_HEAD_KEYS):
        from ppmerge.data import get_task

        if not models:
            raise ConfigError("ModelPool.models: expected a mapping of task name -> model path, got none")
        self.base_path = str(base)
        self.paths = {}
        for name, path in models.items():
            task = get_task(name).name
            if task in self.paths:
                raise ConfigError(f"ModelPool.models: task {task} is listed twice ({name!r})")
            self.paths[task] = str(path)
        try:
            self.head_pattern = re.compile(head_keys)
        except re.error as exc:
            raise ConfigError(f"ModelPool.head_keys: {head_keys!r} is not a valid regex ({exc})") from None
        # Fail fast on a missing file, before loading gigabytes of the others.
        for what, path in [("base", self.base_path)] + [(f"models.{t}", p) for t, p in self.paths.items()]:
            if not os.path.exists(path):
                raise CheckpointError(f"ModelPool.{what}: model file {path!r} does not exist")
        self.tasks = list(self.paths)
        self.heads = {}        # task -> {head key: array}
        self._base = None
        self._backbones = None

    @classmethod
    def from_config(cls, section):
        return cls(section["base"], section["models"], section.get("head_keys") or DEFAULT_HEAD_KEYS)

    def split(self, state_dict):
        """(backbone, head): the keys matching head_keys go to the head."""
        backbone, head = {}, {}
        for key, value in state_dict.items():
            (head if self.head_pattern.search(key) else backbone)[key] = value
        return backbone, head

    @property
    def base(self):
        """The pretrained backbone (its head, if any, is dropped: heads come from the fine-tuned models)."""
        if self._base is None:
            state_dict = _load(self.base_path, "base", "base")
            self._base, _ = self.split(state_dict)
            if not self._base:
                raise CheckpointError(f"ModelPool.base ({self.base_path}): no backbone keys "
                                      f"(every key matches head_keys {self.head_pattern.pattern!r})")
        return self._base

    def forget_base(self):
        """Drop the cached base (a streamed merge consumed its buffers); it is reloaded if asked for."""
        self._base = None

    def load(self, task):
        """Load one fine-tuned model: check it, keep its head, return its backbone."""
        path = self.paths[task]
        state_dict = _load(path, f"models.{task}", task)
        backbone, head = self.split(state_dict)
        return self._checked(task, backbone, head)

    def _checked(self, task, backbone, head):
        path = self.paths[task]
        if not head:
            raise CheckpointError(f"model {task} ({path}): no head keys match ModelPool.head_keys "
                                  f"{self.head_pattern.pattern!r}")
        problem = compare_backbones(self.base, backbone, "base", task)
        if problem:
            raise CheckpointError(f"model pool backbones differ: {problem}")
        self.heads[task] = head
        return backbone

    def _open(self, task, lazy):
        """A StreamedBackbone of an opened model file; its head is read (small) and checked now."""
        head_keys = [key for key in lazy if self.head_pattern.search(key)]
        head = {key: lazy[key] for key in head_keys}
        _check_finite(head, task, self.paths[task])
        backbone = StreamedBackbone(lazy, [key for key in lazy if key not in head], task)
        return self._checked(task, backbone, head)

    def backbones(self):
        """{task: backbone} of every fine-tuned model, loaded once and kept."""
        if self._backbones is None:
            self._backbones = {task: self.load(task) for task in self.tasks}
        return self._backbones

    def stream(self):
        """Yield (task, backbone) one model at a time, without keeping them: each backbone is a
        StreamedBackbone whose tensors are read from the file when asked for (the file is open
        until the next model is asked for). NaN / Inf are found as the tensors are read."""
        if self._backbones is not None:
            yield from self._backbones.items()
            return
        from ppmerge.models.checkpoint import open_state_dict

        for task in self.tasks:
            path = self.paths[task]
            if not os.path.exists(path):
                raise CheckpointError(f"ModelPool.models.{task}: model file {path!r} does not exist")
            with open_state_dict(path) as lazy:
                yield task, self._open(task, lazy)

    def sized_stream(self, after_each=None):
        """The backbones of `stream()` as an iterable with len() (streaming methods need the count up
        front); `after_each()` runs once a model is done with (e.g. a progress bar's update)."""
        return _SizedStream(self, after_each)

    def load_heads(self):
        """Every task's head (loads each model once if the heads are not known yet)."""
        for task in self.tasks:
            if task not in self.heads:
                self.load(task)
        return self.heads
