"""A tiny GPT fine-tuned from scratch on each of the nine generated GLUE tasks clearly beats chance.

All nine train in this one process (imports and the tokenizer are paid once). Settings: 512 train
examples, 2 epochs, batch 16, lr 3e-3 (the tiny config's other values)."""
import io

import pytest
from test_engine_support import tiny_config

from ppmerge.data import TASK_NAMES

# metric key -> value a model that learned nothing gets (chance); each must be beaten by a margin
THRESHOLDS = {"CoLA": ("mcc", 0.4), "SST2": ("accuracy", 0.8), "MRPC": ("f1", 0.8), "STSB": ("corr", 0.6),
              "QQP": ("f1", 0.8), "MNLI": ("accuracy", 0.6), "QNLI": ("accuracy", 0.8), "RTE": ("accuracy", 0.8),
              "WNLI": ("accuracy", 0.8)}
SETTINGS = ["Engine.num_train_epochs=2", "Optimizer.lr.learning_rate=3e-3", "Engine.eval_freq=0",
            "Engine.save_load.save_epoch=0"]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    import time

    from ppmerge.data.synthetic import write_glue_suite
    from ppmerge.engine import Engine, FinetuneModule, build_dataset

    base = str(tmp_path_factory.mktemp("tasks_glue"))
    write_glue_suite(base, layout="glue", n_train=512, n_dev=64, n_test=8, seed=0)
    out = {}
    for name in TASK_NAMES:
        start = time.perf_counter()
        cfg = tiny_config(name, base, str(tmp_path_factory.mktemp(name)), SETTINGS)
        engine = Engine(cfg, FinetuneModule(cfg), out=io.StringIO())
        summary = engine.fit(build_dataset(cfg, "Train"), build_dataset(cfg, "Eval"))
        out[name] = dict(summary["eval"], seconds=time.perf_counter() - start)
    print({name: {k: round(v, 3) for k, v in r.items()} for name, r in out.items()})
    return out


@pytest.mark.parametrize("task", TASK_NAMES)
def test_tiny_finetune_beats_chance(results, task):
    key, threshold = THRESHOLDS[task]
    assert results[task][key] > threshold, results[task]
