"""The one way every tool reads and writes weights.

Formats by extension: `.pdparams` (a paddle.save pickle, read with an allow-listed unpickler, see
`safe_pickle`) and `.safetensors`. Writes are atomic. `load_pretrained` also understands FleetX's fused
qkv, paddlenlp's and Hugging Face GPT-2's key layouts, and merged model files (`heads.<TASK>.…`)."""
import os
from collections.abc import Mapping

import numpy as np

from ppmerge.errors import CheckpointError
from ppmerge.fileio import atomic_path
from ppmerge.models import fleetx, hf_gpt2
from ppmerge.models.safe_pickle import LazyArray, LazyPickle, bf16_as_uint16, read_pickle, to_numpy, write_pickle

EXTENSIONS = (".pdparams", ".pdopt", ".safetensors")
FOLDER_FILES = ("model.pdparams", "model_state.pdparams", "model.safetensors")
HEADS_PREFIX = "heads."
MAY_BE_MISSING = ("score.",)  # a pretrained backbone has no classifier head yet


def _extension(path):
    ext = os.path.splitext(str(path))[1].lower()
    if ext not in EXTENSIONS:
        raise CheckpointError(f"{path}: unknown checkpoint format {ext or '(no extension)'!r}; "
                              f"expected .pdparams or .safetensors")
    return ext


def checkpoint_format(path):
    """".pdparams", ".pdopt" or ".safetensors" from `path`'s extension; CheckpointError otherwise."""
    return _extension(os.fspath(path))


def _check_exists(path):
    if os.path.isdir(path):
        raise CheckpointError(f"{path}: is a folder; expected a checkpoint file (.pdparams or .safetensors)")
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint file not found: {path}")


def _check_state_dict(obj, path):
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a state dict (name → tensor), found {type(obj).__name__}")
    for key, value in obj.items():
        if not isinstance(value, (np.ndarray, LazyArray)):
            raise CheckpointError(f"{path}: entry {key!r} is a {type(value).__name__}, not a tensor; "
                                  f"expected a state dict of tensors")
    return obj


def non_finite_key(state_dict):
    """The first key (in order) whose floating values hold a NaN or Inf, with "NaN" or "Inf"; else None.
    A sum is non-finite when an entry is, so a finite tensor costs one reduction and no temporary."""
    for key, value in state_dict.items():
        value = np.asarray(value)
        if value.dtype == np.uint16:  # bf16 bits (paddle's convention)
            value = to_float32(value)
        if not np.issubdtype(value.dtype, np.floating):
            continue
        with np.errstate(over="ignore", invalid="ignore"):
            total = value.sum(dtype=np.float64)
        if not np.isfinite(total) and not np.isfinite(value).all():
            return key, "NaN" if np.isnan(value).any() else "Inf"
    return None


def check_finite(state_dict, source):
    """CheckpointError naming `source` and the first key with NaN / Inf values."""
    bad = non_finite_key(state_dict)
    if bad:
        raise CheckpointError(f"{source}: {bad[0]} holds {bad[1]} values (a diverged or damaged model); "
                              f"refusing to use it")


def load_numpy_state_dict(path):
    """name → numpy array, no paddle tensors made (bf16 comes back as uint16, paddle's convention).

    The arrays are returned as unpickled / read: no second copy of the data is held."""
    path = os.fspath(path)
    ext = _extension(path)
    _check_exists(path)
    if ext == ".safetensors":
        return _read_safetensors_numpy(path)
    return _check_state_dict(read_pickle(path), path)


class TensorsOnDemand(Mapping):
    """A read-only mapping over `self.shapes` (key → shape, known up front) whose values are read when
    asked for (`read_tensor(key)`) and not kept; `pop(key)` reads the tensor and forgets the key."""

    shapes: dict

    def read_tensor(self, key):
        raise NotImplementedError

    def __getitem__(self, key):
        if key not in self.shapes:
            raise KeyError(key)
        return self.read_tensor(key)

    def __contains__(self, key):  # without reading the tensor (Mapping's default would)
        return key in self.shapes

    def __iter__(self):
        return iter(self.shapes)

    def __len__(self):
        return len(self.shapes)

    def pop(self, key):
        value = self[key]
        del self.shapes[key]
        return value


class LazyStateDict(TensorsOnDemand):
    """A state dict file opened for reading tensor by tensor: keys and shapes are known up front, each
    value is read from disk when asked for and not kept (`sd[key]` reads it again; `pop` also forgets
    the key). A streaming merge thus holds one tensor of the model at a time, not the whole model.
    Use it in a `with` block (or `close()` it). Values are numpy arrays as `load_numpy_state_dict` gives."""

    def __init__(self, path):
        self.path = os.fspath(path)
        ext = _extension(self.path)
        _check_exists(self.path)
        if ext == ".safetensors":
            self._open_safetensors()
        else:
            self._pickle = LazyPickle(self.path)
            entries = _check_state_dict(self._pickle.obj, self.path)
            self._read = lambda key: self._pickle.materialize(entries[key])
            self._entries = entries
            self.shapes = {key: tuple(value.shape) for key, value in entries.items()}
            self._close = self._pickle.close

    def _open_safetensors(self):
        from safetensors import SafetensorError, safe_open

        try:
            handle = safe_open(self.path, framework="np").__enter__()
            self.shapes = {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}
        except (SafetensorError, OSError) as exc:
            raise CheckpointError(f"{self.path}: not a readable .safetensors file ({exc})") from None

        def read(key):
            try:
                return bf16_as_uint16(handle.get_tensor(key))
            except TypeError:  # bf16 without ml_dtypes: numpy cannot hold it; read the file whole (rare)
                return load_numpy_state_dict(self.path)[key]

        self._read = read
        self._entries = {}
        self._close = lambda: handle.__exit__(None, None, None)

    def read_tensor(self, key):
        return self._read(key)

    def read_all(self, threads=None, check=None):
        """Every tensor read into its own buffer, as `load_numpy_state_dict` gives them, by `threads`
        readers side by side (default: one per core; largest tensors first). Filling fresh memory is
        page-fault bound, so two cores read a model ~2x faster than one. `check(key, value)` runs in the
        reader thread right after each read; its exception is raised for the first failing key in
        file order. Keys stay in file order."""
        from concurrent.futures import ThreadPoolExecutor

        keys = list(self.shapes)
        threads = threads or _usable_cores()

        def read(key):
            value = self[key]
            if check is not None:
                check(key, value)
            return value

        if threads <= 1 or len(keys) <= 1:
            return {key: read(key) for key in keys}
        by_size = sorted(keys, key=lambda k: -int(np.prod(self.shapes[k], dtype=np.int64)))
        with ThreadPoolExecutor(threads, thread_name_prefix="read-state-dict") as pool:
            futures = {key: pool.submit(read, key) for key in by_size}
            try:
                return {key: futures[key].result() for key in keys}
            finally:
                for future in futures.values():
                    future.cancel()

    def storage_order(self, key):
        """'C' or 'F': the element order of `iter_blocks(key, ...)` (how the tensor lies in the file)."""
        entry = self._entries.get(key)
        if isinstance(entry, LazyArray):
            return entry.order
        return "C"  # safetensors, small pickled arrays: see iter_blocks

    def iter_blocks(self, key, scratch):
        """Yield (start, block): the tensor's elements in `storage_order(key)`, block by block; `block`
        holds flat elements start .. start + len(block) and is valid until the next one is asked for.

        A big `.pdparams` array is read from the file straight into `scratch` (a uint8 array, reused),
        so the tensor is never materialised. Other tensors (safetensors: `safe_open` gives whole
        tensors; small arrays stored inside pickle frames) are read whole and handed out in slices."""
        if key not in self.shapes:
            raise KeyError(key)
        entry = self._entries.get(key)
        if isinstance(entry, LazyArray):
            yield from self._pickle.read_blocks(entry, scratch)
            return
        array = np.asarray(self._read(key))
        flat = array.ravel(order=self.storage_order(key))
        step = max(1, scratch.nbytes // max(1, array.itemsize))
        for start in range(0, flat.size, step):
            yield start, flat[start:start + step]

    def close(self):
        self._close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _usable_cores():
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def open_state_dict(path):
    """A `LazyStateDict` of a `.pdparams` or `.safetensors` file (read tensor by tensor)."""
    return LazyStateDict(path)


def _read_safetensors_numpy(path):
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(path, framework="np") as f:
            try:
                return {key: bf16_as_uint16(f.get_tensor(key)) for key in f.keys()}
            except TypeError:  # bf16 without ml_dtypes: numpy cannot hold it, paddle gives its uint16 bits
                pass
        import safetensors.paddle

        return {key: to_numpy(tensor) for key, tensor in safetensors.paddle.load_file(path).items()}
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{path}: not a readable .safetensors file ({exc})") from None


def load_state_dict(path):
    """name → paddle.Tensor (on the current device) from a `.pdparams` or `.safetensors` file."""
    from ppmerge.runtime import import_paddle

    paddle = import_paddle()
    path = os.fspath(path)
    if _extension(path) == ".safetensors":
        _check_exists(path)
        import safetensors.paddle

        try:
            return dict(safetensors.paddle.load_file(path))
        except Exception as exc:
            raise CheckpointError(f"{path}: not a readable .safetensors file ({exc})") from None
    arrays = load_numpy_state_dict(path)
    # Convert one array at a time and let it go, so the peak is one copy plus one tensor.
    return {key: paddle.to_tensor(arrays.pop(key)) for key in list(arrays)}


def load_object(path):
    """A safe `paddle.load` for any paddle.save file (e.g. an optimizer state `.pdopt`): nested
    containers as saved, tensors as numpy arrays."""
    path = os.fspath(path)
    _check_exists(path)
    return read_pickle(path)


def save_state_dict(state_dict, path):
    """Write name → tensor (paddle or numpy) to `.pdparams` (paddle.load-compatible) or `.safetensors`, atomically."""
    path = os.fspath(path)
    ext = _extension(path)
    if ext == ".safetensors":
        _write_safetensors(state_dict, path)
    else:
        write_pickle(dict(state_dict), path)


def _write_safetensors(state_dict, path):
    # uint16 arrays are bf16 (paddle's convention): only the paddle writer can label them BF16.
    use_paddle = any(not isinstance(v, np.ndarray) or v.dtype == np.uint16 for v in state_dict.values())
    with atomic_path(path) as tmp:
        if use_paddle:
            import safetensors.paddle
            from ppmerge.runtime import import_paddle

            paddle = import_paddle()
            tensors = {k: v if isinstance(v, paddle.Tensor) else paddle.to_tensor(to_numpy(v))
                       for k, v in state_dict.items()}
            safetensors.paddle.save_file({k: v.contiguous() for k, v in tensors.items()}, tmp)
        else:
            import safetensors.numpy

            safetensors.numpy.save_file({k: np.ascontiguousarray(v) for k, v in state_dict.items()}, tmp)


def to_float32(array):
    """Cast a floating array to float32; uint16 is read as bf16 bits (paddle's convention)."""
    array = np.asarray(array)
    if array.dtype == np.uint16:
        return (array.astype(np.uint32) << 16).view(np.float32)
    return array.astype(np.float32, copy=False)


# --------------------------------------------------------------------------- merged model files

def merged_task_names(state_dict):
    """Head names of a merged model file (`heads.<name>.…` keys: model and task names); empty for a plain checkpoint."""
    return sorted({key[len(HEADS_PREFIX):].split(".", 1)[0] for key in state_dict if key.startswith(HEADS_PREFIX)})


def _canonical_task(name):
    try:
        from ppmerge.data import get_task
    except ImportError:  # the data package is optional here: fall back to exact names
        return name
    try:
        return get_task(name).name
    except Exception:
        return name


def select_task_head(state_dict, task):
    """A merged model (backbone + `heads.<name>.<key>`) → a plain state dict with one head: `task` is a
    model name of the merge's pool (`sst2_seed1`) or a task (`SST-2`: the task's head, `heads.SST2`)."""
    tasks = merged_task_names(state_dict)
    if not tasks:
        return dict(state_dict)
    wanted = _canonical_task(task)
    match = [t for t in tasks if t == task] or [t for t in tasks if t == wanted or _canonical_task(t) == wanted]
    if not match:
        order = [key[len(HEADS_PREFIX):].split(".", 1)[0] for key in state_dict if key.startswith(HEADS_PREFIX)]
        raise CheckpointError(f"merged model has no head for {task!r}; its heads (model or task names): "
                              f"{', '.join(dict.fromkeys(order))}")
    prefix = f"{HEADS_PREFIX}{match[0]}."
    out = {key: value for key, value in state_dict.items() if not key.startswith(HEADS_PREFIX)}
    out.update({key[len(prefix):]: value for key, value in state_dict.items() if key.startswith(prefix)})
    return out


# --------------------------------------------------------------------------- pretrained weights

def resolve_checkpoint_path(path):
    """A weights file for FleetX's prefix (`.../model` → `model.pdparams`), a file, or a folder."""
    path = os.fspath(path)
    if os.path.isdir(path):
        for name in FOLDER_FILES:
            if os.path.isfile(os.path.join(path, name)):
                return os.path.join(path, name)
        if os.path.isfile(os.path.join(path, "pytorch_model.bin")):
            hf_gpt2.find_weights(path)  # raises the clear "needs PyTorch" message
        raise CheckpointError(f"checkpoint folder {path} holds none of {', '.join(FOLDER_FILES)}")
    if os.path.isfile(path):
        return path
    for ext in (".pdparams", ".safetensors"):
        if os.path.isfile(path + ext):
            return path + ext
    raise CheckpointError(f"checkpoint not found: {path} (expected a file, a folder with model.pdparams, "
                          f"or FleetX's prefix such as output/model for output/model.pdparams)")


def to_our_layout(state_dict, num_heads=None, source="checkpoint"):
    """Any supported key layout (ours, FleetX fused, paddlenlp, HF GPT-2) → ours, numpy values."""
    if hf_gpt2.is_hf_gpt2(state_dict):
        return hf_gpt2.convert_state_dict(state_dict)
    state_dict = fleetx.normalize_prefixes(state_dict)
    if fleetx.has_fused_qkv(state_dict):
        if not num_heads:
            raise CheckpointError(f"{source} has fused qkv_proj weights: the number of attention heads is needed "
                                  f"to split them (GPT-345M: 16; tools/convert.py --num-heads)")
        state_dict = fleetx.split_fused_state_dict(state_dict, num_heads)
    return state_dict


def load_pretrained(model, path, task=None):
    """Load weights into `model` (a GPTForSequenceClassification). Returns (missing, unexpected) keys.

    Fused qkv is split, dtypes cast to the model's, a merged file gives the backbone plus `task`'s
    head. Only `score.*` may be missing; a shape mismatch is an error naming the key and both shapes."""
    file = resolve_checkpoint_path(path)
    state_dict = load_numpy_state_dict(file)
    tasks = merged_task_names(state_dict)
    if tasks:
        if task is None:
            raise CheckpointError(f"{file} is a merged model with heads for {', '.join(tasks)}: say which task to load")
        state_dict = select_task_head(state_dict, task)
    state_dict = to_our_layout(state_dict, model.gpt.config.num_attention_heads, source=file)

    params = model.state_dict()
    missing = [key for key in params if key not in state_dict]
    unexpected = [key for key in state_dict if key not in params]
    fatal = [key for key in missing if not key.startswith(MAY_BE_MISSING)]
    if fatal:
        shown = ", ".join(fatal[:5]) + (f" (+{len(fatal) - 5} more)" if len(fatal) > 5 else "")
        raise CheckpointError(f"{file} is missing {len(fatal)} weights the model needs: {shown}")
    for key, param in params.items():
        if key in state_dict and tuple(state_dict[key].shape) != tuple(param.shape):
            raise CheckpointError(f"{file}: {key} has shape {list(state_dict[key].shape)} in the file but "
                                  f"{list(param.shape)} in the model (check Model.vocab_size / num_classes / sizes)")
    check_finite({key: state_dict[key] for key in params if key in state_dict}, file)
    from ppmerge.runtime import import_paddle

    paddle = import_paddle()
    for key, param in params.items():
        if key in state_dict:
            value = state_dict.pop(key)  # drop our reference as we go: one copy at a time
            if np.issubdtype(value.dtype, np.floating) or value.dtype == np.uint16:
                value = to_float32(value)  # fp16 / bf16 checkpoints (FleetX saves fp16)
            tensor = paddle.to_tensor(value)
            param.set_value(tensor if tensor.dtype == param.dtype else tensor.astype(param.dtype))
    return missing, unexpected
