"""What every tool shares: user errors become one `error: ...` line on stderr and exit code 2."""
import sys

from ppmerge.errors import UserError


def run_tool(main, argv=None):
    """Call main(argv); a UserError prints one line and exits 2, Ctrl-C exits 130 quietly."""
    try:
        code = main(argv)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)
