"""The task pool: evaluate a backbone with each task's own head on that task's eval split.

A sweep evaluates many merged backbones, so the expensive parts are done once per pool: each task's
eval split is tokenized once (datasets cached), and one model skeleton is built per distinct number
of classes (2, 3 for MNLI, 1 for STS-B); evaluating a backbone only copies weights into it.

Heads are never merged: `heads` maps a task to its head state dict (`score.weight`, [hidden, C]).
Data-dependent merge methods read training batches through `train_batches` and build a model for a
task with `load_model`.
"""
import os
import sys
import time

import numpy as np
from ppmerge.progress import progress_bar as tqdm  # a tqdm bar on a terminal, plain lines in a log

from ppmerge.errors import CheckpointError, ConfigError

# Defaults of the merge config's TaskPool section (the schema fills them too; repeated here so the
# pool also works from a hand-written dict, e.g. in tests).
DEFAULTS = {
    "tasks": None,
    "data_root": "./dataset",
    "layout": "glue",
    "roots": None,
    "split": "dev",
    "splits": None,
    "datasets": None,     # {task name: custom dataset section} (ppmerge.data.custom)
    "batch_size": 32,
    "max_length": 128,
    "max_examples": -1,
    "model": None,
    "tokenizer": None,
    "num_workers": 0,
    "seed": 1024,
    "prompts": None,      # T5 family: prompt table file (null = FusionBench's templates)
    "generation": None,   # T5 family: {max_length: 10}
}


# Evaluation views: a task evaluated on another split under its own column name. GLUE's MNLI-m / MNLI-mm,
# or any `TASK:split` (e.g. `CoLA:dev_out_of_domain`); the task's head is used.
_GLUE_VIEWS = {"mnli-m": ("MNLI", "dev_matched"), "mnli-mm": ("MNLI", "dev_mismatched")}


def parse_eval_view(name):
    """(task, split) of a view name (`MNLI-mm`, `MNLI:dev_mismatched`), or None for a plain task name."""
    text = str(name)
    if text.lower() in _GLUE_VIEWS:
        return _GLUE_VIEWS[text.lower()]
    if ":" in text:
        task, split = text.split(":", 1)
        return task, split
    return None


def view_name(task, split):
    """The column name of a view: MNLI-m / MNLI-mm for MNLI's dev splits, else `TASK:split`."""
    for name, target in _GLUE_VIEWS.items():
        if target == (task, split):
            return {"mnli-m": "MNLI-m", "mnli-mm": "MNLI-mm"}[name]
    return f"{task}:{split}"


class TaskPool:
    def __init__(self, tasks, model, data_root="./dataset", layout="glue", roots=None, split="dev",
                 batch_size=32, max_length=128, max_examples=-1, tokenizer=None, num_workers=0,
                 seed=1024, progress=True, splits=None, prompts=None, generation=None, datasets=None):
        from ppmerge.data import get_task
        from ppmerge.data.custom import custom_task

        if not tasks:
            raise ConfigError("TaskPool.tasks: expected a non-empty list of GLUE task names")
        if model is None:
            raise ConfigError("TaskPool.model: expected the model architecture section (name: gpt-tiny, ...)")
        if int(batch_size) < 1:
            raise ConfigError(f"TaskPool.batch_size: expected a positive integer, got {batch_size!r}")
        if datasets is not None and not isinstance(datasets, dict):
            raise ConfigError(f"TaskPool.datasets: expected a mapping task name -> custom dataset, got {datasets!r}")
        self.custom = {str(name): custom_task({"name": "custom", **(section or {})}, f"TaskPool.datasets.{name}",
                                              task_name=str(name))
                       for name, section in (datasets or {}).items()}
        self.custom_roots = {str(name): (section or {}).get("root") for name, section in (datasets or {}).items()}
        self.specs = {}
        self.views = {}       # view name -> (task name, split), e.g. MNLI-mm -> (MNLI, dev_mismatched)
        for name in tasks:
            view = self._parse_view(name, "TaskPool.tasks")
            if view is not None:
                self.views[view[0]] = view[1:]
                self.specs[view[0]] = self.spec(view[1])
                continue
            spec = self.custom.get(str(name)) or get_task(name)
            self.specs[spec.name] = spec
        self.tasks = list(self.specs)
        self.model_cfg = dict(model)
        self.data_root = data_root
        self.layout = layout
        self.roots = {self.spec(k).name: v for k, v in (roots or {}).items()}
        self.split = split
        self.splits = self._check_splits(splits or {})
        self._check_unique_columns()
        self.batch_size = int(batch_size)
        self.max_length = int(max_length)
        from ppmerge.config.checks import check_max_length

        check_max_length(self.max_length, self.model_cfg, "TaskPool.max_length", "TaskPool.model",
                         where=lambda key: "task pool")  # GPT positions (T5: any length)
        self.max_examples = int(max_examples)
        self.tokenizer_cfg = dict(tokenizer or {})
        self.num_workers = int(num_workers)
        self.seed = int(seed)
        self.progress = progress
        from ppmerge.models.families import get_family

        # the model family (GPT + heads, or T5 text-to-text) builds the skeletons, data and metrics
        self.family = get_family(self.model_cfg, self.tokenizer_cfg, prompts=prompts, generation=generation)
        self._tokenizer = None
        self._datasets = {}   # (task, split) -> GLUEDataset, tokenized once
        self._models = {}     # num_classes -> model skeleton, built once

    @classmethod
    def from_config(cls, section, **kwargs):
        """Build from the merge config's `TaskPool` section (a plain dict)."""
        known = set(DEFAULTS)
        unknown = sorted(set(section) - known)
        if unknown:
            raise ConfigError(f"TaskPool: unknown key {unknown[0]!r}; expected one of {', '.join(sorted(known))}")
        cfg = {**DEFAULTS, **{k: v for k, v in section.items() if v is not None}}
        return cls(**cfg, **kwargs)

    def _check_splits(self, splits):
        """TaskPool.splits: {task: split} (e.g. {MNLI: dev_mismatched}); each split must exist for its task."""
        from ppmerge.data import get_task
        from ppmerge.data.readers import normalize_split
        from ppmerge.errors import UserError

        if not isinstance(splits, dict):
            raise ConfigError(f"TaskPool.splits: expected a mapping task -> split, got {splits!r}")
        out = {}
        for task, split in splits.items():
            try:
                spec = self.spec(task)
                out[spec.name] = normalize_split(spec, split)
            except UserError as exc:
                raise ConfigError(f"TaskPool.splits.{task}: {exc}") from None
        return out

    def _check_unique_columns(self):
        """Two columns evaluating one task on one split (TaskPool.splits {MNLI: dev_mismatched} with tasks
        [MNLI, MNLI-mm]) would show the same numbers twice and count them twice in the average: a ConfigError."""
        seen = {}
        for name in self.tasks:
            key = (self.base_task(name), self.split_of(name))
            if key in seen:
                raise ConfigError(f"TaskPool.tasks: {seen[key]!r} and {name!r} both evaluate {key[0]} on split "
                                  f"{key[1]!r} (TaskPool.splits.{key[0]}: {self.splits.get(key[0], '-')}); "
                                  f"list each task/split once")
            seen[key] = name

    def _parse_view(self, name, where="task"):
        """(view name, task name, split) of a view, or None; ConfigError for a bad task or split."""
        from ppmerge.data import get_task
        from ppmerge.data.readers import normalize_split
        from ppmerge.errors import UserError

        if not isinstance(name, str):
            return None
        if name in getattr(self, "views", {}):
            return (name, *self.views[name])
        view = parse_eval_view(name)
        if view is None:
            return None
        try:
            spec = self.custom.get(view[0]) or get_task(view[0])
            split = normalize_split(spec, view[1])
        except UserError as exc:
            raise ConfigError(f"{where}: {name!r}: {exc}") from None
        return view_name(spec.name, split), spec.name, split

    def eval_name(self, task):
        """The column name `task` is reported under: a view's canonical name, else the task's."""
        view = self._parse_view(task)
        return view[0] if view else self.spec(task).name

    def base_task(self, task):
        """The task a column evaluates (a view's task; the task itself otherwise)."""
        view = self._parse_view(task)
        return view[1] if view else self.spec(task).name

    def split_of(self, task):
        """The split `task` is evaluated on: TaskPool.splits[task], else TaskPool.split (MNLI: dev = dev_matched)."""
        from ppmerge.data.readers import normalize_split

        view = self._parse_view(task)
        if view is not None:
            return view[2]
        spec = self.spec(task)
        return self.splits.get(spec.name) or normalize_split(spec, self.split)

    # ---- data -------------------------------------------------------------------------------
    def spec(self, task):
        """The TaskSpec of `task` (any GLUE task: a merge's models may cover tasks not evaluated)."""
        from ppmerge.data import get_task

        if isinstance(task, str) and task in self.custom:
            return self.custom[task]
        if task in self.specs:
            return self.specs[task]
        view = parse_eval_view(task) if isinstance(task, str) else None
        if view is not None:
            return self.spec(view[0])
        return get_task(task)

    def task_root(self, task):
        from ppmerge.data.synthetic import task_root

        spec = self.spec(task)
        if spec.name in self.custom:  # files relative to the dataset's root, else to the working folder
            return self.roots.get(spec.name) or self.custom_roots.get(spec.name)
        root = self.roots.get(spec.name) or task_root(spec.name, self.data_root, self.layout)
        # another layout under data_root (the Hugging Face parquet files): the readers find the task there
        return root if os.path.isdir(root) or not os.path.isdir(self.data_root) else self.data_root

    def tokenizer(self):
        if self._tokenizer is None:
            from ppmerge.data import load_tokenizer

            self._tokenizer = load_tokenizer(self.tokenizer_cfg.get("vocab_file"),
                                             self.tokenizer_cfg.get("merges_file"))
        return self._tokenizer

    def dataset(self, task, split=None):
        """The task's tokenized split (cached: a sweep tokenizes each split once)."""
        split = split or self.split_of(task)
        task = self.spec(task).name
        key = (task, split)
        if key not in self._datasets:
            dataset = self.family.dataset(self.spec(task), self.task_root(task), split, max_length=self.max_length)
            from ppmerge.data.readers import require_labels

            require_labels(dataset, "the task pool (it scores against labels)")  # e.g. a TASK:test view
            self._datasets[key] = dataset
        return self._datasets[key]

    def collate(self, samples):
        """One batch of dataset items -> numpy dict, padded to the batch's longest (`collate_batch`;
        the evaluation benchmark overrides it to measure padding to max_length)."""
        return self.family.collate(samples)

    def _batches(self, dataset, indices, batch_size):
        for start in range(0, len(indices), batch_size):
            yield self.collate([dataset[int(i)] for i in indices[start:start + batch_size]])

    def eval_indices(self, task):
        n = len(self.dataset(task))
        if self.max_examples >= 0:
            n = min(n, self.max_examples)
        return np.arange(n)

    def num_train_examples(self, task, num_examples=-1):
        """How many examples `train_batches(task, num_examples)` yields."""
        n = len(self.dataset(task, "train"))
        return n if num_examples is None or int(num_examples) < 0 else min(n, int(num_examples))

    def train_batches(self, task, num_examples=-1, batch_size=None, seed=None):
        """Collated training batches of `task` (numpy dicts: input_ids, lengths, labels).

        The order is a permutation drawn from `seed` (the pool's seed by default), so a merge is
        reproducible; `num_examples` -1 (or more than there are) takes the whole split."""
        dataset = self.dataset(task, "train")
        order = np.random.default_rng(self.seed if seed is None else seed).permutation(len(dataset))
        if num_examples is not None and int(num_examples) >= 0:
            order = order[:int(num_examples)]
        return self._batches(dataset, order, int(batch_size or self.batch_size))

    # ---- models -----------------------------------------------------------------------------
    def skeleton(self, num_classes):
        """The one model of this pool with `num_classes` outputs (built on first use)."""
        if self.family.head_keys is None:
            num_classes = 0   # a family without heads (T5): one model for every task
        if num_classes not in self._models:
            model = self.family.build(num_classes)
            model.eval()
            self._models[num_classes] = model
        return self._models[num_classes]

    @staticmethod
    def _assign(model, weights, what):
        """Copy `weights` (name -> tensor / array) into the model's own tensors, checking shapes."""
        paddle = _paddle()
        targets = model.state_dict()
        for name, value in weights.items():
            if name not in targets:
                raise CheckpointError(f"{what}: key {name!r} is not in the TaskPool model "
                                      f"(check TaskPool.model matches the checkpoints)")
            target = targets[name]
            if list(value.shape) != list(target.shape):
                raise CheckpointError(f"{what}: {name!r} has shape {list(value.shape)}, the TaskPool model "
                                      f"expects {list(target.shape)} (check TaskPool.model)")
            if not isinstance(value, paddle.Tensor):
                value = paddle.to_tensor(np.asarray(value))
            if value.dtype != target.dtype:
                value = value.astype(target.dtype)
            target.set_value(value)

    def load_backbone(self, model, backbone, head_names=()):
        """Copy a backbone into `model`; every non-head key of the model must be present (a tied copy,
        e.g. T5's embed_tokens of t5.shared.weight, is filled from its key: a pool merges it once)."""
        tied = {k: s for k, s in (getattr(self.family, "tied_keys", None) or {}).items()
                if k not in backbone and s in backbone}
        if tied:
            from collections import ChainMap

            backbone = ChainMap({k: backbone[s] for k, s in tied.items()}, backbone)
        missing = [k for k in model.state_dict() if k not in backbone and k not in head_names]
        if missing:
            raise CheckpointError(f"backbone: key {missing[0]!r} is missing ({len(missing)} missing in all)")
        self._assign(model, backbone, "backbone")

    def _head(self, heads, task):
        """heads[task], or a one-line error when the pool has no head for it ({} for a family without heads)."""
        head = heads.get(task)
        if not head and isinstance(task, str) and self._parse_view(task) is not None:
            head = heads.get(self.base_task(task))  # a view uses its task's head
        if not head and self.family.head_keys is None:
            return {}
        if not head:
            raise CheckpointError(f"no head for task {task!r} (the model pool has no model for it)")
        return head

    def load_head(self, model, task, head):
        self._assign(model, self._head({task: head}, task), f"head of {task}")

    def load_model(self, task, backbone, head):
        """The pool's skeleton for `task`, holding `backbone` and `head` (shared: reloaded per use)."""
        head = self._head({task: head}, task)
        model = self.skeleton(self.spec(task).num_classes)
        self.load_backbone(model, backbone, head_names=set(head))
        self.load_head(model, task, head)
        return model

    # ---- evaluation -------------------------------------------------------------------------
    def _select(self, tasks):
        """TaskPool.tasks by default; any task the pool has data for otherwise (a head is still needed)."""
        if tasks is None:
            return self.tasks
        return [self.eval_name(t) for t in tasks]

    def _bar(self, tasks, desc):
        total = sum(-(-len(self.eval_indices(t)) // self.batch_size) for t in tasks)
        return tqdm(total=total, desc=desc, unit="batch", file=sys.stderr, leave=False,
                    disable=not self.progress, dynamic_ncols=True)

    def _predict(self, model, input_ids, lengths):
        """The family's eval outputs for one batch (GPT logits, T5 generated ids)."""
        return self.family.predict(model, {"input_ids": input_ids, "lengths": lengths})

    def metric_name(self, task):
        """The name of the metric `task` is scored with (Mcc, ..., or ExactMatch / GeneratedSpearman for T5)."""
        return self.family.metric(self.spec(task)).name

    def _metrics(self, task, outputs, labels, seconds):
        """The task metric's values plus `accuracy`, `main`, `num_examples`, `seconds`."""
        spec = self.spec(task)
        metric = self.family.metric(spec)   # the task's GLUE metric (GPT), or generated-answer metrics (T5)
        metric.update(outputs, labels)
        values = flat_metrics(metric.accumulate(), getattr(metric, "prompt", None))
        if not spec.is_regression and "accuracy" not in values:
            values["accuracy"] = float(np.mean(outputs.argmax(-1) == labels))
        values["main"] = float(values[metric.main_key])
        values["num_examples"] = int(len(labels))
        values["seconds"] = round(float(seconds), 4)
        return values

    def eval_batches(self, task):
        """The plan of the task's eval pass: arrays of eval positions, longest sequences first, so
        each batch (padded to its own longest) wastes little compute. Outputs are restored to the
        dataset's order with `restore_order`."""
        from ppmerge.data import length_sorted_batches, sequence_lengths

        count = len(self.eval_indices(task))
        return length_sorted_batches(sequence_lengths(self.dataset(task), count), self.batch_size)

    def _run(self, model, task, call, bar):
        """Feed the task's eval batches through `call(model, input_ids, lengths)`; numpy outputs and
        labels in the dataset's order."""
        from ppmerge.data import restore_order

        paddle = _paddle()
        dataset = self.dataset(task)
        indices = self.eval_indices(task)
        plan = self.eval_batches(task)
        outputs, labels = [], []
        with paddle.no_grad():
            for positions in plan:
                batch = self.collate([dataset[int(i)] for i in indices[positions]])
                out = call(model, paddle.to_tensor(batch["input_ids"]), paddle.to_tensor(batch["lengths"]))
                outputs.append(out.numpy())
                labels.append(self.family.batch_labels(batch))
                bar.update(1)
        if not outputs:
            raise ConfigError(f"TaskPool: {task} {self.split_of(task)} has no examples to evaluate "
                              f"(check TaskPool.max_examples and the data files)")
        return restore_order(plan, np.concatenate(outputs)), restore_order(plan, np.concatenate(labels))

    def logits(self, task, backbone, head):
        """Logits of the task's eval examples (in order) and their labels."""
        model = self.load_model(task, backbone, head)
        with tqdm(disable=True) as bar:
            return self._run(model, task, self._predict, bar)

    def _skeleton_with(self, backbone, heads, task, loaded):
        """The shared skeleton for `task`'s class count, holding `backbone`; `loaded` (ids of the
        skeletons already holding it) saves reloading the backbone for tasks that share a skeleton."""
        model = self.skeleton(self.spec(task).num_classes)
        if id(model) not in loaded:
            self.load_backbone(model, backbone, head_names=set(self._head(heads, task)))
            loaded.add(id(model))
        return model

    def evaluate(self, backbone, heads, tasks=None, desc="evaluate"):
        """{task: metrics} for one backbone, each task with its own head."""
        tasks = self._select(tasks)
        loaded = set()  # skeletons already holding this backbone (heads differ per task)
        results = {}
        with self._bar(tasks, desc) as bar:
            for task in tasks:
                bar.set_postfix_str(task)
                start = time.perf_counter()
                model = self._skeleton_with(backbone, heads, task, loaded)
                self.load_head(model, task, self._head(heads, task))
                outputs, labels = self._run(model, task, self._predict, bar)
                results[task] = self._metrics(task, outputs, labels, time.perf_counter() - start)
        return results

    def evaluate_ensemble(self, backbones, heads, tasks=None, desc="ensemble"):
        """{task: metrics} of the ensemble: the backbones' pooled hidden states are averaged, then
        each task's head is applied to the average (all backbones run on every task)."""
        paddle = _paddle()
        tasks = self._select(tasks)
        backbones = list(backbones.values()) if isinstance(backbones, dict) else list(backbones)
        if not backbones:
            raise ConfigError("simple_ensemble: the model pool has no models")
        pooled = {t: None for t in tasks}
        labels = {}
        seconds = {t: 0.0 for t in tasks}
        with self._bar(tasks, desc) as bar:
            bar.total *= len(backbones)
            for backbone in backbones:
                loaded = set()
                for task in tasks:
                    bar.set_postfix_str(task)
                    start = time.perf_counter()
                    model = self._skeleton_with(backbone, heads, task, loaded)
                    hidden, labels[task] = self._run(model, task, lambda m, ids, lens: m.pooled_hidden(ids, lens), bar)
                    pooled[task] = hidden if pooled[task] is None else pooled[task] + hidden
                    seconds[task] += time.perf_counter() - start
        results = {}
        for task in tasks:
            start = time.perf_counter()
            model = self.skeleton(self.spec(task).num_classes)
            self.load_head(model, task, self._head(heads, task))
            with paddle.no_grad():
                outputs = model.score(paddle.to_tensor(pooled[task] / len(backbones))).numpy()
            seconds[task] += time.perf_counter() - start
            results[task] = self._metrics(task, outputs, labels[task], seconds[task])
        return results

    def cross_task_matrix(self, backbones, heads, tasks=None):
        """{model name: {task: metrics}}: every backbone evaluated on every task (each task's head)."""
        return {name: self.evaluate(backbone, heads, tasks, desc=f"cross-task {name}")
                for name, backbone in backbones.items()}


def flat_metrics(values, prompt=None):
    """Metric values as flat numbers (reports write them to CSV / XLSX): a generation metric's
    confusion matrix becomes `confusion.<true answer>.<predicted answer>` counts."""
    matrix = values.pop("confusion_matrix", None)
    if matrix is not None:
        words = list(prompt["targets"])
        for i, row in enumerate(matrix):
            for j, count in enumerate(row):
                values[f"confusion.{words[i]}.{words[j]}"] = int(count)
    return values


_PADDLE = None


def _paddle():
    global _PADDLE
    if _PADDLE is None:
        from ppmerge.runtime import import_paddle

        _PADDLE = import_paddle()
    return _PADDLE
