"""The model pool: the pretrained base and the fine-tuned models of a merge, loaded once and checked.

Every model is split into its backbone (merged) and its head (keys matching `head_keys`, never merged,
kept per task). All backbones must have the same keys and shapes as the base, and no NaN / Inf, else
a UserError says which model and key -- raised before the runner writes anything.

Two ways to get the fine-tuned backbones:
  - `backbones()`: all of them in memory at once (cached: a sweep loads each file once);
  - `stream()`: one at a time, never cached (the linear methods then hold ~2 models at most).
Both fill `heads` as a side effect. Arrays are numpy; the merge methods move them to the device.
"""
import os
import re

import numpy as np

from ppmerge.errors import CheckpointError, ConfigError

DEFAULT_HEAD_KEYS = r"^score\."


def _load(path, what):
    from ppmerge.models.checkpoint import load_numpy_state_dict

    if not os.path.exists(path):
        raise CheckpointError(f"ModelPool.{what}: model file {path!r} does not exist")
    return load_numpy_state_dict(path)


def _check_finite(state_dict, name, path):
    for key, value in state_dict.items():
        value = np.asarray(value)
        if np.issubdtype(value.dtype, np.floating) and not np.isfinite(value).all():
            bad = "NaN" if np.isnan(value).any() else "Inf"
            raise CheckpointError(f"model {name} ({path}): key {key!r} contains {bad} values")


def compare_backbones(reference, other, ref_name, other_name, limit=3):
    """A one-line description of the first key / shape differences of two backbones, or ''."""
    problems = []
    for key in reference:
        if key not in other:
            problems.append(f"{key}: in {ref_name} but missing from {other_name}")
        elif tuple(reference[key].shape) != tuple(other[key].shape):
            problems.append(f"{key}: {ref_name} {list(reference[key].shape)} vs "
                            f"{other_name} {list(other[key].shape)}")
    for key in other:
        if key not in reference:
            problems.append(f"{key}: in {other_name} but missing from {ref_name}")
    if not problems:
        return ""
    more = f" (and {len(problems) - limit} more)" if len(problems) > limit else ""
    return "; ".join(problems[:limit]) + more


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
            state_dict = _load(self.base_path, "base")
            _check_finite(state_dict, "base", self.base_path)
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
        state_dict = _load(path, f"models.{task}")
        _check_finite(state_dict, task, path)
        backbone, head = self.split(state_dict)
        if not head:
            raise CheckpointError(f"model {task} ({path}): no head keys match ModelPool.head_keys "
                                  f"{self.head_pattern.pattern!r}")
        problem = compare_backbones(self.base, backbone, "base", task)
        if problem:
            raise CheckpointError(f"model pool backbones differ: {problem}")
        self.heads[task] = head
        return backbone

    def backbones(self):
        """{task: backbone} of every fine-tuned model, loaded once and kept."""
        if self._backbones is None:
            self._backbones = {task: self.load(task) for task in self.tasks}
        return self._backbones

    def stream(self):
        """Yield (task, backbone) one model at a time, without keeping them."""
        if self._backbones is not None:
            yield from self._backbones.items()
            return
        for task in self.tasks:
            yield task, self.load(task)

    def load_heads(self):
        """Every task's head (loads each model once if the heads are not known yet)."""
        for task in self.tasks:
            if task not in self.heads:
                self.load(task)
        return self.heads
