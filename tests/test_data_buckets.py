"""Length-sorted evaluation batches: every index exactly once, longest first, outputs restored to the
dataset's order, and the eval DataLoader built on them."""
import numpy as np
import pytest

from ppmerge.data import EOS_ID, length_sorted_batches, restore_order, sequence_lengths


@pytest.mark.parametrize("n, batch_size", [(0, 4), (1, 4), (7, 3), (32, 8), (100, 7), (5, 64)])
def test_batches_cover_every_index_once_longest_first(n, batch_size):
    lengths = np.random.default_rng(n).integers(1, 40, size=n)
    batches = length_sorted_batches(lengths, batch_size)
    flat = np.concatenate(batches) if batches else np.zeros(0, dtype=np.int64)
    assert sorted(flat.tolist()) == list(range(n))          # a permutation: nothing lost or repeated
    assert [len(b) for b in batches] == [min(batch_size, n - i) for i in range(0, n, batch_size)]
    assert all(np.diff(lengths[flat]) <= 0)                  # longest first, across batch borders
    # ties keep dataset order (a stable sort): the plan is the same on every run
    for a, b in zip(flat[:-1], flat[1:]):
        if lengths[a] == lengths[b]:
            assert a < b


def test_sorting_cuts_the_padding_of_a_long_tailed_split():
    """The reason for all this: in dataset order nearly every batch holds one long sequence."""
    rng = np.random.default_rng(0)
    lengths = np.clip(np.round(rng.lognormal(np.log(25), 0.6, size=512)), 3, 128).astype(int)
    padded = lambda batches: sum(len(b) * lengths[b].max() for b in batches)
    in_order = [np.arange(i, min(i + 32, 512)) for i in range(0, 512, 32)]
    sorted_batches = length_sorted_batches(lengths, 32)
    assert padded(sorted_batches) < 0.75 * padded(in_order)
    assert padded(sorted_batches) >= lengths.sum()


def test_restore_order_inverts_the_plan():
    lengths = np.array([3, 9, 1, 9, 5, 2, 7])
    batches = length_sorted_batches(lengths, 3)
    np.testing.assert_array_equal(np.concatenate(batches), [1, 3, 6, 4, 0, 5, 2])
    # "model output" of each position = a row that names it; run in batch order, then restored
    outputs = np.stack([[p, 10 * p] for p in np.concatenate(batches)])
    restored = restore_order(batches, outputs)
    np.testing.assert_array_equal(restored, [[p, 10 * p] for p in range(7)])
    # the unrestored outputs are not in order, so a missing restore could not pass the check above
    assert not np.array_equal(outputs, restored)
    np.testing.assert_array_equal(restore_order(batches, np.concatenate(batches)), np.arange(7))
    assert restore_order([], np.zeros((0, 2))).shape == (0, 2)


def test_restore_order_rejects_a_plan_that_is_not_a_permutation():
    with pytest.raises(ValueError, match="2 output rows for 3"):
        restore_order([np.array([0, 1, 2])], np.zeros(2))
    with pytest.raises(ValueError, match="exactly once"):
        restore_order([np.array([0, 0]), np.array([2])], np.zeros(3))
    with pytest.raises(ValueError, match="positive"):
        length_sorted_batches([1, 2], 0)


class _Items:
    """A dataset without `.input_ids` (sequence_lengths must ask item by item)."""

    def __init__(self, lengths):
        self.items = [{"input_ids": np.arange(1, n + 1, dtype=np.int64), "label": i % 2}
                      for i, n in enumerate(lengths)]

    def __len__(self):
        return len(self.items)

    def __getitem__(self, index):
        return self.items[index]


def test_sequence_lengths_of_any_dataset():
    ds = _Items([4, 1, 6])
    np.testing.assert_array_equal(sequence_lengths(ds), [4, 1, 6])
    np.testing.assert_array_equal(sequence_lengths(ds, count=2), [4, 1])
    np.testing.assert_array_equal(sequence_lengths(ds, count=10), [4, 1, 6])


def test_eval_dataloader_on_a_glue_split(glue_suite):
    from ppmerge.data import GLUEDataset, LengthSortedBatchSampler, build_eval_dataloader, load_tokenizer, task_root

    dataset = GLUEDataset("SST2", task_root("SST2", glue_suite["glue"], "glue"), "dev", load_tokenizer())
    lengths = np.array([len(dataset[i]["input_ids"]) for i in range(len(dataset))])
    np.testing.assert_array_equal(sequence_lengths(dataset), lengths)
    assert len(set(lengths.tolist())) > 3, "the generated split must have varied lengths for this test"

    loader = build_eval_dataloader(dataset, 16, count=50)
    sampler = loader.batch_sampler
    assert isinstance(sampler, LengthSortedBatchSampler) and len(sampler) == len(loader) == 4
    seen = []
    for batch, positions in zip(loader, sampler.batches):
        ids, lens = batch["input_ids"].numpy(), batch["lengths"].numpy()
        assert ids.shape[1] == lens.max()                    # padded to its own longest only
        for row, length, label, index in zip(ids, lens, batch["labels"].numpy(), positions):
            np.testing.assert_array_equal(row[:length], dataset[int(index)]["input_ids"])
            assert (row[length:] == EOS_ID).all() and label == dataset[int(index)]["label"]
        seen.extend(positions.tolist())
    assert sorted(seen) == list(range(50))                   # the first 50 examples, each once
    assert seen != list(range(50))                           # and really reordered
    assert [len(b) for b in sampler] == [16, 16, 16, 2] and list(sampler) == list(sampler)  # fixed plan
