"""load_config: YAML file (+ its `_base_` files) + `-o` overrides -> validated plain dicts."""
import os

from ppmerge.config.checks import check_config
from ppmerge.config.inherit import resolve_file
from ppmerge.config.overrides import apply_overrides
from ppmerge.config.schema import validate
from ppmerge.config.train_schema import TRAIN_SCHEMA


def load_config(path, overrides=(), schema=TRAIN_SCHEMA):
    """Read the config at `path`, merge its bases, apply the `-o A.B.C=value` strings in
    `overrides`, validate against `schema` (a Section) and fill defaults.

    Returns plain nested dicts. Every mistake is a one-line ConfigError that names the file (or the
    `-o` that set the key) and the dotted key."""
    path = os.fspath(path)
    try:
        return _load(path, overrides, schema)
    except RecursionError:  # a structure deep enough to pass the parser but not the merge / validation
        raise ConfigError(f"{path}: values nested too deeply (thousands of levels)") from None


def _load(path, overrides, schema):
    origins = {}
    cfg = resolve_file(path, origins)
    origins.update(apply_overrides(cfg, overrides or (), schema, top=os.path.normpath(path)))
    where = _blame(origins, os.path.normpath(path))
    return check_config(validate(cfg, schema, where=where), where)


def _blame(origins, top):
    """A function dotted key -> the source that set it (the longest prefix recorded), else `top`."""
    def where(key):
        if not key:
            return top
        parts = tuple(key.split("."))
        for n in range(len(parts), 0, -1):
            if parts[:n] in origins:
                return origins[parts[:n]]
        return top
    return where
