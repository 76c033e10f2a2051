"""The execution layer: HOW a merge runs, kept apart from WHAT it computes (mergekit's Executor is the model).

A method file holds the math and declares, with a plan, what it needs; this module picks the form:

    plan (in the method file)                     forms the executor chooses from
    Linear(coefficients)   θ = a·θ₀ + Σ c_i·τ̂_i    streamed from files / a list in memory: executor_linear's
                                                  fused kernels (one model at a time; dare masks drawn once);
                                                  masks that look at τ: key by key in paddle on the device
    Consensus(reference)   trim, elect, merge     FusionBench options, masks that do not look at τ:
                                                  executor_ties' kernels (one pass on CPU, paddle elsewhere);
                                                  anything else: the method's own numpy reference form
    PerTensor(merge)       f(θ₀, θ_1..θ_n) per key key by key in memory (numpy)

Threads, scratch buffers, block sizes, the consume protocol and the non-float epilogue (like_base) live in
the kernels, not in the methods. A sparsify spec is parsed once per merge here and handed down parsed.
`reference_form(method, base, models, **params)` runs the plan's plain numpy formula: the contract the
fast forms are tested against (tests/test_merge_contract.py).
"""
import inspect
import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ppmerge.errors import ConfigError
from ppmerge.merge.per_key import has_per_key, is_per_key, params_for_key, positions
from ppmerge.merge.tensor_ops import as_numpy, float_keys, like_base, paddle


def _sparsify_param(params):
    return params.get("sparsify")


@dataclass(frozen=True)
class Linear:
    """θ = a·θ₀ + Σ_i c_i·τ̂_i with `coefficients(n, **params) -> (a, [c_i])` (on="task_vectors"), or
    θ = c₀·θ₀ + Σ_i c_i·θ_i (on="models"; with a sparsifier θ_i stands for θ₀ + τ̂_i). `sparsify(params)`
    gives the spec applied to the task vectors first (None: none)."""
    coefficients: Callable
    on: str = "task_vectors"
    sparsify: Callable = _sparsify_param


@dataclass(frozen=True)
class Consensus:
    """The TIES family: `reference(theta0 [d], taus [n, d], **options) -> θ [d]` on one scope (the whole
    model for topk_scope: global, one tensor for `tensor`); `options(params)` maps a row's parameters to
    the full TIES options (threshold, merge_func, scaling_factor, topk_scope, weights, topk_rule,
    zero_sign, sparsify)."""
    reference: Callable
    options: Callable = dict


@dataclass(frozen=True)
class PerTensor:
    """merge(theta0, thetas, **params) -> array, on the float32 numpy tensors of one key."""
    merge: Callable


def on_host():
    """Is the merge device the CPU (where the numpy kernels run)?"""
    return paddle().get_device() == "cpu"


def _spec(value):
    from ppmerge.merge.sparsify import parse_sparsify

    return parse_sparsify(value) if value else None


def _data_free(spec):
    """Masks that do not look at τ (dare / random, not conflict-aware): drawn from seeds, they stream."""
    return spec is None or (spec["name"] in ("dare", "random") and not spec["conflict_aware"])


def _call(fn, args, params):
    """fn(*args, **the params it accepts)."""
    accepted = inspect.signature(fn).parameters
    if any(p.kind == p.VAR_KEYWORD for p in accepted.values()):
        return fn(*args, **params)
    return fn(*args, **{k: v for k, v in params.items() if k in accepted})


# --- Linear -----------------------------------------------------------------------------------------

def linear_coefficients(plan, n, params):
    """(c₀, [c_i], spec): θ = c₀·θ₀ + Σ c_i·θ_i where θ_i is θ₀ + τ̂_i under the spec."""
    first, coefs = plan.coefficients(n, **params)
    coefs = [float(c) for c in coefs]
    base_coef = float(first) - math.fsum(coefs) if plan.on == "task_vectors" else float(first)
    return base_coef, coefs, _spec(plan.sparsify(params))


def per_key_params(base, params):
    """{key: plain params} of every float key (per-layer / per-module values resolved), or None."""
    if not has_per_key(params):
        return None
    keys = float_keys(base)
    where = positions(keys)
    return {key: params_for_key(params, key, where[key]) for key in keys}


def _sample(params):
    """Plain params for decisions that do not depend on the key (which path runs): each per-key value's
    first point / entry."""
    return {k: (v["gradient"][0] if "gradient" in v else v["filters"][0]["value"]) if is_per_key(v) else v
            for k, v in params.items()}


def _one_spec(specs, params):
    """The sparsify spec, which must be the same on every key (masks are made per model)."""
    first = next(iter(specs.values()))
    if any(spec != first for spec in specs.values()):
        names = ", ".join(f"Merge.{k}" for k, v in params.items() if is_per_key(v))
        raise ConfigError(f"{names}: per-layer / per-module values are not supported for sparsifier parameters "
                          f"(the masks are made per model): give one value")
    return first


def run_linear(plan, base, models, consume=False, **params):
    from ppmerge.merge.executor_linear import stream_linear

    by_key = per_key_params(base, params)
    if by_key is None:
        base_coef, coefs, spec = linear_coefficients(plan, len(models), params)
        per_key = None
    else:
        found = {key: linear_coefficients(plan, len(models), p) for key, p in by_key.items()}
        spec = _one_spec({key: f[2] for key, f in found.items()}, params)
        per_key = {key: (f[0], f[1]) for key, f in found.items()}
        base_coef, coefs = next(iter(per_key.values()))
    if _data_free(spec):  # one path for a file stream and a list in memory
        return stream_linear(base, models, base_coef, coefs, spec, consume, per_key)
    from ppmerge.merge.task_vector import merge_task_vectors, task_vector_source

    def combine(key, theta0, taus):  # masks that look at τ: θ₀ + τ̂_i, key by key on the device
        first, cs = per_key[key] if per_key else (base_coef, coefs)
        return theta0 * (first + math.fsum(cs)) + sum(c * tau for c, tau in zip(cs, taus))

    return like_base(base, merge_task_vectors(base, models, combine, task_vector_source(base, models, spec)))


# --- Consensus (TIES family) ------------------------------------------------------------------------

KERNEL_OPTIONS = {"weights": None, "topk_rule": "ge_kth", "zero_sign": "majority"}


def consensus_options(plan, params):
    options = dict(KERNEL_OPTIONS, **plan.options(params))
    options["sparsify"] = _spec(options.get("sparsify"))
    return options


def _kernel_fits(options):
    return all(options[k] == v for k, v in KERNEL_OPTIONS.items()) and _data_free(options["sparsify"])


def run_consensus(plan, base, models, consume=False, **params):
    by_key = per_key_params(base, params)
    if by_key is not None:  # per-layer / per-module options: the reference form, tensor by tensor
        options = {key: consensus_options(plan, p) for key, p in by_key.items()}
        if any(o["topk_scope"] != "tensor" for o in options.values()):
            names = ", ".join(f"Merge.{k}" for k, v in params.items() if is_per_key(v))
            raise ConfigError(f"{names}: per-key values need topk_scope: tensor (a global top-k has one scope)")
        _one_spec({key: o["sparsify"] for key, o in options.items()}, params)
        return consensus_reference(plan, base, list(models), options)
    o = consensus_options(plan, params)
    args = (o["threshold"], o["merge_func"], o["scaling_factor"], o["topk_scope"], o["sparsify"])
    if _kernel_fits(o):
        from ppmerge.merge import executor_ties

        if on_host():
            return executor_ties.stream_ties_host(base, models, *args, consume=consume)
        return executor_ties.ties_merge(base, models, *args)
    return consensus_reference(plan, base, list(models), o)


def consensus_reference(plan, base, models, options):
    """The method's numpy reference form on every scope (whole model for global, else per tensor);
    `options` may be {key: options} (per-key values, tensor scope)."""
    from ppmerge.merge.task_vector import task_vector_source
    from ppmerge.merge.tensor_ops import to_host

    keys = float_keys(base)
    by_key = options if keys and keys[0] in options else None
    options = next(iter(by_key.values())) if by_key else options
    source = task_vector_source(base, models, options["sparsify"])
    theta0 = {k: np.asarray(as_numpy(base[k]), dtype=np.float32).reshape(-1) for k in keys}
    groups = [keys] if options["topk_scope"] == "global" else [[k] for k in keys]
    merged = {}
    for group in groups:  # the task vectors of one scope at a time (one tensor for topk_scope: tensor)
        rest = {k: v for k, v in (by_key[group[0]] if by_key else options).items() if k not in ("sparsify", "topk_scope")}
        taus = np.concatenate([np.stack([to_host(source(i, k)).reshape(-1) for i in range(len(models))])
                               for k in group], axis=1)
        flat = _call(plan.reference, (np.concatenate([theta0[k] for k in group]), taus), rest)
        del taus
        at = 0
        for k in group:
            merged[k], at = flat[at:at + theta0[k].size], at + theta0[k].size
    return like_base(base, merged)


# --- PerTensor ----------------------------------------------------------------------------------------

def run_per_tensor(plan, base, models, **params):
    from ppmerge.errors import UserError

    by_key = per_key_params(base, params)
    merged = {}
    for key in float_keys(base):
        if by_key:
            params = by_key[key]
        theta0 = np.asarray(as_numpy(base[key]), dtype=np.float32)
        thetas = [np.asarray(as_numpy(m[key]), dtype=np.float32) for m in models]
        merged[key] = _call(plan.merge, (theta0, thetas), params)
        if not np.all(np.isfinite(merged[key])):  # e.g. model_stock's t = k·cos/(1 + (k − 1)·cos) at its pole
            raise UserError(f"merge method {plan.merge.__name__!r} gave non-finite values on {key!r} "
                            f"(its formula is undefined for these models there)")
    return like_base(base, merged)


# --- binding a plan to the registry's fn / stream / stream_when -----------------------------------

def bind(plan, defaults=None):
    """(fn, stream, stream_when) for MergeMethod: fn(base, models, **params) runs in memory, stream(base,
    sized_models, consume=False, **params) one model at a time; stream_when(params) says if it can.
    Parameters not given take the method's `defaults`."""
    defaults = dict(defaults or {})
    if isinstance(plan, Linear):
        run, can = run_linear, (lambda params: _data_free(_spec(plan.sparsify(_sample(params)))))
    elif isinstance(plan, Consensus):
        run, can = run_consensus, (lambda params: on_host() and not has_per_key(params)
                                   and _kernel_fits(consensus_options(plan, params)))
    elif isinstance(plan, PerTensor):
        return (lambda base, models, **p: run_per_tensor(plan, base, models, **{**defaults, **p})), None, None
    else:
        raise TypeError(f"unknown merge plan {plan!r}")
    return ((lambda base, models, **p: run(plan, base, models, **{**defaults, **p})),
            (lambda base, models, consume=False, **p: run(plan, base, models, consume, **{**defaults, **p})),
            lambda params: can({**defaults, **params}))


def reference_form(method, base, models, **params):
    """The method's plain formula in float64 numpy (Linear: a·θ₀ + Σ c_i·τ̂_i; Consensus: its reference
    function on each scope; PerTensor: its merge function): what every fast form must equal."""
    from ppmerge.merge.task_vector import task_vector_source
    from ppmerge.merge.tensor_ops import to_host

    params = method.resolve(params)
    plan = method.plan
    if isinstance(plan, Linear):
        base_coef, coefs, spec = linear_coefficients(plan, len(models), params)
        source = task_vector_source(base, models, spec) if spec else None
        merged = {}
        for key in float_keys(base):
            theta0 = np.asarray(as_numpy(base[key]), dtype=np.float64)
            taus = ([to_host(source(i, key)).astype(np.float64) for i in range(len(models))] if source else
                    [np.asarray(as_numpy(m[key]), dtype=np.float64) - theta0 for m in models])
            merged[key] = (base_coef + math.fsum(coefs)) * theta0 + sum(c * t for c, t in zip(coefs, taus))
        return like_base(base, merged)
    if isinstance(plan, Consensus):
        return consensus_reference(plan, base, models, consensus_options(plan, params))
    return run_per_tensor(plan, base, models, **params)
