"""The T5 family: paddlenlp T5ForConditionalGeneration, text-to-text GLUE through the prompt table.

No per-task head: the whole model is merged (`head_keys` None). Training minimises the token loss of
the answer text (labels = answer pieces + eos, pad → -100); evaluation generates greedily and
compares texts (`ppmerge.metrics.GenerationMetric`): FusionBench's exact match / Spearman, plus the
share of invalid answers and a confusion matrix.

Generation length: `Model.generation.max_length` (default 10) counts like Hugging Face's
`generate(max_length=10)` for an encoder-decoder, which FusionBench calls: the decoder start token
included, so at most 9 answer tokens are generated.
"""
import functools
import os

from ppmerge.errors import CheckpointError, ConfigError

DEFAULT_MAX_LENGTH = 10


@functools.lru_cache(maxsize=4)
def _tokenizer(path):
    from ppmerge.data.t5_tokenizer import load_t5_tokenizer

    return load_t5_tokenizer(path)


@functools.lru_cache(maxsize=4)
def _prompts(path):
    from ppmerge.data.prompts import load_prompts

    return load_prompts(path)


def unwrap(model):
    """The paddlenlp T5 model inside paddle.DataParallel and / or a paddlenlp LoRAModel."""
    while True:
        if hasattr(model, "_layers"):
            model = model._layers
        elif type(model).__name__ == "LoRAModel":
            model = model.model
        else:
            return model


class T5Text:
    name = "t5"
    head_keys = None
    # paddlenlp lists the one shared embedding three times; a model pool keeps t5.shared.weight only
    # (the copies are checked equal and dropped), so a merge treats it once (load_t5_state_dict and the
    # task pool fill the copies back in).
    tied_keys = {"t5.encoder.embed_tokens.weight": "t5.shared.weight",
                 "t5.decoder.embed_tokens.weight": "t5.shared.weight"}
    generates = True
    lora_targets = (r".*\.q", r".*\.v")
    lora_trainable = ()

    def __init__(self, model_cfg, tokenizer_cfg=None, prompts=None, generation=None):
        self.model_cfg = dict(model_cfg or {})
        self.tokenizer_cfg = dict(tokenizer_cfg or {})
        self.prompts_path = prompts
        generation = dict(generation or {})
        self.max_length = int(generation.get("max_length") or DEFAULT_MAX_LENGTH)
        if self.max_length < 2:
            raise ConfigError(f"Model.generation.max_length must be >= 2 (start token + one answer token), "
                              f"got {self.max_length}")

    # ---- config ---------------------------------------------------------------------------
    def check(self, task):
        """Text-to-text needs no head size or loss per task; the task needs a prompt."""
        if task.name not in self.prompts():
            raise ConfigError(f"no prompt template for task {task.name} (Data.prompts)")

    def prompts(self):
        return _prompts(self.prompts_path)

    # ---- model ----------------------------------------------------------------------------
    def build(self, task=None):
        from ppmerge.models.t5 import build_t5

        return build_t5(self.model_cfg)

    def load_pretrained(self, network, path, task=None):
        """Weights from an HF Flan-T5 folder, or a file / folder in our layout (model.pdparams,
        model.safetensors, a training checkpoint's folder, a merged model)."""
        state_dict = read_t5_weights(path)
        from ppmerge.models.t5 import load_t5_state_dict

        load_t5_state_dict(unwrap(network), state_dict, source=str(path))
        return [], []

    # ---- data -----------------------------------------------------------------------------
    def tokenizer(self):
        return _tokenizer(self.tokenizer_cfg.get("spiece_model"))

    def dataset(self, task, root, split, max_length=128):
        from ppmerge.data.t5_dataset import T5GLUEDataset
        from ppmerge.models.t5 import resolve_t5_arch

        vocab = resolve_t5_arch(self.model_cfg)["vocab_size"]
        if self.tokenizer().vocab_size > vocab:   # ids past the embedding would fail deep inside paddle
            raise ConfigError(f"Model.vocab_size {vocab} is smaller than the sentencepiece vocabulary "
                              f"{self.tokenizer().vocab_size} of {self.tokenizer().model_file} "
                              f"(set -o Model.vocab_size={self.tokenizer().vocab_size} or larger)")

        return T5GLUEDataset(task, root, split, self.tokenizer(), max_length=max_length, prompts=self.prompts())

    def collate(self, samples):
        from ppmerge.data.t5_dataset import collate_t5

        return collate_t5(samples)

    # ---- steps ----------------------------------------------------------------------------
    def loss(self, model, batch, task=None, mode="train"):
        """Mean token cross-entropy over the answer tokens (labels != -100), teacher forced: the decoder
        reads [0] + labels[:-1]. Computed here, not by paddlenlp's `labels=` path: its
        CrossEntropyLoss(ignore_index=-100) mean divides by every position, padding included (measured),
        so a batch's loss would shrink with its longest answer; this is HF's / FusionBench's mean."""
        from ppmerge.runtime import import_paddle

        paddle = import_paddle()
        labels = batch["labels"]
        shifted = paddle.where(labels < 0, paddle.zeros_like(labels), labels)[:, :-1]
        decoder_input_ids = paddle.concat([paddle.zeros([labels.shape[0], 1], dtype=labels.dtype), shifted], axis=1)
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                    decoder_input_ids=decoder_input_ids, use_cache=False)
        logits = out[0] if isinstance(out, (tuple, list)) else out.logits
        total = paddle.nn.functional.cross_entropy(logits.reshape([-1, logits.shape[-1]]).astype("float32"),
                                                   labels.reshape([-1]), ignore_index=-100, reduction="sum")
        count = (labels != -100).astype("float32").sum()
        return total / paddle.clip(count, min=1.0)

    def predict(self, model, batch, task=None):
        """Greedy answers: int64 ids [B, max_length - 1], padded with 0 after eos (decoder start not included)."""
        from ppmerge.runtime import import_paddle

        paddle = import_paddle()
        mask = batch.get("attention_mask")
        if mask is None:  # right padding: the mask follows from the true lengths
            width = batch["input_ids"].shape[1]
            mask = (paddle.arange(width, dtype="int64").unsqueeze(0)
                    < batch["lengths"].astype("int64").unsqueeze(1)).astype("int64")
        ids = unwrap(model).generate(input_ids=batch["input_ids"], attention_mask=mask,
                                     max_length=self.max_length - 1, decode_strategy="greedy_search")[0]
        width = self.max_length - 1
        if ids.shape[1] < width:
            ids = paddle.concat([ids, paddle.zeros([ids.shape[0], width - ids.shape[1]], dtype=ids.dtype)], axis=1)
        return ids[:, :width].astype("int64")

    @staticmethod
    def batch_labels(batch):
        return batch["glue_labels"]

    def metric(self, task):
        from ppmerge.metrics import GenerationMetric

        return GenerationMetric(task, self.prompts()[task.name], self.tokenizer())

    def class_outputs(self, outputs, task):
        """Generated ids [n, G] -> what a GLUE submission reads: one-hot scores [n, C] of the answer
        word's class (an answer that is no label word gets an all-zero row, i.e. class 0), or STS-B
        scores [n, 1] (unparseable -> 0.0, as FusionBench). Returns (array, number of invalid answers)."""
        import numpy as np

        from ppmerge.metrics import parse_float

        texts = self.tokenizer().batch_decode(np.asarray(outputs).astype(np.int64))
        targets = self.prompts()[task.name]["targets"]
        if isinstance(targets, str):
            parsed = [parse_float(t) for t in texts]
            return np.array([[v] for v, _ in parsed], dtype=np.float32), sum(not ok for _, ok in parsed)
        index = {w: i for i, w in enumerate(targets)}
        scores = np.zeros((len(texts), len(targets)), dtype=np.float32)
        invalid = 0
        for row, text in zip(scores, texts):
            if text in index:
                row[index[text]] = 1.0
            else:
                invalid += 1
        return scores, invalid

    def evaluate(self, outputs, labels, task):
        metric = self.metric(task)
        metric.update(outputs, labels)
        return metric.accumulate()


def read_t5_weights(path):
    """A T5 state dict (numpy, our keys) from an HF folder, a weights file, or a folder holding one."""
    from ppmerge.models import hf_t5
    from ppmerge.models.checkpoint import load_numpy_state_dict, resolve_checkpoint_path

    path = os.fspath(path)
    if os.path.isdir(path) and os.path.isfile(os.path.join(path, "adapter_config.json")):
        return _merged_adapter(path)
    if os.path.isdir(path) and hf_t5.is_hf_t5_folder(path) \
            and not os.path.isfile(os.path.join(path, "model.pdparams")):
        return hf_t5.load_folder(path)[1]
    state_dict = load_numpy_state_dict(resolve_checkpoint_path(path))
    lora = [k for k in state_dict if ".lora_" in k]
    if lora:
        raise CheckpointError(f"{path} holds LoRA weights ({lora[0]}): set Model.lora to the run's LoRA "
                              f"settings to load it, or load its merged_model.pdparams")
    return state_dict


def _merged_adapter(folder):
    """A LoRA adapter folder (a LoRA run's output_dir/lora/, or a PEFT folder) merged-and-unloaded into the
    base its adapter_config.json names (`base_model`, or PEFT's `base_model_name_or_path`) when that is a
    local model (as given, or relative to the adapter folder)."""
    import json

    from ppmerge.models.peft_lora import merge_folder

    with open(os.path.join(folder, "adapter_config.json"), encoding="utf-8") as f:
        config = json.load(f)
    named = config.get("base_model") or config.get("base_model_name_or_path")
    candidates = [named, os.path.join(folder, named)] if named else []
    base = next((p for p in candidates if os.path.exists(p)), None)
    if base is None:
        raise CheckpointError(f"{folder}: a LoRA adapter whose base model {named!r} (adapter_config.json) is not a "
                              f"local file or folder; merge it first (tools/convert.py --from peft-lora --base ...) "
                              f"or load the run's merged_model.pdparams / training checkpoint")
    return merge_folder(folder, base)[1]
