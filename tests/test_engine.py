"""Engine: exact resume, seeding, max_steps / step mode, checkpoints, AMP plumbing, optimizer set-up."""
import io
import os

import numpy as np
import pytest
from test_engine_support import tiny_config

from ppmerge.errors import ConfigError


@pytest.fixture(scope="module")
def sst2(tmp_path_factory):
    from ppmerge.data.synthetic import write_glue_suite

    base = str(tmp_path_factory.mktemp("engine_glue"))
    write_glue_suite(base, layout="glue", n_train=128, n_dev=32, n_test=8, seed=0, tasks=["SST2", "STSB"])
    from ppmerge.engine import build_dataset

    cfg = tiny_config("SST2", base, "unused")
    return base, build_dataset(cfg, "Train"), build_dataset(cfg, "Eval")


def _run(base, data, out, extra=(), task="SST2"):
    from ppmerge.engine import Engine, FinetuneModule

    cfg = tiny_config(task, base, str(out), extra)
    log = io.StringIO()
    engine = Engine(cfg, FinetuneModule(cfg), out=log)
    summary = engine.fit(data[0], data[1])
    return engine, summary, log.getvalue()


# dropout > 0 so that the RNG state matters; accumulation so that the sampler position does too
RESUME = ["Model.hidden_dropout_prob=0.2", "Model.attention_probs_dropout_prob=0.1", "Engine.num_train_epochs=2",
          "Engine.accumulate_steps=2", "Data.Train.sampler.batch_size=8", "Engine.save_load.save_steps=5",
          "Engine.save_load.save_epoch=0", "Engine.eval_freq=0", "Optimizer.weight_decay=0.01"]


def _weights(folder):
    from ppmerge.models import load_numpy_state_dict

    return load_numpy_state_dict(os.path.join(folder, "model.pdparams"))


def test_resume_gives_the_same_losses_step_for_step(sst2, tmp_path, monkeypatch):
    base, train, dev = sst2
    full, summary, _ = _run(base, (train, dev), tmp_path / "full", RESUME)
    assert len(full.history) == 16  # 128 / 8 = 16 micro-batches -> 8 steps per epoch, 2 epochs
    assert summary["last_checkpoint"].endswith("epoch_1_step_16")
    ckpt = tmp_path / "full" / "epoch_0_step_5"  # mid-epoch: the sampler must skip 10 micro-batches
    assert sorted(os.listdir(ckpt)) == ["meta_state.pdopt", "model.pdparams", "model_state.pdopt"]

    resumed, _, log = _run(base, (train, dev), tmp_path / "resumed",
                           RESUME + [f"Engine.save_load.ckpt_dir={ckpt}"])
    assert "[resume]" in log
    assert resumed.history == full.history  # bit-identical, not approximately
    final_full, final_resumed = _weights(tmp_path / "full" / "epoch_1_step_16"), \
        _weights(tmp_path / "resumed" / "epoch_1_step_16")
    assert all(np.array_equal(final_full[k], final_resumed[k]) for k in final_full)

    # the test has teeth: without restoring the RNG the dropout masks differ and so do the losses
    import ppmerge.engine.engine as engine_module

    monkeypatch.setattr(engine_module, "set_rng_states", lambda states: None)
    unseeded, _, _ = _run(base, (train, dev), tmp_path / "no_rng", RESUME + [f"Engine.save_load.ckpt_dir={ckpt}"])
    assert unseeded.history[:5] == full.history[:5] and unseeded.history[5:] != full.history[5:]


def test_seed_makes_runs_repeatable(sst2, tmp_path):
    base, train, dev = sst2
    extra = ["Engine.max_steps=4", "Model.hidden_dropout_prob=0.1", "Engine.eval_freq=0"]
    a, _, _ = _run(base, (train, dev), tmp_path / "a", extra)
    b, _, _ = _run(base, (train, dev), tmp_path / "b", extra)
    c, _, _ = _run(base, (train, dev), tmp_path / "c", extra + ["Global.seed=7"])
    assert a.history == b.history
    assert a.history != c.history


def test_max_steps_stops_and_step_mode_rolls_over_epochs(sst2, tmp_path):
    base, train, dev = sst2
    engine, summary, log = _run(base, (train, dev), tmp_path / "m", ["Engine.max_steps=3", "Engine.logging_freq=1"])
    assert len(engine.history) == 3 and summary["global_step"] == 3
    assert summary["last_checkpoint"].endswith("epoch_0_step_3")
    with open(tmp_path / "m" / "latest") as f:
        assert f.read().strip() == "epoch_0_step_3"
    assert os.path.isfile(tmp_path / "m" / "config.yaml")
    assert os.path.isfile(tmp_path / "m" / "best" / "model.pdparams")
    lines = [line for line in log.splitlines() if line.startswith("[train] epoch")]
    assert len(lines) == 3 and all(k in lines[0] for k in ("loss:", "lr:", "samples/s:", "eta:"))
    assert "accuracy:" in log  # eval printed with the task's metric

    # step mode: 128 / 16 = 8 steps per epoch, 11 steps run into the second epoch; eval every 5 steps
    engine, summary, log = _run(base, (train, dev), tmp_path / "s",
                                ["Engine.run_mode=step", "Engine.max_steps=11", "Engine.eval_freq=5",
                                 "Engine.save_load.save_steps=10"])
    assert len(engine.history) == 11
    assert [step for step, _ in engine.eval_history] == [5, 10, 11]
    assert sorted(d for d in os.listdir(tmp_path / "s") if d.startswith("epoch")) == \
        ["epoch_1_step_10", "epoch_1_step_11"]
    with pytest.raises(ConfigError, match="max_steps"):
        _run(base, (train, dev), tmp_path / "bad", ["Engine.run_mode=step"])


def test_regression_task_trains_with_mse(sst2, tmp_path):
    from ppmerge.engine import build_dataset

    base = sst2[0]
    cfg = tiny_config("STSB", base, str(tmp_path))
    data = (build_dataset(cfg, "Train"), build_dataset(cfg, "Eval"))
    engine, summary, _ = _run(base, data, tmp_path / "stsb", ["Engine.max_steps=2"], task="STSB")
    assert set(summary["eval"]) == {"pearson", "spearman", "corr", "loss"}
    assert engine.best["key"] == "corr"
    assert engine.predict(data[1]).shape == (len(data[1]), 1)


def test_num_classes_and_loss_must_match_the_task(sst2):
    from ppmerge.engine import FinetuneModule

    base = sst2[0]
    with pytest.raises(ConfigError, match="Model.num_classes=1"):
        FinetuneModule(tiny_config("STSB", base, "x", ["Model.num_classes=2"]))
    with pytest.raises(ConfigError, match="MSELoss"):
        FinetuneModule(tiny_config("STSB", base, "x", ["Model.loss.train.name=CrossEntropyLoss"]))


def test_amp_plan_and_cpu_fallback_warns_once(sst2, tmp_path):
    from ppmerge.engine.amp import AmpPlan, plan_amp

    mix = {"enable": True, "dtype": "float16", "level": "O2", "scale_loss": 1024.0,
           "custom_white_list": ["lookup_table"], "custom_black_list": ["reduce_sum"]}
    plan = plan_amp(mix, lambda dtype: True, "gpu:0")
    assert plan == AmpPlan(True, "float16", "O2", True, 1024.0, ("lookup_table",), ("reduce_sum",))
    bf16 = plan_amp(dict(mix, dtype="bfloat16", level="O1"), lambda dtype: True, "gpu:0")
    assert bf16.enabled and bf16.dtype == "bfloat16" and not bf16.use_scaler
    assert plan_amp(dict(mix, enable=False), lambda dtype: True) == AmpPlan()
    with pytest.raises(ConfigError, match="dtype"):
        plan_amp(dict(mix, dtype="int8"), lambda dtype: True)

    base, train, dev = sst2
    engine, _, log = _run(base, (train, dev), tmp_path / "amp",
                          ["Engine.max_steps=1", "Engine.mix_precision.enable=True",
                           "Engine.mix_precision.dtype=bfloat16"])
    warnings = [line for line in log.splitlines() if "mix_precision" in line]
    assert warnings == ["warning: mix_precision requested but cpu does not support bfloat16; training in float32"]
    assert not engine.amp.enabled and engine.scaler is None
    assert "precision float32" in log


def test_optimizer_excludes_bias_and_norm_from_decay_and_schedule(sst2):
    from ppmerge.engine import FinetuneModule
    from ppmerge.engine.optim import build_lr_scheduler, build_optimizer, decay_parameter_names, warmup_steps

    module = FinetuneModule(tiny_config("SST2", sst2[0], "x"))
    decayed = decay_parameter_names(module.network)
    by_path = {path: p.name for path, p in module.network.named_parameters()}
    assert by_path["score.weight"] in decayed and by_path["gpt.decoder.layers.0.linear1.weight"] in decayed
    assert by_path["gpt.decoder.layers.0.linear1.bias"] not in decayed
    assert by_path["gpt.decoder.norm.weight"] not in decayed
    assert warmup_steps(0.1, 100) == 10 and warmup_steps(7, 100) == 7 and warmup_steps(1.0, 100) == 1

    sched = build_lr_scheduler({"name": "LinearDecayWithWarmup", "learning_rate": 1.0, "warmup": 0.2}, 10)
    lrs = []
    for _ in range(10):
        lrs.append(sched.get_lr())
        sched.step()
    expected = [s / 2 if s < 2 else (10 - s) / 8 for s in range(10)]  # linear up over 2, down to 0 at 10
    np.testing.assert_allclose(lrs, expected, atol=1e-7)
    for warmup, expected in ((0.2, [0.0, 0.5] + [1.0] * 8), (0, [1.0] * 10)):  # Constant: up over 2, then flat
        sched = build_lr_scheduler({"name": "Constant", "learning_rate": 1.0, "warmup": warmup}, 10)
        lrs = []
        for _ in range(10):
            lrs.append(sched.get_lr())
            sched.step()
        np.testing.assert_allclose(lrs, expected, atol=1e-7)
    with pytest.raises(ConfigError, match="Cosine"):
        build_lr_scheduler({"name": "Cosine", "learning_rate": 1.0, "warmup": 0}, 10)
    with pytest.raises(ConfigError, match="AdamW"):
        build_optimizer({"name": "SGD"}, module.network, sched)


def test_optimizer_state_keys_survive_another_process_numbering():
    """Checkpoint optimizer keys use parameter paths, not paddle's per-process generated names."""
    from ppmerge.engine.checkpoint import generated_optimizer_state, structured_optimizer_state
    from ppmerge.runtime import import_paddle

    paddle = import_paddle()

    def make():
        model = paddle.nn.Sequential(paddle.nn.Linear(3, 4), paddle.nn.LayerNorm(4))
        opt = paddle.optimizer.AdamW(parameters=model.parameters())
        model(paddle.rand([2, 3])).sum().backward()
        opt.step()
        return model, opt

    model_a, opt_a = make()
    model_b, _ = make()  # same shape, different generated names (linear_N+1 ...)
    saved = structured_optimizer_state(opt_a.state_dict(), model_a)
    assert "0.weight@moment1_0" in saved and "1.bias@moment2_0" in saved
    restored = generated_optimizer_state(saved, model_b)
    name_b = dict(model_b.named_parameters())["0.weight"].name
    np.testing.assert_array_equal(restored[f"{name_b}_moment1_0"].numpy(),
                                  opt_a.state_dict()[f"{dict(model_a.named_parameters())['0.weight'].name}_moment1_0"].numpy())


def test_fleetx_global_batch_keys_are_checked_not_ignored():
    from ppmerge.engine.data import check_batch_sizes
    from ppmerge.errors import ConfigError

    cfg = {"Global": {"micro_batch_size": 8, "local_batch_size": 16, "global_batch_size": 32},
           "Data": {"Train": {"sampler": {"batch_size": 8}}}}
    check_batch_sizes(cfg, accumulate_steps=2, world_size=2)  # 8 per pass, 16 per step, 32 over 2 ranks
    for key, bad in (("micro_batch_size", 16), ("local_batch_size", 8), ("global_batch_size", 16)):
        wrong = {**cfg, "Global": {**cfg["Global"], key: bad}}
        with pytest.raises(ConfigError, match=f"Global.{key}={bad} disagrees"):
            check_batch_sizes(wrong, accumulate_steps=2, world_size=2)
    check_batch_sizes({"Global": {}, "Data": {"Train": {"sampler": {"batch_size": 8}}}}, 3, 1)  # null: derived
