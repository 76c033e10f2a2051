"""Every file ppmerge writes goes through here. Two promises:

1. Atomic files: a file is written under a temporary name in its folder and renamed into place, so
   an interrupted run never leaves a half-written file under the final name (`atomic_path`,
   `atomic_open`, `write_text`). A folder of several files (`atomic_dir`) is written into a temporary
   folder first and then appears whole (new folder) or is merged into the existing one file by file.
2. Nothing a user owns is deleted: an existing folder is never removed or replaced. Output folders
   are checked up front (`prepare_output_dir`, `prepare_output_file`), before the long work: a
   non-empty folder is written into only when it is an earlier ppmerge output of the same kind (it
   holds a `.ppmerge-output` marker naming the kind) or with `overwrite=True` (`--overwrite`), and even
   then only the files ppmerge writes are replaced; everything else in it is left alone.

Temporaries are hidden and carry the writer's process id and a token of its machine / pid namespace:
`.<name>.ppm<pid>-<host>-<random>.tmp`. One left behind by a killed run (kill -9) is removed by the next
run that writes into that folder, once its process is gone (`clean_stale_temps`; a temporary from
another machine or container sharing the folder only after a day untouched); names of any other
pattern are never touched.
"""
import contextlib
import errno
import os
import re
import shutil
import tempfile
import time

from ppmerge.errors import UserError

MARKER = ".ppmerge-output"
_START = time.time()
# ours: .<name>.ppm<pid>-<host>-<random>.tmp (<host>: 6 hex digits naming this machine's process id
# space) ; earlier ppmerge versions: .<name>.<8 random>.tmp (+ .old)
_TEMP = re.compile(r"^\..+\.ppm(?P<pid>\d+)-(?:(?P<host>[0-9a-f]{6})-)?[A-Za-z0-9_]+\.tmp(\.old)?$")
_FOREIGN_AGE = 24 * 3600  # a temporary from another machine / container: stale only after a day untouched
_LEGACY_TEMP = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp(\.old)?$")
_cleaned = set()
_STAGING = "ppmerge-staging"  # the temporary folder inside an existing output folder: .ppmerge-staging.ppm<pid>-<random>.tmp


class OutputError(UserError):
    """An output path that cannot or may not be written."""


def _host_token():
    """6 hex digits for this process id space (host name, boot, pid namespace): a pid in a temporary's
    name is only judged alive or dead by a process that shares that space."""
    import hashlib
    import socket

    parts = [socket.gethostname()]
    for source in ("/proc/sys/kernel/random/boot_id",):
        try:
            with open(source, encoding="ascii") as f:
                parts.append(f.read().strip())
        except OSError:
            pass
    try:
        parts.append(os.readlink("/proc/self/ns/pid"))
    except OSError:
        pass
    return hashlib.sha1("|".join(parts).encode()).hexdigest()[:6]


_HOST = _host_token()


def _temp_prefix(path):
    return f".{os.path.basename(path)}.ppm{os.getpid()}-{_HOST}-"


def _pid_alive(pid):
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def clean_stale_temps(folder):
    """Remove temporaries of our naming pattern in `folder` left by runs that died: those whose process
    is gone (pid in the name), and, in a marked ppmerge output folder, old-style ones (no pid: written
    by earlier ppmerge versions) older than this process. Returns the removed names. Anything else is
    never touched; a temporary of a live run (even a concurrent one) stays."""
    removed = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    # Old-style names carry no process id: only in a marked ppmerge output (never in a user's folder).
    legacy = is_ppmerge_output(folder)
    for name in names:
        match = _TEMP.match(name)
        path = os.path.join(folder, name)
        if match and match.group("host") in (None, _HOST):
            stale = not _pid_alive(int(match.group("pid")))
        elif match:  # another machine's or container's run: its pid means nothing here
            try:
                stale = os.lstat(path).st_mtime < time.time() - _FOREIGN_AGE
            except OSError:
                continue
        elif _LEGACY_TEMP.match(name) and legacy:
            try:
                stale = os.lstat(path).st_mtime < _START
            except OSError:
                continue
        else:
            continue
        if not stale:
            continue
        try:
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            else:
                os.remove(path)
            removed.append(name)
        except OSError:
            pass
    return removed


def _clean_once(folder):
    folder = os.path.abspath(folder)
    if folder not in _cleaned:
        _cleaned.add(folder)
        clean_stale_temps(folder)


def _makedirs(folder):
    try:
        os.makedirs(folder, exist_ok=True)
    except FileExistsError:
        raise OutputError(f"{folder}: exists and is not a folder") from None


def current_umask():
    """The process umask, read without changing it (/proc on Linux; else set and restored at once)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _honour_umask(tmp, folder=False):
    """mkstemp / mkdtemp make 0600 / 0700; the final file or folder gets what open() / mkdir would
    give: 0666 / 0777 less the user's umask (e.g. 0644 / 0755 under umask 022)."""
    os.chmod(tmp, (0o777 if folder else 0o666) & ~current_umask())


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside `path`; on success it is renamed to `path`, on error removed.

    Use it for writers that want a file name (paddle.save, safetensors, matplotlib, openpyxl)."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    _makedirs(folder)
    _clean_once(folder)
    if os.path.isdir(path):
        raise OutputError(f"{path}: is a folder, expected a file name")
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=".tmp", dir=folder)
    os.close(fd)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        _honour_umask(tmp)
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


def _merge_conflict(src, dst):
    """The first place where moving `src`'s files into `dst` would need to replace a folder by a file or
    a file by a folder (checked before anything moves), or None."""
    for name in sorted(os.listdir(src)):
        s, d = os.path.join(src, name), os.path.join(dst, name)
        s_dir = os.path.isdir(s) and not os.path.islink(s)
        if s_dir and os.path.isdir(d):
            found = _merge_conflict(s, d)
            if found:
                return found
        elif s_dir and os.path.lexists(d):
            return f"{d}: exists and is not a folder; move it away"
        elif not s_dir and os.path.isdir(d) and not os.path.islink(d):
            return f"{d}: is a folder where ppmerge writes a file; move it away"
    return None


def _merge_into(src, dst):
    """Move every file of folder `src` into folder `dst` (rename, file by file, subfolders merged);
    files of the same name in `dst` are replaced, nothing else in `dst` is touched."""
    conflict = _merge_conflict(src, dst)
    if conflict:
        raise OutputError(conflict)
    _move_files(src, dst)


def _move_files(src, dst):
    for name in sorted(os.listdir(src)):
        s, d = os.path.join(src, name), os.path.join(dst, name)
        if os.path.isdir(s) and not os.path.islink(s):
            if os.path.isdir(d):
                _move_files(s, d)
                continue
        os.replace(s, d)


@contextlib.contextmanager
def atomic_dir(path, kind=None):
    """Yield a temporary folder; on success its files go to `path`, on error it is removed.

    A new `path` appears whole (one rename). An existing `path` is never deleted: the new files are
    moved into it one by one, replacing files of the same name only. `kind` writes the
    `.ppmerge-output` marker (see `prepare_output_dir`)."""
    path = os.path.abspath(os.fspath(path))
    parent = os.path.dirname(path)
    _makedirs(parent)
    _clean_once(parent)
    if os.path.lexists(path) and not os.path.isdir(path):
        raise OutputError(f"{path}: exists and is not a folder")
    # Inside an existing folder (same file system as the files it replaces), else beside it.
    where = path if os.path.isdir(path) else parent
    if where == path:
        _clean_once(path)
    # named after the folder it becomes, or a staging area inside the existing folder
    tmp = tempfile.mkdtemp(prefix=_temp_prefix(path if where == parent else _STAGING), suffix=".tmp", dir=where)
    try:
        yield tmp
        written = _relative_files(tmp)
        previous = _marker_files(path) if kind and output_kind(path) == kind else {}
        if kind:
            with open(os.path.join(tmp, MARKER), "w", encoding="utf-8") as f:
                f.write(_marker_text(kind, {rel: _signature(os.path.join(tmp, rel)) for rel in written}))
        moved = False
        _honour_umask(tmp, folder=True)
        if where == parent:
            try:
                os.rename(tmp, path)
                moved = True
            except OSError as exc:  # it appeared meanwhile (a concurrent run): merge into it instead
                if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY) or not os.path.isdir(path):
                    raise
        if not moved:
            _merge_into(tmp, path)
            shutil.rmtree(tmp, ignore_errors=True)
            # Files the previous run of this kind wrote and this one did not (say, a sweep's plot): ours,
            # and now stale, so removed, unless changed since (size or mtime): then someone's, and kept.
            for rel in sorted(set(previous) - set(written)):
                target = os.path.join(path, rel)
                if not os.path.islink(target) and os.path.isfile(target) and _signature(target) == previous[rel]:
                    with contextlib.suppress(OSError):
                        os.remove(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _marker_text(kind, files=None):
    text = (f"{kind}\n# Written by ppmerge: this folder is a ppmerge {kind} output. ppmerge writes into it "
            f"again (replacing only its own files); delete this file to make ppmerge refuse the folder.\n")
    if files:
        text += ("# The files ppmerge wrote here last time (size, mtime_ns, path): its next run replaces them, "
                 "or removes those it no longer writes unless they changed since; nothing else is touched.\n")
        text += "".join(f"file: {size} {mtime} {rel}\n" for rel, (size, mtime) in files.items())
    return text


def _signature(path):
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns


def _relative_files(folder):
    """Every file under `folder`, as sorted relative paths (the marker excluded)."""
    out = []
    for root, _, files in os.walk(folder):
        for name in files:
            rel = os.path.relpath(os.path.join(root, name), folder)
            if rel != MARKER:
                out.append(rel)
    return sorted(out)


def _marker_files(path):
    """{relative path: (size, mtime_ns)} of the files a marked folder's last run wrote (its marker);
    only well-formed entries for plain relative paths inside the folder."""
    try:
        with open(os.path.join(path, MARKER), encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError):
        return {}
    files = {}
    for line in lines:
        parts = line.split(" ", 3)
        if len(parts) != 4 or parts[0] != "file:" or not (parts[1].isdigit() and parts[2].isdigit()):
            continue
        rel = os.path.normpath(parts[3])
        if not os.path.isabs(rel) and not rel.startswith("..") and rel != MARKER:
            files[rel] = (int(parts[1]), int(parts[2]))
    return files


def output_kind(path):
    """The kind named in `path`'s marker, or None (not a marked ppmerge output)."""
    try:
        with open(os.path.join(path, MARKER), encoding="utf-8") as f:
            return f.readline().strip() or None
    except (OSError, UnicodeDecodeError):
        return None


def _existing_ancestor(path):
    path = os.path.abspath(path)
    while not os.path.exists(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return path


def _check_writable(path, what):
    """`path` (a folder that exists or is to be made) can be created and written into."""
    anchor = _existing_ancestor(path)
    if not os.path.isdir(anchor):
        raise OutputError(f"{anchor}: is a file, so {what} {path} cannot be made")
    if not os.access(anchor, os.W_OK | os.X_OK):
        reason = "read-only file system" if _read_only_fs(anchor) else "permission denied"
        raise OutputError(f"{anchor}: not writable ({reason}); {what} {path} cannot be written")
    if _read_only_fs(anchor):
        raise OutputError(f"{anchor}: read-only file system; {what} {path} cannot be written")
    return anchor


def _read_only_fs(path):
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def _check_space(anchor, need_bytes, what, path):
    if need_bytes and need_bytes > 0:
        free = shutil.disk_usage(anchor).free
        if free < need_bytes:
            raise OutputError(f"{anchor}: not enough free space for {what} {path}: "
                              f"{need_bytes / 2**20:.1f} MiB needed, {free / 2**20:.1f} MiB free")


def prepare_output_dir(path, kind, overwrite=False, need_bytes=0, what="output folder", flag="--overwrite"):
    """Check, before any long work, that `path` may receive a ppmerge output of `kind`; returns its
    absolute path. Nothing is created here (a failed run leaves nothing behind).

    Allowed: a missing or empty folder; a folder marked as an earlier ppmerge output of the same
    `kind`; anything else only with `overwrite` (then only ppmerge's own files in it are replaced).
    Also checked: not a file, writable, `need_bytes` of free space. Stale temporaries are removed."""
    path = os.path.abspath(os.fspath(path))
    if os.path.lexists(path) and not os.path.isdir(path):
        raise OutputError(f"{path}: exists and is not a folder; {what} must be a folder")
    anchor = _check_writable(path, what)
    if os.path.isdir(path):
        clean_stale_temps(path)
        entries = [n for n in os.listdir(path) if n != MARKER]
        found = output_kind(path)
        if entries and not overwrite and found != kind:
            if found:
                why = f"it is a ppmerge {found} output, not {_article(kind)} {kind} output"
            else:
                shown = ", ".join(sorted(entries)[:3]) + (", ..." if len(entries) > 3 else "")
                why = f"it holds files ppmerge did not write ({shown})"
            hint = f"choose an empty or new folder, or pass {flag} to write into it (only ppmerge's files are replaced)" \
                if flag else "choose an empty or new folder"
            raise OutputError(f"{path}: {what} is not empty and {why}; {hint}")
    _check_space(anchor, need_bytes, what, path)
    return path


def _article(word):
    return "an" if word[:1].lower() in "aeio" else "a"


def prepare_output_file(path, overwrite=False, need_bytes=0, what="output file", flag="--overwrite"):
    """Check, before any long work, that the file `path` may be written: an existing file only with
    `overwrite`, not a folder, its folder writable, `need_bytes` free. Returns the absolute path."""
    path = os.path.abspath(os.fspath(path))
    if os.path.isdir(path):
        raise OutputError(f"{path}: is a folder; {what} must be a file name")
    if os.path.lexists(path) and not overwrite:
        raise OutputError(f"{path}: {what} already exists; " + (f"pass {flag} to replace it, or " if flag else "")
                          + "choose another name")
    anchor = _check_writable(os.path.dirname(path), "the folder of")
    _check_space(anchor, need_bytes, what, path)
    return path


def describe_os_error(exc):
    """`<path>: <what happened>` for an OSError (what tools print after `error: `)."""
    what = exc.strerror or str(exc) or type(exc).__name__
    if exc.errno == errno.ENOSPC:
        what = "no space left on device (free some space or write elsewhere)"
    path = exc.filename
    if exc.filename2:
        path = f"{exc.filename} -> {exc.filename2}"
    path = _public_name(path)
    return f"{path}: {what}" if path else what


def _public_name(path):
    """A temporary's name shown as the file it stands for (users never saw the temporary name)."""
    if not path:
        return path
    parts = os.fspath(path).split(os.sep)
    for i, name in enumerate(parts):
        match = re.match(r"^\.(.+)\.ppm\d+-(?:[0-9a-f]{6}-)?[A-Za-z0-9_]+\.tmp(\.old)?$", name)
        if match:
            parts[i] = match.group(1)
    return os.sep.join(p for p in parts if p != _STAGING)


def mark_output_dir(path, kind):
    """Create `path` (if needed) and mark it as a ppmerge output of `kind` (for folders filled as a run
    goes, such as training's output_dir; check it with `prepare_output_dir` first)."""
    path = os.path.abspath(os.fspath(path))
    _makedirs(path)
    if output_kind(path) != kind:
        write_text(os.path.join(path, MARKER), _marker_text(kind))
    return path


def is_ppmerge_output(folder):
    """Is `folder` (or the folder holding it: a checkpoint inside a training output) a marked ppmerge output?"""
    folder = os.path.abspath(os.fspath(folder))
    return output_kind(folder) is not None or output_kind(os.path.dirname(folder)) is not None
