"""Seeded, resumable, rank-sharded training batches; length-sorted evaluation batches; the
DataLoaders built on them."""
import math

import numpy as np

from ppmerge.data.buckets import length_sorted_batches, sequence_lengths
from ppmerge.data.collate import collate_batch
from ppmerge.errors import UserError
from ppmerge.runtime import import_paddle

paddle = import_paddle()   # quiet import, every CPU core


class ShuffleBatchSampler(paddle.io.BatchSampler):
    """Batches of dataset indices for one rank.

    * Order: epoch e is the permutation from np.random.default_rng([seed, e]) (or 0..n-1 when not
      shuffling), so a run is repeatable and a resumed run sees the same order.
    * Ranks: sharded exactly like paddle's DistributedBatchSampler. The epoch order is padded by
      wrapping around (its first samples repeat) to a multiple of num_replicas R; each global batch
      is B * R consecutive positions and rank r takes its r-th block of B (the last, shorter global
      batch is split into R equal parts). So the R ranks of one step together see the batch a
      single process with batch B * R would; shards are disjoint (up to the < R wrapped samples),
      cover the data, and are equal in size, so every rank does the same number of steps.
    * Resume: set_start_step(k) makes the next pass over the sampler skip its first k batches (one
      shot: later epochs start at 0). len() is always the full epoch's number of batches.
    """

    def __init__(self, num_samples, batch_size, shuffle=True, drop_last=False, seed=0,
                 num_replicas=None, rank=None):
        if not isinstance(batch_size, int) or batch_size < 1:
            raise UserError(f"sampler batch_size must be a positive integer, got {batch_size!r}")
        if num_replicas is None:
            num_replicas = paddle.distributed.get_world_size()
        if rank is None:
            rank = paddle.distributed.get_rank()
        if not 0 <= rank < num_replicas:
            raise UserError(f"sampler rank {rank} is not in [0, {num_replicas})")
        self.num_samples = int(num_samples)
        self.batch_size = batch_size
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)
        self.seed = int(seed)
        self.num_replicas = num_replicas
        self.rank = rank
        self.epoch = 0
        self.start_step = 0

    def set_epoch(self, epoch):
        self.epoch = int(epoch)

    def set_start_step(self, step):
        self.start_step = int(step)

    def epoch_order(self, epoch=None):
        """All indices of an epoch, before sharding."""
        epoch = self.epoch if epoch is None else epoch
        if not self.shuffle:
            return np.arange(self.num_samples)
        return np.random.default_rng([self.seed, epoch]).permutation(self.num_samples)

    def rank_indices(self):
        """This rank's indices for the current epoch (wrap-padded to an equal share)."""
        order = self.epoch_order()
        if self.num_samples == 0:
            return order
        replicas, size = self.num_replicas, self.batch_size
        total = math.ceil(self.num_samples / replicas) * replicas
        order = np.resize(order, total)   # wraps: repeats the order's first samples
        full = total - total % (size * replicas)
        body = order[:full].reshape(-1, replicas, size)[:, self.rank].ravel()
        tail = order[full:].reshape(replicas, -1)[self.rank]
        return np.concatenate([body, tail])

    def __iter__(self):
        skip, self.start_step = self.start_step, 0
        indices = self.rank_indices().tolist()
        stop = len(indices) - len(indices) % self.batch_size if self.drop_last else len(indices)
        for start in range(skip * self.batch_size, stop, self.batch_size):
            yield indices[start:start + self.batch_size]

    def __len__(self):
        per_rank = math.ceil(self.num_samples / self.num_replicas)
        if self.drop_last:
            return per_rank // self.batch_size
        return math.ceil(per_rank / self.batch_size)


def build_dataloader(dataset, batch_size, shuffle, drop_last, seed, num_workers=0,
                     num_replicas=None, rank=None, collate_fn=None):
    """paddle DataLoader over ShuffleBatchSampler + collate_batch.

    Each batch is a dict of paddle Tensors: input_ids int64 [B, Lmax], lengths int64 [B],
    labels int64 [B] (float32 for STS-B). `loader.batch_sampler` is the ShuffleBatchSampler
    (call its set_epoch / set_start_step). `collate_fn`: another family's collate (T5), default collate_batch."""
    sampler = ShuffleBatchSampler(len(dataset), batch_size, shuffle=shuffle, drop_last=drop_last,
                                  seed=seed, num_replicas=num_replicas, rank=rank)
    return paddle.io.DataLoader(dataset, batch_sampler=sampler, collate_fn=collate_fn or collate_batch,
                                num_workers=num_workers, return_list=True)


class LengthSortedBatchSampler(paddle.io.BatchSampler):
    """Evaluation batches of similar length (`length_sorted_batches`): the indices 0..n-1 of the
    first n examples, longest first. `.batches` is the fixed plan: pass it to `restore_order` to put
    the outputs back in dataset order. Never shuffles, never drops, same plan on every pass."""

    def __init__(self, lengths, batch_size):
        if not isinstance(batch_size, int) or batch_size < 1:
            raise UserError(f"sampler batch_size must be a positive integer, got {batch_size!r}")
        self.batch_size = batch_size
        self.batches = length_sorted_batches(lengths, batch_size)

    def __iter__(self):
        for batch in self.batches:
            yield batch.tolist()

    def __len__(self):
        return len(self.batches)


def build_eval_dataloader(dataset, batch_size, num_workers=0, count=None, collate_fn=None):
    """paddle DataLoader over the first `count` examples (all by default) in length-sorted batches,
    each padded to its own longest (collate_batch). `loader.batch_sampler.batches` restores the order."""
    sampler = LengthSortedBatchSampler(sequence_lengths(dataset, count), batch_size)
    return paddle.io.DataLoader(dataset, batch_sampler=sampler, collate_fn=collate_fn or collate_batch,
                                num_workers=num_workers, return_list=True)
