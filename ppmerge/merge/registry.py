"""The METHODS registry: every merge method by name, with its parameters, defaults and one-line docs.

The runner looks a method up here, checks the `Merge.*` config keys against `Param`s (unknown key →
UserError with did-you-mean, wrong type → UserError), fills defaults and calls it. No paddle here.
"""
import difflib
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from ppmerge.errors import ConfigError, UserError

_SCALARS = {"float": (int, float), "int": (int,), "bool": (bool,), "str": (str,), "dict": (dict,)}


def _is_kind(value, kind):
    """Does value match a kind like 'float', 'list[int]' or 'float|list[float]'? (bool is not a number.)"""
    for option in kind.split("|"):
        if option.startswith("list[") and option.endswith("]"):
            item = option[5:-1]
            if isinstance(value, (list, tuple)) and all(_is_kind(v, item) for v in value):
                return True
        elif isinstance(value, _SCALARS[option]) and (option == "bool" or not isinstance(value, bool)):
            return True
    return False


@dataclass(frozen=True)
class Param:
    """One method parameter: `kind` is 'float', 'int', 'bool', 'str', 'dict', 'list[float]' or an
    alternation like 'float|list[float]'. `check(value, key) -> value` validates further and may
    normalise (it raises UserError naming `key`)."""
    kind: str
    default: Any
    doc: str
    choices: Optional[tuple] = None
    nullable: bool = False
    check: Optional[Callable] = None


@dataclass(frozen=True)
class MergeContext:
    """What a data-dependent method gets besides the state dicts (the runner fills it).

    task_names: task of each model, pool order; heads: per model, its head state dict (keys matching
    ModelPool.head_keys, e.g. {"score.weight": array}); task_pool: the evaluation TaskPool (datasets,
    tokenizer, batch size); model_cfg: the Model config dict (build the backbone from it); device: the
    paddle device string in use; seed: Global.seed."""
    task_names: list
    heads: list
    task_pool: Any
    model_cfg: dict
    device: str = "cpu"
    seed: int = 0
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True)
class MergeMethod:
    """A registered method. `fn(base, models, **params)` (data-free) or
    `fn(base, models, *, context, **params)` (data-dependent); `stream(base, models_iterable, **params)`
    merges while holding one fine-tuned model at a time (None when the method cannot)."""
    name: str
    fn: Callable
    params: dict
    doc: str
    data_dependent: bool = False
    stream: Optional[Callable] = None
    stream_when: Optional[Callable] = None
    plan: Any = None  # the declared plan (ppmerge.merge.executor) when registered with register_plan
    needs_base: Any = True  # bool, or `needs_base(resolved params) -> bool` (e.g. only with a sparsifier)

    def base_needed(self, params):
        """Does this method read the pretrained base with these resolved parameters?"""
        return bool(self.needs_base(params)) if callable(self.needs_base) else bool(self.needs_base)

    def can_stream(self, params):
        """Can `stream` run with these resolved parameters? (e.g. not with magnitude masks, which need
        the base and a model at once beside the accumulator)."""
        return self.stream is not None and (self.stream_when is None or bool(self.stream_when(params)))

    def defaults(self):
        return {name: p.default for name, p in self.params.items()}

    def resolve(self, params, prefix="Merge"):
        """Validate user parameters (a dict without `method`) and return them with defaults filled."""
        out = self.defaults()
        for key, value in (params or {}).items():
            where = f"{prefix}.{key}" if prefix else key
            if key not in self.params:
                near = did_you_mean(key, self.params, f"{prefix}." if prefix else "")
                known = ", ".join(sorted(self.params)) or "none"
                raise ConfigError(f"{where}: unknown parameter for method {self.name!r}{near} "
                                  f"(its parameters: {known})")
            if self.plan is not None:  # methods run by the executor take per-layer / per-module values
                from ppmerge.merge.per_key import per_key_form

                form = per_key_form(self.params[key], value, where, check_param)
                if form is not None:
                    out[key] = form
                    continue
            out[key] = check_param(self.params[key], value, where)
        return out

    def __call__(self, base, models, context=None, **params):
        """Resolve parameters and merge (context is required by data-dependent methods only)."""
        params = self.resolve(params)
        if self.data_dependent:
            if context is None:
                raise UserError(f"method {self.name!r} needs data: run it through the merge runner")
            return self.fn(base, models, context=context, **params)
        return self.fn(base, models, **params)


def _has_non_finite(value):
    if isinstance(value, float):
        return value != value or value in (float("inf"), float("-inf"))
    if isinstance(value, (list, tuple)):
        return any(_has_non_finite(v) for v in value)
    if isinstance(value, dict):
        return any(_has_non_finite(v) for v in value.values())
    return False


def check_param(param, value, where):
    """Type/choice check of one value; returns the (possibly normalised) value."""
    if value is None:
        if param.nullable:
            return None
        raise ConfigError(f"{where}: expected {param.kind}, got null")
    if not _is_kind(value, param.kind):
        raise ConfigError(f"{where}: expected {param.kind}, got {type(value).__name__} {value!r}")
    if _has_non_finite(value):  # NaN / Inf would run to the end and write a non-finite model
        raise ConfigError(f"{where}: expected finite numbers, got {value!r}")
    if param.choices is not None and value not in param.choices:
        raise ConfigError(f"{where}: expected one of {', '.join(map(str, param.choices))}, got {value!r}")
    if isinstance(value, tuple):
        value = list(value)
    return param.check(value, where) if param.check else value


METHODS = {}


def register(name, params=None, doc="", data_dependent=False, stream=None, stream_when=None, needs_base=True):
    """Decorator: register `fn` under `name` with its `Param`s (see MergeMethod for the rest).
    `needs_base=False` (or a callable of the resolved params): the method never reads the base's values,
    so a model pool without `ModelPool.base` can run it (the base passed is then zeros)."""
    def wrap(fn):
        if name in METHODS:
            raise ValueError(f"merge method {name!r} registered twice")
        METHODS[name] = MergeMethod(name, fn, dict(params or {}), doc or (fn.__doc__ or "").strip().split("\n")[0],
                                    data_dependent, stream, stream_when, needs_base=needs_base)
        return fn
    return wrap


def register_plan(name, plan, params=None, doc="", needs_base=True):
    """Register a method declared by its plan (ppmerge.merge.executor: Linear, Consensus, PerTensor): the
    execution layer supplies fn, stream and stream_when. Returns the MergeMethod."""
    from ppmerge.merge.executor import bind

    if name in METHODS:
        raise ValueError(f"merge method {name!r} registered twice")
    fn, stream, stream_when = bind(plan, {key: param.default for key, param in (params or {}).items()})
    METHODS[name] = MergeMethod(name, fn, dict(params or {}), doc, False, stream, stream_when, plan=plan,
                                needs_base=needs_base)
    return METHODS[name]


def did_you_mean(word, known, prefix="", quote=False):
    """'; did you mean <prefix><closest>?' for the closest of `known`, or '' (THE did-you-mean helper)."""
    hint = difflib.get_close_matches(word, [str(k) for k in known], n=1)
    if not hint:
        return ""
    return f"; did you mean {prefix}{hint[0]!r}?" if quote else f"; did you mean {prefix}{hint[0]}?"


def get_method(name, where="Merge.method"):
    """The registered method, or a UserError listing the known ones (with did-you-mean)."""
    if name in METHODS:
        return METHODS[name]
    near = did_you_mean(str(name), METHODS, quote=True)
    raise ConfigError(f"{where}: unknown merge method {name!r}{near} (known: {', '.join(sorted(METHODS))})")
