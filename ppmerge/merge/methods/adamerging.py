"""adamerging (AdaMerging, Yang et al., ICLR 2024): task arithmetic whose coefficients are learned at test
time, without labels, by minimising the Shannon entropy of each task's predictions.

    task_wise:  θ = θ₀ + Σ_i λ_i τ_i              (one λ per model)
    layer_wise: θ[k] = θ₀[k] + Σ_i λ_{i,k} τ_i[k]  (one λ per model and backbone tensor k, as FusionBench)

λ starts at `init` (0.3). Each of `max_steps` Adam steps (lr `lr`, betas 0.9/0.999, eps 1e-8, on the λ in
numpy: a handful of scalars) merges the backbone, and for every classification task of the pool runs
`batch_size` **unlabelled** inputs of that task's evaluation split (the task pool's split, its first
`TaskPool.max_examples`; a seeded permutation, cycled) through the merged backbone with the task's own
head; the loss is Σ_tasks mean_batch H(softmax(logits)). Only the input ids are read (never a label).
Since θ is linear in λ, dL/dλ_{i,k} = ⟨dL/dθ[k], τ_i[k]⟩ (one backward per task and step, in paddle on the
current device). With `clamp`, the λ used are clip(λ, 0, 1) and no gradient flows through clipped entries
(FusionBench's `clamp_weights`). Regression tasks (STS-B: one output, no distribution) are left out of the
objective, as are models without a task; a pool with no classification task is refused.

The learned table (the λ used, after clamping), the entropy at each step and the settings go into the
report (report.json, the method row's `method_info.adamerging`). `lambdas: <file>` loads such a table
instead of training: a JSON file with the table, or a report.json holding one (models and, for layer_wise,
keys must match the pool). Memory: θ₀ and the N models as float32 views (CPU, zero-copy) or copies on
the device (N + 1 backbones), one merged backbone and one model with gradients; task vectors are made key
by key, never stored. GPT classifiers only: other model families are refused.
"""
import json
import os

import numpy as np

from ppmerge.errors import ConfigError
from ppmerge.merge.methods.fisher_merging import positive_int
from ppmerge.merge.registry import Param, register
from ppmerge.merge.tensor_ops import is_floating, numpy_dtype, paddle as _paddle, to_device, to_host


class MergedWithInfo(dict):
    """A merged state dict carrying `method_info` for the report (the runner copies it into the row)."""
    method_info = None


def _positive(value, where):
    if not value > 0:
        raise ConfigError(f"{where}: expected a positive number, got {value}")
    return float(value)


def _non_negative(value, where):
    if value < 0:
        raise ConfigError(f"{where}: expected a non-negative integer, got {value}")
    return value


def check_family(model_cfg):
    from ppmerge.models.families import family_name

    family = family_name(model_cfg)
    if family != "gpt":
        raise ConfigError(f"Merge.method: adamerging runs on GPT classifiers only; TaskPool.model "
                          f"{(model_cfg or {}).get('name')!r} is a {family} model")


def input_ids_of(dataset, index):
    """The token ids of one example, never its label (GLUEDataset keeps them in `input_ids`)."""
    ids = getattr(dataset, "input_ids", None)
    return ids[index] if ids is not None else dataset[index]["input_ids"]


def unlabelled_batches(task_pool, task, batch_size, seed):
    """Endless batches (input_ids [B, L] right-padded, lengths [B]) from the task's eval split."""
    from ppmerge.data import EOS_ID

    dataset = task_pool.dataset(task)
    count = len(task_pool.eval_indices(task))
    if count == 0:
        raise ConfigError(f"adamerging: {task} has no evaluation examples to adapt on (check TaskPool.max_examples)")
    rng = np.random.default_rng(seed)
    while True:
        order = rng.permutation(count)
        for start in range(0, count, batch_size):
            rows = [np.asarray(input_ids_of(dataset, int(i))) for i in order[start:start + batch_size]]
            lengths = np.array([len(r) for r in rows], dtype=np.int64)
            ids = np.full((len(rows), int(lengths.max())), EOS_ID, dtype=np.int64)
            for row, r in zip(ids, rows):
                row[:len(r)] = r
            yield ids, lengths


def entropy(logits):
    """Mean Shannon entropy (nats) of softmax(logits) over the batch (paddle)."""
    paddle = _paddle()
    logp = paddle.nn.functional.log_softmax(logits, axis=-1)
    return -paddle.sum(paddle.exp(logp) * logp, axis=-1).mean()


def load_lambda_table(path, models, keys, granularity):
    """The λ array of a saved table (JSON table or report.json), checked against this pool."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except OSError as exc:
        raise ConfigError(f"Merge.lambdas: cannot read {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise ConfigError(f"Merge.lambdas: {path} is not JSON ({exc})") from None
    if "rows" in data:  # a report.json: the first row with a table
        tables = [r.get("method_info", {}).get("adamerging") for r in data["rows"] if isinstance(r, dict)]
        tables = [t for t in tables if t]
        if not tables:
            raise ConfigError(f"Merge.lambdas: {path} is a report without an adamerging λ table")
        data = tables[0]
    if not isinstance(data, dict) or "lambdas" not in data or "models" not in data:
        raise ConfigError(f"Merge.lambdas: {path}: expected a JSON object with 'models' and 'lambdas'")
    if data.get("granularity") != granularity:
        raise ConfigError(f"Merge.lambdas: {path} holds a {data.get('granularity')} table, Merge.granularity is "
                          f"{granularity}")
    if list(data["models"]) != list(models):
        raise ConfigError(f"Merge.lambdas: {path} is for models {data['models']}, the pool has {list(models)}")
    table = np.asarray(data["lambdas"], dtype=np.float64)
    if granularity == "layer_wise" and list(data.get("keys", [])) != list(keys):
        raise ConfigError(f"Merge.lambdas: {path}: its 'keys' are not this model's backbone tensors")
    expected = (len(models),) if granularity == "task_wise" else (len(models), len(keys))
    if table.shape != expected or not np.all(np.isfinite(table)):
        raise ConfigError(f"Merge.lambdas: {path}: expected finite lambdas of shape {list(expected)}, "
                          f"got {list(table.shape)}")
    return table


class _Adam:
    def __init__(self, shape, lr, b1=0.9, b2=0.999, eps=1e-8):
        self.lr, self.b1, self.b2, self.eps = lr, b1, b2, eps
        self.m, self.v, self.t = np.zeros(shape), np.zeros(shape), 0

    def step(self, x, grad):
        self.t += 1
        self.m = self.b1 * self.m + (1 - self.b1) * grad
        self.v = self.b2 * self.v + (1 - self.b2) * grad * grad
        m_hat, v_hat = self.m / (1 - self.b1 ** self.t), self.v / (1 - self.b2 ** self.t)
        return x - self.lr * m_hat / (np.sqrt(v_hat) + self.eps)


def _per_key(lambdas, granularity, num_keys):
    """λ as [N, K] (task-wise: the same λ_i on every key)."""
    return np.repeat(lambdas[:, None], num_keys, axis=1) if granularity == "task_wise" else lambdas


def _merge_on_device(theta0, thetas, lam):
    """{key: θ₀ + Σ_i λ[i, k] (θ_i − θ₀)} (paddle tensors; each τ_i[key] made on the fly, never stored)."""
    return {key: theta0[key] + sum(float(lam[i, k]) * (theta[key] - theta0[key]) for i, theta in enumerate(thetas))
            for k, key in enumerate(theta0)}


@register("adamerging", data_dependent=True, params={
    "granularity": Param("str", "task_wise", "one λ per model, or per model and backbone tensor",
                         choices=("task_wise", "layer_wise")),
    "init": Param("float", 0.3, "starting λ"),
    "clamp": Param("bool", True, "use clip(λ, 0, 1)"),
    "max_steps": Param("int", 100, "Adam steps (0: the initial λ)", check=_non_negative),
    "lr": Param("float", 1e-3, "Adam learning rate", check=_positive),
    "batch_size": Param("int", 16, "unlabelled inputs per task and step", check=positive_int),
    "lambdas": Param("str", None, "a saved λ table (JSON, or a report.json of an adamerging run) to use "
                     "instead of training", nullable=True),
}, doc="AdaMerging: θ₀ + Σ λ_i τ_i (task_wise) or per tensor (layer_wise), λ learned by Adam on the entropy "
       "of each task's predictions on its unlabelled eval inputs")
def adamerging(base, models, *, context, granularity="task_wise", init=0.3, clamp=True, max_steps=100, lr=1e-3,
               batch_size=16, lambdas=None):
    check_family(context.model_cfg)
    paddle = _paddle()
    keys = [k for k, v in base.items() if is_floating(v)]
    n = len(models)
    names = list(context.task_names)
    shape = (n,) if granularity == "task_wise" else (n, len(keys))
    history = []
    # float32 views of the pool's arrays on CPU (zero-copy), copies on an accelerator: no task vector is stored
    theta0 = {k: to_device(base[k]) for k in keys}
    thetas = [{k: to_device(m[k]) for k in keys} for m in models]
    if lambdas is not None:
        raw = load_lambda_table(os.path.expanduser(lambdas), names, keys, granularity)
    else:
        raw = np.full(shape, float(init))
        pool = context.task_pool
        # every model of a classification task, with its own head (a model without a task has no objective)
        objective = [(t, head) for t, head in zip(names, context.heads)
                     if t is not None and not pool.spec(t).is_regression]
        if max_steps > 0 and not objective:
            raise ConfigError("adamerging: no classification task in the pool (its entropy objective needs class "
                              "probabilities; regression tasks such as STSB have none)")
        streams = [unlabelled_batches(pool, t, batch_size, seed=context.seed + i) for i, (t, _) in enumerate(objective)]
        adam = _Adam(shape, lr)
        for _ in range(max_steps):
            used = np.clip(raw, 0.0, 1.0) if clamp else raw
            merged = _merge_on_device(theta0, thetas, _per_key(used, granularity, len(keys)))
            parts = []  # per task: [K, N] device tensors of ⟨dL/dθ[k], τ_i[k]⟩, read back once per step
            total = 0.0
            for (task, head), stream in zip(objective, streams):
                model = pool.load_model(task, merged, head)
                params = dict(model.named_parameters())
                ids, lengths = next(stream)
                loss = entropy(model(paddle.to_tensor(ids), paddle.to_tensor(lengths)))
                model.clear_gradients()
                loss.backward()
                total += float(loss)
                zero = paddle.zeros([n], dtype="float32")
                parts.append(paddle.stack([
                    zero if params[key].grad is None else
                    paddle.stack([paddle.sum(params[key].grad.astype("float32") * (theta[key] - theta0[key]))
                                  for theta in thetas])
                    for key in keys]))
                model.clear_gradients()
            grad_k = np.zeros((n, len(keys)))
            for part in parts:
                grad_k += part.numpy().astype(np.float64).T
            history.append(total)
            grad = grad_k.sum(axis=1) if granularity == "task_wise" else grad_k
            if clamp:
                grad = np.where((raw >= 0.0) & (raw <= 1.0), grad, 0.0)
            raw = adam.step(raw, grad)
    used = np.clip(raw, 0.0, 1.0) if clamp else raw
    merged = _merge_on_device(theta0, thetas, _per_key(used, granularity, len(keys)))
    out = MergedWithInfo()
    for key, value in base.items():
        if key in merged:
            out[key] = to_host(merged[key], numpy_dtype(value))
        else:
            out[key] = np.array(value if isinstance(value, np.ndarray) else value.numpy())
    table = {"granularity": granularity, "models": names, "lambdas": used.tolist(), "init": init, "clamp": clamp,
             "steps": 0 if lambdas is not None else max_steps, "entropy": history, "loaded_from": lambdas}
    if granularity == "layer_wise":
        table["keys"] = keys
    out.method_info = {"adamerging": table}
    return out


adamerging.data_note = " *(uses each task's unlabelled eval inputs, never a label)*"
