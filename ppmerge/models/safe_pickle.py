"""Safe reading and paddle-compatible writing of `.pdparams` / `.pdopt` pickles.

`paddle.load` unpickles whatever a file asks for, so a downloaded checkpoint could run any code.
What paddle 3.3.1's `paddle.save` really writes (seen with `pickletools`, fp32/fp16/bf16/int/bool
tensors, a `model.state_dict()`, an optimizer state): numpy arrays through
`numpy.core.multiarray._reconstruct`, `numpy.ndarray` and `numpy.dtype`; `builtins.tuple` when a
tensor sits inside a nested container (paddle pickles it as `(name, ndarray)`); `_codecs.encode` with
pickle protocol 2. Everything else a file asks for is refused before anything runs.

Paddle's conventions that we follow: bf16 tensors are saved as uint16 arrays (and uint16 arrays load
as bf16); a state dict carries a `StructuredToParameterName@@` entry (parameter names, dropped on
load); protocol 2/3 files split arrays over 1 GiB into slices listed under `UnpackBigParamInfor@@`."""
import pickle

import numpy as np

from ppmerge.errors import CheckpointError
from ppmerge.fileio import atomic_open

STRUCTURE_KEY = "StructuredToParameterName@@"
BIG_PARAM_KEY = "UnpackBigParamInfor@@"

ALLOWED_GLOBALS = frozenset({
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),  # files written with numpy 2
    ("numpy.core.multiarray", "scalar"),  # numpy scalars (e.g. np.float32 in an optimizer state)
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("collections", "OrderedDict"),
    ("builtins", "tuple"),
    ("builtins", "list"),
    ("builtins", "dict"),
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("builtins", "bytearray"),
    ("builtins", "complex"),
    ("_codecs", "encode"),  # how protocol 2 stores bytes
})


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, path):
        super().__init__(file)
        self.path = path

    def find_class(self, module, name):
        if (module, name) in ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise CheckpointError(f"{self.path}: refused to load: the pickle asks for `{module}.{name}`, which is not "
                              f"part of a paddle.save state dict (the file may be malicious or not a checkpoint)")

    def persistent_load(self, pid):
        raise CheckpointError(f"{self.path}: refused to load: persistent ids are not part of a paddle.save file "
                              f"(a PyTorch checkpoint?)")


def _is_saved_tensor(value):
    """paddle pickles a tensor inside a nested container as the tuple (name, ndarray)."""
    return (isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], str)
            and isinstance(value[1], np.ndarray))


def _unwrap(obj):
    """Turn paddle.save's on-disk structure back into plain containers of numpy arrays."""
    if _is_saved_tensor(obj):
        return obj[1]
    if isinstance(obj, dict):
        obj.pop(STRUCTURE_KEY, None)
        big = obj.pop(BIG_PARAM_KEY, None)
        for key, info in (big or {}).items():
            obj[key] = np.concatenate([obj.pop(part) for part in info["slices"]]).reshape(info["OriginShape"])
        for key in list(obj):
            obj[key] = _unwrap(obj[key])
        return obj
    if isinstance(obj, list):
        return [_unwrap(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_unwrap(v) for v in obj)
    return obj


def read_pickle(path):
    """Unpickle a paddle.save file with the allow-list; tensors come back as numpy arrays."""
    try:
        with open(path, "rb") as f:
            obj = _RestrictedUnpickler(f, path).load()
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint file not found: {path}") from None
    except CheckpointError:
        raise
    except Exception as exc:  # truncated or not a pickle at all
        raise CheckpointError(f"{path}: not a readable .pdparams pickle ({type(exc).__name__}: {exc})") from None
    return _unwrap(obj)


def bf16_as_uint16(array):
    """ml_dtypes' bfloat16 arrays (made by some readers once ml_dtypes is imported) → paddle's uint16 bits."""
    return array.view(np.uint16) if array.dtype.name == "bfloat16" else array


def to_numpy(value):
    """A numpy array for a paddle tensor or array-like (bf16 becomes uint16, as paddle saves it)."""
    if isinstance(value, np.ndarray):
        return bf16_as_uint16(value)
    if hasattr(value, "numpy") and hasattr(value, "place"):  # paddle Tensor / Parameter
        return bf16_as_uint16(value.numpy())
    return bf16_as_uint16(np.asarray(value))


def _to_saveable(obj):
    if isinstance(obj, dict):
        return {key: _to_saveable(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_saveable(v) for v in obj)
    if isinstance(obj, (str, int, float, bool, type(None), np.ndarray, np.generic)):
        return obj
    return to_numpy(obj)


def write_pickle(obj, path):
    """Write like paddle.save does (protocol 4, tensors as numpy arrays), atomically.

    A plain pickle of numpy arrays is what paddle.load expects for a state dict, and ~2x faster
    than paddle.save (DESIGN.md)."""
    data = _to_saveable(obj)
    with atomic_open(path, "wb") as f:
        pickle.dump(data, f, protocol=4)
