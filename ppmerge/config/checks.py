"""Checks across keys, run after the schema's per-key checks (load_config): things no single key can
know, e.g. that `max_length` fits the model's positions. Each is a one-line ConfigError naming the key."""
from ppmerge.errors import ConfigError


def _positions(model_cfg):
    """The GPT model's max_position_embeddings (the key, else its preset's), or None: not a GPT preset
    (T5's positions are relative: any length)."""
    from ppmerge.models.presets import ARCH_ALIASES, ARCH_PRESETS

    if model_cfg.get("max_position_embeddings") is not None:
        return int(model_cfg["max_position_embeddings"]), "max_position_embeddings"
    name = str(model_cfg.get("name") or "gpt-345m").strip().lower()
    name = ARCH_ALIASES.get(name, name)
    if name not in ARCH_PRESETS:
        return None, None
    return int(ARCH_PRESETS[name]["max_position_embeddings"]), f"the {name} preset's max_position_embeddings"


def check_max_length(length, model_cfg, length_key="max_length", model_key="Model", where=None):
    """ConfigError when `length` tokens do not fit the GPT model's positions (for code that builds a model
    and data without a config file, e.g. the Python API's task pool)."""
    _check_length(length_key, int(length), model_key, dict(model_cfg or {}), where or (lambda key: "config"))


def _check_length(length_key, length, model_key, model_cfg, where):
    positions, source = _positions(model_cfg)
    if positions is not None and length > positions:
        raise ConfigError(f"{where(length_key)}: key '{length_key}' is {length}, longer than the model's "
                          f"{positions} positions ({model_key}: {source}); set it to at most {positions}")


def check_config(cfg, where):
    """Cross-key checks of a validated config (training or merge); `where(key)` names the source."""
    if "TaskPool" in cfg:  # a merge config
        pool = cfg["TaskPool"]
        _check_length("TaskPool.max_length", pool["max_length"], "TaskPool.model", pool["model"], where)
        splits = [("TaskPool.split", pool.get("split"), pool.get("split"))]
        splits += [(f"TaskPool.splits.{task}", split, split) for task, split in (pool.get("splits") or {}).items()]
        splits += [("TaskPool.tasks", view.split(":", 1)[1], view) for view in pool.get("tasks") or ()
                   if isinstance(view, str) and ":" in view]  # TASK:split views
        for key, split, shown in splits:
            if str(split or "").lower().startswith("test"):
                raise ConfigError(f"{where(key)}: key '{key}' has {shown!r}: test splits have no labels, and the "
                                  f"task pool scores the merged model against labels; use dev (or dev_matched / "
                                  f"dev_mismatched)")
        return cfg
    data, model = cfg.get("Data") or {}, cfg.get("Model") or {}
    for mode in ("Train", "Eval", "Test"):
        dataset = (data.get(mode) or {}).get("dataset")
        if dataset and dataset.get("max_length") is not None:
            _check_length(f"Data.{mode}.dataset.max_length", dataset["max_length"], "Model", model, where)
    return cfg
