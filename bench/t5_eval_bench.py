"""T5 evaluation benchmark: the product's generation evaluation (`TaskPool.evaluate` on a T5 pool:
length-sorted batches, each padded to its own longest, answers restored to dataset order) against
FusionBench's way, every input padded to 512 tokens in dataset order, on the same model and examples.

    python bench/t5_eval_bench.py [--quick]

Data: the generated SST-2 and RTE dev splits rendered through FusionBench's prompts, tokenized with a
sentencepiece model trained at run time (T5's ids). Model: a seeded random T5 (`t5-tiny` widened by
--d-model / --layers); its answers are not label words, so every answer runs to the full 9 generated
tokens (the slowest case for both arms). Two arms, only the batching differs:

  dynamic   the product: length-sorted batches, each padded to its own longest
  pad_512   dataset order, every input padded to 512 (FusionBench's tokenizer setting)

Arms run round-robin, `--repeats` times (median reported). Reports samples/s, the ratio (goal >= 3x) and
proves the answers identical: every generated text, in dataset order, and the metric values (padding is
masked in the encoder and in cross-attention, and T5's relative positions do not move)."""
import argparse
import os
import sys
import tempfile

import numpy as np

import benchlib
from ppmerge.cli import run_tool

PAD_TO = 512
TASKS = ("SST2", "RTE")
ARMS = ("dynamic", "pad_512")


def bench_pool_class():
    """TaskPool whose batching is switched by `.arm` (everything else is the product's own code)."""
    from ppmerge.evaluation import TaskPool

    class BenchPool(TaskPool):
        arm = "dynamic"
        answers = None

        def eval_batches(self, task):
            if self.arm == "dynamic":
                return super().eval_batches(task)
            n = len(self.eval_indices(task))
            return [np.arange(start, min(start + self.batch_size, n)) for start in range(0, n, self.batch_size)]

        def collate(self, samples):
            batch = super().collate(samples)
            if self.arm != "pad_512":
                return batch
            ids = np.zeros((len(samples), PAD_TO), dtype=np.int64)
            ids[:, :batch["input_ids"].shape[1]] = batch["input_ids"]
            return dict(batch, input_ids=ids)

    return BenchPool


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=128, help="dev examples per task")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--d-model", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--quick", action="store_true", help="few samples, one repeat, the t5-tiny preset")
    args = parser.parse_args(argv)
    if args.quick:
        args.samples, args.repeats, args.d_model, args.layers = 32, 1, None, None

    from ppmerge.runtime import import_paddle

    paddle = import_paddle()
    from ppmerge.data.synthetic import write_glue_suite
    from ppmerge.data.t5_tokenizer import load_t5_tokenizer, suite_texts, train_sentencepiece
    from ppmerge.models.families import get_family

    info = benchlib.machine_info()
    with tempfile.TemporaryDirectory() as folder:
        write_glue_suite(folder, layout="glue", n_train=256, n_dev=args.samples, n_test=4, seed=0, tasks=list(TASKS))
        spiece = train_sentencepiece(suite_texts(folder, tasks=list(TASKS)), os.path.join(folder, "spiece.model"))
        vocab = load_t5_tokenizer(spiece).vocab_size
        model_cfg = {"name": "t5-tiny", "vocab_size": vocab}
        if args.d_model:
            model_cfg.update(d_model=args.d_model, d_ff=2 * args.d_model, num_layers=args.layers, num_heads=4,
                             d_kv=args.d_model // 4)
        paddle.seed(0)
        backbone = {k: v.numpy() for k, v in get_family(model_cfg).build().state_dict().items()}
        pool = bench_pool_class()(tasks=list(TASKS), model=model_cfg, data_root=folder, split="dev",
                                  batch_size=args.batch_size, max_length=PAD_TO,
                                  tokenizer={"spiece_model": spiece}, progress=False)
        lengths = np.concatenate([[len(x) for x in pool.dataset(t).input_ids] for t in TASKS])
        times = {arm: [] for arm in ARMS}
        results, answers = {}, {}
        for arm in ARMS:   # warm-up, and the answers to compare
            pool.arm = arm
            model = pool.skeleton(0)
            pool.load_backbone(model, backbone)
            answers[arm] = {t: pool._run(model, t, pool._predict, _NoBar())[0] for t in TASKS}
        for _ in range(args.repeats):
            for arm in ARMS:
                pool.arm = arm
                out = pool.evaluate(backbone, {})
                times[arm].append(sum(out[t].pop("seconds") for t in TASKS))
                results[arm] = out
        tok = load_t5_tokenizer(spiece)
        texts = {arm: {t: tok.batch_decode(a.astype(np.int64)) for t, a in answers[arm].items()} for arm in ARMS}

    arms = {arm: {"seconds": benchlib.median(times[arm]), "times": times[arm],
                  "samples_per_s": len(lengths) / benchlib.median(times[arm]), "metrics": results[arm]} for arm in ARMS}
    identical = texts["dynamic"] == texts["pad_512"] and results["dynamic"] == results["pad_512"]
    speedup = benchlib.ratio(arms["dynamic"]["samples_per_s"], arms["pad_512"]["samples_per_s"])
    result = {"bench": "t5_eval", "path": "TaskPool.evaluate (T5 family)", "tasks": list(TASKS),
              "samples": int(len(lengths)), "batch_size": args.batch_size, "repeats": args.repeats, "model": model_cfg,
              "lengths": {"mean": float(lengths.mean()), "max": int(lengths.max())}, **arms, "speedup": speedup,
              "goal": 3.0, "meets_goal": bool(speedup >= 3.0), "answers_identical": identical, "machine": info}
    lines = [f"t5_eval_bench: TaskPool.evaluate (greedy generation) on {len(lengths)} examples of {'+'.join(TASKS)}, "
             f"batch {args.batch_size}, prompt lengths mean {lengths.mean():.1f} / max {lengths.max()} tokens; "
             f"load avg {info['loadavg_start'][0]}"]
    for arm, label in (("dynamic", "length-sorted dynamic"), ("pad_512", f"pad to {PAD_TO} (FusionBench)")):
        lines.append(f"  {label:28s} {arms[arm]['samples_per_s']:8.1f} samples/s")
    lines.append(f"  speed-up {speedup:.2f}x (goal >= 3x); answers and metrics identical: {identical}")
    benchlib.emit(result, lines)
    return 0


class _NoBar:
    def update(self, n):
        pass


if __name__ == "__main__":
    sys.exit(run_tool(main))
