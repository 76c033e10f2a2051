"""What `tools/eval.py` needs to evaluate a model on a task without the user restating the task.

A checkpoint written by `tools/train.py` sits in a run folder whose `config.yaml` names the task it
was fine-tuned on (`Data.Train.dataset.name`) and its class count, loss and metric; a merged model
file names its heads (`heads.<model or task name>.*`). From these:

- `find_run_config(weights)`: the run's config.yaml beside the weights (the folder, its parent);
- `trained_task(run_cfg)`: the task the run fine-tuned on;
- `check_head(weights, task, ...)`: the file must hold a head for the task: a merged file a
  `heads.<task or --head name>` entry, a plain checkpoint its `score.*` keys and (when its run is
  known) the same task. A bare backbone or a task vector has no head: evaluating it would use a
  random head, so it is an error, also for test-set submissions.
- `configure_for_task(cfg, task, root)`: the config with the task's class count, loss and metric
  (GPT family), train and eval naming the same task, so `-o Data.Eval.dataset.name=X` is enough.
"""
import os

from ppmerge.errors import CheckpointError, ConfigError

RUN_CONFIG = "config.yaml"


def find_run_config(weights):
    """The training run's config.yaml for a checkpoint folder, weights file or FleetX prefix; or None."""
    if not weights:
        return None
    weights = os.path.abspath(os.fspath(weights))
    folder = weights if os.path.isdir(weights) else os.path.dirname(weights)
    for candidate in (os.path.join(folder, RUN_CONFIG), os.path.join(os.path.dirname(folder), RUN_CONFIG)):
        if os.path.isfile(candidate):
            return candidate
    return None


def read_run_config(path):
    """The run's config (a plain dict), or None when it cannot be read as one."""
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except (OSError, yaml.YAMLError):
        return None
    return data if isinstance(data, dict) else None


def trained_task(run_cfg):
    """The task name a run fine-tuned on (`Data.Train.dataset.name`), or None."""
    from ppmerge.data.custom import is_custom

    data = (run_cfg or {}).get("Data") or {}
    dataset = ((data.get("Train") or {}).get("dataset") or {})
    if is_custom(dataset):
        return dataset.get("task_name") or "custom"
    return dataset.get("name")


def _task_name(task):
    """A GLUE task's canonical name; a custom task's (or unknown) name as it is."""
    from ppmerge.data import get_task
    from ppmerge.errors import UserError

    try:
        return get_task(task).name
    except UserError:
        return str(task)


def head_names(weights, head_keys=r"^score\."):
    """(file, merged head names or [], has a plain head) of a weights file, from its index only."""
    import re

    from ppmerge.models.checkpoint import merged_task_names, open_state_dict, resolve_checkpoint_path

    file = resolve_checkpoint_path(weights)
    if os.path.isdir(file):
        return file, [], True  # an HF folder: checked when it loads
    with open_state_dict(file) as lazy:
        keys = list(lazy.shapes)
    merged = merged_task_names(dict.fromkeys(keys))
    # (a LoRA training checkpoint holds the wrapped model's keys: `model.score.weight`)
    plain = any(re.search(head_keys, k[len("model."):] if k.startswith("model.") else k) for k in keys)
    return file, merged, plain


def check_head(weights, task, head=None, trained=None, head_keys=r"^score\."):
    """CheckpointError unless the weights hold a head for `task` (or the merged file's `head`)."""
    if head_keys is None:  # a family without heads (T5): the whole model answers every task
        return
    from ppmerge.models.checkpoint import select_task_head

    task = _task_name(task)
    file, merged, plain = head_names(weights, head_keys)
    if merged:
        select_task_head(dict.fromkeys(f"heads.{n}.x" for n in merged), head or task)  # raises naming the heads
        return
    if head:
        raise CheckpointError(f"--head {head}: {file} is not a merged model (it has no heads.<name>.* keys)")
    if not plain:
        raise CheckpointError(f"{file} has no classification head (no score.* key): a bare backbone or a task vector "
                              f"cannot be evaluated on {task} (a random head would be scored); evaluate a fine-tuned "
                              f"or merged model")
    if trained and _task_name(trained) != task:
        raise CheckpointError(f"{file} was fine-tuned on {_task_name(trained)} (its run's {RUN_CONFIG}); it has no "
                              f"head for {task}: evaluate a model fine-tuned on {task} or a merged model")


def configure_for_task(cfg, task, root=None, keep_metric=False):
    """A copy of the training config `cfg` set up to evaluate `task` (its data under `root` if given):
    Data.Eval (and Data.Train, which must name the same task) -> task; for the GPT family
    Model.num_classes, Model.loss.*.name and (unless keep_metric) Model.metric.*.name from the task."""
    import copy

    from ppmerge.data import get_task

    from ppmerge.data.custom import CustomTaskSpec

    spec = get_task(task)
    cfg = copy.deepcopy(cfg)
    data = cfg.setdefault("Data", {})
    for mode in ("Train", "Eval"):
        section = data.get(mode)
        if isinstance(spec, CustomTaskSpec):  # the custom dataset's section describes it: keep it
            if section and section.get("dataset") and mode == "Train":
                section["dataset"] = copy.deepcopy(data["Eval"]["dataset"])
        elif section and section.get("dataset"):
            section["dataset"]["name"] = spec.name
    if root is not None:
        data["Eval"]["dataset"]["root"] = root
    model = cfg["Model"]
    if _family(model) == "gpt":
        model["num_classes"] = spec.num_classes
        for mode in ("train", "eval"):
            model.setdefault("loss", {}).setdefault(mode, {})["name"] = spec.loss
            if not keep_metric:
                model.setdefault("metric", {}).setdefault(mode, {})["name"] = spec.metric
    return cfg


def _family(model_cfg):
    try:
        from ppmerge.models.families import family_name
    except ImportError:
        return "gpt"
    return family_name(model_cfg)


def family_head_keys(cfg):
    """The family's head-key regex (GPT `^score\\.`), None for a family without heads (T5)."""
    try:
        from ppmerge.models.families import family_of_config
    except ImportError:
        return r"^score\."
    return getattr(family_of_config(cfg), "head_keys", r"^score\.")


def data_root_for(root):
    """The folder that holds the task folders: `root` itself, or its parent when `root` is a task's
    own folder (./dataset/SST-2 -> ./dataset)."""
    from ppmerge.data.readers import FOLDERS

    root = os.path.normpath(os.fspath(root))
    task_folders = {name for layout in FOLDERS.values() for name in layout.values()} | {"diagnostic"}
    return os.path.dirname(root) or "." if os.path.basename(root) in task_folders else root


def weights_from_overrides(overrides):
    """`Engine.save_load.ckpt_dir` or `Model.pretrained` from `-o` strings (to find the run's config)."""
    from ppmerge.config.overrides import parse_override

    found = {}
    for text in overrides:
        key, value = parse_override(text)
        if key in ("Engine.save_load.ckpt_dir", "Model.pretrained") and value:
            found[key] = value
    return found.get("Engine.save_load.ckpt_dir") or found.get("Model.pretrained")


def config_path_for(config, overrides):
    """-c, or the run's config.yaml beside the weights named by -o; ConfigError when there is neither."""
    return config_for(config, overrides)[0]


GPT_BASE_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                               "configs", "gpt", "finetune_gpt_base.yaml")
_ARCH_KEYS = ("name", "vocab_size", "hidden_size", "num_layers", "num_attention_heads", "ffn_hidden_size",
              "max_position_embeddings", "type_vocab_size", "hidden_dropout_prob", "attention_probs_dropout_prob",
              "initializer_range", "fused_linear")


def config_for(config, overrides, tasks=None, data_root=None):
    """(config path, extra overrides put before the user's): -c as given; else the run's config.yaml
    beside the weights; beside a merged GPT model (whose config.yaml is the merge's) the repo's GPT base
    config with the merge's architecture (TaskPool.model) and tokenizer, and Data.Train naming the
    task of Data.Eval -- so `-o Model.pretrained=<merged> -o Data.Eval.dataset.name=X -o
    Data.Eval.dataset.root=<data>` is enough. ConfigError when there is no config to use."""
    if config:
        return config, []
    weights = weights_from_overrides(overrides)
    found = find_run_config(weights)
    if found is None:
        if weights and not os.path.exists(weights):
            where = f" ({weights} does not exist)"
        else:
            where = f" (none beside {weights})" if weights else ""
        raise ConfigError(f"no config: give -c CONFIG, or point -o Engine.save_load.ckpt_dir=<checkpoint folder> or "
                          f"-o Model.pretrained=<model file> at a checkpoint of a tools/train.py run or a merge "
                          f"(its {RUN_CONFIG} is read){where}")
    run_cfg = read_run_config(found) or {}
    if "ModelPool" not in run_cfg:
        return found, []
    # beside a merged model: the merge's config, not a training one
    task_pool = run_cfg.get("TaskPool") or {}
    arch = dict(task_pool.get("model") or {})
    if _family(arch) != "gpt" or not os.path.isfile(GPT_BASE_CONFIG):
        raise ConfigError(f"{found} is a merge config ({weights} is a merged model): give -c a training config "
                          f"for its architecture ({arch.get('name') or 'the pool model'}) and "
                          f"-o Data.Eval.dataset.name=<TASK> -o Data.Eval.dataset.root=<data>")
    from ppmerge.config.overrides import parse_override

    given = dict(parse_override(o) for o in overrides)
    task = given.get("Data.Eval.dataset.name")
    if not task and tasks:  # --tasks: the config's own task is only a placeholder
        task = "SST2" if [t.lower() for t in tasks] == ["all"] else tasks[0]
    if not task:
        raise ConfigError(f"{weights} is a merged model: say which task to evaluate with "
                          f"-o Data.Eval.dataset.name=<TASK> (and -o Data.Eval.dataset.root=<data>)")
    root = given.get("Data.Eval.dataset.root") or data_root or task_pool.get("data_root") or "./dataset"
    extra = [f"Model.{k}={v}" for k, v in arch.items() if k in _ARCH_KEYS and v is not None]
    extra += [f"Tokenizer.{k}={v}" for k, v in (task_pool.get("tokenizer") or {}).items() if v is not None]
    extra += [f"Global.device={(run_cfg.get('Global') or {}).get('device') or 'cpu'}",
              f"Data.Train.dataset.name={task}", f"Data.Train.dataset.root={root}", f"Data.Eval.dataset.root={root}"]
    return GPT_BASE_CONFIG, extra
