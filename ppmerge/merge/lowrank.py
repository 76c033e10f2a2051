"""Key-by-key helpers of the SVD-based merges (TSV-M, Iso-C, Iso-CTS) and of the other 2024-2025
methods: task vectors of one key at a time on the host, an economy SVD on the compute device, the
polar factor.

The math is numpy float32 on the host: on CPU numpy's LAPACK SVD is ~25x faster than paddle's (measured
on a 1024x4096 matrix: 1.3 s vs 30 s); on an accelerator (`paddle.get_device()` not "cpu") the SVDs run
there in paddle and come back. Only one key of every model is in memory at a time.
"""
import numpy as np

from ppmerge.errors import ConfigError
from ppmerge.merge.tensor_ops import as_numpy, is_floating, numpy_dtype, paddle as _paddle, to_device, to_host


def host32(x):
    """A state-dict value (numpy or paddle, any dtype incl. bfloat16) as a float32 numpy array: the array
    itself when it already is one (callers never write into it), else a converted copy."""
    if isinstance(x, np.ndarray):
        return np.asarray(x, dtype=np.float32)
    return np.asarray(to_host(to_device(x)), dtype=np.float32)


def svd(a):
    """Economy SVD a = U diag(S) Vh of a 2-D float32 array (numpy in, numpy out)."""
    if _paddle().get_device() == "cpu":
        return np.linalg.svd(a, full_matrices=False)
    return paddle_svd(a)


def paddle_svd(a):
    """The same in paddle on the current device (what `svd` uses off the CPU)."""
    pd = _paddle()
    u, s, vh = pd.linalg.svd(pd.to_tensor(np.ascontiguousarray(a, dtype=np.float32)), full_matrices=False)
    return u.numpy(), s.numpy(), vh.numpy()


def polar(a):
    """The orthogonal polar factor P Qᵀ of a = P Σ Qᵀ (the closest matrix with orthonormal columns/rows)."""
    p, _, qh = svd(a)
    return p @ qh


def is_matrix(value):
    """Do the SVD-based rules apply to this key? (every 2-D float tensor: Linear weights and embeddings)"""
    return len(value.shape) == 2


class TaskVectors:
    """The task vectors τ_i = θ_i − θ₀ of ONE key as a lazy sequence: each τ_i is made when asked for and
    not kept, so a rule that walks them once holds one at a time (plus what it keeps itself)."""

    def __init__(self, key, theta0, models, scales=None):
        self.key, self.theta0, self.models, self.scales = key, theta0, models, scales
        self.shape = theta0.shape

    def __len__(self):
        return len(self.models)

    def __getitem__(self, i):
        tau = host32(self.models[i][self.key]) - self.theta0
        if self.scales is not None:
            tau *= np.float32(self.scales[i])
        return tau

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def total(self):
        """Σ_i τ_i, accumulated one τ at a time."""
        out = None
        for tau in self:
            out = tau if out is None else np.add(out, tau, out=out)
        return out

    def mean(self):
        return self.total() / np.float32(len(self))


def merge_matrices(base, models, matrix_rule, scale=1.0, tau_scales=None):
    """θ₀ + scale · Δ key by key, Δ = matrix_rule(TaskVectors of the key) on 2-D float keys and the mean of
    the τ_i elsewhere; `tau_scales` multiplies each τ_i first (TSV-M's per-model alpha). Non-float keys are
    copied from the base. Returns {key: numpy array in the base's dtype}."""
    merged = {}
    for key, value in base.items():
        if not is_floating(value):
            merged[key] = np.array(as_numpy(value))
            continue
        theta0 = host32(value)
        taus = TaskVectors(key, theta0, models, tau_scales)
        delta = matrix_rule(taus) if is_matrix(theta0) else taus.mean()
        merged[key] = (theta0 + np.float32(scale) * delta).astype(numpy_dtype(value), copy=False)
    return merged


class PerTaskModel:
    """A merge result that is one backbone per task, built on demand (EMR-Merging, TSV-C): subclasses set
    METHOD, LABEL (for progress lines), FILE, FORMAT and define `task_backbone(index)` and `tensors()` (what
    `save` stores besides the heads)."""
    is_ensemble = True  # a multi-model result: the runner calls .evaluate, and .save to keep it
    METHOD = LABEL = FILE = FORMAT = None

    def __init__(self, base, task_names):
        self.base = base              # {key: numpy array}: θ₀ (also the non-float keys)
        self.task_names = list(task_names)

    def __len__(self):
        return len(self.task_names)

    def task_index(self, task):
        """Pool index of `task` (a task name or already an index)."""
        if not isinstance(task, str):
            return task
        if task not in self.task_names:
            raise ConfigError(f"{self.METHOD}: no model for task {task!r} (tasks: {', '.join(self.task_names)})")
        return self.task_names.index(task)

    def evaluate(self, task_pool, heads, tasks=None):
        """{task: metrics}: each task with its own backbone (built here, one at a time) and head."""
        results = {}
        for task in (self.task_names if tasks is None else tasks):
            results.update(task_pool.evaluate(self.task_backbone(task), heads, [task],
                                              desc=f"evaluate {task} ({self.LABEL})"))
        return results

    def save(self, folder, heads):
        """Write FILE into `folder` (atomically); returns its name."""
        import os

        save_per_task_file(os.path.join(folder, self.FILE), self.FORMAT, self.tensors(), heads, self.task_names,
                           self.base)
        return self.FILE


def save_per_task_file(path, fmt, tensors, heads, task_names, base_keys):
    """The one-file layout of the per-task results (EMR-Merging, TSV-C): `tensors` + `heads.<task>.<key>` +
    metadata {format, version, tasks (JSON, pool order), base_keys (JSON)}, written atomically with safetensors."""
    import json

    import safetensors.numpy

    from ppmerge.fileio import atomic_path

    tensors = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
    for task, head in heads.items():
        tensors.update({f"heads.{task}.{k}": np.ascontiguousarray(host32(v)) for k, v in head.items()})
    metadata = {"format": fmt, "version": "1", "tasks": json.dumps(list(task_names)),
                "base_keys": json.dumps(list(base_keys))}
    with atomic_path(path) as tmp:
        safetensors.numpy.save_file(tensors, tmp, metadata=metadata)


def read_per_task_file(path, fmt, what, base):
    """(tensors without heads, task names, heads {task: {key: array}}) of a file `save_per_task_file` wrote;
    CheckpointError when it is not a `what` file or `base` lacks one of its base keys."""
    import json

    from safetensors import safe_open

    from ppmerge.errors import CheckpointError

    with safe_open(path, framework="numpy") as f:
        meta = f.metadata() or {}
        if meta.get("format") != fmt:
            raise CheckpointError(f"{path}: not {what} file (metadata format {meta.get('format')!r}, "
                                  f"expected {fmt!r})")
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    missing = [k for k in json.loads(meta["base_keys"]) if k not in base]
    if missing:
        raise CheckpointError(f"{path}: base key {missing[0]!r} is missing from the given base")
    heads = {}
    for key in [k for k in tensors if k.startswith("heads.")]:
        task, name = key[len("heads."):].split(".", 1)
        heads.setdefault(task, {})[name] = tensors.pop(key)
    return tensors, json.loads(meta["tasks"]), heads
