"""Evaluate a fine-tuned or merged GPT / T5 model on any GLUE task or custom dataset, or write a GLUE submission.

    python tools/eval.py -o Engine.save_load.ckpt_dir=output/SST2/epoch_2_step_30
    python tools/eval.py -c <train config> -o Model.pretrained=merged/merged_model.pdparams \
        -o Data.Eval.dataset.name=MNLI -o Data.Eval.dataset.root=./dataset --split dev_mismatched
    python tools/eval.py -c <train config> -o Model.pretrained=merged/merged_model.pdparams \
        --split test --tasks all --data-root ./dataset

The model is `Engine.save_load.ckpt_dir` (a checkpoint folder) if set, else `Model.pretrained` (a
file, folder or FleetX prefix). Without -c the run's config.yaml beside the checkpoint is used. The
task is `Data.Eval.dataset.name` (or --tasks); its class count, loss and metric come from the task,
so naming the task is enough. The model must hold a head for it (a merged model: `heads.<TASK>` or
--head NAME; a plain checkpoint: its own, fine-tuned on that task), else it is an error -- never a
random head. Labelled splits print the task's metrics and write `eval_results_<TASK>_<split>.json`
(`eval_results_<TASK>_<split>_head-<NAME>.json` with --head NAME);
`--split test` writes the GLUE submission TSVs (CoLA.tsv, SST-2.tsv, ..., MNLI-m.tsv, MNLI-mm.tsv
and AX.tsv from the diagnostic set with the MNLI head); `--tasks all` also writes
glue_submission.zip with the eleven files. Files go next to the checkpoint (ckpt_dir, or the
pretrained file's folder), or to --output-dir.
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
    parser.add_argument("-c", "--config", default=None,
                        help="the training config YAML (default: the run's config.yaml beside the checkpoint)")
    parser.add_argument("-o", "--override", action="append", default=[], metavar="A.B=v",
                        help="override a config key (repeatable)")
    parser.add_argument("--split", choices=SPLITS, default=None,
                        help="split to evaluate (default: Data.Eval.dataset.split); test writes the GLUE TSV")
    parser.add_argument("--tasks", nargs="+", default=None, metavar="TASK",
                        help="tasks to evaluate (default: Data.Eval.dataset.name); 'all' = the nine GLUE tasks "
                             "(with --split test: the complete submission + zip)")
    parser.add_argument("--data-root", default=None,
                        help="folder holding the task folders (default: Data.Eval.dataset.root, or its parent "
                             "when it is one task's folder); used with --tasks")
    parser.add_argument("--head", default=None,
                        help="merged model: the head of this pool model name (default: the task's head)")
    parser.add_argument("--device", default=None, help="cpu, gpu, gpu:N, xpu or npu (overrides Global.device)")
    parser.add_argument("--output-dir", default=None, help="where results go (default: beside the checkpoint)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace existing result files outside a ppmerge output folder, or write into a "
                             "non-empty --output-dir that is not an earlier eval output (nothing else is deleted)")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    from ppmerge.config import load_config
    from ppmerge.engine import task_eval
    from ppmerge.runtime import parse_device

    overrides = list(args.override) + ([f"Global.device={args.device}"] if args.device else [])
    config, implied = task_eval.config_for(args.config, overrides, args.tasks, args.data_root)  # before the user's -o
    cfg = load_config(config, implied + overrides)
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

    from ppmerge.data import TASK_NAMES, data_file, get_task, normalize_split
    from ppmerge.data.tasks import dataset_task
    from ppmerge.errors import DataError
    from ppmerge.engine.submission import SUBMISSION_FILES, submission_name, submission_splits

    eval_ds = cfg["Data"]["Eval"]["dataset"]
    split = args.split or eval_ds.get("split") or "dev"
    if args.tasks:
        names = TASK_NAMES if [t.lower() for t in args.tasks] == ["all"] else args.tasks
        tasks = list({get_task(t).name: get_task(t) for t in names}.values())
        root = args.data_root or task_eval.data_root_for(eval_ds["root"])
    else:
        tasks = [dataset_task(eval_ds, "Data.Eval.dataset")]  # a GLUE task, or a custom dataset's
        root = args.data_root or eval_ds["root"]
    complete = bool(args.tasks) and split == "test" and {t.name for t in tasks} == set(TASK_NAMES)
    run_config = task_eval.find_run_config(weights)
    trained = task_eval.trained_task(task_eval.read_run_config(run_config)) if run_config else None
    keep_metric = any(o.split("=", 1)[0].strip() == "Model.metric.eval.name" for o in args.override)

    # Everything is checked before the first model is built: a head for every task, every data file.
    jobs = []  # (task, split, result file name, labelled)
    head_keys = task_eval.family_head_keys(cfg)
    for task in tasks:
        task_eval.check_head(weights, task, head=args.head, trained=trained, head_keys=head_keys)
        splits = submission_splits(task) if split == "test" else [split]
        for s in splits:
            s = normalize_split(task, s)
            if s == "diagnostic" and not complete:
                try:
                    data_file(task, root, s)
                except DataError:
                    continue  # AX only when its file is there, unless the submission must be complete
            path, columns, _ = data_file(task, root, s)
            labelled = columns.label is not None
            head = f"_head-{args.head}" if args.head else ""  # a --head run does not replace the task head's results
            name = f"eval_results_{task.name}_{s}{head}.json" if labelled else submission_name(task, s)
            jobs.append((task, s, name, labelled))
    names = [name for *_, name, _ in jobs] + (["glue_submission.zip"] if complete else [])
    _check_outputs(args, out_dir, names)

    outputs = _run_jobs(cfg, tasks, jobs, root, weights, args.head, keep_metric)
    from ppmerge.fileio import is_ppmerge_output, mark_output_dir

    if args.output_dir and not is_ppmerge_output(out_dir):  # keep a merge / training folder's own marker
        mark_output_dir(out_dir, "eval")
    written = _write(out_dir, jobs, outputs, weights, args.head)
    if complete:
        from ppmerge.engine.submission import write_submission_zip

        tsvs = [p for p in written if os.path.basename(p) in SUBMISSION_FILES]
        written.append(write_submission_zip(out_dir, tsvs))
    for path in written:
        print(f"wrote {path}")
    return 0


def _run_jobs(cfg, tasks, jobs, root, weights, head, keep_metric):
    """{(task, split): metrics | outputs} for every job; nothing is written yet."""
    from ppmerge.engine import Engine, FinetuneModule, build_dataset
    from ppmerge.engine.task_eval import configure_for_task

    outputs = {}
    for task in tasks:
        task_cfg = configure_for_task(cfg, task, root, keep_metric=keep_metric)
        if head:
            from ppmerge.models import load_pretrained

            module = FinetuneModule(task_cfg, pretrained=False)
            load_pretrained(module.network, weights, task=head)
        else:
            module = FinetuneModule(task_cfg)
        engine = Engine(task_cfg, module)
        for job_task, split, _, labelled in jobs:
            if job_task.name != task.name:
                continue
            dataset = build_dataset(task_cfg, "Eval", split)
            if labelled:
                outputs[(task.name, split)] = engine.evaluate(dataset, tag=f"eval {task.name} {dataset.split}")
            else:
                outputs[(task.name, split)] = module.submission_outputs(engine.predict(dataset))
    return outputs


def _write(out_dir, jobs, outputs, weights, head):
    from ppmerge.engine.submission import write_submission
    from ppmerge.fileio import write_text

    written = []
    for task, split, name, labelled in jobs:
        value = outputs[(task.name, split)]
        path = os.path.join(out_dir, name)
        if labelled:
            record = dict(value, task=task.name, split=split, model=weights, head=head or task.name)
            write_text(path, json.dumps(record, indent=2) + "\n")
        else:
            path = write_submission(out_dir, task, split, value)
        written.append(path)
    return written


def _check_outputs(args, out_dir, names):
    """Before the model is built: --output-dir follows ppmerge.fileio's folder rule (new, empty, an earlier
    eval output, or --overwrite) unless it is a ppmerge output of another kind (a merge's folder, a
    checkpoint); there, and beside the weights, an existing result file is replaced only inside a ppmerge
    output folder or with --overwrite."""
    from ppmerge.fileio import is_ppmerge_output, prepare_output_dir, prepare_output_file

    if args.output_dir and not is_ppmerge_output(out_dir):
        prepare_output_dir(out_dir, "eval", overwrite=args.overwrite, what="--output-dir")
        return
    ours = is_ppmerge_output(out_dir)
    for name in names:
        prepare_output_file(os.path.join(out_dir, name), overwrite=args.overwrite or ours, what="result file")


if __name__ == "__main__":
    run_tool(main)
