"""GLUEDataset: one task split, tokenized once up front (fast tokenizer, batched)."""
import numpy as np

from ppmerge.data.readers import data_file, normalize_split, read_examples
from ppmerge.data.tasks import get_task
from ppmerge.data.tokenizer import EOS_ID
from ppmerge.errors import DataError, UserError
from ppmerge.runtime import import_paddle

paddle = import_paddle()   # quiet import, every CPU core

_CHUNK = 4096   # examples per tokenizer call: fast, and bounded memory on MNLI's 393k pairs


def encode_examples(tokenizer, examples, max_length):
    """Token ids per example, FleetX's way: GPT-2 adds no special tokens, a pair is simply a + b,
    truncated `longest_first` so that len <= max_length. Texts that give no tokens at all become
    the single token <|endoftext|> so that every sequence has a last real token to pool."""
    ids = []
    for start in range(0, len(examples), _CHUNK):
        chunk = examples[start:start + _CHUNK]
        text_a = [ex.text_a for ex in chunk]
        pairs = chunk[0].text_b is not None
        kwargs = dict(max_length=max_length, truncation="longest_first", return_attention_mask=False,
                      return_token_type_ids=False, add_special_tokens=False)
        if pairs:
            out = tokenizer(text_a, text_pair=[ex.text_b for ex in chunk], **kwargs)
        else:
            out = tokenizer(text_a, **kwargs)
        ids.extend(np.asarray(x if len(x) else [EOS_ID], dtype=np.int64) for x in out["input_ids"])
    return ids


class GLUESplit(paddle.io.Dataset):
    """One split of a task, read once: `.task`, `.split`, `.num_classes`, `.path` (its file), `.examples`,
    `.has_labels` (by the split's file format, not by its rows) and `.labels` (-1 / -1.0 where there is
    none). The GPT and T5 datasets add their tokenization on top."""

    def __init__(self, task, root, split):
        super().__init__()
        self.task = get_task(task)
        self.split = normalize_split(self.task, split)
        self.num_classes = self.task.num_classes
        self.path, columns, _ = data_file(self.task, root, self.split)
        self.examples = read_examples(self.task, root, self.split)
        if not self.examples:
            raise DataError(f"{self.path}: file has no examples ({self.task.name} {self.split})")
        self.has_labels = columns.label is not None
        missing = -1.0 if self.task.is_regression else -1
        self.labels = [missing if ex.label is None else ex.label for ex in self.examples]

    def require_labels(self, purpose):
        """DataError naming the split and file when it has no labels (a test split) but `purpose` needs them."""
        if not self.has_labels:
            raise DataError(f"{self.path}: the {self.task.name} {self.split} split has no labels, but {purpose} "
                            f"needs them (use a labelled split: train, dev, dev_matched, dev_mismatched)")

    def __len__(self):
        return len(self.examples)


class GLUEDataset(GLUESplit):
    """Item: {"input_ids": np.int64[L] with 1 <= L <= max_length, "label": int | float}.

    label is the class id (int), the STS-B score (float), or -1 / -1.0 on test splits."""

    def __init__(self, task, root, split, tokenizer, max_length=128):
        if not isinstance(max_length, int) or max_length < 1:
            raise UserError(f"dataset max_length must be a positive integer, got {max_length!r}")
        super().__init__(task, root, split)
        self.max_length = max_length
        self.input_ids = encode_examples(tokenizer, self.examples, max_length)

    def __getitem__(self, index):
        return {"input_ids": self.input_ids[index], "label": self.labels[index]}
