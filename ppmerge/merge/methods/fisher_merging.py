"""Fisher merging (Matena & Raffel 2022): a per-entry weighted average, each model weighted by its
diagonal Fisher information on its own task.

Per example x, the Fisher of a classifier is the expectation over classes under the model's own
prediction, F(x) = sum_y p(y|x) * (d log p(y|x) / d theta)^2 -- computed exactly, one backward per
class per example (not the batch-level shortcut that squares a summed gradient). For STS-B's single
regression output it is the squared gradient of the output. F_i is the mean over the examples.

theta = sum_i c_i (F_i + eps) theta_i / sum_i c_i (F_i + eps), entry by entry, over the backbone only
(heads stay per task). With `normalize_fisher_weight` (FusionBench's definition) c_i is proportional
to 1 / ||F_i|| (global L2 norm over all backbone entries), so every model's Fisher has a comparable
magnitude; otherwise c_i = 1. eps = `minimal_fisher_weight` keeps the denominator positive. Backbone
entries that get no gradient (none in a GPT backbone) are averaged plainly.
"""
import sys

import numpy as np
from ppmerge.progress import progress_bar as tqdm  # a tqdm bar on a terminal, plain lines in a log

from ppmerge.errors import ConfigError
from ppmerge.merge.registry import Param, register
from ppmerge.merge.tensor_ops import numpy_dtype, paddle as _paddle, to_device, to_host


# Parameter checks shared by the data-dependent methods (regmean imports them).
def count_or_all(value, where):
    if value == 0 or value < -1:
        raise ConfigError(f"{where}: expected a positive number of examples or -1 (all), got {value}")
    return value


def positive_int(value, where):
    if value < 1:
        raise ConfigError(f"{where}: expected a positive integer, got {value}")
    return value


def _non_negative(value, where):
    if value < 0:
        raise ConfigError(f"{where}: expected a value >= 0, got {value}")
    return value


def fisher_information(model, batches, param_names, regression=False, bar=None, sparse_embeddings=True):
    """Mean per-example diagonal Fisher of `model` over `batches` (numpy dicts with input_ids,
    lengths): {name: float32 tensor} for the named parameters that receive a gradient.

    An embedding table's gradient is non-zero only on the rows of the example's tokens: with
    `sparse_embeddings` it is taken w.r.t. the looked-up vectors and summed per token id (the same
    numbers as the dense [vocab, hidden] gradient, without building and squaring it per backward:
    ~3x faster for GPT-2's 50k-row table)."""
    paddle = _paddle()
    F = paddle.nn.functional
    params = dict(model.named_parameters())
    names = [n for n in param_names if n in params]
    embeddings = {}  # embedding weight name -> its layer (only when sparse_embeddings)
    if sparse_embeddings:
        embeddings = {f"{layer_name}.weight": layer for layer_name, layer in model.named_sublayers()
                      if isinstance(layer, paddle.nn.Embedding) and f"{layer_name}.weight" in names}
    lookups = {}     # embedding weight name -> (ids, looked-up vectors) of the current forward
    handles = []
    for name, layer in embeddings.items():
        def remember(layer, inputs, output, name=name):
            lookups[name] = (inputs[0], output)
        handles.append(layer.register_forward_post_hook(remember))
    sparse = list(embeddings)
    dense = [n for n in names if n not in embeddings]
    totals = {}
    rows = {n: np.zeros(params[n].shape, dtype=np.float64) for n in sparse}  # host accumulators
    count = 0
    model.eval()  # no dropout: the Fisher of the deterministic model
    try:
        for batch in batches:
            for ids, length in zip(batch["input_ids"], batch["lengths"]):
                length = int(length)
                # One example at a time (trimmed to its real tokens): the Fisher is per example.
                logits = model(paddle.to_tensor(ids[None, :length]), paddle.to_tensor([length], dtype="int64"))[0]
                if regression:
                    terms = [(1.0, logits[0])]
                else:
                    log_probs = F.log_softmax(logits, axis=-1)
                    probs = log_probs.exp().detach().numpy()
                    terms = [(float(probs[y]), log_probs[y]) for y in range(len(probs))]
                inputs = [params[n] for n in dense] + [lookups[n][1] for n in sparse]
                for k, (weight, output) in enumerate(terms):
                    grads = paddle.grad(output, inputs, retain_graph=k < len(terms) - 1, allow_unused=True)
                    for name, grad in zip(dense, grads):
                        if grad is not None:
                            term = weight * grad * grad
                            totals[name] = term if name not in totals else totals[name] + term
                    for name, grad in zip(sparse, grads[len(dense):]):
                        if grad is not None:
                            _add_embedding_rows(rows[name], lookups[name][0].numpy(), grad.numpy(), weight)
                count += 1
                if bar is not None:
                    bar.update(1)
    finally:
        for handle in handles:
            handle.remove()
    if count == 0:
        raise ValueError("fisher_information: no examples")
    fisher = {name: total / count for name, total in totals.items()}
    for name in sparse:
        padding = getattr(embeddings[name], "_padding_idx", None)
        if padding is not None:  # that row never gets a gradient
            rows[name][padding] = 0.0
        fisher[name] = paddle.to_tensor((rows[name] / count).astype(np.float32))
    return fisher


def _add_embedding_rows(accumulator, ids, grad, weight):
    """accumulator[v] += weight * (sum of the gradients at the positions holding id v)^2."""
    ids = ids.reshape(-1)
    grad = grad.reshape(len(ids), -1).astype(np.float64)
    unique, inverse = np.unique(ids, return_inverse=True)
    per_row = np.zeros((len(unique), grad.shape[1]))
    np.add.at(per_row, inverse, grad)
    accumulator[unique] += weight * per_row ** 2


def merge_with_fisher(backbones, fishers, normalize_fisher_weight=True, minimal_fisher_weight=1e-6):
    """Fisher-weighted average of `backbones` (list of {name: array/tensor}) with `fishers`
    (list of {name: tensor}, same order); entries without a Fisher in every model: plain mean.
    Returns {name: numpy array} in the first backbone's dtypes, computed key by key on the device."""
    n = len(backbones)
    eps = float(minimal_fisher_weight)
    shared = [k for k in backbones[0] if all(k in f for f in fishers)]
    if normalize_fisher_weight:
        norms = [sum(float((to_device(f[k]) ** 2).sum()) for k in shared) ** 0.5 for f in fishers]
        inverse = [1.0 / (norm + eps) for norm in norms]
        coefficients = [v / sum(inverse) for v in inverse]
    else:
        coefficients = [1.0] * n
    merged = {}
    for key in backbones[0]:
        dtype = numpy_dtype(backbones[0][key])
        values = [to_device(b[key]) for b in backbones]
        if key in shared:
            weights = [c * (to_device(f[key]) + eps) for c, f in zip(coefficients, fishers)]
            merged[key] = to_host(sum(w * v for w, v in zip(weights, values)) / sum(weights), dtype)
        else:
            merged[key] = to_host(sum(values) / n, dtype)
    return merged


@register("fisher_merging", data_dependent=True, needs_base=False, params={
    "num_fisher_examples": Param("int", 256, "training examples per model for its Fisher (-1: all)",
                                 check=count_or_all),
    "batch_size": Param("int", 32, "examples read per batch (the Fisher itself is per example)",
                        check=positive_int),
    "normalize_fisher_weight": Param("bool", True, "scale each model's Fisher by 1/its global L2 norm"),
    "minimal_fisher_weight": Param("float", 1e-6, "added to every Fisher entry (keeps the division finite)",
                                   check=_non_negative),
})
def fisher_merging(base, models, *, context, num_fisher_examples=256, batch_size=32,
                   normalize_fisher_weight=True, minimal_fisher_weight=1e-6):
    """Fisher-weighted averaging: each model weighted per entry by its diagonal Fisher on its task."""
    pool = context.task_pool
    fishers = []
    for task, backbone, head in zip(context.task_names, models, context.heads):
        model = pool.load_model(task, backbone, head)
        batches = pool.train_batches(task, num_fisher_examples, batch_size, seed=context.seed)
        with tqdm(total=pool.num_train_examples(task, num_fisher_examples), desc=f"fisher {task}", unit="ex",
                  file=sys.stderr, leave=False, disable=not pool.progress, dynamic_ncols=True) as bar:
            fisher = fisher_information(model, batches, list(backbone), pool.spec(task).is_regression, bar)
        fishers.append({k: v.cpu() for k, v in fisher.items()})  # one model's Fisher on the device at a time
    return merge_with_fisher(models, fishers, normalize_fisher_weight, minimal_fisher_weight)
