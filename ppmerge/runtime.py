"""Paddle start-up in one place: quiet imports, every CPU core, and the device the user asked for.

`import paddle` costs ~1.6 s and paddlenlp ~5 s, so nothing imports them at module level outside the
modules that compute; tools call `import_paddle()` after argument parsing, keeping --help instant."""
import contextlib
import io
import logging
import os
import warnings

from ppmerge.errors import UserError

_DEVICE_KINDS = ("cpu", "gpu", "xpu", "npu")


@contextlib.contextmanager
def _quiet():
    """Keep import-time noise ("No ccache found", setuptools/distutils notes) off the screen."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            yield


def import_paddle(threads=None):
    """Import paddle quietly and let CPU kernels use every core (paddle defaults to one thread)."""
    os.environ.setdefault("GLOG_minloglevel", "2")
    os.environ.setdefault("FLAGS_call_stack_level", "0")
    with _quiet():
        import paddle
    n = threads or len(os.sched_getaffinity(0))
    try:
        paddle.set_num_threads(n)
    except Exception:  # older paddle: the core setter
        paddle.base.core.set_num_threads(n)
    return paddle


def import_paddlenlp_transformers():
    """Import paddlenlp.transformers without its import-time warnings and log noise."""
    import_paddle()
    os.environ.setdefault("PPNLP_HOME", os.path.join(os.path.expanduser("~"), ".paddlenlp"))
    with _quiet():
        import paddlenlp.transformers as transformers
    # "[ERROR] Using bos_token, but it is not set yet." and similar: harmless, keep them quiet.
    for name in ("paddlenlp", "PaddleNLP"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    try:
        from paddlenlp.utils.log import logger as nlp_logger

        nlp_logger.set_level("CRITICAL")
    except Exception:
        pass
    return transformers


def parse_device(device):
    """Check a device string: cpu, gpu, gpu:N, xpu, xpu:N, npu, npu:N. Returns it normalised."""
    text = str(device).strip().lower()
    kind, _, index = text.partition(":")
    if kind not in _DEVICE_KINDS or (index and not index.isdigit()):
        raise UserError(f"device {device!r} is not valid: expected cpu, gpu, gpu:N, xpu, xpu:N, npu or npu:N")
    return text


def set_device(device="cpu"):
    """Select the device; a device paddle was not built for is a UserError, not a traceback."""
    device = parse_device(device)
    paddle = import_paddle()
    kind = device.partition(":")[0]
    compiled = {
        "cpu": True,
        "gpu": paddle.device.is_compiled_with_cuda(),
        "xpu": paddle.device.is_compiled_with_xpu(),
        "npu": "npu" in paddle.device.get_all_custom_device_type(),
    }[kind]
    if not compiled:
        raise UserError(f"device {device!r} is not available: this paddle build has no {kind.upper()} support "
                        f"(install the matching paddlepaddle package, see README)")
    try:
        paddle.set_device(device)
    except (ValueError, RuntimeError) as exc:
        raise UserError(f"device {device!r} could not be selected: {str(exc).splitlines()[0]}") from None
    return device
