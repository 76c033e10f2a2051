"""The streamed linear merges' memory: the pool streams each fine-tuned model tensor by tensor from its
file, so a consuming merge holds the base (its accumulator) and one tensor, never a second model.
Measured with tracemalloc (it sees numpy's buffers), against a plain numpy formula for the values."""
import tracemalloc

import numpy as np
import pytest

from ppmerge.errors import CheckpointError

TASKS = ["SST2", "MNLI", "RTE"]
SHAPES = {"gpt.embeddings.word_embeddings.weight": (1024, 512), "gpt.decoder.norm.weight": (512,),
          **{f"gpt.decoder.layers.{i}.linear1.weight": (512, 1024) for i in range(4)},
          **{f"gpt.decoder.layers.{i}.linear1.bias": (1024,) for i in range(4)}}


def _write_pool(folder, nan_in=None):
    from ppmerge.models.checkpoint import save_state_dict

    rng = np.random.default_rng(0)
    base = {k: rng.standard_normal(s, dtype=np.float32) for k, s in SHAPES.items()}
    paths = {"base": str(folder / "base.pdparams")}
    save_state_dict(base, paths["base"])
    models = {}
    for i, task in enumerate(TASKS):
        sd = {k: v + rng.standard_normal(v.shape, dtype=np.float32) for k, v in base.items()}
        if task == nan_in:
            sd["gpt.decoder.layers.2.linear1.weight"][3, 5] = np.nan
        sd["score.weight"] = rng.standard_normal((512, 3), dtype=np.float32)
        paths[task] = str(folder / f"{task}.pdparams")
        save_state_dict(sd, paths[task])
        models[task] = sd
    return paths, base, models


def _pool(paths):
    from ppmerge.merge.model_pool import ModelPool

    return ModelPool(paths["base"], {t: paths[t] for t in TASKS})


def test_streamed_task_arithmetic_holds_one_tensor_not_a_model(tmp_path):
    from ppmerge.merge import METHODS
    from ppmerge.merge.model_pool import StreamedBackbone

    paths, base, models = _write_pool(tmp_path)
    model_bytes = sum(v.nbytes for v in base.values())
    largest = max(v.nbytes for v in base.values())
    pool = _pool(paths)
    pool.base  # loaded before measuring: the base becomes the accumulator
    tiny = {"w": np.ones(4, np.float32)}  # warm-up: paddle's import is not the merge's memory
    METHODS["task_arithmetic"].stream(dict(tiny), [dict(tiny)], scaling_factor=0.3)
    assert all(isinstance(backbone, StreamedBackbone) for _, backbone in pool.stream())
    tracemalloc.start()
    try:
        start = tracemalloc.get_traced_memory()[0]
        merged = METHODS["task_arithmetic"].stream(pool.base, pool.sized_stream(), consume=True, scaling_factor=0.3)
        peak = tracemalloc.get_traced_memory()[1] - start
    finally:
        tracemalloc.stop()
    # one tensor read at a time (+ blocks of the arithmetic), far below a second model (8 MB)
    assert peak < largest + 0.2 * model_bytes, (peak, largest, model_bytes)
    for key, value in base.items():
        expected = value + 0.3 * sum(models[t][key] - value for t in TASKS)
        np.testing.assert_allclose(merged[key], expected, rtol=1e-5, atol=1e-5, err_msg=key)
    assert {t: pool.heads[t]["score.weight"].shape for t in TASKS} == {t: (512, 3) for t in TASKS}


def test_streamed_models_are_checked_as_read(tmp_path):
    from ppmerge.merge import METHODS

    paths, _, _ = _write_pool(tmp_path, nan_in="MNLI")
    pool = _pool(paths)
    with pytest.raises(CheckpointError, match="model MNLI .*'gpt.decoder.layers.2.linear1.weight' contains NaN"):
        METHODS["simple_average"].stream(pool.base, pool.sized_stream(), consume=True)


def test_block_updates_also_copy_back_when_not_zero_copy():
    """A Fortran-order accumulator is not shared with the device tensor: the result must be copied back.
    Blocks are forced small so that several row blocks and a per-entry (DARE-like) coefficient are used."""
    from ppmerge.merge import executor_linear as streaming

    rng = np.random.default_rng(3)
    for order in ("C", "F"):
        acc = np.asarray(rng.standard_normal((300, 40), dtype=np.float32), order=order)
        value = rng.standard_normal((300, 40), dtype=np.float32)
        coef = rng.random((300, 40), dtype=np.float32)
        expected = (acc * 0.5 + value * 0.3) * coef
        old_block = streaming.BLOCK_BYTES
        streaming.BLOCK_BYTES = 4096
        try:
            assert len(streaming._row_blocks(acc)) > 1
            streaming._scale_in_place(acc, 0.5)
            streaming._add_in_place(acc, value, 0.3)
            streaming._scale_in_place(acc, coef)  # numpy per-entry coefficient
        finally:
            streaming.BLOCK_BYTES = old_block
        np.testing.assert_allclose(acc, expected, rtol=1e-6, atol=1e-6, err_msg=order)
