"""The schema of a merge config (`tools/merge.py -c ...`). See docs/ARCHITECTURE.md,
"ppmerge.merge — runner and config", for what each section means."""
from ppmerge.config.schema import Field, Section

DEVICE_HELP = "cpu, gpu, gpu:N, xpu or npu"

# The training config's Model section, architecture part only: a preset name plus explicit overrides.
_ARCH = Section({
    "name": Field(str, default="gpt-345m", help="architecture preset: gpt-345m | gpt2-medium-en | gpt-tiny"),
    "vocab_size": Field(int, default=None, nullable=True),
    "hidden_size": Field(int, default=None, nullable=True),
    "num_layers": Field(int, default=None, nullable=True),
    "num_attention_heads": Field(int, default=None, nullable=True),
    "ffn_hidden_size": Field(int, default=None, nullable=True),
    "max_position_embeddings": Field(int, default=None, nullable=True),
    "type_vocab_size": Field(int, default=None, nullable=True),
    "hidden_dropout_prob": Field(float, default=None, nullable=True),
    "attention_probs_dropout_prob": Field(float, default=None, nullable=True),
    "initializer_range": Field(float, default=None, nullable=True),
    "fused_linear": Field(bool, default=None, nullable=True),
})

MERGE_SCHEMA = Section({
    "Global": Section({
        "device": Field(str, default="cpu", help=DEVICE_HELP),
        "seed": Field(int, default=42),
    }),
    "ModelPool": Section({
        "base": Field(str, help="the _pretrained_ model file"),
        "models": Field(dict, help="task name -> fine-tuned model file"),
        "head_keys": Field(str, default=r"^score\.", help="regex of the per-task head keys (never merged)"),
    }),
    # method + its parameters; the parameters are checked against the method's spec by the runner.
    "Merge": Section({"method": Field(str, help="a name of ppmerge.merge.METHODS")}, open=True),
    # null, or {grid: {Merge.key: [values], ...}} with one key (a curve) or two keys (a grid).
    "Sweep": Section({"grid": Field(dict)}, nullable=True),
    "TaskPool": Section({
        "tasks": Field(list, help="GLUE task names to evaluate"),
        "data_root": Field(str, default="./dataset"),
        "layout": Field(str, default="glue", choices=["glue", "fleetx"]),
        "roots": Field(dict, default=None, nullable=True, help="per-task dataset folder overrides"),
        "split": Field(str, default="dev"),
        "batch_size": Field(int, default=32),
        "max_length": Field(int, default=128),
        "max_examples": Field(int, default=-1, help="-1: the whole split"),
        "model": _ARCH,
        "tokenizer": Section({
            "vocab_file": Field(str, default=None, nullable=True),
            "merges_file": Field(str, default=None, nullable=True),
        }),
        "num_workers": Field(int, default=0),
    }),
    "Output": Section({
        "dir": Field(str, default="./output/merge"),
        "save_model": Field(bool, default=True),
        "reference_rows": Section({
            "base": Field(bool, default=False),
            "finetuned": Field(bool, default=False),
            "cross_task": Field(bool, default=False),
        }),
    }),
})
