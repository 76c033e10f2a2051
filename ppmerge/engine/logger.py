"""Training metrics for dashboards: `Engine.logger: visualdl` (VisualDL ships with paddlenlp).

The engine calls `train(step, loss, lr)` after every optimizer step, `eval(step, metrics)` after every
evaluation and `close()` at the end of fit. `VisualDLLogger` writes scalars to
`<output_dir>/vdl/vdlrecords.<time>.log` (VisualDL's own format; `visualdl --logdir <output_dir>/vdl`
shows them): tags `train/loss`, `train/lr`, `eval/<metric>` (every numeric metric, e.g. `eval/accuracy`,
`eval/loss`), the step being the global optimizer step. A resumed run adds a new records file to the
same folder. The records file is appended to as training goes (it is a log, so not written atomically).
`none` (the default) logs nothing. Only rank 0 logs."""
import atexit
import math
import os

from ppmerge.errors import ConfigError

LOGGERS = ("none", "visualdl")


class NullLogger:
    def train(self, step, loss, lr):
        pass

    def eval(self, step, metrics):
        pass

    def close(self):
        pass


class VisualDLLogger(NullLogger):
    def __init__(self, logdir):
        from visualdl import LogWriter

        os.makedirs(logdir, exist_ok=True)
        self.logdir = logdir
        self.writer = LogWriter(logdir=logdir)
        self.file_name = self.writer.file_name
        # fit closes it; if training stops on an error (a NaN loss, Ctrl-C) the records so far are still
        # flushed when the interpreter exits (VisualDL's writer thread is a daemon and would drop them)
        atexit.register(self.close)

    def _scalar(self, tag, value, step):
        value = float(value)
        if math.isfinite(value):  # VisualDL's records hold finite floats; a NaN loss is the engine's to report
            self.writer.add_scalar(tag=tag, value=value, step=int(step))

    def train(self, step, loss, lr):
        self._scalar("train/loss", loss, step)
        self._scalar("train/lr", lr, step)

    def eval(self, step, metrics):
        for key, value in metrics.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self._scalar(f"eval/{key}", value, step)

    def close(self):
        if self.writer is not None:
            self.writer.close()
            self.writer = None
            atexit.unregister(self.close)


def build_logger(name, output_dir, enabled=True):
    """The logger for `Engine.logger` (`none` | `visualdl`); a NullLogger off rank 0 (`enabled` False)."""
    name = (name or "none").strip().lower()
    if name not in LOGGERS:
        raise ConfigError(f"Engine.logger: {name!r} is not supported; expected one of {', '.join(LOGGERS)}")
    if name == "none" or not enabled:
        return NullLogger()
    return VisualDLLogger(os.path.join(output_dir, "vdl"))


def read_scalars(logdir):
    """{tag: [(step, value), ...]} of every VisualDL records file in `logdir`, read with VisualDL's own
    `LogReader` (files in name order, i.e. in time order)."""
    from visualdl import LogReader

    out = {}
    for name in sorted(os.listdir(logdir)):
        if not name.startswith("vdlrecords."):
            continue
        reader = LogReader(file_path=os.path.join(logdir, name))
        for tag in reader.get_tags().get("scalar", []):
            out.setdefault(tag, []).extend((int(r.id), float(r.value)) for r in reader.get_data("scalar", tag))
    return out
