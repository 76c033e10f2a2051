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
from ppmerge.merge.registry import Param, register


def _paddle():
    from ppmerge.runtime import import_paddle

    return import_paddle()


def linear_layers(model, names):
    """{layer name: Linear} of the layers whose `<name>.weight` is one of `names` (the backbone)."""
    paddle = _paddle()
    return {name: layer for name, layer in model.named_sublayers()
            if isinstance(layer, paddle.nn.Linear) and f"{name}.weight" in names}


def gram_matrices(model, batches, names):
    """Mean Gram matrix X^T X / n of the inputs of every backbone Linear, over real tokens only.

    Returns ({layer name: [in, in] float64 tensor}, number of tokens)."""
    paddle = _paddle()
    layers = linear_layers(model, names)
    sums = {}
    state = {"mask": None, "tokens": 0}

    def hook_for(name):
        def hook(layer, inputs):
            x = inputs[0]
            x = paddle.masked_select(x, state["mask"].unsqueeze(-1).expand_as(x)).reshape([-1, x.shape[-1]])
            x = x.astype("float64")
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
    (list of {layer name: [in, in]}); Linear weights by regression, everything else averaged."""
    paddle = _paddle()
    n = len(backbones)
    layers = set(grams[0]).intersection(*grams[1:])
    merged = {}
    for key in backbones[0]:
        values = [paddle.to_tensor(b[key]) if not isinstance(b[key], paddle.Tensor) else b[key] for b in backbones]
        layer = key[:-len(".weight")] if key.endswith(".weight") else None
        if layer in layers:
            reduced = [reduce_non_diagonal(g[layer], reduce_non_diagonal_ratio) for g in grams]
            lhs = sum(reduced)
            rhs = sum(paddle.matmul(g, v.astype("float64")) for g, v in zip(reduced, values))
            merged[key] = paddle.linalg.solve(lhs, rhs).astype(values[0].dtype)
        else:
            merged[key] = sum(v.astype("float32") for v in values) / n
    return merged


@register("regmean", data_dependent=True, params={
    "num_regmean_examples": Param("int", 256, "training examples per model for its Gram matrices (-1: all)"),
    "batch_size": Param("int", 32, "batch size of the forward passes that collect the inputs"),
    "reduce_non_diagonal_ratio": Param("float", 0.6, "alpha: off-diagonal Gram entries are scaled by it "
                                       "(1 = exact regression, 0 = diagonal only)"),
})
def regmean(base, models, *, context, num_regmean_examples=256, batch_size=32, reduce_non_diagonal_ratio=0.6):
    """RegMean: each backbone Linear by least squares on every model's own-task inputs."""
    pool = context.task_pool
    grams = []
    for task, backbone, head in zip(context.task_names, models, context.heads):
        model = pool.load_model(task, backbone, head)
        batches = pool.train_batches(task, num_regmean_examples, batch_size, seed=context.seed)
        grams.append(gram_matrices(model, batches, set(backbone))[0])
    return merge_with_grams(models, grams, reduce_non_diagonal_ratio)
