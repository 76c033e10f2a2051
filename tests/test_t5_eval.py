"""tools/eval.py on T5 checkpoints: metrics from generated answers, GLUE submission from answer words."""
import json
import os

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "configs", "t5", "finetune_t5_tiny_glue.yaml")


def test_eval_tool_on_a_t5_checkpoint(glue_suite, t5_spiece, tmp_path, capsys):
    import importlib.util

    from ppmerge.data import task_root
    from ppmerge.data.t5_tokenizer import load_t5_tokenizer

    def tool(name):
        spec = importlib.util.spec_from_file_location(f"tool_{name}", os.path.join(ROOT, "tools", f"{name}.py"))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    root = task_root("SST2", glue_suite["glue"], "glue")
    tok = load_t5_tokenizer(t5_spiece)
    out = tmp_path / "run"
    common = [f"Tokenizer.spiece_model={t5_spiece}", f"Model.vocab_size={tok.vocab_size}",
              f"Data.Train.dataset.root={root}", f"Data.Eval.dataset.root={root}"]
    args = ["-c", TINY] + sum((["-o", o] for o in common + [f"Engine.save_load.output_dir={out}",
                                                             "Engine.num_train_epochs=2", "Engine.eval_freq=0"]), [])
    assert tool("train").main(args) == 0
    ckpt = out / "epoch_1_step_32"
    assert ckpt.is_dir()
    capsys.readouterr()

    eval_args = ["-c", TINY, "-o", f"Engine.save_load.ckpt_dir={ckpt}"] + sum((["-o", o] for o in common), [])
    assert tool("eval").main(eval_args) == 0
    results = json.loads((ckpt / "eval_results_SST2_dev.json").read_text())
    assert {"accuracy", "invalid_rate", "num_invalid"} <= set(results)
    best = json.loads((out / "best" / "metrics.json").read_text())
    assert results["accuracy"] == best["accuracy"]   # the same model (trained to the end), the same answers

    assert tool("eval").main(eval_args + ["--split", "test"]) == 0
    lines = (ckpt / "SST-2.tsv").read_text().splitlines()
    assert lines[0] == "index\tprediction" and len(lines) > 1
    # independent: generate the test answers here and map the words back by hand
    from ppmerge.config import load_config
    from ppmerge.engine import Engine, FinetuneModule, build_dataset

    cfg = load_config(TINY, common + [f"Model.pretrained={ckpt}"])
    module = FinetuneModule(cfg)
    test = build_dataset(cfg, "Eval", "test")
    texts = tok.batch_decode(np.asarray(Engine(cfg, module).predict(test)).astype(np.int64))
    expected = ["1" if t == "positive" else "0" for t in texts]
    assert [line.split("\t")[1] for line in lines[1:]] == expected


def test_lora_adapter_folder_loads_merged_into_its_base(glue_suite, t5_spiece, tmp_path):
    from ppmerge.config import load_config
    from ppmerge.data import task_root
    from ppmerge.data.t5_tokenizer import load_t5_tokenizer
    from ppmerge.engine import Engine, FinetuneModule, build_dataset
    from ppmerge.models.checkpoint import load_numpy_state_dict, save_state_dict
    from ppmerge.models.families import get_family
    from ppmerge.runtime import import_paddle

    paddle = import_paddle()
    vocab = load_t5_tokenizer(t5_spiece).vocab_size
    fam = get_family({"name": "t5-tiny", "vocab_size": vocab}, {"spiece_model": t5_spiece})
    paddle.seed(5)
    base = str(tmp_path / "base.pdparams")
    save_state_dict(fam.build().state_dict(), base)
    root = task_root("RTE", glue_suite["glue"], "glue")
    cfg = load_config(TINY, [f"Tokenizer.spiece_model={t5_spiece}", f"Model.vocab_size={vocab}",
                             f"Model.pretrained={base}", "Data.Train.dataset.name=RTE", f"Data.Train.dataset.root={root}",
                             "Data.Eval.dataset.name=RTE", f"Data.Eval.dataset.root={root}", "Engine.max_steps=3",
                             "Engine.eval_freq=0", f"Engine.save_load.output_dir={tmp_path / 'run'}", "Model.lora.r=4",
                             "Model.lora.save_merged=true", "Optimizer.lr.warmup=0"])
    module = FinetuneModule(cfg)
    Engine(cfg, module).fit(build_dataset(cfg, "Train"), None)
    folder = tmp_path / "run" / "lora"
    module.export(str(tmp_path / "run"))
    net = fam.build()
    fam.load_pretrained(net, str(folder))
    merged = load_numpy_state_dict(str(folder / "merged_model.pdparams"))
    loaded = {k: v.numpy() for k, v in net.state_dict().items()}
    assert set(loaded) == set(merged)
    for key in merged:
        np.testing.assert_allclose(loaded[key], merged[key], rtol=1e-5, atol=1e-6)
    assert not np.array_equal(merged["t5.encoder.block.0.layer.0.SelfAttention.q.weight"],
                              load_numpy_state_dict(base)["t5.encoder.block.0.layer.0.SelfAttention.q.weight"])
    # an adapter whose base is not a local model: one line naming the folder, never a guessed base
    import json
    import shutil

    from ppmerge.errors import CheckpointError

    orphan = tmp_path / "orphan"
    shutil.copytree(folder, orphan)
    config = json.loads((orphan / "adapter_config.json").read_text())
    (orphan / "adapter_config.json").write_text(json.dumps(dict(config, base_model="hub/flan-t5-base")))
    import pytest

    with pytest.raises(CheckpointError, match="base model 'hub/flan-t5-base'"):
        fam.load_pretrained(fam.build(), str(orphan))
