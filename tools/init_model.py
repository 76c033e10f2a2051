"""Write a freshly initialised GPT or T5 (paddle's seeded initialisation) from an architecture preset.

Without --num-classes the file holds the backbone only, like a pretrained base (ModelPool.base,
Model.pretrained); with it, a `score` head too (GPT only). A T5 preset (t5-tiny, flan-t5-*) writes the
whole text-to-text model; set -o vocab_size=N to the size of your sentencepiece model
(tools/make_spiece.py prints it).

Examples:
  python tools/init_model.py --preset gpt-tiny --seed 0 --output base.pdparams
  python tools/init_model.py --preset gpt2-medium-en --seed 1 --dtype float16 --output medium_init.safetensors
  python tools/init_model.py --preset gpt-tiny -o num_layers=4 -o hidden_size=128 --output deeper.pdparams
  python tools/init_model.py --preset t5-tiny -o vocab_size=1000 --seed 0 --output t5_base.pdparams
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ppmerge.cli import run_tool  # noqa: E402
from ppmerge.errors import UserError  # noqa: E402


def parse_args(argv):
    from ppmerge.models.presets import PRESET_FAMILIES

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="gpt-tiny", help=f"architecture: {' | '.join(PRESET_FAMILIES)} (or GPT)")
    parser.add_argument("--seed", type=int, default=0, help="paddle.seed before the model is built")
    parser.add_argument("--output", required=True, help="a new .pdparams or .safetensors file")
    parser.add_argument("--num-classes", type=int, default=None, help="also write a score head with this many outputs")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("-o", dest="fields", action="append", default=[], metavar="FIELD=VALUE",
                        help="override an architecture field of the preset (hidden_size, num_layers, vocab_size, ...)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output file")
    return parser.parse_args(argv)


def model_section(preset, fields):
    """The Model section for --preset and -o FIELD=VALUE overrides (values parsed as YAML scalars)."""
    import yaml

    from ppmerge.config.train_schema import TRAIN_SCHEMA
    from ppmerge.models.presets import ARCH_FIELDS, preset_family, resolve_arch
    from ppmerge.models.t5 import SCHEMA_NAMES, T5_FIELDS, resolve_t5_arch

    t5 = preset_family(preset) == "t5"  # unknown preset: ConfigError naming every preset
    allowed = tuple(dict.fromkeys(T5_FIELDS + tuple(SCHEMA_NAMES.values()))) if t5 else ARCH_FIELDS
    model_fields = TRAIN_SCHEMA.fields["Model"].fields
    section = {"name": preset}
    for item in fields:
        key, sep, value = item.partition("=")
        key = key.strip().removeprefix("Model.")
        if not sep or key not in allowed:
            raise UserError(f"-o {item}: expected FIELD=VALUE with FIELD one of {', '.join(allowed)}")
        value = yaml.safe_load(value)
        # the training schema's range for the field (hidden_size >= 1, dropout in [0, 1], ...)
        section[key] = model_fields[key].validate(value, key, f"-o {item}") if key in model_fields else value
    (resolve_t5_arch if t5 else resolve_arch)(section)  # bad sizes: ConfigError now, before paddle loads
    return section


def main(argv=None):
    args = parse_args(argv)
    from ppmerge.config.train_schema import TRAIN_SCHEMA

    TRAIN_SCHEMA.fields["Global"].fields["seed"].validate(args.seed, "seed", "--seed")  # paddle.seed's range
    section = model_section(args.preset, args.fields)
    if os.path.splitext(args.output)[1].lower() not in (".pdparams", ".safetensors"):
        raise UserError(f"--output {args.output}: expected a .pdparams or .safetensors file name")
    from ppmerge.fileio import prepare_output_file

    # an existing file only with --overwrite; not a folder; its folder writable (ppmerge.fileio's rule)
    prepare_output_file(args.output, overwrite=args.overwrite, what="--output")
    from ppmerge.models.init import write_initial_model

    count = write_initial_model(args.output, section, args.seed, args.num_classes, args.dtype)
    print(f"wrote {count} tensors ({args.dtype}, preset {section['name']}, seed {args.seed}) to {args.output}")
    return 0


if __name__ == "__main__":
    run_tool(main)
