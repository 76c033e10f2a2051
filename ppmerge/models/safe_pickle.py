"""Safe reading and paddle-compatible writing of `.pdparams` / `.pdopt` pickles.

`paddle.load` unpickles whatever a file asks for, so a downloaded checkpoint could run any code.
What paddle 3.3.1's `paddle.save` really writes (seen with `pickletools`, fp32/fp16/bf16/int/bool
tensors, a `model.state_dict()`, an optimizer state): numpy arrays through
`numpy.core.multiarray._reconstruct`, `numpy.ndarray` and `numpy.dtype`; `builtins.tuple` when a
tensor sits inside a nested container (paddle pickles it as `(name, ndarray)`); `_codecs.encode` with
pickle protocol 2. Everything else a file asks for is refused before anything runs.

Paddle's conventions that we follow: bf16 tensors are saved as uint16 arrays (and uint16 arrays load
as bf16); a state dict carries a `StructuredToParameterName@@` entry (parameter names, dropped on
load); protocol 2/3 files split arrays over 1 GiB into slices listed under `UnpackBigParamInfor@@`.

Memory (measured at GPT-2 sizes, see docs/BENCHMARKS.md): reading is already copy-free (the C unpickler
reads each array's bytes in one piece and numpy keeps them as the array's buffer), but writing with
protocol 4 made a `tobytes()` copy of every array that the pickler's memo kept until the end: a whole
second model. We write protocol 5 with in-band buffers instead: each array's memory goes to the file
as it is, no copy (Python >= 3.8 and `paddle.load` read it). `LazyPickle` reads the big arrays of a
file only when asked, one at a time, straight into their own buffers (the streaming merge)."""
import os
import pickle
import struct

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
    ("numpy.core.numeric", "_frombuffer"),  # arrays in protocol 5 files (what write_pickle writes)
    ("numpy._core.numeric", "_frombuffer"),
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


def _check_allowed(path, module, name):
    if (module, name) not in ALLOWED_GLOBALS:
        raise CheckpointError(f"{path}: refused to load: the pickle asks for `{module}.{name}`, which is not "
                              f"part of a paddle.save state dict (the file may be malicious or not a checkpoint)")


def _refuse_persistent_id(path):
    raise CheckpointError(f"{path}: refused to load: persistent ids are not part of a paddle.save file "
                          f"(a PyTorch checkpoint?)")


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, path):
        super().__init__(file)
        self.path = path

    def find_class(self, module, name):
        _check_allowed(self.path, module, name)
        return super().find_class(module, name)

    def persistent_load(self, pid):
        _refuse_persistent_id(self.path)


def is_array(value):
    """A numpy array, or a `LazyArray` standing for one."""
    return isinstance(value, (np.ndarray, LazyArray))


def _is_saved_tensor(value):
    """paddle pickles a tensor inside a nested container as the tuple (name, ndarray)."""
    return isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], str) and is_array(value[1])


def _unwrap(obj, materialize=lambda array: array):
    """Turn paddle.save's on-disk structure back into plain containers of numpy arrays
    (`materialize` reads a LazyArray where a real array is needed: the slices of a big parameter)."""
    if _is_saved_tensor(obj):
        return obj[1]
    if isinstance(obj, dict):
        obj.pop(STRUCTURE_KEY, None)
        big = obj.pop(BIG_PARAM_KEY, None)
        for key, info in (big or {}).items():
            parts = [materialize(obj.pop(part)) for part in info["slices"]]
            obj[key] = np.concatenate(parts).reshape(info["OriginShape"])
        for key in list(obj):
            obj[key] = _unwrap(obj[key], materialize)
        return obj
    if isinstance(obj, list):
        return [_unwrap(v, materialize) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_unwrap(v, materialize) for v in obj)
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
    except RecursionError:
        raise CheckpointError(_too_deep(path)) from None
    except Exception as exc:  # truncated or not a pickle at all
        raise CheckpointError(f"{path}: not a readable .pdparams pickle ({type(exc).__name__}: {exc})") from None
    try:
        return _unwrap(obj)
    except RecursionError:
        raise CheckpointError(_too_deep(path)) from None


def _too_deep(path):
    return f"{path}: not a checkpoint: its structure is nested thousands of levels deep (a state dict is name → tensor)"


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
    if isinstance(obj, np.ndarray):
        # A read-only buffer would load back read-only (the merge writes into loaded arrays), and a
        # non-contiguous one is pickled through a copy anyway: make it a plain contiguous array.
        obj = bf16_as_uint16(obj)
        return obj if obj.flags.writeable and (obj.flags.c_contiguous or obj.flags.f_contiguous) else np.array(obj)
    if isinstance(obj, (str, int, float, bool, type(None), np.generic)):
        return obj
    return _to_saveable(to_numpy(obj))


def write_pickle(obj, path):
    """Write what paddle.load reads (tensors as numpy arrays), atomically.

    A plain pickle of numpy arrays is what paddle.load expects for a state dict, and ~2x faster
    than paddle.save (DESIGN.md). Protocol 5: numpy hands the pickler each array's own memory
    (in-band PickleBuffer), which goes to the file without a copy."""
    data = _to_saveable(obj)
    with atomic_open(path, "wb") as f:
        pickle.dump(data, f, protocol=5)


# --------------------------------------------------------------------------- lazy reading

LAZY_MIN_BYTES = 1 << 16  # smaller payloads live inside pickle frames (in memory anyway): read at once


class _Payload:
    """Where an array's bytes lie in the file (their read is put off)."""

    def __init__(self, offset, size):
        self.offset, self.size = offset, size


class LazyArray:
    """An array of a `.pdparams` file, read from `offset` when asked for (`LazyPickle.read`)."""

    def __init__(self, payload, dtype, shape, order, path):
        self.offset, self.dtype, self.shape, self.order = payload.offset, np.dtype(dtype), tuple(shape), order
        if self.dtype.hasobject or self.dtype.itemsize * int(np.prod(self.shape)) != payload.size:
            raise CheckpointError(f"{path}: an array of shape {list(self.shape)} and dtype {self.dtype} does not "
                                  f"match its {payload.size} bytes of data (corrupt file?)")
        self.nbytes = payload.size


class _ArrayBeingBuilt:
    """What `numpy.core.multiarray._reconstruct` gives while lazy: BUILD then hands it the array's state."""

    def __init__(self, path):
        self.path, self.value = path, None

    def __setstate__(self, state):
        shape, dtype, is_fortran, data = state[-4:]  # (version, shape, dtype, is_fortran, data)
        if isinstance(data, _Payload):
            self.value = LazyArray(data, dtype, shape, "F" if is_fortran else "C", self.path)
        else:  # small, or protocol 2 (`_codecs.encode`): numpy builds it as usual
            self.value = np.ndarray((0,), np.uint8)
            self.value.__setstate__(state)


class _LazyUnpickler(pickle._Unpickler):
    """The allow-listed unpickler, except that array payloads outside pickle frames are not read: their
    offset is kept, the file position skips them. The pure-Python unpickler is used because its opcode
    table can be extended; a file has a few hundred opcodes, so its speed does not matter."""

    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, file, path):
        super().__init__(file)
        self.file, self.path = file, path
        self.file_size = os.fstat(file.fileno()).st_size

    def find_class(self, module, name):
        _check_allowed(self.path, module, name)
        if name == "_reconstruct":
            return self._reconstruct
        if name == "_frombuffer":
            return self._frombuffer
        return super().find_class(module, name)

    def persistent_load(self, pid):
        _refuse_persistent_id(self.path)

    def _reconstruct(self, cls, shape, typecode):
        if cls is not np.ndarray:
            raise CheckpointError(f"{self.path}: refused to load: an array of class {cls!r} (expected numpy.ndarray)")
        return _ArrayBeingBuilt(self.path)

    def _frombuffer(self, buf, dtype, shape, order):
        if isinstance(buf, _Payload):
            return LazyArray(buf, dtype, shape, order, self.path)
        return np.frombuffer(buf, dtype=dtype).reshape(shape, order=order)

    def _payload(self, size, kind):
        if self._unframer.current_frame is not None or size < LAZY_MIN_BYTES:
            data = self.read(size)
            return data if kind is bytes else bytearray(data)
        offset = self.file.tell()
        if offset + size > self.file_size:
            raise CheckpointError(f"{self.path}: truncated file (an array's data ends past the end of the file)")
        self.file.seek(size, os.SEEK_CUR)
        return _Payload(offset, size)

    def _load_counted(self, length_format, kind):
        (size,) = struct.unpack(length_format, self.read(struct.calcsize(length_format)))
        self.append(self._payload(size, kind))

    dispatch[pickle.BINBYTES[0]] = lambda self: self._load_counted("<I", bytes)
    dispatch[pickle.BINBYTES8[0]] = lambda self: self._load_counted("<Q", bytes)
    dispatch[pickle.BYTEARRAY8[0]] = lambda self: self._load_counted("<Q", bytearray)


def _finish_lazy(obj):
    """Replace the placeholders of `_reconstruct` + BUILD by what they became."""
    if isinstance(obj, _ArrayBeingBuilt):
        return obj.value
    if isinstance(obj, dict):
        for key in list(obj):
            obj[key] = _finish_lazy(obj[key])
        return obj
    if isinstance(obj, list):
        return [_finish_lazy(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_finish_lazy(v) for v in obj)
    return obj


class LazyPickle:
    """A paddle.save file opened for reading array by array: `.obj` is the unpickled structure (as
    `read_pickle` gives it) with a `LazyArray` in place of each big array; `read(lazy)` reads one
    into a fresh buffer. Same allow-list as `read_pickle`: nothing from the file runs. Close it (or use
    `with`) when done."""

    def __init__(self, path):
        self.path = os.fspath(path)
        try:
            self.file = open(self.path, "rb")
        except FileNotFoundError:
            raise CheckpointError(f"checkpoint file not found: {self.path}") from None
        try:
            raw = _LazyUnpickler(self.file, self.path).load()
            self.obj = _unwrap(_finish_lazy(raw), self.materialize)
        except CheckpointError:
            self.close()
            raise
        except RecursionError:
            self.close()
            raise CheckpointError(_too_deep(self.path)) from None
        except Exception as exc:  # truncated or not a pickle at all
            self.close()
            raise CheckpointError(f"{self.path}: not a readable .pdparams pickle ({type(exc).__name__}: {exc})") from None

    def read(self, lazy):
        """The array's bytes read straight into its own (writeable) buffer."""
        buffer = np.empty(lazy.nbytes, dtype=np.uint8)
        fd, view, done = self.file.fileno(), memoryview(buffer), 0
        while done < lazy.nbytes:  # pread: no shared file position, so threads may read side by side
            n = os.preadv(fd, [view[done:]], lazy.offset + done)
            if not n:
                raise CheckpointError(f"{self.path}: truncated file (an array's data ends past the end of the file)")
            done += n
        return buffer.view(lazy.dtype).reshape(lazy.shape, order=lazy.order)

    def read_blocks(self, lazy, scratch):
        """The array's elements in storage order (C or `lazy.order`), in consecutive blocks read into
        `scratch` (a uint8 array, reused: each block is a view of it, valid until the next one).
        Yields (start, block): `block` holds elements start .. start + len(block) of the flat array.
        A fused merge adds each block while it is in cache instead of materialising the tensor."""
        itemsize = lazy.dtype.itemsize
        step = (scratch.nbytes // itemsize) * itemsize
        if step == 0:
            raise ValueError(f"read_blocks: a scratch buffer of {scratch.nbytes} bytes cannot hold one {lazy.dtype} element")
        fd, done = self.file.fileno(), 0
        while done < lazy.nbytes:
            size = min(step, lazy.nbytes - done)
            view, got = memoryview(scratch)[:size], 0
            while got < size:  # pread: no shared file position, so other reads may come in between
                n = os.preadv(fd, [view[got:]], lazy.offset + done + got)
                if not n:
                    raise CheckpointError(f"{self.path}: truncated file (an array's data ends past the end of the file)")
                got += n
            yield done // itemsize, scratch[:size].view(lazy.dtype)
            done += size

    def materialize(self, value):
        return self.read(value) if isinstance(value, LazyArray) else value

    def close(self):
        self.file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
