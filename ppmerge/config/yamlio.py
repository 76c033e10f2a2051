"""YAML in and out. PyYAML follows YAML 1.1, where `2e-5` (no dot) is a *string*; configs are full
of such learning rates, so the loader resolves every float spelling YAML 1.2 allows."""
import re

import yaml

from ppmerge.errors import ConfigError
from ppmerge.fileio import write_text


class ConfigLoader(yaml.SafeLoader):
    """SafeLoader that also reads `2e-5`, `1E6`, `-3e+2` as floats, and refuses a key given twice
    in one mapping (PyYAML would silently keep the last one)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, (str, int, float, bool)) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key '{key}'", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


_FLOAT = re.compile(r"""^(?:
    [-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?   # 1.5, 1., 1.5e-3
   |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)            # 2e-5, 1E6
   |[-+]?\.[0-9_]+(?:[eE][-+]?[0-9]+)?                  # .5, .5e-3
   |[-+]?\.(?:inf|Inf|INF)
   |\.(?:nan|NaN|NAN))$""", re.X)

# Replace the YAML 1.1 float resolver (first characters as PyYAML registers it).
ConfigLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:float"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
ConfigLoader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+0123456789."))


def parse_yaml(text, source="<string>"):
    """Parse YAML text; a syntax error is a ConfigError naming `source` and the line."""
    try:
        return yaml.load(text, Loader=ConfigLoader)
    except RecursionError:
        raise ConfigError(f"{source}: invalid YAML: values nested too deeply (thousands of levels)") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{source}{line}: invalid YAML: {problem}") from None


def read_yaml(path, included_from=None):
    """Read a YAML mapping from `path` (an empty file is {})."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        by = f" (the _base_ of {included_from})" if included_from else ""
        raise ConfigError(f"config file not found: {path}{by}") from None
    except (IsADirectoryError, PermissionError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.__class__.__name__}") from None
    data = parse_yaml(text, path)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config file must be a mapping of sections, "
                          f"got a {type(data).__name__}")
    return data


def dump_config(cfg):
    """The config as YAML text, keys in their order; loading it gives back the same dict."""
    return yaml.safe_dump(cfg, sort_keys=False, default_flow_style=False, allow_unicode=True)


def save_config(cfg, path):
    """Write the config as YAML to `path`, atomically."""
    write_text(path, dump_config(cfg))
