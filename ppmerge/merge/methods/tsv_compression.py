"""tsv_compression (TSV-C, Gargiulo et al., CVPR 2025): each task keeps its own low-rank task vector, its
top k singular components per weight matrix (k = ⌊rank_fraction·r⌋, default fraction 1/T: the share TSV-M
keeps per task; at least 1), and task t runs with θ₀ + U_t S_t V_tᵀ (other keys: its full τ_t, small).

Like `emr_merging` the result is per task (`LowRankTasks`: `.task_backbone(task)`, `.evaluate(task_pool,
heads, tasks)` building one task's backbone at a time, `.save(folder, heads)`), written as one safetensors
file `tsv_c_model.safetensors`:

    u.<key>   float32 [T, m, k]     s.<key>  float32 [T, k]     vh.<key>  float32 [T, k, n]
    tau.<key> float32 [T, ...]      (keys that are not matrices)
    heads.<task>.<key>              metadata: format "ppmerge-tsv-c", version "1", tasks, base_keys

Size per m x n matrix: T·k·(m + n + 1) floats (k = r/T: r·(m + n), ≈ 2 matrices when square, ≈ 1 for an
embedding table) against T matrices for the fine-tuned models. `load_tsv_c(path, base)` reads it back.
"""

import numpy as np

from ppmerge.errors import ConfigError
from ppmerge.merge.lowrank import PerTaskModel, TaskVectors, host32, is_matrix, read_per_task_file, svd
from ppmerge.merge.registry import Param, register
from ppmerge.merge.tensor_ops import as_numpy, is_floating, numpy_dtype

FILE = "tsv_c_model.safetensors"
FORMAT = "ppmerge-tsv-c"


def _fraction(value, where):
    if not 0.0 < value <= 1.0:
        raise ConfigError(f"{where}: expected a fraction in (0, 1], got {value}")
    return float(value)


class LowRankTasks(PerTaskModel):
    """The result of `tsv_compression`: θ₀ and, per task, the low-rank factors of its task vector."""
    METHOD, LABEL, FILE, FORMAT = "tsv_compression", "TSV-C", FILE, FORMAT

    def __init__(self, base, factors, dense, task_names):
        super().__init__(base, task_names)
        self.factors = factors    # {matrix key: (u [T, m, k], s [T, k], vh [T, k, n])}
        self.dense = dense        # {other float key: [T, ...]}

    def task_backbone(self, task):
        """θ₀ + U_t S_t V_tᵀ (matrices) / θ₀ + τ_t (other float keys), numpy in the base's dtypes."""
        task = self.task_index(task)
        backbone = {}
        for key, value in self.base.items():
            if key in self.factors:
                u, s, vh = (x[task] for x in self.factors[key])
                delta = (u * s) @ vh
            elif key in self.dense:
                delta = self.dense[key][task]
            else:
                backbone[key] = as_numpy(value)
                continue
            backbone[key] = (host32(value) + delta).astype(numpy_dtype(value), copy=False)
        return backbone

    def tensors(self):
        tensors = {}
        for key, (u, s, vh) in self.factors.items():
            tensors.update({f"u.{key}": u, f"s.{key}": s, f"vh.{key}": vh})
        tensors.update({f"tau.{key}": value for key, value in self.dense.items()})
        return tensors

def load_tsv_c(path, base):
    """(LowRankTasks, heads {task: {key: array}}) from a saved FILE and the base backbone it was made from."""
    tensors, tasks, heads = read_per_task_file(path, FORMAT, "a TSV-C", base)
    factors = {k[2:]: (v, tensors["s." + k[2:]], tensors["vh." + k[2:]]) for k, v in tensors.items()
               if k.startswith("u.")}
    dense = {k[4:]: v for k, v in tensors.items() if k.startswith("tau.")}
    return LowRankTasks(base, factors, dense, tasks), heads


@register("tsv_compression", data_dependent=True, params={
    "rank_fraction": Param("float", None, "share k/r of each matrix's singular components every task keeps "
                           "(null: 1/T, TSV-M's share)", nullable=True, check=_fraction),
}, doc="TSV-C: per task, its task vector's top k singular components per matrix (k = r/T by default); task t "
       "runs θ₀ + U_t S_t V_tᵀ (saved as the factors, one file)")
def tsv_compression(base, models, *, context, rank_fraction=None):
    names = list(context.task_names)
    if not models:
        raise ConfigError("tsv_compression: the model pool has no models")
    if None in names or len(set(names)) != len(names):
        what = "a model without a task" if None in names else \
            f"two models for task {next(t for t in names if names.count(t) > 1)}"
        raise ConfigError(f"ModelPool.models: tsv_compression keeps one model per task, but the pool has {what}")
    fraction = 1.0 / len(models) if rank_fraction is None else rank_fraction
    factors, dense = {}, {}
    for key, value in base.items():
        if not is_floating(value):
            continue
        taus = TaskVectors(key, host32(value), models)   # one τ_i in memory at a time
        if not is_matrix(value):
            dense[key] = np.stack(list(taus))
            continue
        k = max(1, int(min(taus.shape) * fraction))
        parts = []
        for tau in taus:
            u, s, vh = svd(tau)
            parts.append((u[:, :k].copy(), s[:k].copy(), vh[:k].copy()))
        factors[key] = tuple(np.stack(x) for x in zip(*parts))
        del parts
    return LowRankTasks({k: as_numpy(v) for k, v in base.items()}, factors, dense, names)


tsv_compression.data_note = " *(reads no data: needs the pool's task names; one model per task)*"
