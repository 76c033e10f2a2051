"""T5 fine-tuning through the same engine and tools: full and LoRA, exact resume, adapter export."""
import io
import os

import numpy as np
import pytest

CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "t5",
                      "finetune_t5_tiny_glue.yaml")


def t5_config(glue_suite, spiece, out, task="SST2", extra=()):
    from ppmerge.config import load_config
    from ppmerge.data import task_root
    from ppmerge.data.t5_tokenizer import load_t5_tokenizer

    root = task_root(task, glue_suite["glue"], "glue")
    vocab = load_t5_tokenizer(spiece).vocab_size
    if any(e.startswith("Model.lora") for e in extra):  # a LoRA run needs a saved base (Model.pretrained)
        extra = [*extra, f"Model.pretrained={_base(os.path.dirname(os.fspath(out)), {'name': 't5-tiny', 'vocab_size': vocab})}"]
    return load_config(CONFIG, [f"Tokenizer.spiece_model={spiece}", f"Model.vocab_size={vocab}",
                                f"Data.Train.dataset.name={task}", f"Data.Train.dataset.root={root}",
                                f"Data.Eval.dataset.name={task}", f"Data.Eval.dataset.root={root}",
                                f"Engine.save_load.output_dir={out}", "Engine.logging_freq=100", *extra])


def _base(folder, model_cfg):
    """A seeded base model for LoRA runs in `folder` (written once per test folder)."""
    from ppmerge.models.init import write_initial_model

    path = os.path.join(folder, f"base_{model_cfg['name']}.pdparams")
    if not os.path.exists(path):
        write_initial_model(path, model_cfg, seed=0)
    return path


def _engine(cfg):
    from ppmerge.engine import Engine, FinetuneModule

    return Engine(cfg, FinetuneModule(cfg), out=io.StringIO())


def _state(network):
    return {k: v.numpy().copy() for k, v in network.state_dict().items()}


def test_t5_loss_is_the_answer_token_cross_entropy(glue_suite, t5_spiece, tmp_path):
    from ppmerge.engine import FinetuneModule, build_dataset
    from ppmerge.runtime import import_paddle

    paddle = import_paddle()
    cfg = t5_config(glue_suite, t5_spiece, tmp_path / "o", "MNLI")
    module = FinetuneModule(cfg)
    module.network.eval()
    ds = build_dataset(cfg, "Eval")
    batch = {k: paddle.to_tensor(v) for k, v in module.collate([ds[i] for i in range(4)]).items()}
    with paddle.no_grad():
        loss = float(module.training_step(batch))
        # independent: teacher-forced logits (decoder input = [0] + labels[:-1]), numpy cross-entropy
        labels = batch["labels"].numpy()
        dec = np.concatenate([np.zeros((4, 1), np.int64), np.where(labels < 0, 0, labels)[:, :-1]], axis=1)
        out = module.network(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                             decoder_input_ids=paddle.to_tensor(dec))
        logits = (out[0] if isinstance(out, (tuple, list)) else out.logits).numpy().astype(np.float64)
    logp = logits - logits.max(-1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
    mask = labels >= 0
    rows, cols = np.nonzero(mask)
    expected = -logp[rows, cols, labels[mask]].mean()
    assert loss == pytest.approx(expected, rel=1e-5)


def test_full_finetune_learns_and_eval_is_in_dataset_order(glue_suite, t5_spiece, tmp_path):
    from ppmerge.engine import build_dataset

    cfg = t5_config(glue_suite, t5_spiece, tmp_path / "o", extra=["Engine.num_train_epochs=3", "Engine.eval_freq=0"])
    engine = _engine(cfg)
    dev = build_dataset(cfg, "Eval")
    before = engine.evaluate(dev)
    summary = engine.fit(build_dataset(cfg, "Train"), dev)
    after = summary["eval"]
    assert before["accuracy"] <= 0.1 and after["accuracy"] >= before["accuracy"] + 0.1
    assert after["invalid_rate"] < 0.5
    # length-sorted batches, restored: the same answers as one example at a time in order
    ids = engine.predict(dev)
    tok = engine.module.family.tokenizer()
    from ppmerge.runtime import import_paddle

    paddle = import_paddle()
    engine.module.network.eval()
    with paddle.no_grad():
        for i in (0, 5, 17):
            one = {k: paddle.to_tensor(v) for k, v in engine.module.collate([dev[i]]).items()}
            single = engine.module.family.predict(engine.module.network, one).numpy()[0]
            assert tok.decode(single) == tok.decode(ids[i])


LORA = ["Model.lora.r=4", "Model.lora.alpha=8", "Engine.eval_freq=0", "Optimizer.lr.warmup=0"]


def test_lora_step_changes_only_lora_weights_and_exports(glue_suite, t5_spiece, tmp_path):
    from ppmerge.engine import build_dataset
    from ppmerge.models.checkpoint import load_numpy_state_dict

    cfg = t5_config(glue_suite, t5_spiece, tmp_path / "o",
                    extra=LORA + ["Engine.max_steps=3", "Model.lora.target_modules=[q, v]", "Model.lora.save_merged=true"])
    engine = _engine(cfg)
    before = _state(engine.module.network)
    trainable = {n for n, p in engine.module.network.named_parameters() if not p.stop_gradient}
    assert trainable and all(".lora_A" in n or ".lora_B" in n for n in trainable)
    assert any(".SelfAttention.q.lora_A" in n for n in trainable) and not any(".k.lora" in n for n in trainable)
    engine.fit(build_dataset(cfg, "Train"), None)
    after = _state(engine.module.network)
    changed = {k for k in before if not np.array_equal(before[k], after[k])}
    assert changed and all(".lora_" in k for k in changed)
    assert any(k.endswith("lora_A") for k in changed) and any(k.endswith("lora_B") for k in changed)

    written = engine.module.export(str(tmp_path / "o"))
    adapter = load_numpy_state_dict(written[0])
    merged = load_numpy_state_dict(written[1])
    assert all(".lora_" in k for k in adapter) and not any(".lora_" in k for k in merged)
    key = "t5.encoder.block.0.layer.0.SelfAttention.q"
    a, b = adapter[f"{key}.lora_A"], adapter[f"{key}.lora_B"]
    assert a.shape[1] == 4 and b.shape[0] == 4
    base = after[f"{key}.weight"]
    np.testing.assert_allclose(merged[f"{key}.weight"], base + (8 / 4) * a @ b, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(merged[f"{key.replace('.q', '.k')}.weight"], after[f"{key.replace('.q', '.k')}.weight"])

    # the merged model answers exactly as the LoRA model (same greedy generations)
    from ppmerge.models.families import get_family
    from ppmerge.runtime import import_paddle

    paddle = import_paddle()
    fam = engine.module.family
    fresh = fam.build()
    from ppmerge.models.t5 import load_t5_state_dict

    load_t5_state_dict(fresh, merged)
    fresh.eval()
    engine.module.network.eval()
    dev = build_dataset(cfg, "Eval")
    batch = {k: paddle.to_tensor(v) for k, v in fam.collate([dev[i] for i in range(8)]).items()}
    with paddle.no_grad():
        np.testing.assert_array_equal(fam.predict(fresh, batch).numpy(), fam.predict(engine.module.network, batch).numpy())
    assert get_family(cfg["Model"]).name == "t5"


def test_lora_resume_is_exact(glue_suite, t5_spiece, tmp_path):
    from ppmerge.engine import build_dataset
    from ppmerge.models.checkpoint import load_numpy_state_dict

    extra = LORA + ["Engine.max_steps=6", "Engine.save_load.save_steps=3", "Engine.save_load.save_epoch=0"]
    cfg = t5_config(glue_suite, t5_spiece, tmp_path / "full", extra=extra)
    train = build_dataset(cfg, "Train")
    full = _engine(cfg)
    full.fit(train, None)
    cfg2 = t5_config(glue_suite, t5_spiece, tmp_path / "resumed",
                     extra=extra + [f"Engine.save_load.ckpt_dir={tmp_path / 'full' / 'epoch_0_step_3'}"])
    resumed = _engine(cfg2)
    resumed.fit(train, None)
    assert resumed.history == full.history
    a = load_numpy_state_dict(str(tmp_path / "full" / "epoch_0_step_6" / "model.pdparams"))
    b = load_numpy_state_dict(str(tmp_path / "resumed" / "epoch_0_step_6" / "model.pdparams"))
    assert set(a) == set(b) and all(np.array_equal(a[k], b[k]) for k in a)


def test_gpt_lora_trains_adapters_and_head(glue_suite, tmp_path):
    from ppmerge.config import load_config
    from ppmerge.data import task_root
    from ppmerge.engine import build_dataset

    root = task_root("SST2", glue_suite["glue"], "glue")
    cfg = load_config(os.path.join(os.path.dirname(CONFIG), "..", "gpt", "finetune_gpt_tiny_glue.yaml"),
                      [f"Data.Train.dataset.root={root}", f"Data.Eval.dataset.root={root}", "Engine.max_steps=2",
                       f"Engine.save_load.output_dir={tmp_path / 'g'}", "Model.lora.r=4", *LORA[2:],
                       f"Model.pretrained={_base(str(tmp_path), {'name': 'gpt-tiny'})}"])
    engine = _engine(cfg)
    before = _state(engine.module.network)
    engine.fit(build_dataset(cfg, "Train"), None)
    after = _state(engine.module.network)
    changed = {k for k in before if not np.array_equal(before[k], after[k])}
    assert "score.weight" in changed
    assert all(".lora_" in k or k == "score.weight" for k in changed)
    assert any("q_proj.lora_B" in k for k in changed) and not any("k_proj" in k for k in before if ".lora_" in k)
