"""Length-sorted evaluation batches: each batch holds sequences of similar length, so padding a batch
to its own longest wastes little compute; the outputs are put back in the dataset's order afterwards.

In dataset order almost every batch of a long-tailed GLUE split holds one long sequence, so dynamic
padding alone pads most batches to near max_length. Sorting first removes that. Predictions cannot
change: the model pools the last real token and attention is causal, so trailing padding is inert."""
import numpy as np


def sequence_lengths(dataset, count=None):
    """Token lengths of the first `count` items (all by default), without collating them.
    GLUEDataset keeps its token ids in `.input_ids`; any other dataset is asked item by item."""
    count = len(dataset) if count is None else min(int(count), len(dataset))
    ids = getattr(dataset, "input_ids", None)
    if ids is not None:
        return np.array([len(x) for x in ids[:count]], dtype=np.int64)
    return np.array([len(dataset[i]["input_ids"]) for i in range(count)], dtype=np.int64)


def length_sorted_batches(lengths, batch_size):
    """Positions 0..n-1 of `lengths`, longest first (ties keep their order), cut into consecutive
    batches of `batch_size` (the last may be shorter). Every position appears exactly once.

    Longest first: the batch that needs the most memory runs first, so running out shows at once."""
    lengths = np.asarray(lengths)
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    order = np.argsort(-lengths, kind="stable")
    return [order[start:start + batch_size] for start in range(0, len(order), int(batch_size))]


def restore_order(batches, outputs):
    """Rows of `outputs` (the batches' outputs concatenated, in batch order) back in position order:
    row i of the result belongs to position i."""
    order = np.concatenate(batches) if len(batches) else np.zeros(0, dtype=np.int64)
    outputs = np.asarray(outputs)
    if len(order) != len(outputs):
        raise ValueError(f"{len(outputs)} output rows for {len(order)} batched positions")
    if not np.array_equal(np.sort(order), np.arange(len(order))):
        raise ValueError("the batches must hold every position 0..n-1 exactly once")
    restored = np.empty_like(outputs)
    restored[order] = outputs
    return restored
