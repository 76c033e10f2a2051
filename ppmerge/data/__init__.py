"""GLUE data: the nine tasks, readers for both layouts, tokenizer, collate, sampler, generated suite.

Importing this package does not import paddle: the paddle-backed names (GLUEDataset,
ShuffleBatchSampler, build_dataloader, LengthSortedBatchSampler, build_eval_dataloader) load on
first use, so tools' --help stays instant."""
import importlib

from ppmerge.data.buckets import length_sorted_batches, restore_order, sequence_lengths
from ppmerge.data.collate import collate_batch
from ppmerge.data.readers import Example, data_file, detect_layout, normalize_split, read_examples
from ppmerge.data.tasks import TASK_NAMES, TASKS, TaskSpec, get_task
from ppmerge.data.tokenizer import EOS_ID, load_tokenizer

# Loaded on first use: paddle-backed names, and the generator (so that `python -m
# ppmerge.data.synthetic` runs a module that is not imported yet).
_LAZY = {
    "write_glue_suite": "ppmerge.data.synthetic",
    "task_root": "ppmerge.data.synthetic",
    "GLUEDataset": "ppmerge.data.dataset",
    "encode_examples": "ppmerge.data.dataset",
    "ShuffleBatchSampler": "ppmerge.data.sampler",
    "build_dataloader": "ppmerge.data.sampler",
    "LengthSortedBatchSampler": "ppmerge.data.sampler",
    "build_eval_dataloader": "ppmerge.data.sampler",
}

__all__ = ["TASK_NAMES", "TASKS", "TaskSpec", "get_task", "Example", "read_examples", "data_file",
           "detect_layout", "normalize_split", "load_tokenizer", "EOS_ID", "collate_batch",
           "length_sorted_batches", "restore_order", "sequence_lengths",
           *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'ppmerge.data' has no attribute {name!r}")
