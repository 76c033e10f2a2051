"""FinetuneModule: what one fine-tuning step computes (PaddleFleetX's GPTFinetuneModule idea).

It owns the model (built from `Model`, with `Model.pretrained` loaded), the losses from
`Model.loss` and the eval metric from `Model.metric.eval`. The task comes from `Data.Train.dataset.name`
(or `Data.Eval`); `Model.num_classes` and the loss must agree with it: STS-B is regression
(num_classes 1, MSELoss), MNLI has 3 classes. FleetX users set these with `-o`; a mismatch is a
ConfigError that says what to set."""
from ppmerge.data.tasks import get_task
from ppmerge.engine.seed import seed_everything
from ppmerge.errors import ConfigError
from ppmerge.metrics import build_metric
from ppmerge.runtime import import_paddle, set_device

_LOSSES = ("CrossEntropyLoss", "MSELoss")


def config_task(cfg):
    """The task the config trains / evaluates: Data.Train.dataset.name, else Data.Eval's."""
    data = cfg.get("Data") or {}
    names = {mode: ((data.get(mode) or {}).get("dataset") or {}).get("name") for mode in ("Train", "Eval")}
    name = names["Train"] or names["Eval"]
    if not name:
        raise ConfigError("Data.Train.dataset.name: no task set (expected a GLUE task such as SST2)")
    task = get_task(name)
    if names["Train"] and names["Eval"] and get_task(names["Eval"]).name != task.name:
        raise ConfigError(f"Data.Eval.dataset.name is {names['Eval']!r} but Data.Train.dataset.name is "
                          f"{names['Train']!r}: train and eval must be the same task")
    return task


def check_model_matches_task(model_cfg, task):
    """num_classes and losses must fit the task (a mismatch trains a head of the wrong size)."""
    num_classes = model_cfg.get("num_classes")
    if num_classes != task.num_classes:
        raise ConfigError(f"Model.num_classes is {num_classes} but task {task.name} has {task.num_classes} "
                          f"(set -o Model.num_classes={task.num_classes})")
    for mode in ("train", "eval"):
        name = ((model_cfg.get("loss") or {}).get(mode) or {}).get("name") or task.loss
        if name not in _LOSSES:
            raise ConfigError(f"Model.loss.{mode}.name: {name!r} is not supported; expected one of {', '.join(_LOSSES)}")
        if name != task.loss:
            raise ConfigError(f"Model.loss.{mode}.name is {name} but task {task.name} needs {task.loss} "
                              f"(set -o Model.loss.{mode}.name={task.loss})")


def build_loss(name):
    paddle = import_paddle()
    if name == "MSELoss":
        mse = paddle.nn.MSELoss()
        # [B, 1] scores against float labels [B]
        return lambda logits, labels: mse(logits.astype("float32"), labels.astype("float32").reshape([-1, 1]))
    cross_entropy = paddle.nn.CrossEntropyLoss()
    return lambda logits, labels: cross_entropy(logits.astype("float32"), labels.astype("int64").reshape([-1]))


class FinetuneModule:
    def __init__(self, cfg, pretrained=True):
        from ppmerge.models import build_model, load_pretrained

        self.cfg = cfg
        self.task = config_task(cfg)
        model_cfg = cfg["Model"]
        check_model_matches_task(model_cfg, self.task)
        set_device(cfg["Global"].get("device") or "cpu")
        seed_everything(int(cfg["Global"]["seed"]))  # before building: the init is seeded too
        self.network = build_model(model_cfg, self.task.num_classes)
        self.model = self.network  # the engine may wrap it (paddle.DataParallel)
        if pretrained and model_cfg.get("pretrained"):
            load_pretrained(self.network, model_cfg["pretrained"], task=self.task.name)
        self.train_loss = build_loss(model_cfg["loss"]["train"]["name"])
        self.eval_loss = build_loss(model_cfg["loss"]["eval"]["name"])
        self.metric_name = ((model_cfg.get("metric") or {}).get("eval") or {}).get("name") or self.task.metric

    def build_metric(self):
        return build_metric(self.metric_name)

    def forward(self, batch):
        return self.model(batch["input_ids"], batch["lengths"])

    def training_step(self, batch):
        """The training loss of one micro-batch (a scalar tensor with grad)."""
        return self.train_loss(self.forward(batch), batch["labels"])

    def eval_step(self, batch):
        """(logits, labels) of one eval batch; call under paddle.no_grad(). Test splits have labels -1."""
        return self.forward(batch), batch["labels"]
