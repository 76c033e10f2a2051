"""A tiny schema language for configs, and the validation that turns a parsed YAML tree into a
checked, defaults-filled tree of plain dicts.

    TRAIN = Section({
        "Engine": Section({
            "num_train_epochs": Field(int, default=3, help="epochs to train"),
            "run_mode": Field(str, default="epoch", choices=["epoch", "step"]),
        }),
        "Data": Section({...}),
        "Test": Section({...}, nullable=True),     # may be null / absent
        "Merge": Section({"method": Field(str)}, open=True),  # extra keys kept as parsed
    })

Every problem is a ConfigError of one line that names the file, the dotted key, what was expected
and what was found; unknown keys come with a did-you-mean suggestion.
"""
import copy
import difflib
import math

from ppmerge.errors import ConfigError


class _Required:
    def __repr__(self):
        return "REQUIRED"


REQUIRED = _Required()  # the default of a field that has none: the user must give it

_TYPE_NAMES = {int: "int", float: "float", str: "str", bool: "bool", list: "list", dict: "mapping"}


def type_name(types):
    return " or ".join(_TYPE_NAMES.get(t, t.__name__) for t in types)


def describe(value):
    """How a found value is shown in messages: its YAML-ish spelling and its type."""
    if value is None:
        return "null"
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{text} ({_TYPE_NAMES.get(type(value), type(value).__name__)})"


class Field:
    """One leaf value.

    types: a type or a tuple of types (int, float, str, bool, list, dict). An int is accepted where a
        float is expected (and becomes a float); a bool is never accepted as an int.
    default: the value used when the key is absent; REQUIRED (the default) makes the key mandatory.
    choices: allowed values. Strings match case-insensitively and come out spelled as in `choices`.
    aliases: other accepted spellings, {alias: canonical choice} (matched case-insensitively).
    nullable: null is allowed (an absent key still gets `default`).
    min, max: inclusive bounds of a number (0 is a value like any other, never "unset").
    finite: a float must not be NaN or Inf (the default for float fields).
    """

    def __init__(self, types, default=REQUIRED, choices=None, nullable=False, help="", aliases=None,
                 min=None, max=None, finite=True):
        self.types = tuple(types) if isinstance(types, (tuple, list)) else (types,)
        self.default = default
        self.choices = list(choices) if choices is not None else None
        self.nullable = nullable
        self.help = help
        self.aliases = dict(aliases or {})
        self.min, self.max, self.finite = min, max, finite
        self._alias_lookup = {str(k).lower(): v for k, v in self.aliases.items()}

    @property
    def required(self):
        return self.default is REQUIRED

    def validate(self, value, key, where, root=None):
        where = _where(where, key)
        if value is None:
            if self.nullable:
                return None
            raise ConfigError(f"{where}: key '{key}' must not be null; expected {type_name(self.types)}")
        value = self._check_type(value, key, where)
        if self.choices is not None or self.aliases:
            value = self._check_choice(value, key, where)
        check_number(value, key, where, self.min, self.max, self.finite)
        return copy.deepcopy(value)

    def range_text(self):
        """"≥ 1", "0 – 1", "finite" ... for docs (empty when unbounded)."""
        return range_text(self.min, self.max, self.finite and float in self.types)

    def _check_type(self, value, key, where):
        for t in self.types:
            if t is float and isinstance(value, int) and not isinstance(value, bool):
                return float(value)
            if t is int and isinstance(value, bool):
                continue
            if isinstance(value, t):
                return value
        expected = type_name(self.types) + (" or null" if self.nullable else "")
        raise ConfigError(f"{where}: key '{key}' expects {expected}, got {describe(value)}")

    def _check_choice(self, value, key, where):
        if isinstance(value, str):
            lowered = value.lower()
            if lowered in self._alias_lookup:
                return self._alias_lookup[lowered]
            for choice in self.choices or ():
                if isinstance(choice, str) and choice.lower() == lowered:
                    return choice
        elif value in (self.choices or ()):
            return value
        allowed = ", ".join(str(c) for c in self.choices or ())
        if self.aliases:
            allowed += " (aliases: " + ", ".join(f"{a} = {c}" for a, c in self.aliases.items()) + ")"
        raise ConfigError(f"{where}: key '{key}' is {value!r}; allowed values: {allowed}")


def check_number(value, key, where, min=None, max=None, finite=True):
    """ConfigError when a number is NaN / Inf (finite) or outside [min, max]; other values pass."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    if finite and isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{where}: key '{key}' is {value}; expected a finite number")
    if (min is not None and value < min) or (max is not None and value > max):
        raise ConfigError(f"{where}: key '{key}' is {value}; expected {range_text(min, max, False)}")


def range_text(min=None, max=None, finite=False):
    if min is not None and max is not None:
        text = f"a number from {min} to {max}"
    elif min is not None:
        text = f"a number >= {min}"
    elif max is not None:
        text = f"a number <= {max}"
    else:
        return "a finite number" if finite else ""
    return text


class Section:
    """A mapping of named fields / sub-sections.

    open: extra keys, not in `fields`, are accepted and kept as parsed (e.g. a merge method's
        parameters).
    nullable: the whole section may be null or absent (then it is None in the result); otherwise an
        absent or empty section is filled with its defaults.
    """

    def __init__(self, fields, open=False, nullable=False, help=""):
        self.fields = dict(fields)
        self.open = open
        self.nullable = nullable
        self.help = help

    @property
    def required(self):
        return False

    def validate(self, value, key, where, root=None):
        """Check `value` (a parsed mapping) and return a new dict with defaults filled in.

        where: the source named in messages: a string, or a function of the dotted key (so that
            each key can be blamed on the file or the `-o` that set it; where(None) names the
            top config file).
        root: the whole schema, to suggest the right section for a key put under the wrong one."""
        root = root or self
        if value is None:
            if self.nullable:
                return None
            value = {}
        if not isinstance(value, dict):
            what = f"key '{key}'" if key else "the config"
            raise ConfigError(f"{_where(where, key)}: {what} must be a mapping of keys, "
                              f"got {describe(value)}")
        result = {}
        for name, spec in self.fields.items():
            child = _join(key, name)
            if name in value:
                result[name] = spec.validate(value[name], child, where, root)
            elif isinstance(spec, Section):
                result[name] = spec.validate(None, child, where, root)
            elif spec.required:
                raise ConfigError(f"{_where(where, None)}: missing required key '{child}'"
                                  + (f" ({spec.help})" if spec.help else ""))
            else:
                result[name] = copy.deepcopy(spec.default)
        for name in value:
            if name in self.fields:
                continue
            if not self.open:
                child = _join(key, name)
                raise ConfigError(f"{_where(where, child)}: "
                                  + unknown_key_message(key, str(name), self, root=root))
            result[name] = copy.deepcopy(value[name])
        return result


def validate(cfg, schema, where="config"):
    """Validate a parsed config tree against `schema` (a Section); return plain dicts, defaults filled."""
    return schema.validate(cfg, "", where)


def unknown_key_message(parent, name, section, rest=(), root=None):
    """"unknown key 'A.B.x'; did you mean 'A.B.y'?" -- the suggestion is the closest sibling, else
    the same name found elsewhere in `root` (a key put under the wrong section)."""
    full = _join(parent, ".".join([name, *rest]))
    message = f"unknown key '{full}'"
    suggestion = None
    siblings = [str(k) for k in section.fields]
    by_lower = {s.lower(): s for s in siblings}
    close = [by_lower[name.lower()]] if name.lower() in by_lower else \
        difflib.get_close_matches(name, siblings, n=1, cutoff=0.6)
    if close:
        suggestion = _join(parent, ".".join([close[0], *rest]))
    elif root is not None:
        elsewhere = [path for path in schema_paths(root) if path.split(".")[-1] == name]
        if len(elsewhere) == 1:
            suggestion = ".".join([elsewhere[0], *rest])
    if suggestion:
        return f"{message}; did you mean '{suggestion}'?"
    if siblings:
        where = f"in '{parent}'" if parent else "at the top level"
        return f"{message}; known keys {where}: {', '.join(siblings)}"
    return message


def schema_paths(section, prefix=""):
    """Every dotted key the schema knows, sections included, in schema order."""
    paths = []
    for name, spec in section.fields.items():
        path = _join(prefix, name)
        paths.append(path)
        if isinstance(spec, Section):
            paths.extend(schema_paths(spec, path))
    return paths


def _join(parent, name):
    return f"{parent}.{name}" if parent else str(name)


def _where(where, key):
    """The source to blame for `key` (None: the top config file)."""
    return where(key) if callable(where) else where
