"""Simple ensemble: not a merged state dict. Every fine-tuned backbone runs on every task; their
pooled hidden states (last real token) are averaged before the task's own head.

The method returns an `Ensemble` (the backbones, untouched); the runner recognises it
(`isinstance(result, Ensemble)`, or `getattr(result, "is_ensemble", False)`) and evaluates it with
`result.evaluate(task_pool, heads)` = `task_pool.evaluate_ensemble(backbones, heads)` instead of
saving a merged model (there is none: the ensemble costs one forward pass per model).
"""
from ppmerge.merge.registry import register


class Ensemble:
    """The result of `simple_ensemble`: the fine-tuned backbones, evaluated together."""
    is_ensemble = True

    def __init__(self, backbones, task_names=None):
        self.backbones = list(backbones)
        self.task_names = list(task_names or [])

    def __len__(self):
        return len(self.backbones)

    def evaluate(self, task_pool, heads, tasks=None):
        """{task: metrics} of the ensemble (`heads`: {task: head state dict})."""
        return task_pool.evaluate_ensemble(self.backbones, heads, tasks)


@register("simple_ensemble", data_dependent=True, params={}, needs_base=False)
def simple_ensemble(base, models, *, context):
    """Ensemble of the fine-tuned models: average their pooled hidden states before each task's head."""
    return Ensemble(models, context.task_names)
