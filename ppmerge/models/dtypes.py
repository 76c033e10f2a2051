"""Storage dtypes of written weights: float32 | float16 | bfloat16 (no paddle).

Math runs in float32; a model is cast once, tensor by tensor, when it is written. bfloat16 is held
as numpy uint16 bit patterns, paddle's convention (`paddle.save` of a bf16 tensor writes uint16 arrays;
`checkpoint.to_float32` decodes them). Non-float tensors (ids, masks) are never cast."""
import numpy as np

from ppmerge.errors import UserError

DTYPES = ("float32", "float16", "bfloat16")


def check_dtype(dtype, where="dtype"):
    """The canonical dtype name (case-insensitive; fp32/fp16/bf16 accepted), else a UserError naming `where`."""
    name = str(dtype).strip().lower()
    name = {"fp32": "float32", "fp16": "float16", "half": "float16", "bf16": "bfloat16"}.get(name, name)
    if name not in DTYPES:
        raise UserError(f"{where}: {dtype!r} is not a storage dtype; expected one of {', '.join(DTYPES)}")
    return name


def is_float(array):
    """True for float arrays and paddle's bf16 bit arrays (uint16)."""
    dtype = np.asarray(array).dtype if not hasattr(array, "dtype") else np.dtype(array.dtype)
    return dtype.kind == "f" or dtype == np.uint16


def float32_to_bf16_bits(array):
    """float32 → bfloat16 bits (uint16), rounded to nearest, ties to even; NaN stays NaN."""
    array = np.ascontiguousarray(array, dtype=np.float32)
    bits = array.view(np.uint32)
    rounded = ((bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)).astype(np.uint16)
    nan = np.isnan(array)
    if nan.any():  # rounding could carry a NaN's payload into Inf: keep it a quiet NaN
        rounded[nan] = ((bits[nan] >> np.uint32(16)) | np.uint32(0x0040)).astype(np.uint16)
    return rounded


def cast(array, dtype):
    """`array` stored as `dtype` (see DTYPES). Non-float arrays come back unchanged; float16 values
    beyond ±65504 become ±Inf (numpy's cast), which `cast_state_dict` refuses."""
    from ppmerge.models.checkpoint import to_float32

    array = np.asarray(array)
    if not is_float(array):
        return array
    if dtype == "bfloat16":
        if array.dtype == np.uint16:
            return array
        return float32_to_bf16_bits(to_float32(array))
    target = np.dtype(dtype)
    if array.dtype == target:
        return array
    with np.errstate(over="ignore"):
        return to_float32(array).astype(target)


def cast_state_dict(state_dict, dtype, where="dtype"):
    """A dict with every float tensor cast to `dtype`, one tensor at a time: each source tensor is
    dropped from `state_dict` (if it supports `pop`) as soon as its cast copy exists, so the peak is the
    cast model plus one source tensor. A finite value that overflows float16 is a UserError naming the key."""
    dtype = check_dtype(dtype, where)
    out = {}
    for key in list(state_dict):
        value = state_dict.pop(key) if hasattr(state_dict, "pop") else state_dict[key]
        casted = cast(value, dtype)
        if dtype == "float16" and casted is not value and np.isinf(casted).any():
            source = cast(value, "float32")
            if not np.array_equal(np.isinf(casted), np.isinf(source)):
                raise UserError(f"{where}: {key} has values beyond float16's range (±65504); keep float32 or "
                                f"use bfloat16")
        out[key] = casted
    return out
