"""emr_merging (EMR-Merging, Huang et al., NeurIPS 2024): one unified task vector plus, per task, a binary
mask and a scalar rescaler; task t runs with θ₀ + λ_t · M_t ⊙ τ_uni (tuning-free, no data).

Per float key, with τ_i = θ_i − θ₀:
- σ = sign(Σ_i τ_i), a zero sum counting as negative (σ = −1, as in the authors' code);
- τ_uni = σ ⊙ max_i |τ_i| over the entries where τ_i agrees with σ (τ_i·σ > 0; 0 where none agrees);
- M_t = (τ_t ⊙ σ > 0);
- λ_t = Σ_keys mean|τ_t[key]| / Σ_keys mean|(M_t ⊙ τ_uni)[key]| (per-tensor means summed over the keys, as
  the authors' code does; λ_t = 0 when M_t ⊙ τ_uni is zero everywhere: that task's update is zero anyway).
Non-float keys stay the base's. Computed key by key in two passes over the models (Σ τ_i, then masks and
magnitudes), one τ_i in memory at a time; the masks are kept bit-packed (numpy.packbits, 1 bit per entry
and task).

The result is an `EMRModel`, not a state dict: the runner evaluates it with
`result.evaluate(task_pool, heads, tasks)` (each task's backbone built on the fly, one at a time) and saves
it with `result.save(folder, heads)` as one safetensors file, `emr_model.safetensors`:

    tau_uni.<key>   τ_uni in the base's dtype (bfloat16 → float32), the key's shape
    mask.<key>      uint8 [N, ceil(numel/8)]: row t = numpy.packbits(M_t.ravel()) (bit order "big")
    scales          float32 [N]: λ_t, pool order
    heads.<task>.<key>  each task's head, as in merged_model.pdparams
    metadata        format "ppmerge-emr", version "1", tasks (JSON list, pool order), base_keys (JSON list)

Non-float keys are not stored: the base checkpoint (θ₀) is needed to rebuild a task's model
(`load_emr(path, base)`). Size: one model + N bits per parameter + heads, i.e. (1 + N/32) × a float32
backbone against N × for the fine-tuned models (nine GPT-345M tasks: ~1.8 GB vs ~12.7 GB).
"""

import numpy as np

from ppmerge.errors import ConfigError
from ppmerge.merge.lowrank import PerTaskModel, TaskVectors, host32, read_per_task_file
from ppmerge.merge.registry import register
from ppmerge.merge.tensor_ops import as_numpy, is_floating, numpy_dtype

FILE = "emr_model.safetensors"
FORMAT = "ppmerge-emr"


class EMRModel(PerTaskModel):
    """The result of `emr_merging`: θ₀, τ_uni, bit-packed masks and one rescaler per task."""
    METHOD, LABEL, FILE, FORMAT = "emr_merging", "EMR", FILE, FORMAT

    def __init__(self, base, tau_uni, masks, scales, task_names):
        super().__init__(base, task_names)
        self.tau_uni = tau_uni        # {float key: array}
        self.masks = masks            # {float key: uint8 [N, ceil(numel/8)]}
        self.scales = np.asarray(scales, dtype=np.float32)

    def task_backbone(self, task):
        """θ₀ + λ_t · M_t ⊙ τ_uni for `task` (a task name or a pool index), numpy in the base's dtypes."""
        task = self.task_index(task)
        backbone = {}
        for key, value in self.base.items():
            if key not in self.tau_uni:
                backbone[key] = as_numpy(value)
                continue
            tau = self.tau_uni[key]
            mask = np.unpackbits(self.masks[key][task], count=tau.size).reshape(tau.shape).astype(bool)
            backbone[key] = (host32(value) + self.scales[task] * np.where(mask, tau.astype(np.float32), 0)
                             ).astype(numpy_dtype(value), copy=False)
        return backbone

    def tensors(self):
        tensors = {f"tau_uni.{k}": v for k, v in self.tau_uni.items()}
        tensors.update({f"mask.{k}": v for k, v in self.masks.items()})
        tensors["scales"] = self.scales
        return tensors

def load_emr(path, base):
    """(EMRModel, heads {task: {key: array}}) from a saved FILE and the base backbone it was made from."""
    tensors, tasks, heads = read_per_task_file(path, FORMAT, "an EMR-Merging", base)
    tau = {k[len("tau_uni."):]: v for k, v in tensors.items() if k.startswith("tau_uni.")}
    masks = {k[len("mask."):]: v for k, v in tensors.items() if k.startswith("mask.")}
    return EMRModel(base, tau, masks, tensors["scales"], tasks), heads


def emr_key(taus):
    """One key from its `TaskVectors` (two passes, one τ_i in memory at a time): (τ_uni, packed masks
    uint8 [N, ⌈numel/8⌉], [mean|τ_t|] per task)."""
    sign = np.where(taus.total() > 0, np.float32(1), np.float32(-1))
    magnitude = np.zeros(taus.shape, np.float32)
    packed, own = [], []
    for tau in taus:
        mask = tau * sign > 0
        own.append(np.abs(tau).mean(dtype=np.float64))
        np.maximum(magnitude, np.where(mask, np.abs(tau), np.float32(0)), out=magnitude)
        packed.append(np.packbits(mask.reshape(-1)))
    return sign * magnitude, np.stack(packed), own


@register("emr_merging", data_dependent=True, params={},
          doc="EMR-Merging: unified τ_uni = sign(Σ τ_i)·max agreeing |τ_i|, per task a mask M_t and rescaler "
              "λ_t; task t runs θ₀ + λ_t·M_t⊙τ_uni (saved as τ_uni + packed masks + scales)")
def emr_merging(base, models, *, context):
    if not models:
        raise ConfigError("emr_merging: the model pool has no models")
    names = list(context.task_names)
    if None in names or len(set(names)) != len(names):
        what = "a model without a task" if None in names else \
            f"two models for task {next(t for t in names if names.count(t) > 1)}"
        raise ConfigError(f"ModelPool.models: emr_merging builds one model per task, but the pool has {what}")
    n = len(models)
    tau_uni, packed = {}, {}
    own = np.zeros(n)    # Σ_keys mean|τ_t|
    kept = np.zeros(n)   # Σ_keys mean|M_t ⊙ τ_uni|
    for key, value in base.items():
        if not is_floating(value):
            continue
        uni, packed[key], own_key = emr_key(TaskVectors(key, host32(value), models))
        magnitude = np.abs(uni).reshape(-1)
        for t in range(n):
            own[t] += own_key[t]
            mask = np.unpackbits(packed[key][t], count=magnitude.size).astype(bool)
            kept[t] += np.where(mask, magnitude, np.float32(0)).mean(dtype=np.float64)
        tau_uni[key] = uni.astype(numpy_dtype(value), copy=False)
    scales = np.divide(own, kept, out=np.zeros(n), where=kept > 0)
    host_base = {k: as_numpy(v) for k, v in base.items()}
    return EMRModel(host_base, tau_uni, packed, scales, names)


emr_merging.data_note = " *(reads no data: needs the pool's task names; one model per task)*"
