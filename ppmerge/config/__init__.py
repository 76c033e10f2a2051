"""Configs: YAML with `_base_` inheritance, `-o A.B.C=value` overrides, schema validation.

    from ppmerge.config import load_config
    cfg = load_config("configs/gpt/finetune_gpt_345M_single_card_glue.yaml",
                      overrides=["Optimizer.lr.learning_rate=1e-5"])
    cfg["Engine"]["num_train_epochs"]   # plain dicts, validated, defaults filled

No paddle here: tools load their config before importing anything heavy.
"""
from ppmerge.config.loader import load_config
from ppmerge.config.overrides import apply_override, parse_override
from ppmerge.config.schema import REQUIRED, Field, Section, validate
from ppmerge.config.train_schema import TRAIN_SCHEMA
from ppmerge.config.yamlio import dump_config, save_config

__all__ = ["load_config", "parse_override", "apply_override", "dump_config", "save_config",
           "validate", "Field", "Section", "REQUIRED", "TRAIN_SCHEMA"]


def __getattr__(name):
    # The merge schema lives in its own module (owned by the merge runner); load it on first use.
    if name == "MERGE_SCHEMA":
        from ppmerge.config.merge_schema import MERGE_SCHEMA
        return MERGE_SCHEMA
    raise AttributeError(f"module 'ppmerge.config' has no attribute {name!r}")
