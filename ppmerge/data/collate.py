"""Dynamic padding: a batch is padded to its own longest sequence, never to max_length."""
import numpy as np

from ppmerge.data.tokenizer import EOS_ID


def collate_batch(samples, pad_id=EOS_ID):
    """List of dataset items -> dict of numpy arrays.

    input_ids int64 [B, Lmax] (right-padded with pad_id), lengths int64 [B] (true lengths: the model
    pools the last real token from them, so a pad id inside the text is harmless), labels [B]:
    int64 class ids, or float32 scores for regression (STS-B); -1 on test splits, which have none."""
    lengths = np.array([len(s["input_ids"]) for s in samples], dtype=np.int64)
    input_ids = np.full((len(samples), int(lengths.max(initial=0))), pad_id, dtype=np.int64)
    for row, sample in zip(input_ids, samples):
        row[: len(sample["input_ids"])] = sample["input_ids"]
    is_score = any(isinstance(s["label"], (float, np.floating)) for s in samples)
    labels = np.array([s["label"] for s in samples], dtype=np.float32 if is_score else np.int64)
    return {"input_ids": input_ids, "lengths": lengths, "labels": labels}
