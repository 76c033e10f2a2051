"""Training benchmark: the engine (driven as tools/train.py drives it) against a plain hand-written
Paddle loop on the same model, data, batch, optimizer and seed.

    python bench/train_bench.py [--size tiny|small] [--quick]

Both arms train on the same generated SST-2 split through the product's data loader (same order),
from the same seeded initialisation, with AdamW (no decay on bias / norm), the linear warm-up schedule
and global-norm clipping of configs/gpt/finetune_gpt_tiny_glue.yaml. Throughput is taken over the
steps after the warm-up: the dataset records when each batch is fetched, so the window from batch W
to batch W+K is exactly K optimizer steps of whatever the loop does (forward, backward, update,
logging), and set-up, the final save and evaluation stay outside. Repeats alternate the arms; the
median is reported, with the ratio engine / plain loop (goal >= 0.95) and whether both arms produced
the same losses (they must: same seed, same data, same maths)."""
import argparse
import contextlib
import io
import os
import shutil
import sys
import tempfile
import time

import numpy as np

import benchlib
from ppmerge.cli import run_tool

CONFIG = os.path.join(benchlib.ROOT, "configs", "gpt", "finetune_gpt_tiny_glue.yaml")
SIZES = {
    "tiny": {},  # the config's gpt-tiny preset
    "small": {"hidden_size": 768, "num_layers": 12, "num_attention_heads": 12, "ffn_hidden_size": 3072},  # GPT-2 small
}
GOAL = 0.95


def make_timed_dataset(paddle, dataset):
    """The dataset, recording (time, length) of every item fetched: the loop's clock."""

    class Timed(paddle.io.Dataset):
        def __init__(self):
            super().__init__()
            self.log = []

        def __len__(self):
            return len(dataset)

        def __getitem__(self, index):
            item = dataset[index]
            self.log.append((time.perf_counter(), len(item["input_ids"])))
            return item

    return Timed()


def window(log, batch_size, warmup, steps):
    """(seconds, samples, tokens) from the first fetch of batch `warmup` to that of batch warmup+steps."""
    first, last = warmup * batch_size, (warmup + steps) * batch_size
    if len(log) <= last:
        raise RuntimeError(f"only {len(log) // batch_size} batches were fetched, need {warmup + steps + 1}")
    seconds = log[last][0] - log[first][0]
    tokens = sum(length for _, length in log[first:last])
    return seconds, last - first, tokens


def train_config(data_root, out_dir, size, steps, batch_size):
    from ppmerge.config import load_config

    overrides = [f"Data.Train.dataset.root={data_root}", f"Data.Eval.dataset.root={data_root}",
                 "Engine.run_mode=step", f"Engine.max_steps={steps}", f"Engine.save_load.output_dir={out_dir}",
                 f"Data.Train.sampler.batch_size={batch_size}", "Global.device=cpu"]
    overrides += [f"Model.{k}={v}" for k, v in SIZES[size].items()]
    return load_config(CONFIG, overrides)


def run_engine(cfg, paddle):
    """tools/train.py's calls, with the training set timed; returns (fetch log, losses)."""
    from ppmerge.engine import Engine, FinetuneModule, build_dataset

    train_data = make_timed_dataset(paddle, build_dataset(cfg, "Train"))
    engine = Engine(cfg, FinetuneModule(cfg), out=io.StringIO())  # log lines kept, not printed
    with contextlib.redirect_stdout(io.StringIO()):
        engine.fit(train_data, None)
    return train_data.log, list(engine.history)


def run_plain_loop(cfg, paddle):
    """The same training written by hand in plain Paddle; returns (fetch log, losses)."""
    from ppmerge.data import build_dataloader
    from ppmerge.engine import build_dataset
    from ppmerge.models import build_model
    from ppmerge.runtime import import_paddlenlp_transformers

    transformers = import_paddlenlp_transformers()
    opt, sampler = cfg["Optimizer"], cfg["Data"]["Train"]["sampler"]
    total = int(cfg["Engine"]["max_steps"])
    seed = int(cfg["Global"]["seed"])
    train_data = make_timed_dataset(paddle, build_dataset(cfg, "Train"))
    loader = build_dataloader(train_data, int(sampler["batch_size"]), shuffle=True, drop_last=True, seed=seed)

    paddle.seed(seed)
    np.random.seed(seed)
    model = build_model(cfg["Model"], 2)
    warmup = opt["lr"]["warmup"]
    schedule = transformers.LinearDecayWithWarmup(float(opt["lr"]["learning_rate"]), total,
                                                  int(warmup) if warmup >= 1 else int(warmup * total))
    decay = {p.name for n, p in model.named_parameters() if "bias" not in n and "norm" not in n}
    optimizer = paddle.optimizer.AdamW(
        learning_rate=schedule, parameters=model.parameters(), beta1=opt["beta1"], beta2=opt["beta2"],
        epsilon=float(opt["epsilon"]), weight_decay=float(opt["weight_decay"]),
        apply_decay_param_fun=lambda name: name in decay,
        grad_clip=paddle.nn.ClipGradByGlobalNorm(float(opt["grad_clip"]["clip_norm"])))
    model.train()
    losses, step, epoch = [], 0, 0
    while step < total:
        loader.batch_sampler.set_epoch(epoch)
        for batch in loader:
            logits = model(batch["input_ids"], batch["lengths"])
            loss = paddle.nn.functional.cross_entropy(logits, batch["labels"].reshape([-1]))
            loss.backward()
            optimizer.step()
            optimizer.clear_grad()
            schedule.step()
            losses.append(float(loss))
            step += 1
            if step >= total:
                break
        epoch += 1
    return train_data.log, losses


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=list(SIZES), default="tiny")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--warmup", type=int, default=None, help="steps excluded at the start (default 3)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per repeat (tiny 30, small 5)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="tiny, 2 warm-up + 4 timed steps, one repeat")
    args = parser.parse_args(argv)
    if args.quick:
        args.size, args.warmup, args.steps, args.repeats = "tiny", 2, 4, 1
    warmup = args.warmup if args.warmup is not None else 3
    steps = args.steps or (30 if args.size == "tiny" else 5)
    total = warmup + steps + 1  # one more batch: the window ends at its fetch

    from ppmerge.runtime import import_paddle

    paddle = import_paddle()
    from ppmerge.data import write_glue_suite

    info = benchlib.machine_info()
    folder = tempfile.mkdtemp(prefix="ppmerge_train_bench_")
    arms = {"engine": [], "plain_loop": []}
    losses = {}
    try:
        roots = write_glue_suite(os.path.join(folder, "glue"), layout="glue", tasks=["SST2"],
                                 n_train=max(256, (total + 1) * args.batch_size), n_dev=8, n_test=8, seed=0)
        cfg = train_config(roots["SST2"], os.path.join(folder, "out"), args.size, total, args.batch_size)
        for _ in range(args.repeats):
            for name, run in (("engine", run_engine), ("plain_loop", run_plain_loop)):
                log, losses[name] = run(cfg, paddle)
                seconds, samples, tokens = window(log, args.batch_size, warmup, steps)
                arms[name].append({"seconds": seconds, "samples_per_s": samples / seconds,
                                   "tokens_per_s": tokens / seconds})
    finally:
        shutil.rmtree(folder, ignore_errors=True)

    result = {"bench": "train", "size": args.size, "batch_size": args.batch_size, "warmup_steps": warmup,
              "timed_steps": steps, "repeats": args.repeats, "model": cfg["Model"]["name"],
              "model_overrides": SIZES[args.size], "machine": info}
    for name, runs in arms.items():
        result[name] = {"samples_per_s": benchlib.median([r["samples_per_s"] for r in runs]),
                        "tokens_per_s": benchlib.median([r["tokens_per_s"] for r in runs]), "runs": runs}
    result["ratio"] = benchlib.ratio(result["engine"]["samples_per_s"], result["plain_loop"]["samples_per_s"])
    result["goal"] = GOAL
    result["meets_goal"] = bool(result["ratio"] >= GOAL)
    diff = float(np.max(np.abs(np.subtract(losses["engine"], losses["plain_loop"]))))
    result["loss_max_abs_diff"] = diff
    result["losses_match"] = bool(len(losses["engine"]) == len(losses["plain_loop"]) and diff <= 1e-5)
    lines = [f"train_bench: {args.size}, batch {args.batch_size}, {steps} timed steps after {warmup} warm-up, "
             f"{args.repeats} repeat(s); load avg {info['loadavg_start'][0]}",
             f"  engine      {result['engine']['samples_per_s']:8.1f} samples/s {result['engine']['tokens_per_s']:9.0f} tokens/s",
             f"  plain loop  {result['plain_loop']['samples_per_s']:8.1f} samples/s "
             f"{result['plain_loop']['tokens_per_s']:9.0f} tokens/s",
             f"  ratio {result['ratio']:.3f} (goal >= {GOAL}); same losses: {result['losses_match']} "
             f"(max diff {diff:.2e})"]
    benchlib.emit(result, lines)
    return 0


if __name__ == "__main__":
    sys.exit(run_tool(main))
