"""Task-vector sparsifiers: magnitude, random, n:m, DARE, and CABS's conflict-aware sequential masks.

A spec (the `sparsify` parameter of the task-vector methods) is a dict:
  {name: magnitude|random|nm|dare|outliers|della, ratio (alias sparsity_ratio): fraction dropped, n, m,
   rescale, seed, scope: tensor|global, gamma, epsilon, conflict_aware: false, order: [pool indices]}

What each keeps (entries with τ = 0 are never counted as kept):
- magnitude: the top (1 − ratio) of |τ|. FusionBench's rule: with d entries and density q = 1 − ratio,
  keep |τ| ≥ the k-th smallest |τ|, k = d − floor(d·q) (ties at the threshold are all kept). `scope`
  tensor ranks within each tensor, global ranks over the whole task vector (all tensors of a model).
- random / dare: keep each entry with probability 1 − ratio; the draw for model i and tensor `key`
  comes from numpy's default_rng([seed, i, crc32(key)]).random(shape, dtype=float32), kept where ≥ ratio, so it
  does not depend on the device or on the order tensors are visited.
- nm: along the last dimension (1-D tensors: the vector), each block of m consecutive entries keeps its
  n largest |τ|; a trailing block of r < m entries keeps min(n, r). (CABS uses blocks of the whole
  flattened tensor and drops a trailing partial block; for last dimensions divisible by m the blocks
  are the same.)
- outliers (Model Breadcrumbs, mergekit's magnitude_outliers): per tensor, of its d entries ordered by
  |τ| (ties by index) drop the int(gamma·d) largest and then the smallest, keeping int(q·d) (fewer
  outliers dropped when both do not fit). mergekit keeps nothing when int(gamma·d) = 0 (its slice
  [n_bot:-0] is empty); here the outliers are then simply none.
- della (DELLA's MagPrune, as mergekit): per row of the last dimension, rank |τ| (0 = smallest, ties by
  index), keep with probability p = q − ε + 2ε·rank/(m − 1) in float32 (m entries in the row; q when m = 1), the
  draw from the same seeded generator as dare (kept where u < p); rescale divides each kept entry by
  its own p (the paper's rule; mergekit's newer releases rescale to the L1 norm instead).
- rescale: kept entries × 1/(1 − ratio) (nm: × m/n). Default true for dare and della, false otherwise.
- conflict_aware (CABS "CA"): masks are made in `order` (default pool order); model j's mask is
  computed on its residual τ_j ⊙ [position not kept by an earlier model] and restricted to those free
  positions, so the kept sets of different models are disjoint. Magnitude thresholds (tensor or global)
  are taken over the residual, whose taken positions count as zeros, as in CABS's
  `param2 *= (1 - mask1)` before pruning param2.
"""
import zlib

import numpy as np

from ppmerge.errors import ConfigError
from ppmerge.merge.registry import Param, check_param, did_you_mean
from ppmerge.merge.tensor_ops import paddle, to_host

SPARSIFIERS = ("magnitude", "random", "nm", "dare", "outliers", "della")

SPEC_FIELDS = {
    "name": Param("str", None, "which sparsifier", choices=SPARSIFIERS),
    "ratio": Param("float", None, "fraction of entries dropped (magnitude, random, dare)", nullable=True),
    "sparsity_ratio": Param("float", None, "alias of ratio", nullable=True),
    "n": Param("int", 2, "nm: entries kept per block"),
    "m": Param("int", 4, "nm: block size"),
    "rescale": Param("bool", None, "multiply kept entries by 1/(kept fraction); default true for dare",
                     nullable=True),
    "seed": Param("int", 0, "random / dare: seed of the masks"),
    "scope": Param("str", "tensor", "magnitude: rank per tensor or over the whole task vector",
                   choices=("tensor", "global")),
    "gamma": Param("float", 0.01, "outliers: fraction of the largest |τ| dropped"),
    "epsilon": Param("float", 0.15, "della: keep probabilities span q ± epsilon"),
    "conflict_aware": Param("bool", False, "CABS: sequential masks, disjoint kept sets"),
    "order": Param("list[int]", None, "conflict_aware: pool indices in masking order", nullable=True),
}


def parse_sparsify(spec, where="Merge.sparsify"):
    """Validate a sparsify spec (dict, or just a name) and return it complete, with `density` = the
    fraction kept, `scale` = the rescale factor. None/empty → None."""
    if not spec:
        return None
    if isinstance(spec, str):
        spec = {"name": spec}
    if not isinstance(spec, dict):
        raise ConfigError(f"{where}: expected a mapping like {{name: magnitude, ratio: 0.8}}, got {spec!r}")
    for key in spec:
        if key not in SPEC_FIELDS:
            near = did_you_mean(key, SPEC_FIELDS, f"{where}.")
            raise ConfigError(f"{where}.{key}: unknown sparsify key{near} (known: {', '.join(SPEC_FIELDS)})")
    if "name" not in spec:
        raise ConfigError(f"{where}.name: missing; expected one of {', '.join(SPARSIFIERS)}")
    name = str(spec["name"]).replace("n:m", "nm")
    out = {k: p.default for k, p in SPEC_FIELDS.items()}
    out.update({k: check_param(SPEC_FIELDS[k], v, f"{where}.{k}") for k, v in dict(spec, name=name).items()})
    if out["ratio"] is not None and out["sparsity_ratio"] is not None and out["ratio"] != out["sparsity_ratio"]:
        raise ConfigError(f"{where}: ratio and sparsity_ratio disagree ({out['ratio']} vs {out['sparsity_ratio']})")
    ratio = next((r for r in (out["ratio"], out["sparsity_ratio"]) if r is not None), 0.5)
    if not 0.0 <= ratio <= 1.0:
        raise ConfigError(f"{where}.ratio: expected a fraction in [0, 1], got {ratio}")
    if not 1 <= out["n"] <= out["m"]:
        raise ConfigError(f"{where}: expected 1 <= n <= m, got n={out['n']}, m={out['m']}")
    if out["seed"] < 0:
        raise ConfigError(f"{where}.seed: expected a non-negative integer, got {out['seed']}")
    if out["rescale"] is None:
        out["rescale"] = name in ("dare", "della")
    out["ratio"] = out["sparsity_ratio"] = ratio
    out["density"] = out["n"] / out["m"] if name == "nm" else round(1.0 - ratio, 12)
    if out["rescale"] and out["density"] <= 0:
        raise ConfigError(f"{where}: cannot rescale when every entry is dropped (ratio 1.0); set rescale: false")
    if not 0.0 <= out["gamma"] <= 1.0:
        raise ConfigError(f"{where}.gamma: expected a fraction in [0, 1], got {out['gamma']}")
    if name == "della" and not 0.0 < out["density"] - out["epsilon"] <= out["density"] + out["epsilon"] < 1.0:
        raise ConfigError(f"{where}.epsilon: della needs 0 < (1 − ratio) ± epsilon < 1, got 1 − ratio = "
                          f"{out['density']}, epsilon = {out['epsilon']}")
    out["scale"] = 1.0 / out["density"] if out["rescale"] and name != "della" else 1.0
    return out


def check_sparsify(value, where):
    """Param.check hook: validates, keeps the user's dict (the methods parse it again)."""
    parse_sparsify(value, where)
    return value


SPARSIFY_PARAM = Param("dict|str", None, "sparsify task vectors first: {name: magnitude|random|nm|dare, "
                       "ratio, n, m, rescale, seed, scope, conflict_aware}", nullable=True, check=check_sparsify)


# --- masks: paddle bool tensors on the current device -------------------------------------------------

def kth_smallest_rank(d, density):
    """FusionBench's rank: keep |τ| ≥ the k-th smallest of d, k = d − floor(d·density); None = keep all."""
    k = d - int(d * density)
    return None if k <= 0 else k


def _bracket_of(sample, k, d):
    """[lo, hi] from a uniform sample that holds the k-th smallest of d values unless the sample is off by
    more than 5 standard deviations of the quantile (then the caller falls back); only the sample's two
    order statistics are selected."""
    samples = sample.size
    q = k / d
    margin = 5.0 * np.sqrt(q * (1.0 - q) / samples) + 2.0 / samples
    ranks = [max(int((q - margin) * samples), 0), min(int((q + margin) * samples), samples - 1)]
    lo, hi = np.partition(sample, ranks)[ranks]
    return lo, hi


CHUNK = 1 << 15  # entries per step of the chunked numpy loops: the temporaries stay in the L2 cache


class TaskVectorPart:
    """One flat slice of a task vector, τ̂ = (x − b)·keep·scale, read chunk by chunk and never stored
    whole (the numpy CPU path of TIES). `b` None: x is τ itself; `keep` None: nothing dropped."""

    def __init__(self, x, b=None, keep=None, scale=1.0):
        self.x, self.b, self.keep, self.scale = x, b, keep, float(scale)
        self.size = x.size

    def take(self, index):
        """τ̂ at the flat positions `index` (a sample)."""
        value = np.array(self.x[index], dtype=np.float32) if self.b is None else self.x[index] - self.b[index]
        return self._mask(value, index)

    def _mask(self, value, index=slice(None)):
        if self.keep is not None:
            np.multiply(value, self.keep[index], out=value)
        if self.scale != 1.0:
            value *= np.float32(self.scale)
        return value

    def chunk(self, start, stop, out):
        """τ̂[start:stop] written into out[:stop - start] (a float32 buffer); returns that view."""
        view = out[:stop - start]
        if self.b is None:
            view[...] = self.x[start:stop]
        else:
            np.subtract(self.x[start:stop], self.b[start:stop], out=view)
        if self.keep is not None:
            np.multiply(view, self.keep[start:stop], out=view)
        if self.scale != 1.0:
            view *= np.float32(self.scale)
        return view

    def chunks(self, out):
        for start in range(0, self.size, CHUNK):
            yield start, self.chunk(start, min(start + CHUNK, self.size), out)


def _below_and_band(part, lo, hi):
    """(how many |τ̂| of `part` are < lo, the |τ̂| in [lo, hi]): one chunked pass, own buffers (so
    parts can be counted on several threads at once)."""
    buffer = np.empty(CHUNK, dtype=np.float32)
    below_mask, band_mask = np.empty(CHUNK, dtype=bool), np.empty(CHUNK, dtype=bool)
    below, band = 0, []
    for _, tau in part.chunks(buffer):
        n = tau.size
        magnitude = np.abs(tau, out=tau)
        np.less(magnitude, lo, out=below_mask[:n])
        below += int(np.count_nonzero(below_mask[:n]))
        np.less_equal(magnitude, hi, out=band_mask[:n])
        np.logical_xor(band_mask[:n], below_mask[:n], out=band_mask[:n])  # lo <= |τ| <= hi
        band.append(magnitude[band_mask[:n]])
    return below, np.concatenate(band) if band else np.empty(0, dtype=np.float32)


def kth_smallest_magnitude(parts, k, samples=1 << 18, map=map):
    """The exact k-th smallest (1-based) |τ̂| over all entries of `parts` (TaskVectorParts), without
    concatenating them or storing |τ̂|: a random sample (each part in proportion to its size) brackets
    the rank, one chunked pass counts the entries below the bracket and keeps those inside it (≈1% of
    them), and only those are partitioned. If the sample misses (> 5σ off), the exact answer comes from
    a full partition. `map` runs the counting pass over the parts (e.g. a thread pool's map)."""
    d = sum(part.size for part in parts)
    if d <= 1 << 16:
        values = np.abs(np.concatenate([part.take(slice(None)).ravel() for part in parts]))
        return np.partition(values, k - 1)[k - 1]
    rng = np.random.default_rng(0)
    per_entry = min(samples, max(d >> 6, 4096)) / d
    sample = np.concatenate([np.abs(part.take(rng.integers(0, part.size, int(np.ceil(part.size * per_entry)))))
                             for part in parts])
    lo, hi = _bracket_of(sample, k, d)
    counted = list(map(lambda part: _below_and_band(part, lo, hi), parts))
    below = sum(count for count, _ in counted)
    band = np.concatenate([values for _, values in counted])
    del counted
    if below < k <= below + band.size:
        return np.partition(band, k - below - 1)[k - below - 1]
    del band
    values = np.abs(np.concatenate([part.take(slice(None)).ravel() for part in parts]))
    return np.partition(values, k - 1)[k - 1]


def magnitude_threshold(parts, density, map=map):
    """TIES's trim threshold over `parts` (FusionBench's rule: keep |τ| ≥ the k-th smallest |τ|, see
    kth_smallest_rank); −inf keeps everything, +inf nothing. `map`: see kth_smallest_magnitude."""
    if density <= 0:
        return float("inf")
    k = kth_smallest_rank(sum(part.size for part in parts), density)
    return float("-inf") if k is None else float(kth_smallest_magnitude(parts, k, map=map))


def magnitude_mask(magnitude, density):
    """Per tensor: |τ| ≥ the k-th smallest |τ| (FusionBench's topk_values_mask rule). The threshold is
    selected on the host (zero-copy on CPU), the mask made on the device."""
    pd = paddle()
    if density <= 0:
        return pd.zeros(magnitude.shape, dtype="bool")
    k = kth_smallest_rank(int(magnitude.size), density)
    if k is None:
        return pd.ones(magnitude.shape, dtype="bool")
    return magnitude >= float(kth_smallest_magnitude([TaskVectorPart(to_host(magnitude).ravel())], k))


def global_threshold(magnitudes, sizes, density):
    """The k-th smallest |τ| over all tensors of one model (numpy on the host, no concatenation on the
    device). `magnitudes` yields |τ| per tensor; returns −inf (keep all) or +inf (keep none) at the extremes."""
    return magnitude_threshold([TaskVectorPart(to_host(m).ravel()) for m in magnitudes], density)


def nm_mask(magnitude, n, m):
    """Each block of m consecutive entries along the last dimension keeps its n largest |τ|."""
    pd = paddle()
    shape = list(magnitude.shape)
    last = shape[-1] if shape else 1
    rows = magnitude.reshape([-1, last])
    pad = (-last) % m
    if pad:  # padding ranks below every |τ| ≥ 0, so a short block keeps min(n, r) real entries
        rows = pd.concat([rows, pd.full([rows.shape[0], pad], -1.0, dtype=rows.dtype)], axis=1)
    blocks = rows.reshape([rows.shape[0], -1, m])
    _, index = pd.topk(blocks, k=n, axis=-1)
    mask = pd.put_along_axis(pd.zeros_like(blocks), index, 1.0, axis=-1)
    return (mask.reshape([rows.shape[0], -1])[:, :last] > 0).reshape(shape)


def random_keep_host(shape, ratio, seed, model_index, key):
    """DARE's Bernoulli(1 − ratio) keep mask for one model and tensor (numpy bool), reproducible from the seed."""
    return _uniform(shape, seed, model_index, key) >= ratio


def _uniform(shape, seed, model_index, key):
    return np.random.default_rng([seed, model_index, zlib.crc32(key.encode("utf-8"))]).random(tuple(shape),
                                                                                              dtype=np.float32)


def outliers_keep(magnitude, density, gamma):
    """Model Breadcrumbs' mask of one tensor (numpy bool): see the module docstring."""
    d = magnitude.size
    if density >= 1:
        return np.ones(magnitude.shape, dtype=bool)
    target, top = int(density * d), int(gamma * d)
    bottom = d - target - top
    if bottom < 0:  # both do not fit: fewer outliers dropped
        top, bottom = top + bottom, 0
    return stable_rank_range(magnitude.reshape(-1), bottom, d - top).reshape(magnitude.shape)


def stable_rank_range(values, lo, hi):
    """Mask of the entries whose position in a stable ascending sort of flat `values` is in [lo, hi),
    in O(d) (two partitions, then the entries equal to a boundary value taken in index order)."""
    keep = np.zeros(values.size, dtype=bool)
    if lo >= hi:
        return keep
    lo_value, hi_value = np.partition(values, [lo, hi - 1])[[lo, hi - 1]]
    np.logical_and(values > lo_value, values < hi_value, out=keep)
    for value in {float(lo_value), float(hi_value)}:
        index = np.flatnonzero(values == value)  # sorted positions start.. start + len, by index
        start = int(np.count_nonzero(values < value))
        keep[index[max(lo - start, 0):max(hi - start, 0)]] = True
    return keep


def della_keep(magnitude, density, epsilon, seed, model_index, key):
    """DELLA's MagPrune for one tensor: (keep mask, keep probability p), see the module docstring."""
    shape = magnitude.shape
    rows = magnitude.reshape(-1, shape[-1] if len(shape) else 1)
    m = rows.shape[1]
    rank = np.empty(rows.shape, dtype=np.float32)  # the inverse permutation: rank of each entry in its row
    np.put_along_axis(rank, np.argsort(rows, axis=1, kind="stable"), np.arange(m, dtype=np.float32)[None, :], axis=1)
    # float32, as mergekit's CPU work dtype: p = (q − ε) + rank·(2ε/(m − 1))
    step = np.float32(2.0 * epsilon / (m - 1)) if m > 1 else np.float32(0.0)
    probability = np.float32(density - epsilon if m > 1 else density) + rank * step
    keep = _uniform(rows.shape, seed, model_index, key) < probability
    return keep.reshape(shape), probability.reshape(shape)


def random_keep_packed(shape, ratio, seed, model_index, key, chunk=1 << 20):
    """random_keep_host as packed bits (np.packbits of the flat C-order mask), drawn chunk by chunk from the
    same generator (the same stream of numbers, so the same mask) without a whole-tensor float array."""
    rng = np.random.default_rng([seed, model_index, zlib.crc32(key.encode("utf-8"))])
    size = int(np.prod(shape))
    chunk -= chunk % 8  # whole bytes per chunk
    return np.concatenate([np.packbits(rng.random(min(chunk, size - start), dtype=np.float32) >= ratio)
                           for start in range(0, size, chunk)] or [np.empty(0, np.uint8)])


def random_keep(shape, ratio, seed, model_index, key):
    """random_keep_host as a paddle bool tensor on the current device."""
    return paddle().to_tensor(random_keep_host(shape, ratio, seed, model_index, key))


class Sparsifier:
    """Applies one spec to the task vectors of a pool of `num_models` models.

    `prepare(source, shapes)` makes what needs whole models (global thresholds, conflict-aware masks);
    `source(i, key)` gives τ_i[key] on the device. Then `apply(i, key, tau)` returns the sparsified τ."""

    def __init__(self, spec, num_models, order=None, where="Merge.sparsify"):
        self.spec = parse_sparsify(spec, where) if "density" not in spec else spec
        self.num_models = num_models
        order = order if order is not None else self.spec["order"]
        self.order = list(range(num_models)) if order is None else list(order)
        if sorted(self.order) != list(range(num_models)):
            raise ConfigError(f"{where}.order: expected a permutation of the pool indices 0..{num_models - 1}, "
                              f"got {self.order}")
        self.thresholds = {}   # model index -> global magnitude threshold
        self.owner = None      # conflict-aware: key -> int16 array, the model that keeps each position (-1: none)

    @property
    def data_free(self):
        """Masks that do not look at τ (random / dare, not conflict-aware): usable while streaming."""
        return self.spec["name"] in ("random", "dare") and not self.spec["conflict_aware"]

    def _global(self):
        return self.spec["name"] == "magnitude" and self.spec["scope"] == "global"

    def mask(self, i, key, magnitude):
        """Model i's keep mask for one tensor, from |τ| (bool, on the device)."""
        spec = self.spec
        if spec["name"] == "magnitude":
            keep = magnitude >= self.thresholds[i] if self._global() else magnitude_mask(magnitude, spec["density"])
        elif spec["name"] == "nm":
            keep = nm_mask(magnitude, spec["n"], spec["m"])
        elif spec["name"] == "outliers":
            keep = paddle().to_tensor(outliers_keep(to_host(magnitude), spec["density"], spec["gamma"]))
        elif spec["name"] == "della":
            keep = paddle().to_tensor(della_keep(to_host(magnitude), spec["density"], spec["epsilon"], spec["seed"],
                                                 i, key)[0])
        else:
            keep = random_keep(magnitude.shape, spec["ratio"], spec["seed"], i, key)
        return keep & (magnitude > 0)

    def keep_scale(self, i, key, shape):
        """For data-free masks: the float multiplier (mask × scale) of model i's τ on one tensor."""
        return random_keep(shape, self.spec["ratio"], self.spec["seed"], i, key).astype("float32") * self.spec["scale"]

    def prepare(self, source, shapes):
        if self.spec["conflict_aware"]:
            self._prepare_conflict_aware(source, shapes)
        elif self._global():
            for i in range(self.num_models):
                self.thresholds[i] = global_threshold((source(i, k).abs() for k in shapes),
                                                      [int(np.prod(s)) for s in shapes.values()], self.spec["density"])

    def _prepare_conflict_aware(self, source, shapes):
        pd = paddle()
        self.owner = {key: np.full(shape, -1, dtype=np.int16) for key, shape in shapes.items()}

        def residual(i, key):  # τ_i where no earlier model kept the position, 0 elsewhere
            free = pd.to_tensor(self.owner[key] < 0)
            return source(i, key).abs() * free.astype("float32"), free

        for i in self.order:
            if self._global():
                self.thresholds[i] = global_threshold((residual(i, k)[0] for k in shapes),
                                                      [int(np.prod(s)) for s in shapes.values()], self.spec["density"])
            for key in shapes:
                magnitude, free = residual(i, key)
                keep = to_host(self.mask(i, key, magnitude) & free, bool)
                self.owner[key][keep] = i

    def apply(self, i, key, tau):
        if self.owner is None and self.spec["name"] == "della":  # mask and keep probability drawn once
            keep, probability = della_keep(to_host(tau.abs()), self.spec["density"], self.spec["epsilon"],
                                           self.spec["seed"], i, key)
            kept = paddle().where(paddle().to_tensor(keep), tau, 0.0)
            # each kept entry ÷ its own keep probability
            return kept / paddle().to_tensor(probability.astype(np.float32)) if self.spec["rescale"] else kept
        if self.owner is not None:
            keep = paddle().to_tensor(self.owner[key] == i)
        else:
            keep = self.mask(i, key, tau.abs())
        kept = paddle().where(keep, tau, 0.0)
        return kept * self.spec["scale"] if self.spec["scale"] != 1.0 else kept
