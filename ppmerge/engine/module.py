"""FinetuneModule: what one fine-tuning step computes (PaddleFleetX's GPTFinetuneModule idea).

It owns the model and asks the model family (`ppmerge.models.families`: GPT + classification head,
or T5 text-to-text) for everything that depends on it: building, loading `Model.pretrained`,
collating a batch, the training loss, the eval outputs and the metrics. The task comes from
`Data.Train.dataset.name` (or `Data.Eval`). For GPT, `Model.num_classes` and the loss must agree
with it: STS-B is regression (num_classes 1, MSELoss), MNLI has 3 classes; FleetX users set these
with `-o`, a mismatch is a ConfigError that says what to set. T5 needs neither (answers are text).

`Model.lora` (null = full fine-tuning) wraps the network in paddlenlp's LoRAModel with only the
LoRA weights trainable (`ppmerge.models.families.lora`); `export(output_dir)` then writes the
adapter (and the merged model on request) after training."""
from ppmerge.data.tasks import get_task
from ppmerge.engine.seed import seed_everything
from ppmerge.errors import ConfigError, UserError
from ppmerge.runtime import set_device


def config_task(cfg):
    """The task the config trains / evaluates: Data.Train.dataset.name, else Data.Eval's."""
    data = cfg.get("Data") or {}
    names = {mode: ((data.get(mode) or {}).get("dataset") or {}).get("name") for mode in ("Train", "Eval")}
    name = names["Train"] or names["Eval"]
    if not name:
        raise ConfigError("Data.Train.dataset.name: no task set (expected a GLUE task such as SST2)")
    from ppmerge.data.tasks import dataset_task

    sections = {mode: (data.get(mode) or {}).get("dataset") or {} for mode in ("Train", "Eval")}
    task = dataset_task(sections["Train"] if names["Train"] else sections["Eval"],
                        f"Data.{'Train' if names['Train'] else 'Eval'}.dataset")
    if names["Train"] and names["Eval"] and dataset_task(sections["Eval"], "Data.Eval.dataset").name != task.name:
        raise ConfigError(f"Data.Eval.dataset.name is {names['Eval']!r} but Data.Train.dataset.name is "
                          f"{names['Train']!r}: train and eval must be the same task")
    return task


def check_model_matches_task(model_cfg, task):
    """GPT: num_classes and losses must fit the task (kept for callers of the old name)."""
    from ppmerge.models.families import get_family

    get_family(model_cfg).check(task)


class FinetuneModule:
    def __init__(self, cfg, pretrained=True):
        from ppmerge.models.families import family_of_config

        self.cfg = cfg
        self.task = config_task(cfg)
        model_cfg = cfg["Model"]
        self.family = family_of_config(cfg)
        self.family.check(self.task)
        self.lora_cfg = model_cfg.get("lora")
        if pretrained and self.lora_cfg and not model_cfg.get("pretrained"):
            # only the adapter is saved: on an unsaved random base it could never be used again
            raise ConfigError("Model.pretrained: a LoRA run (Model.lora) saves only the adapter, so it needs the "
                              "base it trains on; set Model.pretrained to a base model (e.g. one written by "
                              "tools/init_model.py) or set Model.lora: null for full fine-tuning")
        set_device(cfg["Global"].get("device") or "cpu")
        seed_everything(int(cfg["Global"]["seed"]))  # before building: the init is seeded too
        self.network = self.family.build(self.task)
        path = model_cfg.get("pretrained")
        lora_weights = None
        if pretrained and path:
            lora_weights = self._lora_checkpoint(path)
            if lora_weights is None:
                self.family.load_pretrained(self.network, path, self.task)
        if self.lora_cfg:
            from ppmerge.models.families.lora import apply_lora

            # paddlenlp injects LoRA layers into the network in place; we train that network itself
            # (keys `...q.lora_A`, plain Layer state-dict semantics for checkpoints and resume) and
            # keep the LoRAModel for exporting the adapter.
            self.lora_model = apply_lora(self.network, self.lora_cfg, self.family)
            self.network = self.lora_model.model
            if lora_weights is not None:
                self._load_lora_checkpoint(lora_weights, path)
        elif lora_weights is not None:
            raise ConfigError(f"Model.pretrained: {path} is a LoRA training checkpoint; set Model.lora as in "
                              f"that run (or load its merged_model.pdparams)")
        self.model = self.network  # the engine may wrap it (paddle.DataParallel)

    # ---- LoRA checkpoints: the whole LoRAModel (base + adapter) as training saved it ---------------------
    @staticmethod
    def _lora_checkpoint(path):
        import os

        from ppmerge.models.checkpoint import load_numpy_state_dict, resolve_checkpoint_path

        if os.path.isdir(path) and not os.path.isfile(os.path.join(path, "model.pdparams")):
            return None
        try:
            file = resolve_checkpoint_path(path)
        except UserError:
            return None  # the family's loader says what is wrong
        if not file.endswith(".pdparams"):
            return None
        from ppmerge.models.checkpoint import open_state_dict

        with open_state_dict(file) as lazy:
            if not any(".lora_" in key for key in lazy.shapes):
                return None
        return load_numpy_state_dict(file)

    def _load_lora_checkpoint(self, weights, path):
        from ppmerge.errors import CheckpointError

        expected = set(self.network.state_dict())
        if set(weights) != expected:
            missing = sorted(expected - set(weights))[:3]
            extra = sorted(set(weights) - expected)[:3]
            raise CheckpointError(f"{path} does not match this LoRA model (check Model.lora): missing {missing}, "
                                  f"unexpected {extra}")
        self.network.set_state_dict(weights)

    # ---- what the engine calls ---------------------------------------------------------------------
    def collate(self, samples):
        return self.family.collate(samples)

    def build_metric(self):
        return self.family.metric(self.task)

    def training_step(self, batch):
        """The training loss of one micro-batch (a scalar tensor with grad)."""
        return self.family.loss(self.model, batch, self.task, "train")

    def eval_step(self, batch):
        """(outputs, labels) of one eval batch; call under paddle.no_grad(). Outputs: GPT logits,
        T5 generated ids. Test splits have labels -1."""
        return self.family.predict(self.model, batch, self.task), self.family.batch_labels(batch)

    def compute_metrics(self, outputs, labels):
        """Metric values of a whole split's outputs (GPT: + the eval loss)."""
        return self.family.evaluate(outputs, labels, self.task)

    def submission_outputs(self, outputs):
        """Predicted outputs -> class scores / STS-B scores for a GLUE submission (T5: the generated
        answers mapped back to labels; an answer that is no label word is written as the first label,
        and said on stderr)."""
        import sys

        scores, invalid = self.family.class_outputs(outputs, self.task)
        if invalid:
            fallback = self.task.labels[0] if self.task.labels else "0.000"
            print(f"warning: {self.task.name}: {invalid} of {len(scores)} generated answers are not a valid label; "
                  f"written as {fallback}", file=sys.stderr)
        return scores

    def export(self, output_dir):
        """After training: a LoRA run writes output_dir/lora/ (adapter, merged model on request)."""
        if not self.lora_cfg:
            return []
        import os

        from ppmerge.models.families.lora import save_adapter

        return save_adapter(self.lora_model, self.lora_cfg, self.family, os.path.join(output_dir, "lora"),
                            base_model=self.cfg["Model"].get("pretrained"))
