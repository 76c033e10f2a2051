"""docs/CONFIG.md, generated from the schema so that it never drifts from what is validated.

    python -m ppmerge.config.markdown docs/CONFIG.md     # rewrite it (a test checks it is current)
"""
import sys

from ppmerge.config.schema import Section
from ppmerge.config.train_schema import TRAIN_SCHEMA

INTRO = """\
# Configs

A config is a YAML file. Every key of a training config is listed below with its type and default;
a key that is not listed is an error (with a did-you-mean suggestion), so is a value of the wrong
type or outside the allowed values.

- `_base_: ./other.yaml` (or a list of paths) merges the named files first, relative to the file
  that names them, recursively; the file's own keys are deep-merged on top.
- A section containing `_inherited_: False` replaces the base's section instead of merging into it.
- `-o A.B.C=value` (repeatable) overrides one key after the files are merged. The value is YAML:
  `2e-5` is a float, `[1,2]` a list, `True` a bool, `null` none; only the first `=` splits, so a
  value may contain `=`; a numeric part indexes a list (`-o A.list.0=x`). An override cannot create
  a key the schema does not know (except inside open sections).
- An int is accepted where a float is expected. Choices match case-insensitively.

This file is generated from `ppmerge/config/train_schema.py` by
`python -m ppmerge.config.markdown docs/CONFIG.md`.
"""


def schema_markdown(schema, title="Config keys"):
    """A markdown section: one table per top-level section, one row per key (dotted)."""
    lines = [f"## {title}", ""]
    for name, spec in schema.fields.items():
        lines += [f"### {name}", ""]
        if isinstance(spec, Section) and spec.help:
            lines += [spec.help, ""]
        lines += ["| key | type | default | notes |", "|---|---|---|---|"]
        lines += _rows(name, spec)
        lines.append("")
    return "\n".join(lines)


def config_markdown():
    """The whole of docs/CONFIG.md."""
    return INTRO + "\n" + schema_markdown(TRAIN_SCHEMA, "Training config keys")


def _rows(key, spec):
    if isinstance(spec, Section):
        rows = []
        if spec.nullable or spec.open:
            kind = "section" + (" or null" if spec.nullable else "")
            notes = "; ".join(filter(None, [spec.help, "extra keys allowed" if spec.open else ""]))
            rows.append(f"| `{key}` | {kind} | {'`null`' if spec.nullable else ''} | {_cell(notes)} |")
        for name, child in spec.fields.items():
            rows += _rows(f"{key}.{name}", child)
        return rows
    types = " or ".join(t.__name__ if t is not dict else "mapping" for t in spec.types)
    if spec.nullable:
        types += " or null"
    default = "**required**" if spec.required else f"`{_yaml(spec.default)}`"
    notes = [spec.help] if spec.help else []
    if spec.min is not None or spec.max is not None:
        notes.append(spec.range_text())
    if spec.choices is not None:
        notes.append("one of " + ", ".join(f"`{c}`" for c in spec.choices))
    if spec.aliases:
        notes.append("aliases: " + ", ".join(f"`{a}` = `{c}`" for a, c in spec.aliases.items()))
    return [f"| `{key}` | {types} | {default} | {_cell('; '.join(notes))} |"]


def _yaml(value):
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(_yaml(v) for v in value) + "]"
    return str(value)


def _cell(text):
    return text.replace("|", "\\|")


if __name__ == "__main__":
    from ppmerge.fileio import write_text

    if len(sys.argv) > 1:
        write_text(sys.argv[1], config_markdown())
    else:
        sys.stdout.write(config_markdown())
