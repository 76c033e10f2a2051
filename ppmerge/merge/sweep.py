"""Sweeps: the points of a `Sweep` config section, each a set of Merge parameters.

    Sweep:
      grid:
        Merge.scaling_factor: [0.0, 0.1, 0.2]          # one key: a curve of 3 points

    Sweep:
      grid:                                             # two keys: the 4 x 4 grid (CABS's lamb1 x lamb2)
        Merge.scaling_factor.0: [0.2, 0.4, 0.6, 0.8]
        Merge.scaling_factor.1: [0.2, 0.4, 0.6, 0.8]

Keys are dotted paths under `Merge` (a numeric part indexes a list, as in `-o`); the models are
loaded once and every point is merged and evaluated in the same process.
"""
import copy
import itertools

from ppmerge.errors import ConfigError


def sweep_axes(sweep):
    """[(key, values), ...] of a validated Sweep section (None: no sweep -> [])."""
    if not sweep:
        return []
    grid = sweep.get("grid") or {}
    if not 1 <= len(grid) <= 2:
        raise ConfigError(f"Sweep.grid: expected one key (a curve) or two keys (a grid), got {len(grid)}")
    axes = []
    for key, values in grid.items():
        key = str(key)
        if not key.startswith("Merge.") or key == "Merge.method":
            raise ConfigError(f"Sweep.grid: key {key!r} must name a Merge parameter, e.g. Merge.scaling_factor")
        if not isinstance(values, list) or not values:
            raise ConfigError(f"Sweep.grid.{key}: expected a non-empty list of values, got {values!r}")
        axes.append((key, list(values)))
    return axes


def set_path(section, path, value, where):
    """Set `a.b.0` inside a nested dict/list `section` (the `Merge.` prefix already removed)."""
    parts = path.split(".")
    node = section
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(f"{where}: index {part!r} is out of range for a list of {len(node)}")
            part = int(part)
        elif not isinstance(node, dict):
            raise ConfigError(f"{where}: cannot index into {node!r} with {part!r}")
        if last:
            node[part] = value
        else:
            if isinstance(node, dict) and part not in node:
                raise ConfigError(f"{where}: Merge has no key {part!r} to index into")
            node = node[part]


def sweep_points(merge, sweep):
    """[(label, {key: value}, merge section of the point)]: one point (the plain Merge) if no sweep."""
    axes = sweep_axes(sweep)
    if not axes:
        return [("merged", {}, copy.deepcopy(merge))]
    points = []
    for values in itertools.product(*(v for _, v in axes)):
        section = copy.deepcopy(merge)
        assigned = {}
        for (key, _), value in zip(axes, values):
            set_path(section, key[len("Merge."):], value, f"Sweep.grid.{key}")
            assigned[key] = value
        label = ", ".join(f"{k[len('Merge.'):]}={v}" for k, v in assigned.items())
        points.append((label, assigned, section))
    return points
