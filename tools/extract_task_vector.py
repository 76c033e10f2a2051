"""Extract a task vector: tau = theta_finetuned - theta_base, key by key (as CABS's scripts do).

    python tools/extract_task_vector.py --finetuned_model_path output/finetune/CoLA/model.pdparams \
        --base_model_path ckpt/gpt-345m/model.pdparams --save_path output/task_vectors/CoLA.pdparams

Keys of the fine-tuned model that the base lacks (its classification head, typically) are kept as
they are, and the tool lists them. The format of --save_path follows its extension
(.pdparams or .safetensors).
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ppmerge.cli import run_tool  # noqa: E402
from ppmerge.errors import CheckpointError  # noqa: E402


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.strip().split("\n")[0])
    parser.add_argument("--finetuned_model_path", required=True, help="the fine-tuned model file")
    parser.add_argument("--base_model_path", required=True, help="the pretrained base model file")
    parser.add_argument("--save_path", required=True, help="where to write the task vector (.pdparams or .safetensors)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --save_path file")
    return parser.parse_args(argv)


def check_shapes(finetuned, base, finetuned_path="the fine-tuned model", base_path="the base"):
    if not any(key in base for key in finetuned):  # e.g. a T5 model against a GPT base: no task vector at all
        raise CheckpointError(f"{finetuned_path} and {base_path} have no key in common: not a fine-tuned model "
                              f"and its base (first keys: {next(iter(finetuned), None)!r} vs {next(iter(base), None)!r})")
    for key, value in finetuned.items():
        if key in base and tuple(base[key].shape) != tuple(value.shape):
            raise CheckpointError(f"key {key!r}: fine-tuned shape {list(value.shape)} vs base {list(base[key].shape)}")


def main(argv=None):
    args = parse_args(argv)
    from ppmerge.fileio import prepare_output_file
    from ppmerge.merge.task_vector import extract_task_vector
    from ppmerge.models.checkpoint import check_finite, checkpoint_format, load_numpy_state_dict, save_state_dict

    for flag, path in (("--finetuned_model_path", args.finetuned_model_path), ("--base_model_path", args.base_model_path)):
        if not os.path.isfile(path):
            raise CheckpointError(f"{flag}: model file {path!r} does not exist")
    checkpoint_format(args.save_path)  # a bad extension fails now, not after the work
    prepare_output_file(args.save_path, overwrite=args.overwrite, what="--save_path",
                        need_bytes=os.path.getsize(args.finetuned_model_path))
    finetuned = load_numpy_state_dict(args.finetuned_model_path)
    check_finite(finetuned, args.finetuned_model_path)
    base = load_numpy_state_dict(args.base_model_path)
    check_finite(base, args.base_model_path)
    check_shapes(finetuned, base, args.finetuned_model_path, args.base_model_path)
    tau, kept = extract_task_vector(finetuned, base)
    save_state_dict(tau, args.save_path)
    if kept:
        print(f"kept as they are (not in the base model): {', '.join(kept)}")
    print(f"task vector of {len(tau) - len(kept)} tensors written to {args.save_path}")
    return 0


if __name__ == "__main__":
    run_tool(main)
