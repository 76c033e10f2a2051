"""ppmerge: fine-tune GPT on GLUE and merge the fine-tuned models, in PaddlePaddle.

Importing the package is cheap: paddle and paddlenlp are imported lazily by the modules that need them.
The Python API (`ppmerge.load_pool`, `merge`, `task_pool`, `evaluate`, `save`, `load`, `convert`,
`init_model`, `methods`) lives in `ppmerge.api`; see its docstring and the README.
"""
__version__ = "0.1.0"

_API = ("load_pool", "merge", "task_pool", "evaluate", "save", "load", "convert", "init_model", "methods")
__all__ = list(_API)


def __getattr__(name):
    if name in _API:
        from ppmerge import api

        return getattr(api, name)
    raise AttributeError(f"module 'ppmerge' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_API))
