"""`_base_` inheritance: a config file names one or more base files (relative to itself); the bases
are merged in order, recursively, and the file's own keys are deep-merged on top. A section that
says `_inherited_: False` replaces the base's section instead of merging into it."""
import os

from ppmerge.config.yamlio import read_yaml
from ppmerge.errors import ConfigError

BASE_KEY = "_base_"
INHERITED_KEY = "_inherited_"


def resolve_file(path, origins=None, included_from=None, _stack=()):
    """Read `path` with all its bases merged in. Returns the merged dict.

    origins: if given, a dict filled with {dotted key tuple: file that set it}, so that later
        messages can blame the right file.
    """
    path = os.path.normpath(path)
    real = os.path.realpath(path)
    if real in (seen for seen, _ in _stack):
        chain = " -> ".join([*_stack_names(_stack), path])
        raise ConfigError(f"{path}: _base_ cycle: {chain}")
    data = read_yaml(path, included_from)
    bases = data.pop(BASE_KEY, None)
    data.pop(INHERITED_KEY, None)  # meaningless at the top level: the file is merged onto its bases
    if bases is None:
        bases = []
    elif isinstance(bases, str):
        bases = [bases]
    elif not (isinstance(bases, list) and all(isinstance(b, str) for b in bases)):
        raise ConfigError(f"{path}: _base_ must be a path or a list of paths, got {bases!r}")

    stack = (*_stack, (real, path))
    merged = {}
    for base in bases:
        base_path = os.path.join(os.path.dirname(path), os.path.expanduser(base))
        merged = deep_merge(merged, resolve_file(base_path, origins, path, stack))
    if origins is not None:
        _record_origins(data, path, origins)
    return deep_merge(merged, data)


def deep_merge(base, override):
    """A new dict: `override` merged into `base`. Mappings merge key by key (recursively) unless
    the override mapping says `_inherited_: False`; anything else replaces."""
    result = dict(base)
    for key, value in override.items():
        if isinstance(value, dict):
            inherit = value.get(INHERITED_KEY, True)
            value = {k: v for k, v in value.items() if k != INHERITED_KEY}
            if inherit and isinstance(result.get(key), dict):
                result[key] = deep_merge(result[key], value)
            else:
                result[key] = deep_merge({}, value)  # strips nested _inherited_ markers
        else:
            result[key] = value
    return result


def _record_origins(data, path, origins, prefix=()):
    for key, value in data.items():
        if key == INHERITED_KEY:
            continue
        origins[(*prefix, str(key))] = path
        if isinstance(value, dict):
            _record_origins(value, path, origins, (*prefix, str(key)))


def _stack_names(stack):
    return [name for _, name in stack]
