"""RegMean (Jin et al. 2023): merge each Linear layer of the backbone by regression on its inputs.

For a Linear layer y = x W (Paddle keeps W as [in, out]) and model i with inputs X_i (one row per real,
non-pad token of its own task's training examples), the merged W minimises
sum_i ||X_i W - X_i W_i||^2, i.e. W* = (sum_i G_i)^-1 sum_i G_i W_i with G_i = X_i^T X_i.

As in RegMean's and FusionBench's code, G_i is the mean over tokens (X_i^T X_i / n_i), so a task with
longer texts does not outweigh the others, and the off-diagonal entries are scaled by
alpha = `reduce_non_diagonal_ratio` (G~ = alpha G + (1 - alpha) diag(G)), which regularises towards
the plain average. The system is solved with a linear solver. Linear biases and every other backbone
parameter (embeddings, LayerNorms) are averaged plainly; heads stay per task.
"""
import sys

from ppmerge.progress import progress_bar as tqdm  # a tqdm bar on a terminal, plain lines in a log

from ppmerge.errors import ConfigError
from ppmerge.merge.methods.fisher_merging import count_or_all, positive_int
from ppmerge.merge.registry import Param, register
from ppmerge.merge.tensor_ops import numpy_dtype, paddle as _paddle, to_device, to_host


def _ratio(value, where):
    if not 0.0 <= value <= 1.0:
        raise ConfigError(f"{where}: expected a ratio in [0, 1], got {value}")
    return float(value)


def linear_layers(model, names):
    """{layer name: Linear} of the layers whose `<name>.weight` is one of `names` (the backbone)."""
    paddle = _paddle()
    return {name: layer for name, layer in model.named_sublayers()
            if isinstance(layer, paddle.nn.Linear) and f"{name}.weight" in names}


def gram_matrices(model, batches, names, bar=None):
    """Mean Gram matrix X^T X / n of the inputs of every backbone Linear, over real tokens only.

    Returns ({layer name: [in, in] float32 tensor}, number of tokens). Float32 like FusionBench:
    GPT-345M's Gram matrices take 2.1 GB per model in float32; the solve runs in float64."""
    paddle = _paddle()
    layers = linear_layers(model, names)
    sums = {}
    state = {"mask": None, "tokens": 0}

    def hook_for(name):
        def hook(layer, inputs):
            x = inputs[0]
            x = paddle.masked_select(x, state["mask"].unsqueeze(-1).expand_as(x)).reshape([-1, x.shape[-1]])
            gram = paddle.matmul(x, x, transpose_x=True)
            sums[name] = gram if name not in sums else sums[name] + gram
        return hook

    handles = [layer.register_forward_pre_hook(hook_for(name)) for name, layer in layers.items()]
    model.eval()
    try:
        with paddle.no_grad():
            for batch in batches:
                ids = paddle.to_tensor(batch["input_ids"])
                lengths = paddle.to_tensor(batch["lengths"])
                # Real tokens are the first `length` positions of each row (right padding).
                state["mask"] = paddle.arange(ids.shape[1], dtype="int64").unsqueeze(0) < lengths.unsqueeze(-1)
                state["tokens"] += int(batch["lengths"].sum())
                model(ids, lengths)
                if bar is not None:
                    bar.update(len(batch["lengths"]))
    finally:
        for handle in handles:
            handle.remove()
    if state["tokens"] == 0:
        raise ValueError("gram_matrices: no tokens")
    return {name: total / state["tokens"] for name, total in sums.items()}, state["tokens"]


def reduce_non_diagonal(gram, ratio):
    """alpha * G + (1 - alpha) * diag(G): off-diagonal entries scaled by alpha, diagonal kept."""
    paddle = _paddle()
    return ratio * gram + (1.0 - ratio) * paddle.diag(paddle.diag(gram))


def merge_with_grams(backbones, grams, reduce_non_diagonal_ratio=0.6):
    """RegMean merge of `backbones` (list of {name: array/tensor}) with per-model Gram matrices
    (list of {layer name: [in, in]}); Linear weights by regression, everything else averaged.
    Returns {name: numpy array} in the first backbone's dtypes, computed key by key on the device."""
    paddle = _paddle()
    n = len(backbones)
    layers = set(grams[0]).intersection(*grams[1:])
    merged = {}
    for key in backbones[0]:
        dtype = numpy_dtype(backbones[0][key])
        values = [to_device(b[key]) for b in backbones]
        layer = key[:-len(".weight")] if key.endswith(".weight") else None
        if layer in layers:
            reduced = [reduce_non_diagonal(to_device(g[layer]).astype("float64"), reduce_non_diagonal_ratio)
                       for g in grams]
            rhs = sum(paddle.matmul(g, v.astype("float64")) for g, v in zip(reduced, values))
            merged[key] = to_host(paddle.linalg.solve(sum(reduced), rhs), dtype)
        else:
            merged[key] = to_host(sum(values) / n, dtype)
    return merged


REGMEAN_PARAMS = {
    "num_regmean_examples": Param("int", 256, "training examples per model for its Gram matrices (-1: all)",
                                  check=count_or_all),
    "batch_size": Param("int", 32, "batch size of the forward passes that collect the inputs", check=positive_int),
    "reduce_non_diagonal_ratio": Param("float", 0.6, "alpha: off-diagonal Gram entries are scaled by it "
                                       "(1 = exact regression, 0 = diagonal only)", check=_ratio),
}


@register("regmean", data_dependent=True, needs_base=False, params=REGMEAN_PARAMS)
def regmean(base, models, *, context, num_regmean_examples=256, batch_size=32, reduce_non_diagonal_ratio=0.6):
    """RegMean: each backbone Linear by least squares on every model's own-task inputs."""
    pool = context.task_pool
    grams = []
    for task, backbone, head in zip(context.task_names, models, context.heads):
        model = pool.load_model(task, backbone, head)
        batches = pool.train_batches(task, num_regmean_examples, batch_size, seed=context.seed)
        with tqdm(total=pool.num_train_examples(task, num_regmean_examples), desc=f"regmean {task}", unit="ex",
                  file=sys.stderr, leave=False, disable=not pool.progress, dynamic_ncols=True) as bar:
            gram = gram_matrices(model, batches, set(backbone), bar)[0]
        grams.append({k: v.cpu() for k, v in gram.items()})  # one model's Gram matrices on the device at a time
    return merge_with_grams(models, grams, reduce_non_diagonal_ratio)
