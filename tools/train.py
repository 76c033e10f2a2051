"""Fine-tune a GPT classifier or a T5 (text-to-text, full or LoRA) on a GLUE task or a custom dataset.

    python tools/train.py -c configs/gpt/finetune_gpt_345M_single_card_glue.yaml \
        -o Data.Train.dataset.name=CoLA -o Data.Train.dataset.root=./dataset/cola_public/ ...
    python -m paddle.distributed.launch --nproc_per_node 2 tools/train.py -c ...   # data parallel

--print-config (or PPMERGE_DRY_RUN=1) prints the resolved config and exits without training.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ppmerge.cli import run_tool  # noqa: E402


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.strip().split("\n")[0])
    parser.add_argument("-c", "--config", required=True, help="training config YAML (configs/gpt/...)")
    parser.add_argument("-o", "--override", action="append", default=[], metavar="A.B=v",
                        help="override a config key (repeatable), e.g. -o Engine.num_train_epochs=5")
    parser.add_argument("--device", default=None, help="cpu, gpu, gpu:N, xpu or npu (overrides Global.device)")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.add_argument("--overwrite", action="store_true",
                        help="write into a non-empty Engine.save_load.output_dir that is not an earlier training "
                             "output (only the files training writes are replaced; nothing else is deleted)")
    return parser.parse_args(argv)


def check_pretrained_not_replaced(cfg):
    """Model.pretrained must not be a checkpoint this run rewrites (best/, epoch_*/, lora/ of its output_dir):
    training again into an earlier run's folder from that run's best model used to replace its own start."""
    from ppmerge.errors import ConfigError

    out_dir = cfg["Engine"]["save_load"]["output_dir"]
    pretrained = cfg["Model"].get("pretrained")
    if not pretrained:
        return
    rel = os.path.relpath(os.path.realpath(pretrained), os.path.realpath(out_dir))
    top = rel.split(os.sep)[0]
    if top in ("best", "lora") or top.startswith("epoch_"):
        raise ConfigError(f"Model.pretrained {pretrained} is a checkpoint this run writes in Engine.save_load.output_dir "
                          f"{out_dir} (it would replace its own starting point); copy it elsewhere or choose another "
                          f"output_dir")


TASK_KEYS = ("num_classes", "loss.train.name", "loss.eval.name", "metric.train.name", "metric.eval.name")


def from_task(cfg, path, overrides):
    """Model.num_classes, Model.loss.*.name and Model.metric.*.name from the trained task (as tools/eval.py
    does) where neither the config file itself nor `-o` set them (values inherited from a `_base_` file,
    such as configs/gpt/finetune_gpt_base.yaml's SST-2 settings, count as defaults) (GPT family; a value the user set that disagrees
    with the task stays an error: FinetuneModule checks it)."""
    from ppmerge.config.inherit import resolve_file
    from ppmerge.config.overrides import apply_overrides
    from ppmerge.config.train_schema import TRAIN_SCHEMA
    from ppmerge.engine.module import config_task
    from ppmerge.engine.task_eval import _family

    model = cfg.get("Model") or {}
    if _family(model) != "gpt":
        return cfg
    origins = {}
    raw = resolve_file(os.fspath(path), origins)
    top = os.path.normpath(os.path.abspath(path))
    # the user's values: the config file itself and -o; a `_base_` file's values are defaults
    origins = {key: source for key, source in origins.items()
               if os.path.normpath(os.path.abspath(str(source))) == top}
    origins.update(apply_overrides(raw, overrides, TRAIN_SCHEMA))
    from ppmerge.errors import ConfigError

    try:
        task = config_task(cfg)
    except ConfigError:  # no task / train and eval disagree: FinetuneModule says so (--print-config still prints)
        return cfg
    values = {"num_classes": task.num_classes, "loss": task.loss, "metric": task.metric}
    for key in TASK_KEYS:
        parts = key.split(".")
        if ("Model", *parts) in origins:
            continue  # the user's value
        if len(parts) == 1:
            model[key] = values[key]
        else:
            model.setdefault(parts[0], {}).setdefault(parts[1], {})["name"] = values[parts[0]]
    return cfg


def main(argv=None):
    args = parse_args(argv)
    from ppmerge.config import dump_config, load_config
    from ppmerge.runtime import parse_device

    overrides = list(args.override) + ([f"Global.device={args.device}"] if args.device else [])
    cfg = from_task(load_config(args.config, overrides), args.config, overrides)
    parse_device(cfg["Global"]["device"])  # a typo in the device fails before any heavy import
    if os.environ.get("PADDLE_TRAINER_ID", "0") == "0":  # rank 0 only under paddle.distributed.launch
        print(dump_config(cfg), end="", flush=True)
    if args.print_config or os.environ.get("PPMERGE_DRY_RUN") not in (None, "", "0"):
        return 0

    from ppmerge.fileio import prepare_output_dir

    # before any work (the whole check again, with free space, when training starts)
    prepare_output_dir(cfg["Engine"]["save_load"]["output_dir"], "train", overwrite=args.overwrite,
                       what="Engine.save_load.output_dir")
    check_pretrained_not_replaced(cfg)
    from ppmerge.engine import Engine, FinetuneModule, build_dataset

    train_data = build_dataset(cfg, "Train")  # data errors surface before the model is built
    eval_data = build_dataset(cfg, "Eval") if (cfg["Data"].get("Eval") or {}).get("dataset") else None
    engine = Engine(cfg, FinetuneModule(cfg), overwrite=args.overwrite)
    engine.fit(train_data, eval_data)
    if engine.is_main:  # a LoRA run: the adapter alone (+ the merged model on request) in output_dir/lora/
        for path in engine.module.export(engine.output_dir):
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    run_tool(main)
