"""Evaluation benchmark: the product's evaluation path (`TaskPool.evaluate`: load the backbone and
head, length-sorted batches each padded to its own longest, outputs restored to dataset order, the
task metric) against the same path padding every batch to `max_length`, on a GLUE-like length
distribution.

    python bench/eval_bench.py [--quick]

The data is a real SST-2 dev file (GLUE layout, read and tokenized by the product) whose sentences
are built from single-token words, so their token lengths follow SST-2 / MNLI (GPT-2 BPE: mostly
10-40 tokens, a long tail up to max_length 128). Three arms, the same pool, model and weights; only
the batching differs:

  dynamic          the product: length-sorted batches, each padded to its own longest
  dataset_order    dynamic padding in dataset order (the evaluation before length sorting)
  max_length_pad   dataset order, every batch padded to max_length (the baseline)

Arms run round-robin, `--repeats` times each (the median is reported), so drift of this shared
machine hits all of them alike. Reports samples/s, the ratio dynamic / pad-to-max (goal >= 2x) and
proves the results identical: the metric values and every predicted class, in dataset order (the
model pools the last real token and attention is causal, so trailing padding cannot change them).

T5 arm (`--t5-samples`, 0 = off): the T5 family's generation evaluation (`TaskPool.evaluate` on a t5-tiny
model: greedy answers, exact match) with length-sorted batches each padded to its own longest, against
FusionBench's batching (dataset order, every input padded to 512 tokens, the attention mask covering the
real ones) on the same model, weights and SST-2 examples (prompted with FusionBench's template, tokenized
by a sentencepiece model trained at run time). Reports samples/s, the ratio (goal >= 3x) and proves the
generated answer ids and the metrics identical."""
import argparse
import os
import sys
import tempfile

import numpy as np

import benchlib
from ppmerge.cli import run_tool

MAX_LENGTH = 128
TASK = "SST2"


def glue_like_lengths(n, rng, max_length=MAX_LENGTH):
    """Half single sentences like SST-2 (median ~20 tokens), half pairs like MNLI (median ~38),
    log-normal so that a few run to max_length (they are truncated there, as the reader does)."""
    single = rng.lognormal(np.log(20), 0.6, size=n)
    pairs = rng.lognormal(np.log(38), 0.5, size=n)
    lengths = np.where(rng.random(n) < 0.5, single, pairs)
    return np.clip(np.round(lengths), 3, max_length).astype(np.int64)


def single_token_words(tokenizer):
    """Words of the generated suite's vocabulary that are one GPT-2 token after a space."""
    from ppmerge.data import words

    vocabulary = set(words.SUBJECTS + words.OBJECTS + words.ADJECTIVES + words.POSITIVE + words.NEGATIVE
                     + words.PLACES_MATCHED + [v for pair in words.VERBS for v in pair])
    return sorted(w for w in vocabulary if len(tokenizer(" " + w, add_special_tokens=False)["input_ids"]) == 1)


def write_sst2_dev(folder, n, tokenizer, seed):
    """folder/SST-2/dev.tsv with n labelled sentences of GLUE-like token lengths."""
    from ppmerge.fileio import atomic_open

    rng = np.random.default_rng(seed)
    vocabulary = single_token_words(tokenizer)
    root = os.path.join(folder, "SST-2")
    os.makedirs(root, exist_ok=True)
    with atomic_open(os.path.join(root, "dev.tsv"), "w", encoding="utf-8") as f:
        f.write("sentence\tlabel\n")
        for length in glue_like_lengths(n, rng):
            f.write(" ".join(rng.choice(vocabulary, size=int(length))) + f"\t{int(rng.integers(0, 2))}\n")
    return root


def bench_pool_class():
    """TaskPool whose batching is switched by `.arm` (everything else is the product's own code)."""
    from ppmerge.data import EOS_ID, collate_batch
    from ppmerge.evaluation import TaskPool

    class BenchPool(TaskPool):
        arm = "dynamic"

        def eval_batches(self, task):
            if self.arm == "dynamic":
                return super().eval_batches(task)
            n = len(self.eval_indices(task))
            return [np.arange(start, min(start + self.batch_size, n)) for start in range(0, n, self.batch_size)]

        def collate(self, samples):
            batch = collate_batch(samples)
            if self.arm != "max_length_pad":
                return batch
            ids = np.full((len(samples), self.max_length), EOS_ID, dtype=np.int64)
            ids[:, :batch["input_ids"].shape[1]] = batch["input_ids"]
            return dict(batch, input_ids=ids)

    return BenchPool


ARMS = ("dynamic", "dataset_order", "max_length_pad")

# ---------------------------------------------------------------------------------------------- T5 arm
T5_TASK = "SST2"
T5_PAD = 512          # FusionBench pads every input to 512 tokens
T5_ARMS = ("dynamic", "pad_512")


def t5_bench_pool_class():
    """The T5 TaskPool whose batching is switched by `.arm`: the product's length-sorted dynamic padding,
    or FusionBench's (dataset order, every input padded to 512; generation reads the mask from the
    true lengths, so the padding is masked as FusionBench's attention_mask does)."""
    from ppmerge.data.t5_dataset import PAD_ID
    from ppmerge.evaluation import TaskPool

    class T5BenchPool(TaskPool):
        arm = "dynamic"

        def eval_batches(self, task):
            if self.arm == "dynamic":
                return super().eval_batches(task)
            n = len(self.eval_indices(task))
            return [np.arange(start, min(start + self.batch_size, n)) for start in range(0, n, self.batch_size)]

        def collate(self, samples):
            batch = super().collate(samples)
            if self.arm != "pad_512":
                return batch
            ids = np.full((len(samples), T5_PAD), PAD_ID, dtype=np.int64)
            ids[:, :batch["input_ids"].shape[1]] = batch["input_ids"]
            mask = np.zeros_like(ids)
            mask[:, :batch["input_ids"].shape[1]] = batch["attention_mask"]
            return dict(batch, input_ids=ids, attention_mask=mask)

    return T5BenchPool


def write_t5_sst2_dev(folder, n, seed):
    """folder/SST-2/dev.tsv: n labelled sentences from the generated suite's vocabulary whose PROMPTED
    token lengths follow GLUE's (`glue_like_lengths` + the SST-2 template's own tokens: what a Flan-T5
    input of SST-2 / MNLI is), and the sentencepiece model (T5's special ids, trained here on the
    vocabulary) that tokenizes them. Returns (root, spiece path)."""
    from ppmerge.data import words
    from ppmerge.data.prompts import load_prompts
    from ppmerge.data.t5_tokenizer import load_t5_tokenizer, train_sentencepiece
    from ppmerge.fileio import atomic_open

    rng = np.random.default_rng(seed)
    vocabulary = sorted(set(words.SUBJECTS + words.OBJECTS + words.ADJECTIVES + words.POSITIVE + words.NEGATIVE
                            + words.PLACES_MATCHED + [v for pair in words.VERBS for v in pair]))
    prompt = load_prompts()[T5_TASK]
    texts = list(prompt["targets"]) + [" ".join(rng.permutation(vocabulary)) for _ in range(50)] + [
        prompt["input_text"].format(**{prompt["fields"][0]: " ".join(rng.choice(vocabulary, 8))}) for _ in range(50)]
    spiece = train_sentencepiece(texts, os.path.join(folder, "spiece.model"), vocab_size=800)
    tokenizer = load_t5_tokenizer(spiece)

    def prompted_length(sentence):
        return len(tokenizer.encode(prompt["input_text"].format(**{prompt["fields"][0]: sentence})))

    overhead = prompted_length("")
    root = os.path.join(folder, "SST-2")
    os.makedirs(root, exist_ok=True)
    with atomic_open(os.path.join(root, "dev.tsv"), "w", encoding="utf-8") as f:
        f.write("sentence\tlabel\n")
        for target in glue_like_lengths(n, rng) + overhead:
            sentence = str(rng.choice(vocabulary))
            while prompted_length(sentence) < target:
                sentence += " " + str(rng.choice(vocabulary))
            f.write(f"{sentence}\t{int(rng.integers(0, 2))}\n")
    return root, spiece


def t5_arm(samples, batch_size, repeats):
    """The T5 arm's figures: both batchings on one t5-tiny model and one SST-2 dev file."""
    from ppmerge.data.t5_tokenizer import load_t5_tokenizer
    from ppmerge.models.families import get_family
    from ppmerge.runtime import import_paddle

    paddle = import_paddle()
    with tempfile.TemporaryDirectory() as folder:
        root, spiece = write_t5_sst2_dev(folder, samples, seed=1)
        model_cfg = {"name": "t5-tiny", "vocab_size": load_t5_tokenizer(spiece).vocab_size}
        paddle.seed(0)
        backbone = {k: v.numpy() for k, v in get_family(model_cfg).build().state_dict().items()}
        pool = t5_bench_pool_class()(tasks=[T5_TASK], model=model_cfg, roots={T5_TASK: root}, split="dev",
                                     batch_size=batch_size, max_length=T5_PAD, tokenizer={"spiece_model": spiece},
                                     progress=False)
        lengths = np.array([len(x["input_ids"]) for x in (pool.dataset(T5_TASK)[i]
                                                           for i in range(len(pool.dataset(T5_TASK))))])
        times = {arm: [] for arm in T5_ARMS}
        results, answers = {}, {}
        for arm in T5_ARMS:   # warm-up and the generated answers to compare
            pool.arm = arm
            answers[arm] = pool.logits(T5_TASK, backbone, {})[0]
        for _ in range(repeats):
            for arm in T5_ARMS:
                pool.arm = arm
                result = pool.evaluate(backbone, {})[T5_TASK]
                times[arm].append(result.pop("seconds"))
                results[arm] = result
    arms = {}
    for arm in T5_ARMS:
        seconds = benchlib.median(times[arm])
        arms[arm] = {"seconds": seconds, "times": times[arm], "samples_per_s": len(lengths) / seconds,
                     "metric": results[arm]}
    identical = bool(np.array_equal(answers["dynamic"], answers["pad_512"])
                     and results["dynamic"] == results["pad_512"])
    speedup = benchlib.ratio(arms["dynamic"]["samples_per_s"], arms["pad_512"]["samples_per_s"])
    return {"path": "TaskPool.evaluate (T5 generation)", "task": T5_TASK, "samples": int(len(lengths)),
            "batch_size": batch_size, "repeats": repeats, "model": model_cfg, "pad_to": T5_PAD,
            "lengths": {"mean": float(lengths.mean()), "median": float(np.median(lengths)),
                        "p90": float(np.percentile(lengths, 90)), "max": int(lengths.max())},
            "dynamic": arms["dynamic"], "pad_512": arms["pad_512"], "speedup": speedup, "goal": 3.0,
            "speedup_rounds": [benchlib.ratio(p, d) for d, p in zip(times["dynamic"], times["pad_512"])],
            "meets_goal": bool(speedup >= 3.0), "answers_identical": identical,
            "answers_shape": list(answers["dynamic"].shape),
            "distinct_answers": int(len(np.unique(answers["dynamic"], axis=0)))}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3, help="passes per arm; the median is reported")
    parser.add_argument("--hidden", type=int, default=256, help="model width (gpt-tiny's preset otherwise)")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--t5-samples", type=int, default=256, help="examples of the T5 arm (0: no T5 arm)")
    parser.add_argument("--quick", action="store_true", help="few samples, one repeat, the tiny preset")
    args = parser.parse_args(argv)
    if args.quick:
        args.samples, args.repeats, args.hidden, args.layers = 64, 1, None, None
        args.t5_samples = min(args.t5_samples, 32)

    from ppmerge.runtime import import_paddle

    paddle = import_paddle()
    from ppmerge.data import load_tokenizer
    from ppmerge.models import build_model

    info = benchlib.machine_info()
    model_cfg = {"name": "gpt-tiny", "max_position_embeddings": MAX_LENGTH}
    if args.hidden:
        model_cfg.update(hidden_size=args.hidden, num_layers=args.layers, num_attention_heads=4,
                         ffn_hidden_size=4 * args.hidden)
    paddle.seed(0)
    weights = {k: v.numpy() for k, v in build_model(model_cfg, 2).state_dict().items()}
    heads = {TASK: {"score.weight": weights.pop("score.weight")}}
    backbone = weights

    with tempfile.TemporaryDirectory() as folder:
        tokenizer = load_tokenizer()
        root = write_sst2_dev(folder, args.samples, tokenizer, seed=0)
        pool = bench_pool_class()(tasks=[TASK], model=model_cfg, roots={TASK: root}, split="dev",
                                  batch_size=args.batch_size, max_length=MAX_LENGTH, progress=False)
        dataset = pool.dataset(TASK)   # tokenized once, before any timing
        lengths = np.array([len(x) for x in dataset.input_ids])
        times = {arm: [] for arm in ARMS}
        results, logits = {}, {}
        for arm in ARMS:   # warm-up (skeleton built, kernels set up) and the predictions to compare
            pool.arm = arm
            logits[arm] = pool.logits(TASK, backbone, heads[TASK])[0]
            pool.evaluate(backbone, heads)
        for _ in range(args.repeats):
            for arm in ARMS:
                pool.arm = arm
                result = pool.evaluate(backbone, heads)[TASK]
                times[arm].append(result.pop("seconds"))
                results[arm] = result

    arms = {}
    for arm in ARMS:
        seconds = benchlib.median(times[arm])
        arms[arm] = {"seconds": seconds, "times": times[arm], "samples_per_s": len(lengths) / seconds,
                     "metric": results[arm]}
    preds = {arm: out.argmax(-1) for arm, out in logits.items()}
    identical = all(np.array_equal(preds[arm], preds["max_length_pad"]) and results[arm] == results["max_length_pad"]
                    for arm in ARMS)
    max_logit_diff = max(float(np.abs(logits[arm] - logits["max_length_pad"]).max()) for arm in ARMS)
    speedup = benchlib.ratio(arms["dynamic"]["samples_per_s"], arms["max_length_pad"]["samples_per_s"])
    unsorted = benchlib.ratio(arms["dataset_order"]["samples_per_s"], arms["max_length_pad"]["samples_per_s"])
    result = {"bench": "eval", "path": "TaskPool.evaluate", "task": TASK, "samples": len(lengths),
              "batch_size": args.batch_size, "repeats": args.repeats, "model": model_cfg, "max_length": MAX_LENGTH,
              "lengths": {"mean": float(lengths.mean()), "median": float(np.median(lengths)),
                          "p90": float(np.percentile(lengths, 90)), "max": int(lengths.max())},
              "dynamic": arms["dynamic"], "dataset_order": arms["dataset_order"],
              "max_length_pad": arms["max_length_pad"], "speedup": speedup, "speedup_dataset_order": unsorted,
              "goal": 2.0, "meets_goal": bool(speedup >= 2.0), "metrics_identical": identical,
              "max_abs_logit_diff": max_logit_diff, "machine": info}
    lines = [f"eval_bench: TaskPool.evaluate on {len(lengths)} {TASK} examples, batch {args.batch_size}, token lengths "
             f"mean {lengths.mean():.1f} / p90 {np.percentile(lengths, 90):.0f} / max {lengths.max()}; "
             f"load avg {info['loadavg_start'][0]}"]
    for arm, label in (("dynamic", "length-sorted dynamic"), ("dataset_order", "dynamic, dataset order"),
                       ("max_length_pad", f"pad to {MAX_LENGTH}")):
        lines.append(f"  {label:24s} {arms[arm]['samples_per_s']:8.1f} samples/s  accuracy "
                     f"{arms[arm]['metric']['accuracy']:.6f}")
    lines.append(f"  speed-up {speedup:.2f}x (goal >= 2x; dataset order {unsorted:.2f}x); predictions and metrics "
                 f"identical: {identical} (max |logit diff| {max_logit_diff:.1e})")
    if args.t5_samples > 0:
        t5 = result["t5"] = t5_arm(args.t5_samples, args.batch_size, args.repeats)
        lines.append(f"T5 arm: generation on {t5['samples']} prompted {T5_TASK} examples (t5-tiny, greedy), batch "
                     f"{args.batch_size}, token lengths mean {t5['lengths']['mean']:.1f} / p90 "
                     f"{t5['lengths']['p90']:.0f}"
                     f" / max {t5['lengths']['max']}")
        for arm, label in (("dynamic", "length-sorted dynamic"), ("pad_512", f"pad to {T5_PAD} (FusionBench)")):
            lines.append(f"  {label:24s} {t5[arm]['samples_per_s']:8.1f} samples/s  exact match "
                         f"{t5[arm]['metric']['accuracy']:.6f}")
        lines.append(f"  speed-up {t5['speedup']:.2f}x (goal >= 3x; per round "
                     f"{', '.join(f'{x:.2f}' for x in t5['speedup_rounds'])}); generated answers and metrics "
                     f"identical: "
                     f"{t5['answers_identical']} ({t5['distinct_answers']} distinct answers)")
    benchlib.emit(result, lines)
    return 0


if __name__ == "__main__":
    sys.exit(run_tool(main))
