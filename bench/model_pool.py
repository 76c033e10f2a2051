"""Synthetic fine-tuned GPT state dicts for the merge benchmarks: a base plus one model per task,
with paddlenlp GPTForSequenceClassification key names and each task's own score head, written as
`.pdparams` through the project's `save_state_dict`.

A fine-tuned model is the base plus small Gaussian noise: merging cost depends on shapes, not on
what the weights learnt."""
import os

import numpy as np

# GPT-2 shapes by size (vocab 50257 as gpt2-medium-en; positions as GPT-2).
SIZES = {
    "tiny": dict(vocab=50257, hidden=64, layers=2, ffn=256, positions=128),
    "small": dict(vocab=50257, hidden=768, layers=12, ffn=3072, positions=1024),   # GPT-2 small, 124M
    "medium": dict(vocab=50257, hidden=1024, layers=24, ffn=4096, positions=1024),  # gpt2-medium, 355M
}


def backbone_shapes(vocab, hidden, layers, ffn, positions):
    """name -> shape of every backbone parameter (Linear weights are [in, out], as in Paddle)."""
    shapes = {
        "gpt.embeddings.word_embeddings.weight": (vocab, hidden),
        "gpt.embeddings.position_embeddings.weight": (positions, hidden),
    }
    for i in range(layers):
        p = f"gpt.decoder.layers.{i}."
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            shapes[p + f"self_attn.{proj}.weight"] = (hidden, hidden)
            shapes[p + f"self_attn.{proj}.bias"] = (hidden,)
        shapes[p + "linear1.weight"] = (hidden, ffn)
        shapes[p + "linear1.bias"] = (ffn,)
        shapes[p + "linear2.weight"] = (ffn, hidden)
        shapes[p + "linear2.bias"] = (hidden,)
        for norm in ("norm1", "norm2"):
            shapes[p + f"{norm}.weight"] = (hidden,)
            shapes[p + f"{norm}.bias"] = (hidden,)
    shapes["gpt.decoder.norm.weight"] = (hidden,)
    shapes["gpt.decoder.norm.bias"] = (hidden,)
    return shapes


def random_backbone(shapes, seed=0, std=0.02):
    """A base backbone of float32 Gaussian weights."""
    rng = np.random.default_rng(seed)
    return {name: rng.standard_normal(shape, dtype=np.float32) * np.float32(std) for name, shape in shapes.items()}


def state_dict_bytes(state):
    return int(sum(np.asarray(v).nbytes for v in state.values()))


def finetuned_from(base_backbone, num_classes, seed, delta=1e-3, std=0.02):
    """Base + N(0, delta²) on every backbone entry, plus a fresh score head [hidden, num_classes]."""
    rng = np.random.default_rng(seed)
    state = {}
    for name, value in base_backbone.items():
        noise = rng.standard_normal(value.shape, dtype=np.float32)
        noise *= np.float32(delta)
        noise += value
        state[name] = noise
    hidden = base_backbone["gpt.decoder.norm.weight"].shape[0]
    state["score.weight"] = rng.standard_normal((hidden, num_classes), dtype=np.float32) * np.float32(std)
    return state


def write_pool(folder, base_backbone, tasks, seed=0, delta=1e-3):
    """Write base.pdparams (+ a 2-class head) and <task>.pdparams per task; returns their paths.

    One model is in memory at a time besides the base, so a 355M pool fits in ~3 model sizes."""
    from ppmerge.data import get_task
    from ppmerge.models.checkpoint import save_state_dict

    os.makedirs(folder, exist_ok=True)
    hidden = base_backbone["gpt.decoder.norm.weight"].shape[0]
    rng = np.random.default_rng(seed)
    base = dict(base_backbone)
    base["score.weight"] = rng.standard_normal((hidden, 2), dtype=np.float32) * np.float32(0.02)
    paths = {"base": os.path.join(folder, "base.pdparams"), "models": {}}
    save_state_dict(base, paths["base"])
    for i, task in enumerate(tasks):
        state = finetuned_from(base_backbone, get_task(task).num_classes, seed=seed + 1 + i, delta=delta)
        path = os.path.join(folder, f"{task}.pdparams")
        save_state_dict(state, path)
        paths["models"][task] = path
        del state
    return paths


def main():
    """CLI, so that merge_bench writes the pool in a child process and stays small itself:
    python bench/model_pool.py FOLDER --size medium --tasks CoLA SST2 ...  (prints the paths as JSON)."""
    import argparse
    import json

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("folder")
    parser.add_argument("--size", choices=list(SIZES), required=True)
    parser.add_argument("--tasks", nargs="+", required=True)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    base = random_backbone(backbone_shapes(**SIZES[args.size]), seed=args.seed)
    paths = write_pool(args.folder, base, args.tasks, seed=args.seed)
    print(json.dumps(dict(paths, model_bytes=state_dict_bytes(base))))


if __name__ == "__main__":
    main()
