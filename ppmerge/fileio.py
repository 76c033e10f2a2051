"""Atomic writes: every file the tools write goes to a temporary name in the same folder and is
renamed into place, so an interrupted run never leaves a half-written file under the final name."""
import contextlib
import os
import shutil
import tempfile


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside `path`; on success it is renamed to `path`, on error removed.

    Use it for writers that want a file name (paddle.save, safetensors, matplotlib, openpyxl)."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    os.close(fd)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


@contextlib.contextmanager
def atomic_open(path, mode="w", **kwargs):
    """Like open(path, mode) for writing, but atomic."""
    with atomic_path(path) as tmp:
        with open(tmp, mode, **kwargs) as f:
            yield f


def write_text(path, text):
    with atomic_open(path, "w", encoding="utf-8") as f:
        f.write(text)


@contextlib.contextmanager
def atomic_dir(path):
    """Yield a temporary folder beside `path`; on success it replaces `path`, on error it is removed.

    Used for outputs made of several files (a checkpoint folder, a merge's output folder): either
    the whole folder appears, or nothing does."""
    path = os.path.abspath(os.fspath(path))
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=parent)
    try:
        yield tmp
        if os.path.isdir(path):
            old = tmp + ".old"
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
