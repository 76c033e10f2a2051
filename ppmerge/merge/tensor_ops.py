"""Moving one tensor at a time between state dicts (numpy or paddle, any device) and the compute device.

Merging math runs in paddle on `paddle.get_device()`, in float32, key by key: a key's tensors go to the
device, the result comes back as a numpy array in the base's dtype. So a GPU never holds whole models.
"""
import numpy as np

_PADDLE = None


def paddle():
    """paddle, imported once (quietly, all CPU cores) on first use."""
    global _PADDLE
    if _PADDLE is None:
        from ppmerge.runtime import import_paddle

        _PADDLE = import_paddle()
    return _PADDLE


def numpy_dtype(x):
    """The numpy dtype of a numpy array or a paddle tensor (bfloat16 counts as float32)."""
    if isinstance(x, np.ndarray):
        return x.dtype
    name = str(x.dtype).replace("paddle.", "")
    return np.dtype("float32") if name == "bfloat16" else np.dtype(name)


def is_floating(x):
    return np.issubdtype(numpy_dtype(x), np.floating)


def to_device(x):
    """A float32 paddle tensor on the current device (a copy when x is numpy or lives elsewhere)."""
    pd = paddle()
    if isinstance(x, np.ndarray):
        x = np.ascontiguousarray(x, dtype=np.float32)
        if pd.get_device() == "cpu" and x.flags.writeable and x.size:
            return pd.utils.dlpack.from_dlpack(x)  # zero-copy on CPU: copying costs as much as the math
        return pd.to_tensor(x)
    if x.dtype != pd.float32:
        x = x.astype("float32")
    device = pd.get_device()  # "cpu", "gpu:0"; a tensor's place prints as "Place(gpu:0)"
    if str(x.place) != f"Place({device})":
        x = x.to(device)
    return x


def to_host(t, dtype=np.float32):
    """A paddle tensor (or numpy array) back as a numpy array of `dtype`."""
    if isinstance(t, np.ndarray):
        array = t
    elif t.place.is_cpu_place() and t.size:
        array = np.from_dlpack(t)  # zero-copy; the array keeps the tensor's memory alive
    else:
        array = t.numpy()
    return array.astype(dtype, copy=False)


def as_numpy(x):
    """A CPU numpy view/copy of a state-dict value, whatever it is."""
    if isinstance(x, np.ndarray):
        return x
    return np.asarray(x) if isinstance(x, np.generic) else x.numpy()


def float_keys(base):
    """The keys of the floating-point tensors: those are merged; others are copied from the base."""
    return [k for k, v in base.items() if is_floating(v)]


def like_base(base, results, dtypes=None):
    """THE non-float epilogue of every merge: {key: result} for the float keys (in the base's dtype and
    shape; popped from `results` one by one) and a copy of the base's value for the others."""
    merged = {}
    for key, value in list(base.items()):
        if key in results:
            dtype = dtypes[key] if dtypes else numpy_dtype(value)
            array = as_numpy(results.pop(key))
            if array.shape != tuple(np.shape(value)):
                array = array.reshape(np.shape(value))
            merged[key] = array.astype(dtype, copy=False)
        else:  # non-float tensors (none in GPT) are copied from the base
            merged[key] = np.array(as_numpy(value))
    return merged
