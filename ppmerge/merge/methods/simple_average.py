"""simple_average: the mean of the fine-tuned models (the base is not one of them)."""
from ppmerge.merge.method_params import SPARSIFY_PARAM, streams_with
from ppmerge.merge.registry import register
from ppmerge.merge.streaming import stream_linear
from ppmerge.merge.task_vector import merge_per_key, merge_task_vectors, task_vector_source


def simple_average(base, models, sparsify=None):
    """θ = mean_i θ_i; with `sparsify`, θ = θ₀ + mean_i τ̂_i."""
    if sparsify:
        return merge_task_vectors(base, models, lambda key, theta0, taus: theta0 + sum(taus) / len(taus),
                                  task_vector_source(base, models, sparsify))
    return merge_per_key(base, models, lambda key, theta0, thetas: sum(thetas) / len(thetas))


def stream_simple_average(base, models, sparsify=None, consume=False):
    n = len(models)
    return stream_linear(base, models, 0.0, [1.0 / n] * n, sparsify, consume)


register("simple_average", params={"sparsify": SPARSIFY_PARAM}, stream=stream_simple_average,
         stream_when=lambda p: streams_with(p["sparsify"]))(simple_average)
