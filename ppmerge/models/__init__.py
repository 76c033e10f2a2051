"""GPT models and checkpoint I/O.

Presets and checkpoint functions import without paddle; the model class (which subclasses
paddle.nn.Layer) is loaded on first use, so `from ppmerge.models import ...` stays cheap for tools."""
from ppmerge.models.checkpoint import (load_numpy_state_dict, load_object, load_pretrained, load_state_dict,
                                       save_state_dict, select_task_head)
from ppmerge.models.presets import ARCH_PRESETS, make_gpt_config, resolve_arch

_LAZY = {"GPTForSequenceClassification", "build_model"}

__all__ = ["ARCH_PRESETS", "GPTForSequenceClassification", "build_model", "load_numpy_state_dict", "load_object",
           "load_pretrained", "load_state_dict", "make_gpt_config", "resolve_arch", "save_state_dict",
           "select_task_head"]


def __getattr__(name):
    if name in _LAZY:
        from ppmerge.models import gpt

        return getattr(gpt, name)
    raise AttributeError(f"module 'ppmerge.models' has no attribute {name!r}")
