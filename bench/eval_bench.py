"""Evaluation benchmark: dynamic padding (the product's `collate_batch`, pad to the longest in the
batch) against padding every batch to `max_length`, on a GLUE-like length distribution.

    python bench/eval_bench.py [--quick]

Sequences are random token ids whose lengths follow SST-2 / MNLI (GPT-2 BPE: mostly 10-40 tokens,
a long tail up to max_length 128). Both arms run the same model and loop: forward on the true
lengths, the task metric on the logits. Reports samples/s of each arm, the ratio (goal >= 2x), and
both metric values, which must be identical (the model pools the last real token and attention is
causal, so trailing padding cannot change a prediction)."""
import argparse
import sys
import time

import numpy as np

import benchlib
from ppmerge.cli import run_tool

MAX_LENGTH = 128
PAD_ID = 50256


def glue_like_lengths(n, rng, max_length=MAX_LENGTH):
    """Half single sentences like SST-2 (median ~20 tokens), half pairs like MNLI (median ~38),
    log-normal so that a few run to max_length (they are truncated there, as the reader does)."""
    single = rng.lognormal(np.log(20), 0.6, size=n)
    pairs = rng.lognormal(np.log(38), 0.5, size=n)
    lengths = np.where(rng.random(n) < 0.5, single, pairs)
    return np.clip(np.round(lengths), 3, max_length).astype(np.int64)


def make_samples(n, vocab, seed):
    """GLUEDataset-shaped items: {"input_ids": int64[L], "label": int}, no pad/eos id inside."""
    rng = np.random.default_rng(seed)
    lengths = glue_like_lengths(n, rng)
    return [{"input_ids": rng.integers(0, min(vocab, PAD_ID), size=int(L), dtype=np.int64),
             "label": int(rng.integers(0, 2))} for L in lengths]


def collate_to_max_length(samples, pad_id=PAD_ID, max_length=MAX_LENGTH):
    """The baseline: the same batch as collate_batch, padded to max_length instead of the longest."""
    ids = np.full((len(samples), max_length), pad_id, dtype=np.int64)
    for i, s in enumerate(samples):
        ids[i, :len(s["input_ids"])] = s["input_ids"]
    return {"input_ids": ids,
            "lengths": np.array([len(s["input_ids"]) for s in samples], dtype=np.int64),
            "labels": np.array([s["label"] for s in samples], dtype=np.int64)}


def evaluate(model, samples, collate, batch_size, paddle, metric):
    """One pass over the samples; returns (seconds, metric values, predicted classes)."""
    metric.reset()
    preds = []
    start = time.perf_counter()
    with paddle.no_grad():
        for i in range(0, len(samples), batch_size):
            batch = collate(samples[i:i + batch_size])
            logits = model(paddle.to_tensor(batch["input_ids"]), paddle.to_tensor(batch["lengths"]))
            logits = logits.numpy()
            metric.update(logits, batch["labels"])
            preds.append(logits.argmax(-1))
    seconds = time.perf_counter() - start
    return seconds, metric.accumulate(), np.concatenate(preds)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3, help="passes per arm; the median is reported")
    parser.add_argument("--hidden", type=int, default=256, help="model width (gpt-tiny's preset otherwise)")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--quick", action="store_true", help="few samples, one repeat, the tiny preset")
    args = parser.parse_args(argv)
    if args.quick:
        args.samples, args.repeats, args.hidden, args.layers = 64, 1, None, None

    from ppmerge.runtime import import_paddle

    paddle = import_paddle()
    from ppmerge.data import collate_batch
    from ppmerge.metrics import build_metric
    from ppmerge.models import build_model

    info = benchlib.machine_info()
    paddle.seed(0)
    model_cfg = {"name": "gpt-tiny"}
    if args.hidden:
        model_cfg.update(hidden_size=args.hidden, num_layers=args.layers, num_attention_heads=4,
                         ffn_hidden_size=4 * args.hidden, max_position_embeddings=MAX_LENGTH)
    model = build_model(model_cfg, 2)
    model.eval()
    samples = make_samples(args.samples, 50257, seed=0)
    lengths = np.array([len(s["input_ids"]) for s in samples])
    metric = build_metric("Accuracy")

    # Warm-up: one batch of each shape family, so kernel set-up is not charged to either arm.
    evaluate(model, samples[:args.batch_size], collate_batch, args.batch_size, paddle, metric)
    evaluate(model, samples[:args.batch_size], collate_to_max_length, args.batch_size, paddle, metric)
    arms = {}
    for name, collate in (("dynamic", collate_batch), ("max_length", collate_to_max_length)):
        times = []
        for _ in range(args.repeats):
            seconds, values, preds = evaluate(model, samples, collate, args.batch_size, paddle, metric)
            times.append(seconds)
        s = benchlib.median(times)
        arms[name] = {"seconds": s, "times": times, "samples_per_s": len(samples) / s, "metric": values,
                      "preds": preds}
    identical = bool(np.array_equal(arms["dynamic"]["preds"], arms["max_length"]["preds"])
                     and arms["dynamic"]["metric"] == arms["max_length"]["metric"])
    for arm in arms.values():
        arm.pop("preds")
    speedup = benchlib.ratio(arms["dynamic"]["samples_per_s"], arms["max_length"]["samples_per_s"])
    result = {"bench": "eval", "samples": len(samples), "batch_size": args.batch_size, "repeats": args.repeats,
              "model": model_cfg, "max_length": MAX_LENGTH,
              "lengths": {"mean": float(lengths.mean()), "median": float(np.median(lengths)),
                          "p90": float(np.percentile(lengths, 90)), "max": int(lengths.max())},
              "dynamic": arms["dynamic"], "max_length_pad": arms["max_length"], "speedup": speedup,
              "goal": 2.0, "meets_goal": bool(speedup >= 2.0), "metrics_identical": identical, "machine": info}
    lines = [f"eval_bench: {len(samples)} samples, batch {args.batch_size}, lengths mean {lengths.mean():.1f} "
             f"/ p90 {np.percentile(lengths, 90):.0f} / max {lengths.max()}; load avg {info['loadavg_start'][0]}",
             f"  dynamic padding   {arms['dynamic']['samples_per_s']:8.1f} samples/s  metric {arms['dynamic']['metric']}",
             f"  pad to {MAX_LENGTH}        {arms['max_length']['samples_per_s']:8.1f} samples/s  metric "
             f"{arms['max_length']['metric']}",
             f"  speed-up {speedup:.2f}x (goal >= 2x); predictions and metrics identical: {identical}"]
    benchlib.emit(result, lines)
    return 0


if __name__ == "__main__":
    sys.exit(run_tool(main))
