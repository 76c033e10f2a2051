"""Helpers shared by the task-pool, Fisher, RegMean and ensemble tests (no tests here).

Tiny seeded models (the `gpt-tiny` preset) on the generated GLUE suite; a reference forward pass
that pads every example to max_length, independent of the task pool's dynamic padding."""
import numpy as np

MODEL_CFG = {"name": "gpt-tiny"}
MAX_LENGTH = 32


def tiny_model(num_classes, seed):
    from ppmerge.runtime import import_paddle
    from ppmerge.models import build_model

    paddle = import_paddle()
    paddle.seed(seed)
    model = build_model(MODEL_CFG, num_classes)
    model.eval()
    return model


def split_state(model):
    """(backbone, head) numpy dicts of a model."""
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    head = {k: v for k, v in state.items() if k.startswith("score.")}
    backbone = {k: v for k, v in state.items() if not k.startswith("score.")}
    return backbone, head


def random_backbone(seed):
    return split_state(tiny_model(2, seed))[0]


def random_head(num_classes, seed):
    rng = np.random.default_rng(seed)
    return {"score.weight": rng.normal(0.0, 0.5, size=(64, num_classes)).astype(np.float32)}


def random_heads(tasks, first_seed=0):
    """A random head per task with the task's class count (seeds first_seed, first_seed + 1, ...)."""
    from ppmerge.data import get_task

    return {t: random_head(get_task(t).num_classes, first_seed + i) for i, t in enumerate(tasks)}


def make_pool(root, tasks, max_examples=24, batch_size=8, **kwargs):
    from ppmerge.evaluation import TaskPool

    section = {"tasks": tasks, "data_root": root, "layout": "glue", "split": "dev", "batch_size": batch_size,
               "max_length": MAX_LENGTH, "max_examples": max_examples, "model": MODEL_CFG,
               "tokenizer": {"vocab_file": None, "merges_file": None}, "num_workers": 0}
    section.update(kwargs)
    return TaskPool.from_config(section, progress=False)


def reference_logits(pool, task, backbone, head, pooled=False):
    """Logits (or pooled hidden states) of the task's eval examples from a freshly built model,
    every example padded to MAX_LENGTH (the pool pads each batch to its own longest)."""
    from ppmerge.runtime import import_paddle

    paddle = import_paddle()
    spec = pool.spec(task)
    model = tiny_model(spec.num_classes, seed=12345)
    model.set_state_dict({**backbone, **head})
    dataset = pool.dataset(task)
    n = len(pool.eval_indices(task))
    ids = np.full((n, MAX_LENGTH), 50256, dtype=np.int64)
    lengths = np.zeros(n, dtype=np.int64)
    labels = []
    for i in range(n):
        item = dataset[i]
        ids[i, :len(item["input_ids"])] = item["input_ids"]
        lengths[i] = len(item["input_ids"])
        labels.append(item["label"])
    with paddle.no_grad():
        x, lens = paddle.to_tensor(ids), paddle.to_tensor(lengths)
        out = model.pooled_hidden(x, lens) if pooled else model(x, lens)
    return out.numpy(), np.asarray(labels)


def sklearn_metrics(task, outputs, labels):
    """The task metric computed with scikit-learn / scipy directly."""
    from scipy.stats import pearsonr, spearmanr
    from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

    if task == "STSB":
        p, s = pearsonr(outputs[:, 0], labels)[0], spearmanr(outputs[:, 0], labels)[0]
        return {"pearson": p, "spearman": s, "main": (p + s) / 2}
    preds = outputs.argmax(-1)
    acc = accuracy_score(labels, preds)
    if task == "CoLA":
        return {"mcc": matthews_corrcoef(labels, preds), "accuracy": acc, "main": matthews_corrcoef(labels, preds)}
    if task in ("MRPC", "QQP"):
        f1 = f1_score(labels, preds, zero_division=0.0)
        return {"accuracy": acc, "f1": f1, "main": (acc + f1) / 2}
    return {"accuracy": acc, "main": acc}
