"""Tokenizer, GLUEDataset, collate, sampler and DataLoader."""
import os

import numpy as np
import pytest

from ppmerge.data import EOS_ID, collate_batch, get_task, load_tokenizer, read_examples, task_root
from ppmerge.data.tokenizer import default_tokenizer_files
from ppmerge.errors import UserError

SENTENCES = ["Hello world!", "it 's a charming and often affecting journey . ",
             'The "more we study verbs, the crazier they get.', "  leading and trailing spaces  ",
             "Numbers 12345 and 3.14, émigré café naïve, 日本語 and emoji 🙂.", "don't won't isn't I'm",
             "a" * 300, "", "tab\tand\nnewline"]


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer()


@pytest.fixture(scope="module")
def paddle():
    from ppmerge.runtime import import_paddle

    return import_paddle()


# ---------------------------------------------------------------- tokenizer

def test_fast_tokenizer_matches_slow_reference(tokenizer):
    from ppmerge.runtime import import_paddlenlp_transformers

    slow = import_paddlenlp_transformers().GPTTokenizer(*default_tokenizer_files())
    fast_ids = tokenizer(SENTENCES, return_attention_mask=False)["input_ids"]
    for text, ids in zip(SENTENCES, fast_ids):
        assert ids == slow(text)["input_ids"], text
    assert tokenizer("Hello world")["input_ids"] == [15496, 995]   # GPT-2's well-known ids
    assert tokenizer.eos_token_id == tokenizer.pad_token_id == EOS_ID == 50256
    assert tokenizer.convert_tokens_to_ids("<|endoftext|>") == 50256


def test_tokenizer_missing_file(tmp_path):
    vocab, _ = default_tokenizer_files()
    with pytest.raises(UserError, match="merges file not found: .*nope.bpe"):
        load_tokenizer(vocab, str(tmp_path / "nope.bpe"))
    with pytest.raises(UserError, match="vocab file not found: .*missing.json"):
        load_tokenizer(str(tmp_path / "missing.json"))


# ---------------------------------------------------------------- dataset

def _longest_first(len_a, len_b, max_length):
    """Reference: every (kept_a, kept_b) that dropping one token at a time from the longer text
    (either one on a tie) until the pair fits can give."""
    states = {(len_a, len_b)}
    while any(a + b > max_length for a, b in states):
        states = {s for a, b in states
                  for s in ([(a, b)] if a + b <= max_length else
                            [(a - 1, b)] * (a >= b) + [(a, b - 1)] * (b >= a))}
    return states


@pytest.mark.parametrize("max_length", [5, 12, 25])
def test_pair_truncation_is_longest_first(tokenizer, max_length):
    from ppmerge.data.dataset import encode_examples
    from ppmerge.data.readers import Example

    texts = ["one", "the quick brown fox jumps over the lazy dog again and again and again",
             "short text here", "a b c d e f g h i j k l m n o p q r s t u v w x y z", ""]
    examples = [Example(a, b, 0) for a in texts for b in texts]
    encoded = encode_examples(tokenizer, examples, max_length)
    for ex, ids in zip(examples, encoded):
        a = tokenizer(ex.text_a)["input_ids"]
        b = tokenizer(ex.text_b)["input_ids"]
        if not a and not b:
            assert ids.tolist() == [EOS_ID]   # nothing to read: one eos so there is a token to pool
            continue
        assert ids.dtype == np.int64 and 1 <= len(ids) <= max_length
        allowed = _longest_first(len(a), len(b), max_length)
        assert any(ids.tolist() == a[:na] + b[:nb] for na, nb in allowed), (ex, ids, allowed)


def test_glue_dataset_on_generated_suite(glue_suite, tokenizer):
    from ppmerge.data import GLUEDataset

    for layout in ("glue", "fleetx"):
        root = task_root("RTE", glue_suite[layout], layout)
        ds = GLUEDataset("rte", root, "dev", tokenizer, max_length=12)
        examples = read_examples("RTE", root, "dev")
        assert ds.task is get_task("RTE") and ds.num_classes == 2 and len(ds) == len(examples) == 128
        for i in (0, 7, 127):
            item = ds[i]
            assert item["label"] == examples[i].label
            full = tokenizer(examples[i].text_a, text_pair=examples[i].text_b)["input_ids"]
            assert len(item["input_ids"]) == min(12, len(full))
            assert item["input_ids"].dtype == np.int64
    mnli = GLUEDataset("MNLI", task_root("MNLI", glue_suite["fleetx"], "fleetx"), "dev_mismatched", tokenizer)
    assert mnli.split == "dev_mismatched" and mnli.num_classes == 3 and max(len(x) for x in mnli.input_ids) <= 128
    stsb = GLUEDataset("STS-B", task_root("STSB", glue_suite["glue"], "glue"), "test", tokenizer)
    assert not stsb.has_labels and stsb[0]["label"] == -1.0 and isinstance(stsb[0]["label"], float)
    with pytest.raises(UserError, match="max_length"):
        GLUEDataset("RTE", task_root("RTE", glue_suite["glue"], "glue"), "dev", tokenizer, max_length=0)


# ---------------------------------------------------------------- collate

def test_collate_pads_to_longest_in_batch():
    samples = [{"input_ids": np.array([5, 6, 7], dtype=np.int64), "label": 1},
               {"input_ids": np.array([8], dtype=np.int64), "label": 0},
               {"input_ids": np.array([9, 0], dtype=np.int64), "label": 1}]
    batch = collate_batch(samples)
    np.testing.assert_array_equal(batch["input_ids"], [[5, 6, 7], [8, EOS_ID, EOS_ID], [9, 0, EOS_ID]])
    assert batch["input_ids"].dtype == np.int64
    np.testing.assert_array_equal(batch["lengths"], [3, 1, 2])
    assert batch["labels"].dtype == np.int64 and batch["labels"].tolist() == [1, 0, 1]
    scores = collate_batch([{"input_ids": [1], "label": 2.5}, {"input_ids": [1, 2], "label": 0.0}], pad_id=0)
    assert scores["labels"].dtype == np.float32 and scores["labels"].tolist() == [2.5, 0.0]
    assert scores["input_ids"].tolist() == [[1, 0], [1, 2]]


# ---------------------------------------------------------------- sampler

def _batches(sampler):
    return [list(map(int, b)) for b in sampler]


def test_sampler_order_and_epochs():
    from ppmerge.data import ShuffleBatchSampler

    a = ShuffleBatchSampler(50, 8, shuffle=True, drop_last=False, seed=7, num_replicas=1, rank=0)
    b = ShuffleBatchSampler(50, 8, shuffle=True, drop_last=False, seed=7, num_replicas=1, rank=0)
    first = _batches(a)
    assert first == _batches(b) == _batches(a)   # same seed and epoch: same order, every pass
    assert sorted(sum(first, [])) == list(range(50)) and len(first) == len(a) == 7
    assert sum(first, []) == np.random.default_rng([7, 0]).permutation(50).tolist()
    a.set_epoch(1)
    assert _batches(a) != first and sorted(sum(_batches(a), [])) == list(range(50))
    c = ShuffleBatchSampler(50, 8, shuffle=True, drop_last=True, seed=8, num_replicas=1, rank=0)
    assert _batches(c) != first and len(_batches(c)) == len(c) == 6
    d = ShuffleBatchSampler(10, 4, shuffle=False, drop_last=False, seed=0, num_replicas=1, rank=0)
    assert _batches(d) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


@pytest.mark.parametrize("n,replicas,batch_size", [(64, 2, 8), (50, 3, 4), (7, 4, 2)])
def test_sampler_ranks_disjoint_covering_equal(n, replicas, batch_size):
    from ppmerge.data import ShuffleBatchSampler

    shards = []
    for rank in range(replicas):
        s = ShuffleBatchSampler(n, batch_size, shuffle=True, drop_last=False, seed=3,
                                num_replicas=replicas, rank=rank)
        s.set_epoch(2)
        shards.append(sum(_batches(s), []))
        assert len(_batches(s)) == len(s)
    per_rank = -(-n // replicas)
    assert all(len(shard) == per_rank for shard in shards)   # equal steps on every rank
    everything = sum(shards, [])
    assert set(everything) == set(range(n))                    # covering
    assert len(everything) - len(set(everything)) == per_rank * replicas - n   # only the wrapped repeat


def test_sampler_sharding_matches_paddle_distributed_batch_sampler(paddle):
    from ppmerge.data import ShuffleBatchSampler

    class Sized:
        def __init__(self, n):
            self.n = n

        def __len__(self):
            return self.n

    for n, replicas, size, drop_last in [(10, 2, 3, False), (10, 3, 3, False), (23, 4, 5, True), (9, 1, 4, True)]:
        for rank in range(replicas):
            ours = ShuffleBatchSampler(n, size, False, drop_last, 0, num_replicas=replicas, rank=rank)
            ref = paddle.io.DistributedBatchSampler(Sized(n), size, replicas, rank, False, drop_last)
            assert _batches(ours) == _batches(ref)


def test_sampler_resume_gives_the_tail_once():
    from ppmerge.data import ShuffleBatchSampler

    s = ShuffleBatchSampler(40, 6, shuffle=True, drop_last=False, seed=1, num_replicas=2, rank=1)
    s.set_epoch(3)
    whole = _batches(s)
    s.set_epoch(3)
    s.set_start_step(2)
    assert len(s) == len(whole)   # len is the full epoch's
    assert _batches(s) == whole[2:]
    assert _batches(s) == whole   # one shot: the next pass starts at 0 again


def test_sampler_defaults_from_paddle_distributed_and_rank_check():
    from ppmerge.data import ShuffleBatchSampler

    s = ShuffleBatchSampler(10, 2, shuffle=False, drop_last=False, seed=0)
    assert (s.num_replicas, s.rank) == (1, 0)
    with pytest.raises(UserError, match="rank 2"):
        ShuffleBatchSampler(10, 2, shuffle=False, drop_last=False, seed=0, num_replicas=2, rank=2)


# ---------------------------------------------------------------- dataloader

def test_dataloader_yields_dict_of_tensors(glue_suite, tokenizer, paddle):
    from ppmerge.data import GLUEDataset, build_dataloader

    ds = GLUEDataset("STSB", task_root("STSB", glue_suite["glue"], "glue"), "dev", tokenizer, max_length=32)
    loader = build_dataloader(ds, batch_size=16, shuffle=True, drop_last=False, seed=5)
    loader.batch_sampler.set_epoch(1)
    expected = [collate_batch([ds[i] for i in idx]) for idx in loader.batch_sampler]
    got = list(loader)
    assert len(got) == len(expected) == len(loader) == 8
    for batch, ref in zip(got, expected):
        assert set(batch) == {"input_ids", "lengths", "labels"}
        assert all(isinstance(v, paddle.Tensor) for v in batch.values())
        assert batch["input_ids"].dtype == paddle.int64 and batch["labels"].dtype == paddle.float32
        for key in ref:
            np.testing.assert_array_equal(batch[key].numpy(), ref[key])
        assert batch["input_ids"].shape[1] == int(ref["lengths"].max()) <= 32


def test_package_import_does_not_import_paddle():
    import subprocess
    import sys

    code = "import sys, ppmerge.data; print('paddle' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert out.stdout.strip() == "False", out.stderr
