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
