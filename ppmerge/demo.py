"""The embedded demo (`make demo`): the whole toolkit on a generated GLUE suite and a tiny GPT.

It takes the same path users take for GPT-345M: `tools/train.py` with the shipped training config
and `-o` overrides for each task, then `tools/merge.py` with the shipped merge configs and `-o`
overrides for each method. The tools run in this process (their `main(argv)`), so the ~6 s of
paddle/paddlenlp imports are paid once. Each tool's own output goes to a log file beside its results;
the screen gets one line per step and the final table.
"""
import contextlib
import importlib.util
import json
import os
import sys
import time

from ppmerge.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN_CONFIG = os.path.join(ROOT, "configs", "gpt", "finetune_gpt_tiny_glue.yaml")
MERGE_CONFIGS = os.path.join(ROOT, "configs", "merge")

# (row name, merge config, extra overrides, which models). The first run also computes the reference
# rows. CABS merges two task vectors (its lamb1 x lamb2 grid), the config's RTE + MRPC pair.
ALL = None
METHOD_RUNS = [
    ("simple_average", "gpt_glue_simple_average.yaml", [], ALL),
    ("weighted_average", "gpt_glue_weighted_average.yaml", [], ALL),
    ("task_arithmetic", "gpt_glue_task_arithmetic.yaml", [], ALL),
    ("ties_merging", "gpt_glue_ties_merging.yaml", [], ALL),
    ("dare_task_arithmetic", "gpt_glue_dare_task_arithmetic.yaml", [], ALL),
    ("dare_ties_merging", "gpt_glue_dare_ties_merging.yaml", [], ALL),
    ("fisher_merging", "gpt_glue_fisher_merging.yaml", ["Merge.num_fisher_examples=32"], ALL),
    ("regmean", "gpt_glue_regmean.yaml", ["Merge.num_regmean_examples=64"], ALL),
    ("simple_ensemble", "gpt_glue_simple_ensemble.yaml", [], ALL),
    ("task_arithmetic_sweep", "gpt_glue_task_arithmetic_sweep.yaml", [], ALL),
    ("cabs", "gpt_glue_cabs.yaml", [], ("RTE", "MRPC")),
    ("task_singular_vectors", "gpt_glue_task_singular_vectors.yaml", [], ALL),
    ("iso_c", "gpt_glue_iso_c.yaml", [], ALL),
    ("iso_cts", "gpt_glue_iso_cts.yaml", [], ALL),
    ("wudi_merging", "gpt_glue_wudi_merging.yaml", ["Merge.iter_num=5"], ALL),
    ("emr_merging", "gpt_glue_emr_merging.yaml", [], ALL),
    ("adamerging", "gpt_glue_adamerging.yaml", ["Merge.max_steps=5", "Merge.lr=0.01"], ALL),
    ("regmean_plusplus", "gpt_glue_regmean_plusplus.yaml", ["Merge.num_regmean_examples=64"], ALL),
    ("tsv_compression", "gpt_glue_tsv_compression.yaml", [], ALL),
]


def run_models(models, which):
    """The models a run merges: all of them, or the named pair (else the first two there are)."""
    if which is ALL:
        return models
    picked = {t: models[t] for t in which if t in models}
    return picked if len(picked) == len(which) else dict(list(models.items())[:len(which)])


def method_overrides(name, models):
    """Overrides that depend on the pool's size (the shipped configs are written for nine tasks)."""
    from ppmerge.data import TASK_NAMES

    if name == "weighted_average" and list(models) != TASK_NAMES:
        return [f"Merge.weights={json.dumps([1.0] * len(models))}"]
    return []


# A fine-tuned model must beat the base on its own task's main metric by at least this much (x100).
MIN_MARGIN = 10.0


def _load_tool(name):
    """Import tools/<name>.py as a module (tools/ is not a package)."""
    path = os.path.join(ROOT, "tools", f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"ppmerge_tool_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run_logged(tool, argv, log_path):
    """Run tool.main(argv) with its stdout/stderr in log_path; a failure points at the log."""
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    with open(log_path, "w", encoding="utf-8") as log:
        log.write("$ " + " ".join(argv) + "\n")
        log.flush()
        try:
            with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
                code = tool.main(argv)
        except UserError as exc:
            raise UserError(f"{exc} (full log: {log_path})") from None
    if code:
        raise UserError(f"{' '.join(argv[:3])} exited {code}; see {log_path}")


def write_base(path, seed):
    """A tiny GPT 'pretrained' base: seeded random init, backbone only (no head), real GPT-2 vocab
    (what `tools/init_model.py --preset gpt-tiny --seed SEED` writes)."""
    from ppmerge.models.init import write_initial_model

    write_initial_model(path, "gpt-tiny", seed)


def finetune_overrides(task, data_dir, base_path, out_dir, epochs):
    """The -o overrides a user passes to fine-tune the tiny config on one task (cf. projects/gpt/*.sh)."""
    from ppmerge.data import get_task
    from ppmerge.data.synthetic import task_root

    spec = get_task(task)
    root = task_root(spec.name, data_dir, "glue")
    eval_split = "dev_matched" if spec.name == "MNLI" else "dev"
    overrides = [
        f"Data.Train.dataset.name={spec.name}", f"Data.Train.dataset.root={root}",
        f"Data.Eval.dataset.name={spec.name}", f"Data.Eval.dataset.root={root}",
        f"Data.Eval.dataset.split={eval_split}",
        f"Model.num_classes={spec.num_classes}", f"Model.pretrained={base_path}",
        f"Model.loss.train.name={spec.loss}", f"Model.loss.eval.name={spec.loss}",
        f"Model.metric.train.name={spec.metric}", f"Model.metric.eval.name={spec.metric}",
        f"Engine.num_train_epochs={epochs}", f"Engine.save_load.output_dir={out_dir}",
        "Engine.logging_freq=1000",
    ]
    return [arg for o in overrides for arg in ("-o", o)]


def final_model(out_dir):
    """The final checkpoint's model file (the engine names the last checkpoint in output_dir/latest)."""
    with open(os.path.join(out_dir, "latest"), encoding="utf-8") as f:
        name = f.read().strip()
    return os.path.join(out_dir, name, "model.pdparams")


def merge_overrides(models, base_path, data_dir, out_dir, n_dev):
    # JSON is YAML: the whole pool and task list are replaced, not merged into the config's nine tasks
    overrides = [
        f"ModelPool.base={base_path}", f"ModelPool.models={json.dumps(models)}",
        f"TaskPool.tasks={json.dumps(list(models))}",
        "Global.device=cpu", f"TaskPool.data_root={data_dir}", "TaskPool.layout=glue",
        "TaskPool.model.name=gpt-tiny", "TaskPool.max_length=64", "TaskPool.batch_size=64",
        f"TaskPool.max_examples={n_dev}", f"Output.dir={out_dir}",
    ]
    return [arg for o in overrides for arg in ("-o", o)]


def _main_row(row, tasks):
    return {t: (row["metrics"][t]["main"] * 100 if t in row["metrics"] else float("nan")) for t in tasks}


def collect_table(reports, tasks):
    """Rows: the base, each fine-tuned model on its own task, then each method (best sweep point)."""
    first = next(iter(reports.values()))
    rows = {}
    base = [r for r in first["rows"] if r["kind"] == "base"]
    if base:
        rows["Pretrained base"] = _main_row(base[0], tasks)
    own = {}
    for r in first["rows"]:
        if r["kind"] == "finetuned":
            own.update({t: v for t, v in _main_row(r, tasks).items() if t in r["metrics"]})
    if own:
        rows["Fine-tuned (own task)"] = own
    for name, report in reports.items():
        merged = [r for r in report["rows"] if r["kind"] in ("merged", "sweep")]
        pick = [r for r in merged if r.get("best")] or merged
        notes = [] if set(report["tasks"]) == set(tasks) else ["+".join(report["tasks"]) + " only"]
        if pick[0].get("best") and len(merged) > 1:
            notes.append(f"best: {pick[0]['name']}")
        label = f"{name} ({', '.join(notes)})" if notes else name
        rows[label] = _main_row(pick[0], tasks)
    return rows


def format_table(rows, tasks):
    import math

    header = ["Model", *tasks, "Avg."]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    for name, values in rows.items():
        present = [values[t] for t in tasks if t in values and not math.isnan(values[t])]
        avg = sum(present) / len(present) if present else float("nan")
        cells = [f"{values[t]:.2f}" if t in values and not math.isnan(values[t]) else "" for t in tasks]
        lines.append("| " + " | ".join([name, *cells, f"{avg:.2f}"]) + " |")
    return "\n".join(lines)


def check_margins(rows, tasks, margin=MIN_MARGIN):
    """Each fine-tuned model must beat the base on its own task by `margin` points; list the failures."""
    base, own = rows.get("Pretrained base", {}), rows.get("Fine-tuned (own task)", {})
    return [f"{t}: fine-tuned {own.get(t, float('nan')):.2f} vs base {base.get(t, float('nan')):.2f}"
            for t in tasks if not own.get(t, float("-inf")) - base.get(t, float("inf")) >= margin]


def run_demo(out_dir="output/demo", n_train=512, n_dev=128, epochs=3, seed=0, tasks=None,
             methods=None, say=print):
    """Run the demo; returns {"rows", "table", "failures", "seconds"}. Raises UserError on failure."""
    from ppmerge.data import TASK_NAMES
    from ppmerge.data.synthetic import write_glue_suite

    tasks = list(tasks or TASK_NAMES)
    out_dir = os.path.abspath(out_dir)
    data_dir = os.path.join(out_dir, "data")
    base_path = os.path.join(out_dir, "base", "model.pdparams")
    start = time.time()

    say(f"[1/4] generated GLUE suite ({len(tasks)} tasks, {n_train} train / {n_dev} dev each) -> {data_dir}")
    write_glue_suite(data_dir, layout="glue", n_train=n_train, n_dev=n_dev, seed=seed, tasks=tasks)
    say(f"[2/4] tiny GPT base (gpt-tiny preset, seed {seed}, GPT-2 BPE vocabulary) -> {base_path}")
    write_base(base_path, seed)

    train = _load_tool("train")
    models = {}
    say(f"[3/4] fine-tuning with tools/train.py -c {os.path.relpath(TRAIN_CONFIG, ROOT)} -o ...")
    for task in tasks:
        t0 = time.time()
        task_out = os.path.join(out_dir, "finetune", task)
        argv = ["-c", TRAIN_CONFIG, *finetune_overrides(task, data_dir, base_path, task_out, epochs)]
        _run_logged(train, argv, os.path.join(out_dir, "logs", f"train_{task}.log"))
        models[task] = final_model(task_out)
        say(f"      {task:<5} {time.time() - t0:5.1f} s -> {os.path.relpath(models[task], out_dir)}")

    merge = _load_tool("merge")
    runs = [r for r in METHOD_RUNS if methods is None or r[0] in methods]
    say(f"[4/4] merging with tools/merge.py ({len(runs)} runs) -> {os.path.join(out_dir, 'merge')}")
    reports = {}
    for i, (name, config, extra, which) in enumerate(runs):
        t0 = time.time()
        run_out = os.path.join(out_dir, "merge", name)
        pool = run_models(models, which)
        argv = ["-c", os.path.join(MERGE_CONFIGS, config), *merge_overrides(pool, base_path, data_dir, run_out, n_dev)]
        argv += [arg for o in extra + method_overrides(name, pool) for arg in ("-o", o)]
        if i == 0:  # reference rows once: the base, each fine-tuned model, the cross-task matrix
            argv += ["-o", "Output.reference_rows.base=true", "-o", "Output.reference_rows.finetuned=true",
                     "-o", "Output.reference_rows.cross_task=true"]
        _run_logged(merge, argv, os.path.join(out_dir, "logs", f"merge_{name}.log"))
        with open(os.path.join(run_out, "report.json"), encoding="utf-8") as f:
            reports[name] = json.load(f)
        say(f"      {name:<22} {time.time() - t0:5.1f} s")

    rows = collect_table(reports, tasks)
    table = format_table(rows, tasks)
    from ppmerge.fileio import write_text

    write_text(os.path.join(out_dir, "results.md"), table + "\n")
    return {"rows": rows, "table": table, "failures": check_margins(rows, tasks),
            "seconds": time.time() - start, "started": start, "out_dir": out_dir}


# ---------------------------------------------------------------- the T5 part (text-to-text)

T5_CONFIG = os.path.join(ROOT, "configs", "t5", "finetune_t5_tiny_glue.yaml")
T5_TASKS = ("SST2", "QNLI", "RTE")
# (row name, merge config, extra overrides): the whole model is merged (T5 has no heads)
T5_METHOD_RUNS = [
    ("simple_average", "flan_t5_glue_simple_average.yaml", []),
    ("task_arithmetic_sweep", "flan_t5_glue_task_arithmetic_sweep.yaml",
     ['Sweep.grid={"Merge.scaling_factor": [0.3, 0.6, 1.0]}']),
    ("ties_merging", "flan_t5_glue_ties_merging.yaml", ["Merge.scaling_factor=0.7"]),
]
# The LoRA pool: each run's adapter folder (output_dir/lora/) over the base, merged-and-unloaded by the model
# pool (ModelPool.lora.mode: unload, FusionBench's way) before the method runs.
T5_LORA_CONFIGS = {"simple_average": "flan_t5_glue_lora_simple_average.yaml",
                   "task_arithmetic_sweep": "flan_t5_glue_lora_task_arithmetic.yaml",
                   "ties_merging": "flan_t5_glue_lora_ties_merging.yaml"}
T5_LORA = ["Model.lora.r=16", "Model.lora.alpha=32", "Model.lora.target_modules=[q, v]", "Model.lora.save_merged=true",
           "Optimizer.lr.learning_rate=1e-2"]


def write_t5_base(path, model_cfg, seed):
    """The tiny T5 'pretrained' base: the t5-tiny preset, seeded random init, our T5 key layout
    (ppmerge.models.init.write_t5_base, which tools/init_model.py --preset t5-tiny also writes)."""
    from ppmerge.models.init import write_t5_base as _write

    _write(path, model_cfg, seed)


def run_t5_demo(out_dir, data_dir, tasks=T5_TASKS, n_dev=128, epochs=3, seed=0, lora=True, say=print):
    """The T5 half of the demo on an already generated suite: a sentencepiece model trained on it, a
    tiny T5 base, full (and LoRA) fine-tuning per task with tools/train.py, merges with tools/merge.py.
    Returns {"rows", "table", "failures"} like run_demo (rows: base, fine-tuned, LoRA, each method)."""
    from ppmerge.data.synthetic import task_root
    from ppmerge.data.t5_tokenizer import load_t5_tokenizer, suite_texts, train_sentencepiece

    tasks = list(tasks)
    t5_dir = os.path.join(out_dir, "t5")
    spiece = os.path.join(t5_dir, "spiece.model")
    from ppmerge.data import TASK_NAMES

    # the vocabulary is learnt from every task of the suite (not only the T5 part's): a richer one
    present = [t for t in TASK_NAMES if os.path.isdir(task_root(t, data_dir, "glue"))]
    train_sentencepiece(suite_texts(data_dir, tasks=present), spiece, vocab_size=1000)
    vocab = load_t5_tokenizer(spiece).vocab_size
    model_cfg = {"name": "t5-tiny", "vocab_size": vocab}
    base_path = os.path.join(t5_dir, "base", "model.pdparams")
    write_t5_base(base_path, model_cfg, seed)
    say(f"[T5 1/3] sentencepiece ({vocab} pieces, pad 0 / eos 1 / unk 2) and a tiny T5 base (t5-tiny) -> {t5_dir}")

    train = _load_tool("train")
    pools = {"full": {}, "lora": {}}
    say(f"[T5 2/3] fine-tuning (full{' and LoRA r 16 on q, v' if lora else ''}) with tools/train.py "
        f"-c {os.path.relpath(T5_CONFIG, ROOT)} -o ...")
    for mode in (("full", "lora") if lora else ("full",)):
        for task in tasks:
            t0 = time.time()
            run = os.path.join(t5_dir, "finetune", f"{task}_{mode}")
            root = task_root(task, data_dir, "glue")
            overrides = [f"Data.Train.dataset.name={task}", f"Data.Train.dataset.root={root}",
                         f"Data.Eval.dataset.name={task}", f"Data.Eval.dataset.root={root}",
                         f"Tokenizer.spiece_model={spiece}", f"Model.vocab_size={vocab}", f"Model.pretrained={base_path}",
                         f"Engine.num_train_epochs={epochs}", "Engine.eval_freq=0", "Engine.logging_freq=1000",
                         f"Engine.save_load.output_dir={run}", "Engine.save_load.save_epoch=0"]
            if mode == "lora":
                overrides += T5_LORA
            _run_logged(train, ["-c", T5_CONFIG, *[a for o in overrides for a in ("-o", o)]],
                        os.path.join(out_dir, "logs", f"t5_train_{task}_{mode}.log"))
            pools[mode][task] = os.path.join(run, "lora") if mode == "lora" else final_model(run)
            say(f"      {task:<5} {mode:<4} {time.time() - t0:5.1f} s")

    merge = _load_tool("merge")
    reports = {}
    say(f"[T5 3/3] merging the whole models with tools/merge.py -> {os.path.join(t5_dir, 'merge')}")
    for mode, models in pools.items():
        if not models:
            continue
        for i, (name, config, extra) in enumerate(T5_METHOD_RUNS):
            t0 = time.time()
            label = name if mode == "full" else f"{name} (LoRA pool)"
            run_out = os.path.join(t5_dir, "merge", f"{name}_{mode}")
            overrides = [f"ModelPool.base={base_path}", f"ModelPool.models={json.dumps(models)}",
                         f"TaskPool.tasks={json.dumps(list(models))}", "Global.device=cpu",
                         f"TaskPool.data_root={data_dir}", "TaskPool.layout=glue", "TaskPool.model.name=t5-tiny",
                         f"TaskPool.model.vocab_size={vocab}", f"TaskPool.tokenizer.spiece_model={spiece}",
                         "TaskPool.max_length=96", f"TaskPool.max_examples={n_dev}", f"Output.dir={run_out}", *extra]
            # reference rows once per pool (the sweep config asks for them too): base, each fine-tuned model
            overrides += [f"Output.reference_rows.finetuned={str(i == 0).lower()}",
                          f"Output.reference_rows.base={str(i == 0 and mode == 'full').lower()}"]
            if mode == "lora":
                config = T5_LORA_CONFIGS[name]
                overrides.append("ModelPool.lora.mode=unload")
            _run_logged(merge, ["-c", os.path.join(MERGE_CONFIGS, config), *[a for o in overrides for a in ("-o", o)]],
                        os.path.join(out_dir, "logs", f"t5_merge_{name}_{mode}.log"))
            with open(os.path.join(run_out, "report.json"), encoding="utf-8") as f:
                reports[label] = json.load(f)
            say(f"      {label:<36} {time.time() - t0:5.1f} s")
    rows = collect_table({k: v for k, v in reports.items() if "LoRA" not in k}, tasks)
    lora_reports = {k: v for k, v in reports.items() if "LoRA" in k}
    if lora_reports:
        lora_rows = collect_table(lora_reports, tasks)
        rows["LoRA fine-tuned (own task)"] = lora_rows.pop("Fine-tuned (own task)", {})
        rows.update(lora_rows)
    table = format_table(rows, tasks)
    failures = check_margins(rows, tasks)
    if lora_reports:
        failures += [f"LoRA {line}" for line in check_margins(
            {"Pretrained base": rows.get("Pretrained base", {}),
             "Fine-tuned (own task)": rows["LoRA fine-tuned (own task)"]}, tasks)]
    return {"rows": rows, "table": table, "failures": failures}


def main(argv=None):
    import argparse

    parser = argparse.ArgumentParser(description="ppmerge demo: generated GLUE, tiny GPT, fine-tune, merge, table")
    parser.add_argument("--out", default="output/demo", help="output folder (default output/demo)")
    parser.add_argument("--n-train", type=int, default=512, help="training examples per task")
    parser.add_argument("--n-dev", type=int, default=128, help="dev examples per task")
    parser.add_argument("--epochs", type=int, default=3, help="fine-tuning epochs per task")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tasks", nargs="*", default=None, help="subset of tasks (default: all nine)")
    parser.add_argument("--methods", nargs="*", default=None, help="subset of merge runs (default: all)")
    parser.add_argument("--t5-tasks", nargs="*", default=list(T5_TASKS),
                        help=f"tasks of the T5 part (default: {' '.join(T5_TASKS)}; none: no T5 part)")
    parser.add_argument("--no-t5-lora", action="store_true", help="T5 part: full fine-tuning only")
    args = parser.parse_args(argv)

    result = run_demo(args.out, args.n_train, args.n_dev, args.epochs, args.seed, args.tasks, args.methods)
    t5 = None
    if args.t5_tasks:
        t5 = run_t5_demo(result["out_dir"], os.path.join(result["out_dir"], "data"), args.t5_tasks, args.n_dev,
                         args.epochs, args.seed, lora=not args.no_t5_lora)
        result["seconds"] = time.time() - result["started"]
    print("\nMain metric x100 on each task's dev split (CoLA mcc, MRPC/QQP acc_and_f1, STSB corr, else accuracy):\n")
    print(result["table"])
    if t5:
        print("\nT5 (text-to-text, tiny T5 + run-time sentencepiece): exact match x100 on each task's dev split, "
              "generated answers (the whole model merged; LoRA pool: each run's adapter folder, merged into the base by the "
              "model pool first, FusionBench's way):\n")
        print(t5["table"])
        result["failures"] += [f"T5 {line}" for line in t5["failures"]]
    print(f"\nreports, plots and merged models: {os.path.join(result['out_dir'], 'merge')}/*/ "
          f"(report.md, report.xlsx, sweep.png, cross_task.png){' and t5/merge/*/' if t5 else ''}; "
          f"finished in {result['seconds']:.0f} s")
    if result["failures"]:
        print(f"\nFAILED: a fine-tuned model did not beat the base by {MIN_MARGIN:.0f} points on its own task:",
              file=sys.stderr)
        for line in result["failures"]:
            print("  " + line, file=sys.stderr)
        return 1
    print(f"check: every fine-tuned model beats the base on its own task by >= {MIN_MARGIN:.0f} points")
    return 0
