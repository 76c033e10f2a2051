"""The schema of a merge config (`tools/merge.py -c ...`). See docs/ARCHITECTURE.md,
"ppmerge.merge — runner and config", for what each section means."""
from ppmerge.config.schema import Field, Section

DEVICE_HELP = "cpu, gpu, gpu:N, xpu or npu"

# The training config's Model section, architecture part only: a preset name plus explicit overrides.
_ARCH = Section({
    "name": Field(str, default="gpt-345m", help="architecture preset: gpt-345m | gpt2-medium-en | gpt-tiny"),
    "vocab_size": Field(int, default=None, nullable=True, min=1, max=2**31 - 1),
    "hidden_size": Field(int, default=None, nullable=True, min=1, max=2**31 - 1),
    "num_layers": Field(int, default=None, nullable=True, min=1, max=2**31 - 1),
    "num_attention_heads": Field(int, default=None, nullable=True, min=1, max=2**31 - 1),
    "ffn_hidden_size": Field(int, default=None, nullable=True, min=1, max=2**31 - 1),
    "max_position_embeddings": Field(int, default=None, nullable=True, min=1, max=2**31 - 1),
    "type_vocab_size": Field(int, default=None, nullable=True, min=1, max=2**31 - 1),
    "hidden_dropout_prob": Field(float, default=None, nullable=True, min=0.0, max=1.0),
    "attention_probs_dropout_prob": Field(float, default=None, nullable=True, min=0.0, max=1.0),
    "initializer_range": Field(float, default=None, nullable=True, min=0.0),
    "fused_linear": Field(bool, default=None, nullable=True),
})

MERGE_SCHEMA = Section({
    "Global": Section({
        "device": Field(str, default="cpu", help=DEVICE_HELP),
        "seed": Field(int, default=42, min=0, max=2**32 - 1),
    }),
    "ModelPool": Section({
        "base": Field(str, default=None, nullable=True,
                      help="the _pretrained_ model file; null only for methods that never read it "
                           "(simple_average, weighted_average without sparsify, simple_ensemble, fisher_merging, regmean)"),
        "models": Field(dict, help="model name -> file, or -> {path: file, task: TASK} (task optional); "
                                   "pool order = the order written; a task name with a plain path = that task's model"),
        "head_keys": Field(str, default=r"^score\.", help="regex of the head keys (never merged, kept per model)"),
        "task_heads": Field(dict, default=None, nullable=True,
                            help="{TASK: model name | average}: the head a task with several models is evaluated "
                                 "and saved with (default: the average of their heads)"),
        "lora": Section({
            "mode": Field(str, default="unload", choices=["unload", "lowrank"],
                          help="unload: merge-and-unload each adapter into a full model, then merge (FusionBench); "
                               "lowrank: the merge reads θ₀ + scale·(B·A)ᵀ key by key from the factors, "
                               "no full model per adapter"),
        }, nullable=True, help="models that are LoRA adapter folders over ModelPool.base (null = unload)"),
    }),
    # method + its parameters; the parameters are checked against the method's spec by the runner.
    "Merge": Section({"method": Field(str, help="a name of ppmerge.merge.METHODS")}, open=True),
    # null, or {grid: {Merge.key: [values], ...}} with one key (a curve) or two keys (a grid).
    "Sweep": Section({"grid": Field(dict)}, nullable=True),
    "TaskPool": Section({
        "tasks": Field(list, help="tasks to evaluate (GLUE names or TaskPool.datasets names); each needs a model of that task"),
        "data_root": Field(str, default="./dataset"),
        "layout": Field(str, default="glue", choices=["glue", "fleetx"]),
        "roots": Field(dict, default=None, nullable=True, help="per-task dataset folder overrides"),
        "split": Field(str, default="dev"),
        "datasets": Field(dict, default=None, nullable=True,
                          help="custom datasets {task name: {format, files, text_columns, label_column, labels, "
                               "metric, root}}: tasks of the pool's models and of TaskPool.tasks"),
        "splits": Field(dict, default=None, nullable=True,
                        help="per-task split overrides, e.g. {MNLI: dev_mismatched}"),
        "batch_size": Field(int, default=32, min=1),
        "max_length": Field(int, default=128, min=1, help="at most the model's max_position_embeddings"),
        "max_examples": Field(int, default=-1, min=-1, help="-1: the whole split"),
        "model": _ARCH,
        "tokenizer": Section({
            "vocab_file": Field(str, default=None, nullable=True),
            "merges_file": Field(str, default=None, nullable=True),
            "spiece_model": Field(str, default=None, nullable=True,
                                  help="T5 pools: sentencepiece model (spiece.model or the Flan-T5 folder)"),
        }),
        "prompts": Field(str, default=None, nullable=True,
                         help="T5 pools: YAML file replacing prompt templates per task; null = FusionBench's"),
        "generation": Section({
            "max_length": Field(int, default=10, min=2,
                                help="T5 pools: greedy answer length incl. the start token (HF generate max_length)"),
        }),
        "num_workers": Field(int, default=0, min=0),
    }),
    "Output": Section({
        "dir": Field(str, default="./output/merge"),
        "save_model": Field(bool, default=True),
        "dtype": Field(str, default=None, nullable=True, choices=["float32", "float16", "bfloat16"],
                       aliases={"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"},
                       help="storage dtype of merged_model.pdparams (math stays float32; cast once when "
                            "saving, tensor by tensor; bfloat16 as paddle's uint16 bits); null: the base's dtype"),
        "reference_rows": Section({
            "base": Field(bool, default=False),
            "finetuned": Field(bool, default=False),
            "cross_task": Field(bool, default=False),
        }),
    }),
})
