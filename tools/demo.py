"""`make demo`: generated GLUE suite, a tiny GPT base, fine-tune it on each task with tools/train.py,
merge with every method through tools/merge.py, print the results table (see ppmerge/demo.py)."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ppmerge.cli import run_tool  # noqa: E402

if __name__ == "__main__":
    from ppmerge.demo import main

    run_tool(main)
