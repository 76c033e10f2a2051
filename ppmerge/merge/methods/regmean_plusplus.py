"""regmean_plusplus (RegMean++, Nguyen et al. 2025): RegMean where the inputs of layer l come from the
already-merged layers below it, so the merge of a layer sees the features the merged model will really
feed it (the inter-layer dependence that plain RegMean ignores).

The backbone's keys are grouped by transformer block (`...layers.<l>....`; keys before the first block, the
embeddings, form the first group and keys after the last, the final LayerNorm, the last). Groups are merged
in order. For group l and model i, the Gram matrices G_i = X_iᵀX_i / n_i of the group's Linear layers are
collected (as `regmean` does: real tokens of model i's own training examples, the same examples and seed)
on a model holding the MERGED groups < l and model i's own groups ≥ l, with model i's head; the group is then
merged exactly as RegMean merges (Linear weights W* = solve(Σ G̃_i, Σ G̃_i W_i), G̃ = α G + (1 − α) diag(G);
biases, LayerNorms and embeddings averaged). With one block and equal embeddings it is RegMean; from block 1
on the Gram matrices differ. Cost: one pass over every model's examples per group with a Linear (L passes
instead of RegMean's one). Same parameters as `regmean`.
"""
import re
import sys

from ppmerge.merge.methods.regmean import REGMEAN_PARAMS, gram_matrices, linear_layers, merge_with_grams
from ppmerge.merge.registry import register
from ppmerge.progress import progress_bar as tqdm

_BLOCK = re.compile(r"(?:^|\.)layers\.(\d+)\.")


def layer_groups(keys):
    """Keys grouped by transformer block, in depth order: [before the blocks, block 0, …, after the blocks]
    (empty groups dropped)."""
    blocks, before, after = {}, [], []
    for key in keys:
        match = _BLOCK.search(key)
        if match:
            blocks.setdefault(int(match.group(1)), []).append(key)
        elif blocks:
            after.append(key)
        else:
            before.append(key)
    groups = [before] + [blocks[b] for b in sorted(blocks)] + [after]
    return [g for g in groups if g]


@register("regmean_plusplus", data_dependent=True, needs_base=False, params=REGMEAN_PARAMS, doc="RegMean++: RegMean layer by layer, each layer's Gram matrices collected on the inputs produced by the "
       "already-merged layers below it")
def regmean_plusplus(base, models, *, context, num_regmean_examples=256, batch_size=32,
                     reduce_non_diagonal_ratio=0.6):
    pool = context.task_pool
    merged = {}
    groups = layer_groups(list(models[0]))
    for depth, group in enumerate(groups):
        names = set(group)
        grams = []
        for task, backbone, head in zip(context.task_names, models, context.heads):
            model = pool.load_model(task, {**backbone, **merged}, head)
            if not linear_layers(model, names):
                break  # no Linear in this group: averaged below, no data needed
            batches = pool.train_batches(task, num_regmean_examples, batch_size, seed=context.seed)
            with tqdm(total=pool.num_train_examples(task, num_regmean_examples), unit="ex", file=sys.stderr,
                      desc=f"regmean++ {task} layer {depth + 1}/{len(groups)}", leave=False,
                      disable=not pool.progress, dynamic_ncols=True) as bar:
                gram = gram_matrices(model, batches, names, bar)[0]
            grams.append({k: v.cpu() for k, v in gram.items()})
        if len(grams) < len(models):
            grams = [{} for _ in models]
        merged.update(merge_with_grams([{k: m[k] for k in group} for m in models], grams, reduce_non_diagonal_ratio))
    return {key: merged[key] for key in models[0]}
