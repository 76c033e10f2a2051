"""Command-line overrides: `-o Optimizer.lr.learning_rate=2e-5 -o Data.Train.dataset.name=CoLA`.

The value is read as YAML (`2e-5` a float, `[1,2]` a list, `True`, `null`; anything that is not
valid YAML stays a plain string); only the first `=` splits, so a value may contain `=`. A numeric
key part indexes a list. A key that is neither in the config nor in the schema is an error with a
did-you-mean suggestion: overrides never create keys silently (except inside `open` sections)."""
from ppmerge.config.schema import Field, Section, describe, unknown_key_message
from ppmerge.config.yamlio import parse_yaml
from ppmerge.errors import ConfigError


def parse_override(text):
    """"A.B.C=value" -> ("A.B.C", parsed value)."""
    key, sep, raw = str(text).partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"-o {text}: expected KEY=VALUE, e.g. -o Engine.num_train_epochs=3")
    if any(not part for part in key.split(".")):
        raise ConfigError(f"-o {text}: empty part in key '{key}'")
    try:
        value = parse_yaml(raw, f"-o {text}")
    except ConfigError:
        value = raw  # e.g. a path with YAML-special characters: keep it as written
    return key, value


def apply_override(cfg, key, value, schema=None, source=None):
    """Set dotted `key` to `value` in the nested dict `cfg` (in place).

    schema: the Section the config will be validated against; it decides which absent keys may be
        created (those it names, and any inside an open section or a free-form value). Without a
        schema only existing keys can be set. source: how to name this override in messages."""
    source = source or f"-o {key}={value}"
    parts = key.split(".")
    node, spec = cfg, schema
    free = False  # below the schema's reach (an open section's extra key, a free-form value)
    for depth, part in enumerate(parts):
        done = ".".join(parts[:depth])
        last = depth == len(parts) - 1
        if isinstance(node, list):
            index = _list_index(part, node, done, source)
            if last:
                node[index] = value
                return
            node, spec, free = node[index], None, free or schema is not None
            continue
        if not isinstance(node, dict):
            raise ConfigError(f"{source}: '{done}' is {describe(node)}, not a section, "
                              f"so it has no key '{part}'")
        child_spec = spec.fields.get(part) if isinstance(spec, Section) else None
        if part not in node and not (free or child_spec is not None or _is_open(spec)):
            known = spec if isinstance(spec, Section) else Section({k: None for k in node})
            raise ConfigError(f"{source}: " + unknown_key_message(
                done, part, known, parts[depth + 1:], schema))
        if last:
            node[part] = value
            return
        if node.get(part) is None:
            node[part] = {}  # e.g. `Data.Test: null` in the file, then `-o Data.Test.dataset.name=RTE`
        node, spec = node[part], child_spec
        free = free or (schema is not None and not isinstance(child_spec, Section))


def apply_overrides(cfg, overrides, schema=None, top=None):
    """Apply each "A.B=value" string in order; returns {key tuple: source} for error messages."""
    origins = {}
    for text in overrides:
        key, value = parse_override(text)
        source = f"{top}, -o {text}" if top else f"-o {text}"
        apply_override(cfg, key, value, schema, source)
        origins[tuple(key.split("."))] = source
    return origins


def _is_open(spec):
    return isinstance(spec, Section) and spec.open or isinstance(spec, Field) and dict in spec.types


def _list_index(part, node, done, source):
    try:
        index = int(part)
    except ValueError:
        raise ConfigError(f"{source}: '{done}' is a list; '{part}' is not an index") from None
    if not -len(node) <= index < len(node):
        raise ConfigError(f"{source}: index {index} is out of range for '{done}' "
                          f"(a list of {len(node)})")
    return index
