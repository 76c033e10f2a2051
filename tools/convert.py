"""Convert a GPT checkpoint to ppmerge's layout (paddlenlp GPTForSequenceClassification keys, separate
q/k/v, float32) as .pdparams or .safetensors.

Sources:
  fleetx     PaddleFleetX GPT (e.g. PaddleFleetX_GPT_345M_220826/model.pdparams): fused, head-interleaved
             qkv_proj split into q/k/v (needs --num-heads: 16 for GPT-345M), fp16 cast to fp32,
             `gpt.` prefix kept, tied LM head dropped. --input: the FleetX prefix (.../model), the
             file, or its folder.
  paddlenlp  a paddlenlp GPT checkpoint (model_state.pdparams, or its folder with config.json).
  hf         a local Hugging Face GPT-2 folder (config.json + model.safetensors) of GPT2Model,
             GPT2LMHeadModel or GPT2ForSequenceClassification; prints the Model config overrides
             to use with it. pytorch_model.bin needs PyTorch and is refused.

Example:
  python tools/convert.py --from fleetx --to pdparams --num-heads 16 \\
      --input PaddleFleetX_GPT_345M_220826/model --output pretrained/gpt345m.pdparams
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ppmerge.cli import run_tool  # noqa: E402


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--from", dest="source", required=True, choices=["fleetx", "paddlenlp", "hf"],
                        help="checkpoint layout of --input")
    parser.add_argument("--to", dest="target", required=True, choices=["pdparams", "safetensors"],
                        help="output format")
    parser.add_argument("--input", required=True, help="checkpoint file, folder or FleetX prefix")
    parser.add_argument("--output", required=True, help="output file (the extension is added if missing)")
    parser.add_argument("--num-heads", type=int, default=None,
                        help="attention heads, to split a fused qkv_proj (GPT-345M: 16)")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    from ppmerge.models.convert import convert_checkpoint

    path, count, model_fields = convert_checkpoint(args.source, args.target, args.input, args.output, args.num_heads)
    print(f"wrote {count} tensors to {path}")
    if model_fields:
        overrides = " ".join(f"-o Model.{key}={value}" for key, value in model_fields.items())
        print(f"use it with: {overrides} -o Model.pretrained={path}")
    return 0


if __name__ == "__main__":
    run_tool(main)
