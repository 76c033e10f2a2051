"""Parameters several methods share, and their checks."""
from ppmerge.errors import ConfigError
from ppmerge.merge.registry import Param
from ppmerge.merge.sparsify import SPARSIFY_PARAM  # noqa: F401  (re-exported for the methods)


def _check_fraction(value, where):
    if not 0.0 <= value < 1.0:
        raise ConfigError(f"{where}: expected a fraction in [0, 1), got {value}")
    return value


def _check_percent(value, where):
    if not 0.0 <= value <= 100.0:
        raise ConfigError(f"{where}: expected a percentage in [0, 100], got {value}")
    return value


def scaling_factors(scaling_factor, num_models, where="Merge.scaling_factor"):
    """λ as one float per model: a float applies to all, a list must have one entry per model."""
    if isinstance(scaling_factor, (list, tuple)):
        if len(scaling_factor) != num_models:
            raise ConfigError(f"{where}: expected one factor per model ({num_models}), got {len(scaling_factor)}")
        return [float(x) for x in scaling_factor]
    return [float(scaling_factor)] * num_models


def scaling_factor_param(default=0.3):
    return Param("float|list[float]", default, "λ: θ₀ + λ·Σ τ_i; a list gives one λ per model (pool order)")


SPARSITY_RATIO = Param("float", 0.5, "DARE: probability p of dropping each task-vector entry", check=_check_fraction)
RESCALE = Param("bool", True, "DARE: multiply kept entries by 1/(1 − p)")
SEED = Param("int", 0, "DARE: seed of the drop masks (per model and tensor, device independent)")
THRESHOLD = Param("float", 20.0, "TIES: percentage of each task vector kept (largest |τ|)", check=_check_percent)
MERGE_FUNC = Param("str", "sum", "TIES: how agreeing entries combine", choices=("sum", "mean", "max"))
TOPK_SCOPE = Param("str", "global", "TIES: rank |τ| over the whole task vector (FusionBench) or per tensor "
                   "(mergekit)", choices=("global", "tensor"))

DARE_PARAMS = {"sparsity_ratio": SPARSITY_RATIO, "rescale": RESCALE, "seed": SEED}


def dare_spec(sparsity_ratio, rescale, seed):
    return {"name": "dare", "ratio": sparsity_ratio, "rescale": rescale, "seed": seed}


def streams_with(sparsify):
    """Linear methods stream unless their masks look at τ (they then need base and model at once)."""
    if not sparsify:
        return True
    from ppmerge.merge.sparsify import parse_sparsify

    spec = parse_sparsify(sparsify)
    return spec["name"] in ("dare", "random") and not spec["conflict_aware"]
