"""The GPT family: paddlenlp GPTModel + a bias-free `score` head per task; outputs are logits.

Everything here is today's GPT path (ppmerge.models.gpt, ppmerge.data.GLUEDataset / collate_batch,
ppmerge.metrics), gathered behind the family interface (see `ppmerge.models.families`)."""
import functools

from ppmerge.errors import ConfigError

LOSSES = ("CrossEntropyLoss", "MSELoss")


@functools.lru_cache(maxsize=4)
def _tokenizer(vocab_file, merges_file):
    from ppmerge.data import load_tokenizer

    return load_tokenizer(vocab_file, merges_file)


def build_loss(name):
    """loss(logits, labels): CrossEntropyLoss on class ids, or MSELoss on [B, 1] scores vs [B] labels."""
    from ppmerge.runtime import import_paddle

    paddle = import_paddle()
    if name == "MSELoss":
        mse = paddle.nn.MSELoss()
        return lambda logits, labels: mse(logits.astype("float32"), labels.astype("float32").reshape([-1, 1]))
    cross_entropy = paddle.nn.CrossEntropyLoss()
    return lambda logits, labels: cross_entropy(logits.astype("float32"), labels.astype("int64").reshape([-1]))


class GPTClassifier:
    name = "gpt"
    head_keys = r"^score\."
    generates = False
    lora_targets = (r".*\.q_proj", r".*\.v_proj")
    lora_trainable = (r"score\.weight",)   # the head trains with the LoRA weights

    def __init__(self, model_cfg, tokenizer_cfg=None):
        self.model_cfg = dict(model_cfg or {})
        self.tokenizer_cfg = dict(tokenizer_cfg or {})
        self._losses = {}

    # ---- config ---------------------------------------------------------------------------
    def loss_name(self, task, mode):
        return ((self.model_cfg.get("loss") or {}).get(mode) or {}).get("name") or task.loss

    def check(self, task):
        """num_classes and losses must fit the task (a mismatch trains a head of the wrong size)."""
        num_classes = self.model_cfg.get("num_classes")
        if num_classes != task.num_classes:
            raise ConfigError(f"Model.num_classes is {num_classes} but task {task.name} has {task.num_classes} "
                              f"(set -o Model.num_classes={task.num_classes})")
        for mode in ("train", "eval"):
            name = self.loss_name(task, mode)
            if name not in LOSSES:
                raise ConfigError(f"Model.loss.{mode}.name: {name!r} is not supported; expected one of {', '.join(LOSSES)}")
            if name != task.loss:
                raise ConfigError(f"Model.loss.{mode}.name is {name} but task {task.name} needs {task.loss} "
                                  f"(set -o Model.loss.{mode}.name={task.loss})")

    # ---- model ----------------------------------------------------------------------------
    def build(self, task):
        """A fresh model with the task's head size (`task`: a TaskSpec or a number of classes)."""
        from ppmerge.models import build_model

        return build_model(self.model_cfg, getattr(task, "num_classes", task))

    def load_pretrained(self, network, path, task):
        from ppmerge.models import load_pretrained

        return load_pretrained(network, path, task=task.name)

    # ---- data -----------------------------------------------------------------------------
    def tokenizer(self):
        return _tokenizer(self.tokenizer_cfg.get("vocab_file"), self.tokenizer_cfg.get("merges_file"))

    def dataset(self, task, root, split, max_length=128):
        from ppmerge.data import GLUEDataset

        return GLUEDataset(task, root, split, self.tokenizer(), max_length=max_length)

    def collate(self, samples):
        from ppmerge.data import collate_batch

        return collate_batch(samples)

    # ---- steps ----------------------------------------------------------------------------
    def _loss_fn(self, task, mode):
        name = self.loss_name(task, mode)
        if name not in self._losses:
            self._losses[name] = build_loss(name)
        return self._losses[name]

    def predict(self, model, batch, task=None):
        return model(batch["input_ids"], batch["lengths"])

    def loss(self, model, batch, task, mode="train"):
        return self._loss_fn(task, mode)(self.predict(model, batch, task), batch["labels"])

    @staticmethod
    def batch_labels(batch):
        return batch["labels"]

    def metric(self, task):
        from ppmerge.metrics import build_metric

        return build_metric(((self.model_cfg.get("metric") or {}).get("eval") or {}).get("name") or task.metric)

    @staticmethod
    def class_outputs(outputs, task):
        """Logits / scores are what a GLUE submission reads already: (outputs, 0 invalid)."""
        return outputs, 0

    def evaluate(self, outputs, labels, task):
        """The metric's values on a whole split's logits, plus `loss` (the eval loss, mean over examples)."""
        from ppmerge.runtime import import_paddle

        paddle = import_paddle()
        metric = self.metric(task)
        metric.update(outputs, labels)
        results = metric.accumulate()
        results["loss"] = float(self._loss_fn(task, "eval")(paddle.to_tensor(outputs), paddle.to_tensor(labels)))
        return results
