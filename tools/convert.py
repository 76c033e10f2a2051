"""Convert a GPT checkpoint between ppmerge's layout (paddlenlp GPTForSequenceClassification keys, separate
q/k/v) and FleetX / paddlenlp / Hugging Face GPT-2, in float32, float16 or bfloat16.

Sources (--from):
  ppmerge    our own .pdparams / .safetensors (fine-tuned, base, or a merged model with heads.<TASK>.*).
  fleetx     PaddleFleetX GPT (e.g. PaddleFleetX_GPT_345M_220826/model.pdparams): fused, head-interleaved
             qkv_proj split into q/k/v (needs --num-heads: 16 for GPT-345M), fp16 cast to fp32,
             `gpt.` prefix kept, tied LM head dropped. --input: the FleetX prefix (.../model), the
             file, or its folder.
  paddlenlp  a paddlenlp GPT checkpoint (model_state.pdparams, or its folder with config.json).
  hf         a local Hugging Face GPT-2 folder (config.json + model.safetensors) of GPT2Model,
             GPT2LMHeadModel or GPT2ForSequenceClassification; prints the Model config overrides
             to use with it. pytorch_model.bin needs PyTorch and is refused.
  hf-t5      a local Hugging Face T5 / Flan-T5 folder (config.json + model.safetensors), e.g.
             google/flan-t5-base or FusionBench's tanganke/flan-t5-base_glue-<task>; → our T5 layout
             (paddlenlp T5ForConditionalGeneration keys). --to pdparams | safetensors.
  peft-lora  a local PEFT LoRA folder (adapter_config.json + adapter_model.safetensors), e.g.
             tanganke/flan-t5-base_glue-<task>_lora-16. With --base (the model it was trained on: HF
             T5 / GPT-2 folder or our checkpoint): merge-and-unload into a full model file. Without
             --base: the adapter itself, in our key layout, as the folder --output
             (adapter_config.json + adapter_model.<--to>).

Targets (--to):
  pdparams, safetensors  ppmerge's layout, one file (a merged model stays one file unless --task).
  hf         a Hugging Face GPT-2 folder: config.json + model.safetensors (GPT2ForSequenceClassification
             with a head: num_labels, pad_token_id 50256; GPT2Model without). --output: a new folder.
  paddlenlp  a save_pretrained folder: config.json + model_state.pdparams, read by paddlenlp's
             GPTForSequenceClassification.from_pretrained(folder). --output: a new folder.
  fleetx     FleetX's model.pdparams: fused head-interleaved qkv_proj (the inverse of --from fleetx).
  A merged model becomes one folder per task (OUT/<TASK>/...) for hf / paddlenlp / fleetx; --task
  picks one task. The head count comes from --num-heads, the input's config.json, or the preset
  with the same hidden size (printed).

Examples:
  python tools/convert.py --from fleetx --to pdparams --num-heads 16 \\
      --input PaddleFleetX_GPT_345M_220826/model --output pretrained/gpt345m.pdparams
  python tools/convert.py --from ppmerge --to hf --input output/merge/merged_model.pdparams --output hf_merged
  python tools/convert.py --from ppmerge --to safetensors --dtype bfloat16 --input model.pdparams --output model_bf16
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ppmerge.cli import run_tool  # noqa: E402
from ppmerge.errors import UserError  # noqa: E402

# Kept in step with ppmerge.models.convert.SOURCES / TARGETS (a test checks); listed here so --help is instant.
SOURCE_NAMES = ["ppmerge", "fleetx", "paddlenlp", "hf", "hf-t5", "peft-lora"]
TARGET_NAMES = ["pdparams", "safetensors", "hf", "paddlenlp", "fleetx"]


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--from", dest="source", required=True, choices=SOURCE_NAMES,
                        help="checkpoint layout of --input")
    parser.add_argument("--to", dest="target", required=True, choices=TARGET_NAMES, help="output format")
    parser.add_argument("--input", required=True, help="checkpoint file, folder or FleetX prefix")
    parser.add_argument("--output", required=True,
                        help="output file (pdparams/safetensors/fleetx: the extension is added if missing) "
                             "or new folder (hf/paddlenlp)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output file")
    parser.add_argument("--num-heads", type=int, default=None,
                        help="attention heads, to split or fuse qkv_proj and for exported configs (GPT-345M: 16)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"],
                        help="storage dtype of the written weights (bfloat16 as paddle's uint16 bits in .pdparams)")
    parser.add_argument("--task", default=None, help="a merged model: export only this task's head")
    parser.add_argument("--base", default=None,
                        help="--from peft-lora: the base model to merge the adapter into (merge-and-unload)")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.num_heads is not None and args.num_heads < 1:  # 0 is not "unset" (it used to fall back to the preset)
        raise UserError(f"--num-heads: expected a positive number of attention heads, got {args.num_heads}")
    from ppmerge.fileio import prepare_output_file
    from ppmerge.models.convert import convert_checkpoint, output_path

    # before reading anything: an existing file is replaced only with --overwrite; folder writable
    if args.source == "peft-lora" and args.base is None:  # the adapter: a folder
        from ppmerge.fileio import prepare_output_dir

        prepare_output_dir(args.output, "lora-adapter", overwrite=args.overwrite, what="--output")
    else:
        prepare_output_file(output_path(args.output, args.target), overwrite=args.overwrite, what="--output")

    path, count, model_fields, notes = convert_checkpoint(args.source, args.target, args.input, args.output,
                                                          args.num_heads, dtype=args.dtype, task=args.task,
                                                          return_notes=True, base=args.base)
    for note in notes:
        print(f"note: {note}")
    print(f"wrote {count} tensors ({args.dtype}) to {path}")
    if model_fields and args.target in ("pdparams", "safetensors"):
        overrides = " ".join(f"-o Model.{key}={value}" for key, value in model_fields.items())
        print(f"use it with: {overrides} -o Model.pretrained={path}")
    return 0


if __name__ == "__main__":
    run_tool(main)
