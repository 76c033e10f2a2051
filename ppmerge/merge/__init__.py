"""Model merging: task vectors, sparsifiers, one file per method, all registered in `METHODS`.

    from ppmerge.merge import METHODS, get_method
    merged = get_method("ties_merging")(base, models, threshold=20, scaling_factor=0.3)
"""
from ppmerge.merge.registry import METHODS, MergeContext, MergeMethod, Param, get_method, register  # noqa: F401
from ppmerge.merge import methods  # noqa: F401,E402  (registers every method)

__all__ = ["METHODS", "MergeContext", "MergeMethod", "Param", "get_method", "register"]


class _CallablePackage(type(__import__("sys"))):
    """`ppmerge.merge(pool, method, **params)` is the Python API's merge (ppmerge.api.merge), while
    `ppmerge.merge.METHODS` etc. stay this package: importing a subpackage sets the parent's attribute,
    so the package itself must be the callable."""

    def __call__(self, *args, **kwargs):
        from ppmerge.api import merge

        return merge(*args, **kwargs)


__import__("sys").modules[__name__].__class__ = _CallablePackage
