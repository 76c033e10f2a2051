"""Freshly initialised GPT weights from a preset and a seed (a base for experiments and for users
without a pretrained file; the demo's base is made here too).

The values are paddle's own initialisation of `GPTForSequenceClassification` (paddlenlp's GPT init,
Normal(0, initializer_range) for the head) after `paddle.seed(seed)`: the same seed, preset and paddle
version give the same file."""
from ppmerge.errors import UserError


def init_state_dict(model_cfg, seed=0, num_classes=None):
    """numpy state dict of a new model for `model_cfg` (a preset name or a `Model` section); without
    `num_classes` the backbone only (no `score.*`), as a pretrained base is."""
    from ppmerge.models import build_model
    from ppmerge.runtime import import_paddle

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
