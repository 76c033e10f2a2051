"""Per-layer and per-module method parameters (mergekit's gradients and filters).

A numeric parameter of a method declared by a plan may vary over the state dict's keys:
    t: [0.0, 0.5, 1.0]                       # a gradient (only for parameters whose kind has no list):
                                             # interpolated over the layers' positions
    t: {gradient: [0.0, 0.5, 1.0]}           # the same, explicit (also for float|list[float] ones)
    scaling_factor:                          # filters: the first entry whose regex matches the key
      - {filter: "attn", value: 0.5}         # (re.search), an entry without `filter` matches every key
      - {value: 0.3}
A key's position: layer l of L (`layers.<l>.` in its name) is at l/(L − 1); keys before the first layer
(embeddings) at 0, keys after the last (final norm) at 1. `resolve` normalises both forms to
{"gradient": [...]} / {"filters": [{"filter": regex or None, "value": v}, ...]}; `params_for_key` gives
the plain parameters of one key.
"""
import re

import numpy as np

from ppmerge.errors import ConfigError

LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")


def _numeric(kind):
    return any(option in ("float", "int") for option in kind.split("|"))


def per_key_form(param, value, where, check):
    """The normalised per-key form of `value` for `param`, or None when value is a plain value.
    `check(param, v, where)` validates one value."""
    if not _numeric(param.kind):
        return None
    if isinstance(value, dict) and set(value) == {"gradient"}:
        points = value["gradient"]
    elif (isinstance(value, (list, tuple)) and len(value) >= 2 and "list" not in param.kind
          and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)):
        points = value
    elif isinstance(value, (list, tuple)) and value and all(isinstance(v, dict) for v in value):
        entries = []
        for i, entry in enumerate(value):
            unknown = set(entry) - {"filter", "value"}
            if unknown or "value" not in entry:
                raise ConfigError(f"{where}[{i}]: expected {{filter: <regex>, value: <{param.kind}>}}, got {entry!r}")
            pattern = entry.get("filter")
            if pattern is not None:
                try:
                    re.compile(str(pattern))
                except re.error as error:
                    raise ConfigError(f"{where}[{i}].filter: not a regular expression ({error}): {pattern!r}")
            entries.append({"filter": None if pattern is None else str(pattern),
                            "value": check(param, entry["value"], f"{where}[{i}].value")})
        return {"filters": entries}
    else:
        return None
    if "float" not in param.kind.split("|") or not isinstance(points, (list, tuple)) or len(points) < 2:
        raise ConfigError(f"{where}: a gradient needs a float parameter and two or more numbers, got {value!r}")
    return {"gradient": [float(check(param, p, f"{where}.gradient")) for p in points]}


def is_per_key(value):
    return isinstance(value, dict) and set(value) in ({"gradient"}, {"filters"})


def has_per_key(params):
    return any(is_per_key(v) for v in params.values())


def positions(keys):
    """{key: position in [0, 1]} from the layer index in each key (see the module docstring)."""
    index = {key: int(m.group(1)) for key in keys for m in [LAYER.search(key)] if m}
    if not index:
        return {key: 0.0 for key in keys}
    last = max(index.values())
    out, seen_layer = {}, False
    for key in keys:
        if key in index:
            seen_layer = True
            out[key] = index[key] / last if last else 0.0
        else:
            out[key] = 1.0 if seen_layer else 0.0
    return out


def params_for_key(params, key, position):
    """The plain parameters of one key."""
    out = {}
    for name, value in params.items():
        if not is_per_key(value):
            out[name] = value
        elif "gradient" in value:
            points = value["gradient"]
            out[name] = float(np.interp(position, np.linspace(0.0, 1.0, len(points)), points))
        else:
            match = [e["value"] for e in value["filters"] if e["filter"] is None or re.search(e["filter"], key)]
            if not match:
                raise ConfigError(f"Merge.{name}: no filter matches key {key!r} (add an entry without `filter` as "
                                  f"the default)")
            out[name] = match[0]
    return out
