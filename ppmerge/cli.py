"""What every tool shares: user errors become one `error: ...` line on stderr and exit code 2.

Caught here, for every tool: UserError (the message as is), OSError (`<path>: <what happened>`: disk
full, read-only file system, a file where a folder is expected, ...), RecursionError (an input nested
too deeply), MemoryError (sizes that do not fit) and Ctrl-C (exit 130). Files are written atomically (ppmerge.fileio), so none of these
leaves a half-written file behind."""
import sys

from ppmerge.errors import UserError


def error_line(exc):
    """The one line shown for an exception a tool turns into exit code 2, or None (a bug: traceback)."""
    if isinstance(exc, UserError):
        return str(exc)
    if isinstance(exc, OSError):
        from ppmerge.fileio import describe_os_error

        return describe_os_error(exc)
    if isinstance(exc, RecursionError):
        return "input nested too deeply (a config or checkpoint with thousands of nested levels)"
    if isinstance(exc, MemoryError):
        return ("out of memory" + (f" ({exc})" if str(exc) else "") + ": the model or data does not fit; "
                "check the sizes in the config (Model.*, batch_size, max_length)")
    return None


def run_tool(main, argv=None):
    """Call main(argv); a user error or an OS error prints one line and exits 2, Ctrl-C exits 130."""
    try:
        code = main(argv)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)
    except (UserError, OSError, RecursionError, MemoryError) as exc:
        line = error_line(exc)
        print(f"error: {' '.join(line.split())}", file=sys.stderr)
        sys.exit(2)
    sys.exit(code or 0)
