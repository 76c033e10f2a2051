"""wudi_merging (WUDI-Merging, Cheng et al., ICML 2025; data-free): per weight matrix, start from
τ_m = Σ_i τ_i and minimise the interference with each task's input subspace, which the rows of its task
vector span,

    L(τ_m) = Σ_i ‖(τ_m − τ_i) τ_iᵀ‖²_F / ‖τ_i‖²_F      (τ in torch's [out, in] layout)

with Adam (lr 1e-5, `iter_num` 300 steps, betas 0.9/0.999, eps 1e-8, no weight decay) in paddle on the
current device; θ = θ₀ + τ_m. Other keys (biases, LayerNorms): θ₀ + mean_i τ_i (as FusionBench's code).

Layout: Paddle keeps a Linear weight as [in, out], the transpose of torch's, so on those keys the loss is
computed on the transposes (Σ_i ‖τ_iᵀ(τ_m − τ_i)‖²_F / ‖τ_i‖²_F in Paddle's layout): the same objective
as the paper. Embedding tables (keys containing "embed" or "shared", T5's tied table: [vocab, hidden] in
both frameworks) use the formula as written. A task whose τ_i is zero on a key adds nothing to that key's
loss. Deterministic: no randomness (the start point and the steps are fixed).
"""
import numpy as np

from ppmerge.errors import ConfigError
from ppmerge.merge.lowrank import TaskVectors, host32
from ppmerge.merge.registry import Param, register
from ppmerge.merge.tensor_ops import as_numpy, is_floating, numpy_dtype, paddle as _paddle


def _non_negative(value, where):
    if value < 0:
        raise ConfigError(f"{where}: expected a non-negative integer, got {value}")
    return value


def _positive(value, where):
    if not value > 0:
        raise ConfigError(f"{where}: expected a positive learning rate, got {value}")
    return float(value)


def is_embedding(key):
    """An embedding table ([vocab, hidden] in torch and Paddle alike; T5's tied `shared`), not a Linear."""
    return "embed" in key or "shared" in key


def wudi_matrix(taus, iter_num=300, lr=1e-5, rows_are_outputs=False):
    """τ_m of one 2-D key (a list or `TaskVectors` of float32 arrays, in torch's [out, in] layout when
    `rows_are_outputs`, else Paddle's [in, out]); returns (τ_m as numpy, [loss before each step])."""
    paddle = _paddle()
    shape = tuple(taus[0].shape if isinstance(taus, list) else taus.shape)
    stacked = np.empty((len(taus),) + (shape if rows_are_outputs else shape[::-1]), np.float32)
    for i, tau in enumerate(taus):   # filled one τ_i at a time (a TaskVectors makes each when asked)
        stacked[i] = tau if rows_are_outputs else tau.T   # to [out, in]: rows = the input directions
    tvs = paddle.to_tensor(stacked)
    del stacked
    norms = paddle.sum(paddle.square(tvs.reshape([len(taus), -1])), axis=1)
    norms = paddle.where(norms > 0, norms, paddle.ones_like(norms)).reshape([-1, 1, 1])
    merged = paddle.create_parameter(list(tvs.shape[1:]), "float32",
                                     default_initializer=paddle.nn.initializer.Assign(paddle.sum(tvs, axis=0)))
    optimizer = paddle.optimizer.Adam(learning_rate=lr, parameters=[merged], beta1=0.9, beta2=0.999, epsilon=1e-8)
    rows, cols = tvs.shape[1:]
    # ‖D Tᵀ‖²_F = Σ (D · TᵀT) ⊙ D: with more rows than columns (an embedding table's vocabulary) the
    # [cols, cols] Gram matrix replaces the [rows, rows] product (GPT-2's 50k x 50k would need 10 GB per task).
    grams = paddle.matmul(tvs, tvs, transpose_x=True) if rows > cols else None
    losses = []
    for _ in range(iter_num):
        disturbance = merged.unsqueeze(0) - tvs
        if grams is None:
            squares = paddle.square(paddle.matmul(disturbance, tvs, transpose_y=True))
        else:
            squares = paddle.matmul(disturbance, grams) * disturbance
        loss = paddle.sum(squares / norms)
        optimizer.clear_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss))
    result = merged.detach().numpy()
    return (result if rows_are_outputs else result.T), losses


@register("wudi_merging", params={
    "iter_num": Param("int", 300, "Adam steps per weight matrix (0: Σ τ_i)", check=_non_negative),
    "lr": Param("float", 1e-5, "Adam learning rate", check=_positive),
}, doc="WUDI: per matrix, τ_m from Σ τ_i by Adam on Σ_i ‖(τ_m − τ_i) τ_iᵀ‖²/‖τ_i‖² (data-free), θ₀ + τ_m; "
       "other keys θ₀ + mean τ_i")
def wudi_merging(base, models, iter_num=300, lr=1e-5):
    merged = {}
    for key, value in base.items():
        if not is_floating(value):
            merged[key] = np.array(as_numpy(value))
            continue
        theta0 = host32(value)
        taus = TaskVectors(key, theta0, models)
        if theta0.ndim == 2:
            delta = wudi_matrix(taus, iter_num, lr, rows_are_outputs=is_embedding(key))[0]
        else:
            delta = taus.mean()
        merged[key] = (theta0 + delta).astype(numpy_dtype(value), copy=False)
    return merged
