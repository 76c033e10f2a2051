"""Optimizer, learning-rate schedule and gradient clipping from the `Optimizer` config section."""
from ppmerge.errors import ConfigError
from ppmerge.runtime import import_paddle, import_paddlenlp_transformers

# FusedAdamW is FleetX's GPU kernel for the same update rule; plain AdamW computes the same thing.
_ADAMW_NAMES = ("AdamW", "FusedAdamW")
_NO_DECAY = ("bias", "norm")  # FleetX / BERT practice: no weight decay on biases and LayerNorm


def warmup_steps(warmup, total_steps):
    """`warmup` < 1 is a ratio of the total steps, >= 1 a number of steps."""
    if warmup is None or warmup <= 0:
        return 0
    return int(warmup) if warmup >= 1 else int(warmup * total_steps)


def build_lr_scheduler(lr_cfg, total_steps):
    """LinearDecayWithWarmup (paddlenlp's): linear 0 → lr over the warmup, then linear lr → 0.
    Constant: linear 0 → lr over the warmup, then lr."""
    name = lr_cfg.get("name") or "LinearDecayWithWarmup"
    learning_rate = float(lr_cfg["learning_rate"])
    warmup = warmup_steps(lr_cfg.get("warmup"), total_steps)
    if name == "Constant":
        paddle = import_paddle()
        return paddle.optimizer.lr.LambdaDecay(learning_rate, lambda step: min(1.0, step / warmup) if warmup else 1.0)
    if name != "LinearDecayWithWarmup":
        raise ConfigError(f"Optimizer.lr.name: {name!r} is not supported; expected LinearDecayWithWarmup or Constant")
    transformers = import_paddlenlp_transformers()
    # An int warmup is a step count for paddlenlp; a float is a ratio, so pass our rule's steps.
    return transformers.LinearDecayWithWarmup(learning_rate, max(total_steps, 1), warmup)


def decay_parameter_names(model):
    """Names (paddle's internal `param.name`) of the parameters that get weight decay."""
    return {p.name for n, p in model.named_parameters() if not any(part in n for part in _NO_DECAY)}


def build_optimizer(opt_cfg, model, lr_scheduler):
    paddle = import_paddle()
    name = opt_cfg.get("name") or "AdamW"
    if name not in _ADAMW_NAMES:
        raise ConfigError(f"Optimizer.name: {name!r} is not supported; expected AdamW or FusedAdamW")
    clip_cfg = opt_cfg.get("grad_clip") or {}
    grad_clip = None
    if clip_cfg.get("name") and (clip_cfg.get("clip_norm") or 0) > 0:
        if clip_cfg["name"] != "ClipGradByGlobalNorm":
            raise ConfigError(f"Optimizer.grad_clip.name: {clip_cfg['name']!r} is not supported; "
                              f"expected ClipGradByGlobalNorm")
        grad_clip = paddle.nn.ClipGradByGlobalNorm(clip_norm=float(clip_cfg["clip_norm"]))
    decay = decay_parameter_names(model)
    return paddle.optimizer.AdamW(
        learning_rate=lr_scheduler, parameters=model.parameters(),
        beta1=float(opt_cfg.get("beta1", 0.9)), beta2=float(opt_cfg.get("beta2", 0.999)),
        epsilon=float(opt_cfg.get("epsilon", 1e-8)), weight_decay=float(opt_cfg.get("weight_decay") or 0.0),
        apply_decay_param_fun=lambda param_name: param_name in decay, grad_clip=grad_clip)
