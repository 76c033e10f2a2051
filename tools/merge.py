"""Merge fine-tuned models into one multi-task model, evaluate it and write the reports.

    python tools/merge.py -c configs/merge/gpt_glue_ties_merging.yaml -o Merge.scaling_factor=0.6 --device gpu
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ppmerge.cli import run_tool  # noqa: E402


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.strip().split("\n")[0])
    parser.add_argument("-c", "--config", required=True, help="merge config YAML (configs/merge/...)")
    parser.add_argument("-o", "--override", action="append", default=[], metavar="A.B=v",
                        help="override a config key (repeatable), e.g. -o Merge.scaling_factor=0.3")
    parser.add_argument("--device", default=None, help="cpu, gpu, gpu:N, xpu or npu (overrides Global.device)")
    parser.add_argument("--overwrite", action="store_true",
                        help="write into a non-empty Output.dir that is not an earlier merge output "
                             "(only the merge's own files are replaced; nothing else is deleted)")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    from ppmerge.config import load_config
    from ppmerge.config.merge_schema import MERGE_SCHEMA

    overrides = list(args.override) + ([f"Global.device={args.device}"] if args.device else [])
    cfg = load_config(args.config, overrides, schema=MERGE_SCHEMA)
    from ppmerge.runtime import parse_device

    parse_device(cfg["Global"]["device"])  # a typo in the device fails before any import

    from ppmerge.evaluation.reports import markdown_table
    from ppmerge.merge.runner import run_merge

    result = run_merge(cfg, progress=sys.stderr.isatty(), overwrite=args.overwrite)  # bars only on a terminal, not in logs
    print(f"model pool (order): {result['pool_order']}")
    print(markdown_table(result), end="")
    if result["best"] is not None:
        print(f"best sweep point: {result['best']}")
    print(f"reports written to {result['output_dir']}")
    return 0


if __name__ == "__main__":
    run_tool(main)
