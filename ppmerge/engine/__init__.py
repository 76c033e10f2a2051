"""The fine-tuning engine: `FinetuneModule` (what a step computes) and `Engine` (the loop).

Names load on first use, so importing the package does not import paddle."""
import importlib

_LAZY = {
    "Engine": "ppmerge.engine.engine",
    "FinetuneModule": "ppmerge.engine.module",
    "config_task": "ppmerge.engine.module",
    "build_dataset": "ppmerge.engine.data",
    "latest_checkpoint": "ppmerge.engine.checkpoint",
}

__all__ = list(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'ppmerge.engine' has no attribute {name!r}")
