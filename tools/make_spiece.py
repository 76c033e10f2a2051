"""Train a T5 sentencepiece model (spiece.model: unigram, T5's ids pad 0 / eos 1 / unk 2) on a GLUE
suite's texts rendered through the T5 prompts, plus the answer words; nothing downloads.

The corpus is every train and dev example of each task folder present under --data (or --tasks),
exactly what the T5 demo learns its vocabulary from (ppmerge.data.t5_tokenizer.suite_texts). The
model has exactly --vocab-size pieces (more than the corpus allows: an error saying how many it does);
that number is what `Model.vocab_size` / `tools/init_model.py -o vocab_size=` must be.

Examples:
  python tools/make_glue_data.py --out dataset
  python tools/make_spiece.py --data dataset --out t5/spiece.model --vocab-size 1000
  python tools/make_spiece.py --data dataset --tasks SST2 RTE --out spiece.model --overwrite
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ppmerge.cli import run_tool  # noqa: E402
from ppmerge.errors import UserError  # noqa: E402


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="a GLUE suite folder (tools/make_glue_data.py --out)")
    parser.add_argument("--layout", default="glue", help="folder layout of --data: glue (default) or fleetx")
    parser.add_argument("--tasks", nargs="+", default=None, help="tasks to read (default: every one present)")
    parser.add_argument("--out", required=True, help="the new sentencepiece model file (spiece.model)")
    parser.add_argument("--vocab-size", type=int, default=1000, help="number of pieces, exactly (default 1000)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.vocab_size < 8:
        raise UserError(f"--vocab-size: expected at least 8 pieces, got {args.vocab_size}")
    if not os.path.isdir(args.data):
        raise UserError(f"--data {args.data}: not a folder (expected a GLUE suite, e.g. tools/make_glue_data.py --out)")
    from ppmerge.data import TASK_NAMES
    from ppmerge.data.synthetic import task_root
    from ppmerge.data.tasks import get_task

    if args.tasks:
        tasks = [get_task(t).name for t in args.tasks]  # unknown task: UserError naming the choices
        missing = [t for t in tasks if not os.path.isdir(task_root(t, args.data, args.layout))]
        if missing:
            raise UserError(f"--tasks: no folder for {', '.join(missing)} under --data {args.data} "
                            f"(expected {task_root(missing[0], args.data, args.layout)})")
    else:
        tasks = [t for t in TASK_NAMES if os.path.isdir(task_root(t, args.data, args.layout))]
        if not tasks:
            raise UserError(f"--data {args.data}: no GLUE task folder found ({args.layout} layout, e.g. "
                            f"{task_root('SST2', args.data, args.layout)})")
    from ppmerge.fileio import prepare_output_file

    # an existing file only with --overwrite; not a folder; its folder writable (ppmerge.fileio's rule)
    prepare_output_file(args.out, overwrite=args.overwrite, what="--out")
    from ppmerge.data.t5_tokenizer import load_t5_tokenizer, suite_texts, train_sentencepiece

    texts = suite_texts(args.data, layout=args.layout, tasks=tasks)
    train_sentencepiece(texts, args.out, vocab_size=args.vocab_size, exact=True)  # exactly --vocab-size pieces
    pieces = load_t5_tokenizer(args.out).vocab_size
    print(f"wrote {args.out}: {pieces} pieces (pad 0, eos 1, unk 2) from {len(texts)} texts of "
          f"{', '.join(tasks)}; use Model.vocab_size={pieces}")
    return 0


if __name__ == "__main__":
    run_tool(main)
