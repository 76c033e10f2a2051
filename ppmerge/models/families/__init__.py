"""Model families: what differs between "GPT + classification head" and "T5 text-to-text", in one place.

A family is one small class (`gpt_cls.GPTClassifier`, `t5_text.T5Text`) built from the `Model` section
(+ `Tokenizer`, `Data.prompts`); the engine's module, the task pool and the merge runner ask it instead
of branching on model names. The whole interface:

    name            "gpt" | "t5"
    head_keys       regex of the per-task keys never merged (GPT `^score\\.`), or None (T5: the whole
                    model is merged)
    generates       False: outputs are logits; True: outputs are generated token ids [n, G]
    lora_targets    default LoRA target regexes (GPT q_proj/v_proj, T5 q/v)
    check(task)                      config vs task (GPT: num_classes and loss must fit)
    build(task)                      a fresh network (paddle Layer)
    load_pretrained(network, path, task)
    tokenizer()                      cached
    dataset(task, root, split, max_length)   a tokenized split (paddle Dataset)
    collate(samples)                 numpy batch, padded to its longest
    loss(model, batch, task, mode)   scalar training / eval loss tensor
    predict(model, batch, task)      outputs tensor (GPT logits [B, C]; T5 ids [B, G])
    batch_labels(batch)              the GLUE labels of a batch (class ids / scores)
    metric(task)                     a fresh metric (`update`, `accumulate`, `main_key`)
    evaluate(outputs, labels, task)  {metric values (+ GPT: loss)} of a whole eval split

`get_family(model_cfg, tokenizer_cfg=None, prompts=None)` picks the class from `Model.name` (the
preset's family, `ppmerge.models.presets.preset_family`). No paddle at import time.
"""
from ppmerge.errors import ConfigError

FAMILY_NAMES = ("gpt", "t5")


def family_name(model_cfg):
    """"gpt" or "t5" for a `Model` section (dict) or a preset name."""
    name = model_cfg if isinstance(model_cfg, str) else ((model_cfg or {}).get("name") or "gpt-345m")
    try:
        from ppmerge.models.presets import preset_family
    except ImportError:  # presets without T5 (older tree): GPT presets only
        from ppmerge.models.presets import preset_name

        preset_name(name)
        return "gpt"
    return preset_family(name)


def get_family(model_cfg, tokenizer_cfg=None, prompts=None, generation=None):
    """The family object of a `Model` section: `GPTClassifier` or `T5Text`."""
    if isinstance(model_cfg, str):
        model_cfg = {"name": model_cfg}
    name = family_name(model_cfg)
    if name == "gpt":
        from ppmerge.models.families.gpt_cls import GPTClassifier

        return GPTClassifier(model_cfg, tokenizer_cfg)
    if name == "t5":
        from ppmerge.models.families.t5_text import T5Text

        return T5Text(model_cfg, tokenizer_cfg, prompts=prompts, generation=generation)
    raise ConfigError(f"Model.name: no model family {name!r}; expected one of {', '.join(FAMILY_NAMES)}")


def family_of_config(cfg):
    """The family of a whole training config (Model + Tokenizer + Data.prompts + Model.generation)."""
    model_cfg = cfg.get("Model") or {}
    return get_family(model_cfg, cfg.get("Tokenizer") or {}, prompts=(cfg.get("Data") or {}).get("prompts"),
                      generation=model_cfg.get("generation"))
