"""Tiny model pools for the merge runner / tool tests: a seeded gpt-tiny base and, per task, the base
plus a small seeded perturbation with its own head (no training: the runner's plumbing is tested)."""
import os

import numpy as np

TASKS = ["SST2", "MNLI", "STSB"]          # 2, 3 and 1 outputs
NUM_CLASSES = {"CoLA": 2, "SST2": 2, "MRPC": 2, "STSB": 1, "QQP": 2, "MNLI": 3, "QNLI": 2, "RTE": 2, "WNLI": 2}
MODEL_CFG = {"name": "gpt-tiny"}


def make_pool(folder, tasks=TASKS, seed=0):
    """Write base.pdparams and <TASK>.pdparams into folder; return (paths, state dicts) of numpy."""
    from ppmerge.models import build_model, save_state_dict
    from ppmerge.runtime import import_paddle

    paddle = import_paddle()
    paddle.seed(seed)
    base = {k: v.numpy() for k, v in build_model(MODEL_CFG, 2).state_dict().items()}
    rng = np.random.default_rng(seed)
    hidden = base["score.weight"].shape[0]
    os.makedirs(folder, exist_ok=True)
    paths = {"base": os.path.join(folder, "base.pdparams")}
    save_state_dict(base, paths["base"])
    state_dicts = {"base": base}
    for task in tasks:
        sd = {k: (v + rng.normal(0, 0.02, v.shape)).astype(v.dtype) for k, v in base.items() if k != "score.weight"}
        sd["score.weight"] = rng.normal(0, 0.2, (hidden, NUM_CLASSES[task])).astype(np.float32)
        paths[task] = os.path.join(folder, f"{task}.pdparams")
        save_state_dict(sd, paths[task])
        state_dicts[task] = sd
    return paths, state_dicts


def raw_config(paths, data_root, out_dir, method="simple_average", tasks=TASKS, **merge_params):
    """A merge config (before validation) for the pool at `paths` and the generated suite."""
    return {
        "Global": {"device": "cpu", "seed": 7},
        "ModelPool": {"base": paths["base"], "models": {t: paths[t] for t in tasks}},
        "Merge": {"method": method, **merge_params},
        "Sweep": None,
        "TaskPool": {"tasks": list(tasks), "data_root": data_root, "layout": "glue",
                     "batch_size": 16, "max_length": 32, "max_examples": 24, "model": dict(MODEL_CFG)},
        "Output": {"dir": out_dir},
    }


def write_yaml(cfg, path):
    import yaml

    with open(path, "w") as f:
        yaml.safe_dump(cfg, f)
    return path
