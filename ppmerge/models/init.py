"""Freshly initialised weights from a preset and a seed (a base for experiments and for users
without a pretrained file; the demo's GPT and T5 bases are made here too).

GPT: paddle's own initialisation of `GPTForSequenceClassification` (paddlenlp's GPT init,
Normal(0, initializer_range) for the head) after `paddle.seed(seed)`. T5 (`t5-tiny`, `flan-t5-*`
presets): paddlenlp's `T5ForConditionalGeneration` init after `seed_everything(seed)`, in our T5 key
layout (ppmerge/models/t5.py); a T5 base has no head, so `num_classes` is refused for it. The same
seed, preset and paddle version give the same file."""
from ppmerge.errors import UserError


def is_t5_config(model_cfg):
    """True when `model_cfg` (a preset name or a `Model` section) names a T5 preset."""
    from ppmerge.models.t5 import is_t5_preset

    return is_t5_preset(model_cfg if isinstance(model_cfg, str) else (model_cfg or {}).get("name"))


def init_state_dict(model_cfg, seed=0, num_classes=None):
    """numpy state dict of a new model for `model_cfg` (a preset name or a `Model` section); without
    `num_classes` the backbone only (no `score.*`), as a pretrained base is. T5: the whole
    text-to-text model (its lm_head is part of the base)."""
    from ppmerge.runtime import import_paddle

    if is_t5_config(model_cfg):
        if num_classes is not None:
            raise UserError("--num-classes: a T5 model answers with text and has no classification head; "
                            "leave --num-classes out for a T5 preset")
        from ppmerge.engine.seed import seed_everything
        from ppmerge.models.families import get_family

        seed_everything(int(seed))
        model = get_family(model_cfg).build()
        return {k: v.numpy() for k, v in model.state_dict().items()}
    from ppmerge.models import build_model

    paddle = import_paddle()
    paddle.seed(int(seed))
    model = build_model(model_cfg, num_classes=num_classes or 2)
    return {k: v.numpy() for k, v in model.state_dict().items() if num_classes or not k.startswith("score.")}


def write_initial_model(path, model_cfg="gpt-tiny", seed=0, num_classes=None, dtype="float32"):
    """Write `init_state_dict(...)` to `path` (.pdparams or .safetensors) in `dtype`; returns the tensor count."""
    from ppmerge.models import save_state_dict
    from ppmerge.models.dtypes import cast_state_dict

    if num_classes is not None and int(num_classes) < 1:
        raise UserError(f"--num-classes: expected a positive number of outputs, got {num_classes}")
    state_dict = cast_state_dict(init_state_dict(model_cfg, seed, num_classes), dtype, where="--dtype")
    save_state_dict(state_dict, path)
    return len(state_dict)


def write_t5_base(path, model_cfg, seed):
    """A seeded random T5 'pretrained' base (float32, our T5 key layout) at `path`; the demo's base."""
    return write_initial_model(path, model_cfg, seed)
