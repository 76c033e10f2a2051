"""Evaluate a fine-tuned (or merged) GPT model on a GLUE task, or write its GLUE test submission.

    python tools/eval.py -c <train config> -o Engine.save_load.ckpt_dir=output/epoch_2_step_30
    python tools/eval.py -c <train config> -o Model.pretrained=merged/model.pdparams --split dev_mismatched
    python tools/eval.py -c <train config> -o Engine.save_load.ckpt_dir=... --split test

The model is `Engine.save_load.ckpt_dir` (a checkpoint folder) if set, else `Model.pretrained` (a
file, folder or FleetX prefix; a merged model's head for the task is selected). Labelled splits print
the task's metrics and write `eval_results_<split>.json`; `--split test` writes the GLUE submission
TSV (CoLA.tsv, SST-2.tsv, ..., MNLI-m.tsv and MNLI-mm.tsv). Files go next to the checkpoint
(ckpt_dir, or the pretrained file's folder), or to --output-dir.
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ppmerge.cli import run_tool  # noqa: E402
from ppmerge.errors import ConfigError  # noqa: E402

SPLITS = ("dev", "test", "dev_matched", "dev_mismatched", "test_matched", "test_mismatched")


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.strip().split("\n")[0])
    parser.add_argument("-c", "--config", required=True, help="the training config YAML")
    parser.add_argument("-o", "--override", action="append", default=[], metavar="A.B=v",
                        help="override a config key (repeatable)")
    parser.add_argument("--split", choices=SPLITS, default=None,
                        help="split to evaluate (default: Data.Eval.dataset.split); test writes the GLUE TSV")
    parser.add_argument("--device", default=None, help="cpu, gpu, gpu:N, xpu or npu (overrides Global.device)")
    parser.add_argument("--output-dir", default=None, help="where results go (default: beside the checkpoint)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace existing result files outside a ppmerge output folder, or write into a "
                             "non-empty --output-dir that is not an earlier eval output (nothing else is deleted)")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    from ppmerge.config import load_config
    from ppmerge.runtime import parse_device

    overrides = list(args.override) + ([f"Global.device={args.device}"] if args.device else [])
    cfg = load_config(args.config, overrides)
    parse_device(cfg["Global"]["device"])
    weights = cfg["Engine"]["save_load"].get("ckpt_dir") or cfg["Model"].get("pretrained")
    if not weights:
        raise ConfigError("nothing to evaluate: set Engine.save_load.ckpt_dir (a checkpoint folder) "
                          "or Model.pretrained (a weights file)")
    if not (cfg["Data"].get("Eval") or {}).get("dataset"):
        raise ConfigError("Data.Eval.dataset: missing (tools/eval.py evaluates on Data.Eval)")
    cfg["Model"]["pretrained"] = weights
    cfg["Engine"]["save_load"]["ckpt_dir"] = None  # evaluation only loads weights
    out_dir = args.output_dir or (weights if os.path.isdir(weights) else os.path.dirname(os.path.abspath(weights)))

    from ppmerge.data import get_task
    from ppmerge.engine import Engine, FinetuneModule, build_dataset
    from ppmerge.engine.submission import submission_name, write_submission
    from ppmerge.fileio import write_text

    task = get_task(cfg["Data"]["Eval"]["dataset"]["name"])
    split = args.split or cfg["Data"]["Eval"]["dataset"].get("split") or "dev"
    if split == "test" and task.name == "MNLI":
        splits = ["test_matched", "test_mismatched"]
    else:
        splits = [split]
    datasets = [build_dataset(cfg, "Eval", s) for s in splits]
    _check_outputs(args, out_dir, [f"eval_results_{d.split}.json" if d.has_labels else submission_name(task, d.split)
                                   for d in datasets])
    engine = Engine(cfg, FinetuneModule(cfg))
    for dataset in datasets:
        if args.output_dir:
            from ppmerge.fileio import mark_output_dir

            mark_output_dir(out_dir, "eval")
        if dataset.has_labels:
            results = engine.evaluate(dataset, tag=f"eval {dataset.split}")
            path = os.path.join(out_dir, f"eval_results_{dataset.split}.json")
            write_text(path, json.dumps(dict(results, task=task.name, split=dataset.split, model=weights), indent=2) + "\n")
        else:
            path = write_submission(out_dir, task, dataset.split, engine.predict(dataset))
        print(f"wrote {path}")
    return 0


def _check_outputs(args, out_dir, names):
    """Before the model is built: --output-dir follows ppmerge.fileio's folder rule (new, empty, an earlier
    eval output, or --overwrite); beside the weights, an existing result file is replaced only inside a
    ppmerge output folder or with --overwrite."""
    from ppmerge.fileio import is_ppmerge_output, prepare_output_dir, prepare_output_file

    if args.output_dir:
        prepare_output_dir(out_dir, "eval", overwrite=args.overwrite, what="--output-dir")
        return
    ours = is_ppmerge_output(out_dir)
    for name in names:
        prepare_output_file(os.path.join(out_dir, name), overwrite=args.overwrite or ours, what="result file")


if __name__ == "__main__":
    run_tool(main)
