"""Mixed precision: what `Engine.mix_precision` asks for, and what the device can actually do.

float16 runs under `paddle.amp.auto_cast` with a GradScaler (`scale_loss` is its initial scale);
bfloat16 runs without a scaler. A device without the dtype (this project's CPUs: no bf16, no fp16
kernels) trains in float32 after ONE warning line: never silently."""
import contextlib
import sys
from dataclasses import dataclass, field

from ppmerge.errors import ConfigError

_DTYPES = ("float16", "bfloat16")
_LEVELS = ("O1", "O2")


@dataclass(frozen=True)
class AmpPlan:
    enabled: bool = False
    dtype: str = "float32"
    level: str = "O1"
    use_scaler: bool = False
    init_loss_scaling: float = 1.0
    custom_white_list: tuple = field(default_factory=tuple)
    custom_black_list: tuple = field(default_factory=tuple)


def device_supports(paddle, dtype):
    """Whether the current device has autocast kernels for `dtype`."""
    place = paddle.get_device()
    if place.startswith("cpu"):
        return False  # bf16 autocast silently runs fp32 and fp16 kernels are missing (DESIGN.md)
    check = paddle.amp.is_float16_supported if dtype == "float16" else paddle.amp.is_bfloat16_supported
    return bool(check())


def plan_amp(mix_cfg, supports, device="cpu", out=sys.stdout):
    """The AmpPlan for a `mix_precision` section; `supports(dtype) -> bool` says what the device can do."""
    if not mix_cfg or not mix_cfg.get("enable"):
        return AmpPlan()
    dtype = str(mix_cfg.get("dtype", "float16")).lower()
    level = str(mix_cfg.get("level", "O1")).upper()
    if dtype not in _DTYPES:
        raise ConfigError(f"Engine.mix_precision.dtype: {dtype!r} is not supported; expected float16 or bfloat16")
    if level not in _LEVELS:
        raise ConfigError(f"Engine.mix_precision.level: {level!r} is not supported; expected O1 or O2")
    if not supports(dtype):
        print(f"warning: mix_precision requested but {device} does not support {dtype}; training in float32",
              file=out, flush=True)
        return AmpPlan()
    return AmpPlan(enabled=True, dtype=dtype, level=level, use_scaler=dtype == "float16",
                   init_loss_scaling=float(mix_cfg.get("scale_loss", 32768.0)),
                   custom_white_list=tuple(mix_cfg.get("custom_white_list") or ()),
                   custom_black_list=tuple(mix_cfg.get("custom_black_list") or ()))


def autocast(paddle, plan):
    """Context for a forward pass under the plan (a no-op context when AMP is off)."""
    if not plan.enabled:
        return contextlib.nullcontext()
    return paddle.amp.auto_cast(enable=True, custom_white_list=set(plan.custom_white_list),
                                custom_black_list=set(plan.custom_black_list), level=plan.level,
                                dtype=plan.dtype)


def decorate(paddle, plan, model, optimizer):
    """O2 keeps fp16/bf16 weights with fp32 master copies in the optimizer."""
    if plan.enabled and plan.level == "O2":
        model, optimizer = paddle.amp.decorate(models=model, optimizers=optimizer, level="O2", dtype=plan.dtype,
                                               master_weight=True)
    return model, optimizer


def make_scaler(paddle, plan):
    """A GradScaler for float16, else None (bf16 has fp32's range and needs none)."""
    if not plan.use_scaler:
        return None
    return paddle.amp.GradScaler(init_loss_scaling=plan.init_loss_scaling)
