"""Data parallel set-up. Launch with `python -m paddle.distributed.launch --nproc_per_node N` (CPU:
gloo; GPUs: add `--devices 0,1,...`). Each rank reads its own shard of every epoch; gradients are
averaged by paddle.DataParallel, so every rank keeps identical weights; only rank 0 logs and saves."""
from ppmerge.runtime import import_paddle

_initialized = False


def world():
    """(world_size, rank), initialising the process group the first time when world_size > 1."""
    global _initialized
    paddle = import_paddle()
    size = paddle.distributed.get_world_size()
    if size > 1 and not _initialized:
        paddle.distributed.init_parallel_env()
        _initialized = True
    return size, paddle.distributed.get_rank()
