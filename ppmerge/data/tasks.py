"""The nine GLUE tasks as data: one `TaskSpec` each, looked up by FleetX's or GLUE's name."""
from dataclasses import dataclass

from ppmerge.errors import UserError

TASK_NAMES = ["CoLA", "SST2", "MRPC", "STSB", "QQP", "MNLI", "QNLI", "RTE", "WNLI"]


@dataclass(frozen=True)
class TaskSpec:
    name: str                 # FleetX's name (canonical): SST2, STSB, ...
    glue_name: str            # GLUE's folder name: SST-2, STS-B, ...
    num_classes: int          # 1 for the regression task STS-B
    metric: str               # Mcc | Accuracy | AccuracyAndF1 | PearsonAndSpearman
    loss: str                 # CrossEntropyLoss | MSELoss
    num_train_epochs: int     # FleetX's per-task value
    labels: tuple = ()        # label strings in the files, in class-id order (empty: float score)
    is_pair: bool = True      # two texts per example
    splits: tuple = ("train", "dev", "test")
    eval_splits: tuple = ("dev",)

    @property
    def is_regression(self):
        return self.loss == "MSELoss"

    @property
    def label_map(self):
        """File label string -> class id (empty for STS-B, whose label is a float score)."""
        return {label: i for i, label in enumerate(self.labels)}


_BINARY = ("0", "1")
_ENTAIL = ("entailment", "not_entailment")

TASKS = {
    "CoLA": TaskSpec("CoLA", "CoLA", 2, "Mcc", "CrossEntropyLoss", 3, _BINARY, is_pair=False),
    "SST2": TaskSpec("SST2", "SST-2", 2, "Accuracy", "CrossEntropyLoss", 3, _BINARY, is_pair=False),
    "MRPC": TaskSpec("MRPC", "MRPC", 2, "AccuracyAndF1", "CrossEntropyLoss", 5, _BINARY),
    "STSB": TaskSpec("STSB", "STS-B", 1, "PearsonAndSpearman", "MSELoss", 3),
    "QQP": TaskSpec("QQP", "QQP", 2, "AccuracyAndF1", "CrossEntropyLoss", 3, _BINARY),
    "MNLI": TaskSpec("MNLI", "MNLI", 3, "Accuracy", "CrossEntropyLoss", 3,
                     ("entailment", "neutral", "contradiction"),
                     splits=("train", "dev_matched", "dev_mismatched", "test_matched", "test_mismatched",
                             "diagnostic"),
                     eval_splits=("dev_matched", "dev_mismatched")),
    "QNLI": TaskSpec("QNLI", "QNLI", 2, "Accuracy", "CrossEntropyLoss", 3, _ENTAIL),
    "RTE": TaskSpec("RTE", "RTE", 2, "Accuracy", "CrossEntropyLoss", 3, _ENTAIL),
    "WNLI": TaskSpec("WNLI", "WNLI", 2, "Accuracy", "CrossEntropyLoss", 5, _BINARY),
}


def _key(name):
    return str(name).lower().replace("-", "").replace("_", "")


_ALIASES = {_key(n): n for n in TASK_NAMES}
_ALIASES.update({_key(t.glue_name): t.name for t in TASKS.values()})


def get_task(name):
    """The TaskSpec for `name`: FleetX's (SST2, STSB) or GLUE's (SST-2, STS-B, sst2), any case."""
    if isinstance(name, TaskSpec):
        return name
    canonical = _ALIASES.get(_key(name))
    if canonical is None:
        raise UserError(f"unknown GLUE task {name!r}: expected one of {', '.join(TASK_NAMES)} "
                        f"(GLUE's names SST-2, STS-B are accepted too, any case)")
    return TASKS[canonical]


def dataset_task(section, where="dataset"):
    """The task of a dataset config section: a GLUE task by `name`, or with `name: custom` the
    CustomTaskSpec its keys describe (`ppmerge.data.custom`)."""
    from ppmerge.data.custom import custom_task, is_custom

    if is_custom(section):
        return custom_task(section, where)
    return get_task((section or {}).get("name"))
