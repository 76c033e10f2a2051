"""Progress of long merges and evaluations: a tqdm bar on a terminal, plain lines in a log file.

`progress_bar(...)` takes tqdm's arguments (iterable, total, desc, unit, file, leave, disable,
initial, dynamic_ncols, ...) and returns a tqdm bar when its file (stderr by default) is a terminal.
Otherwise (nohup, Slurm, a pipe) a bar would print nothing useful until the end, so it returns a
`PlainProgress` that writes one line every `PPMERGE_PROGRESS_INTERVAL` seconds (default 30; 0 = every
update) and one when it finishes:

    merge simple_average: 3/9 model (33%), 0:01:12 elapsed, eta 0:02:24
    merge simple_average: 9/9 model (100%), done in 0:03:36

`PPMERGE_PROGRESS=bar|plain|off` forces one behaviour. No paddle here."""
import datetime
import os
import sys
import time

DEFAULT_INTERVAL = 30.0


def _interval():
    try:
        return max(0.0, float(os.environ.get("PPMERGE_PROGRESS_INTERVAL", DEFAULT_INTERVAL)))
    except ValueError:
        return DEFAULT_INTERVAL


def _clock(seconds):
    return str(datetime.timedelta(seconds=round(max(seconds, 0.0))))


class PlainProgress:
    """The part of tqdm's interface the tools use (update, close, iteration, context manager,
    set_description, write), printing plain periodic lines instead of redrawing a bar."""

    def __init__(self, iterable=None, total=None, desc="", unit="it", file=None, initial=0, interval=None, **_):
        self.iterable = iterable
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.total, self.desc, self.unit = total, desc or "", unit
        self.file = file if file is not None else sys.stderr
        self.n = initial
        self.interval = _interval() if interval is None else interval
        self.start = self.last_print = time.monotonic()
        self.closed = False
        self.postfix = ""

    def _line(self, final=False):
        elapsed = time.monotonic() - self.start
        count = f"{self.n}/{self.total}" if self.total else f"{self.n}"
        percent = f" ({100.0 * self.n / self.total:.0f}%)" if self.total else ""
        if final:
            timing = f"done in {_clock(elapsed)}"
        else:
            timing = f"{_clock(elapsed)} elapsed"
            if self.total and self.n:
                timing += f", eta {_clock(elapsed * (self.total - self.n) / self.n)}"
        prefix = f"{self.desc}: " if self.desc else ""
        postfix = f" [{self.postfix}]" if self.postfix and not final else ""
        return f"{prefix}{count} {self.unit}{percent}{postfix}, {timing}"

    def _print(self, line):
        print(line, file=self.file, flush=True)

    def update(self, n=1):
        self.n += n
        now = time.monotonic()
        if now - self.last_print >= self.interval and not (self.total and self.n >= self.total):
            self.last_print = now
            self._print(self._line())

    def close(self):
        if not self.closed:
            self.closed = True
            if self.n:
                self._print(self._line(final=True))

    def set_description(self, desc=None, refresh=True):
        self.desc = desc or ""

    def set_postfix(self, *args, **kwargs):
        pass

    def set_postfix_str(self, text="", refresh=True):
        """Shown after the counts in the next line (tqdm shows it after the bar)."""
        self.postfix = str(text)

    def refresh(self):
        pass

    def write(self, text, file=None):
        print(text, file=file or self.file, flush=True)

    def __iter__(self):
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def __len__(self):
        return self.total or 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _is_terminal(file):
    try:
        return file.isatty()
    except (AttributeError, ValueError):
        return False


def progress_bar(iterable=None, *args, **kwargs):
    """tqdm on a terminal, `PlainProgress` otherwise (see the module doc); tqdm's arguments."""
    from tqdm import tqdm

    mode = os.environ.get("PPMERGE_PROGRESS", "").strip().lower()
    file = kwargs.get("file") or sys.stderr
    if kwargs.get("disable") or mode == "off":
        return tqdm(iterable, *args, **dict(kwargs, disable=True))
    if mode == "bar" or (mode != "plain" and _is_terminal(file)):
        return tqdm(iterable, *args, **kwargs)
    plain_args = {k: v for k, v in kwargs.items() if k in ("total", "desc", "unit", "file", "initial")}
    return PlainProgress(iterable, **plain_args)
