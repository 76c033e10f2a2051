"""T5 text-to-text data: a GLUE split rendered through the prompt table and tokenized once.

Same readers and layouts as the GPT side (`read_examples`). Item: `{"input_ids": int64[L] (prompt
pieces + eos, L <= max_length), "labels": int64[T] (answer pieces + eos), "label": class id | score}`;
test splits have no answer (`labels` = [eos], `label` -1 / -1.0, `.has_labels` False).

`collate_t5(samples)`: `input_ids` [B, Lmax] padded with 0, `attention_mask` [B, Lmax] (1 = real),
`lengths` [B], `labels` [B, Tmax] padded with -100 (ignored by the loss), `glue_labels` [B] (int64,
float32 for STS-B). Every batch is padded to its own longest (FusionBench pads every input to 512).
"""
import numpy as np

from ppmerge.data.prompts import load_prompts, render_input, target_text
from ppmerge.data.dataset import GLUESplit
from ppmerge.data.t5_tokenizer import EOS_ID, PAD_ID
from ppmerge.errors import UserError
from ppmerge.runtime import import_paddle

paddle = import_paddle()

IGNORE_INDEX = -100


class T5GLUEDataset(GLUESplit):
    def __init__(self, task, root, split, tokenizer, max_length=128, prompts=None, target_max_length=16):
        if not isinstance(max_length, int) or max_length < 2:
            raise UserError(f"dataset max_length must be an integer >= 2 (text + eos), got {max_length!r}")
        super().__init__(task, root, split)
        self.max_length = max_length
        self.prompt = (prompts or load_prompts())[self.task.name]
        self.tokenizer = tokenizer
        self.input_ids = tokenizer.encode([render_input(self.prompt, ex) for ex in self.examples], max_length)
        targets = [target_text(self.prompt, ex.label) for ex in self.examples]
        self.targets = targets
        encoded = tokenizer.encode([t or "" for t in targets], target_max_length)
        self.target_ids = [ids if t is not None else np.array([EOS_ID], np.int64) for ids, t in zip(encoded, targets)]

    def __getitem__(self, index):
        return {"input_ids": self.input_ids[index], "labels": self.target_ids[index], "label": self.labels[index]}

    def collate(self, samples):
        return collate_t5(samples)


def collate_t5(samples):
    """List of T5 items -> dict of numpy arrays (see the module docstring)."""
    n = len(samples)
    lengths = np.array([len(s["input_ids"]) for s in samples], dtype=np.int64)
    input_ids = np.full((n, int(lengths.max(initial=0))), PAD_ID, dtype=np.int64)
    attention_mask = np.zeros_like(input_ids)
    for row, mask, s in zip(input_ids, attention_mask, samples):
        row[:len(s["input_ids"])] = s["input_ids"]
        mask[:len(s["input_ids"])] = 1
    t_max = max((len(s["labels"]) for s in samples), default=0)
    labels = np.full((n, t_max), IGNORE_INDEX, dtype=np.int64)
    for row, s in zip(labels, samples):
        row[:len(s["labels"])] = s["labels"]
    is_score = any(isinstance(s["label"], (float, np.floating)) for s in samples)
    glue_labels = np.array([s["label"] for s in samples], dtype=np.float32 if is_score else np.int64)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "lengths": lengths,
            "labels": labels, "glue_labels": glue_labels}
