"""Write the generated GLUE suite: python tools/make_glue_data.py --out dataset --layout both"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ppmerge.cli import run_tool  # noqa: E402
from ppmerge.data.synthetic import main  # noqa: E402

if __name__ == "__main__":
    run_tool(main)
