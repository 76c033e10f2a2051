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


def check_range(lo=None, hi=None, lo_open=False, hi_open=False, what="a number"):
    """A Param.check refusing values outside [lo, hi] (an open end with lo_open / hi_open; None: unbounded)."""
    if hi is None:
        span = f"{'>' if lo_open else '>='} {lo}"
    elif lo is None:
        span = f"{'<' if hi_open else '<='} {hi}"
    else:
        span = f"in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"

    def check(value, where):
        low = lo is None or (value > lo if lo_open else value >= lo)
        high = hi is None or (value < hi if hi_open else value <= hi)
        if not (low and high):
            raise ConfigError(f"{where}: expected {what} {span}, got {value}")
        return value
    return check


def check_mean_weights(value, where):
    """Weights of a weighted mean (normalised to sum 1): non-negative with a positive sum."""
    if value is None:
        return value
    values = value if isinstance(value, (list, tuple)) else [value]
    if any(v < 0 for v in values) or sum(values) <= 0:
        raise ConfigError(f"{where}: expected non-negative weights with a positive sum, got {value}")
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
SEED = Param("int", 0, "DARE: seed of the drop masks (per model and tensor, device independent; >= 0)",
             check=check_range(0, what="an integer"))
THRESHOLD = Param("float", 20.0, "TIES: percentage of each task vector kept (largest |τ|)", check=_check_percent)
TOPK_SCOPE = Param("str", "global", "TIES: rank |τ| over the whole task vector (FusionBench) or per tensor "
                   "(the scope of mergekit's TIES; mergekit-exact also needs topk_rule: count, zero_sign: positive)",
                   choices=("global", "tensor"))
DARE_PARAMS = {"sparsity_ratio": SPARSITY_RATIO, "rescale": RESCALE, "seed": SEED}


def dare_spec(params):
    """The sparsify spec of a DARE row's parameters (sparsity_ratio, rescale, seed)."""
    return {"name": "dare", "ratio": params["sparsity_ratio"], "rescale": params["rescale"], "seed": params["seed"]}


def weights_param(doc):
    return Param("float|list[float]", None, doc + "; a float applies to every model, a list is one per model "
                 "(pool order); null: all 1", nullable=True)


def weights_of(weights, num_models, where="Merge.weights"):
    """One float per model (None: all 1)."""
    return [1.0] * num_models if weights is None else scaling_factors(weights, num_models, where)
