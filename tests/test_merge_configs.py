"""The shipped merge configs (configs/merge/*.yaml): every one loads through the merge schema and its
method parameters resolve; a few of the mergekit family run end to end through tools/merge.py main() on the
tiny pool (shipped Merge section, pool / tasks / output overridden)."""
import glob
import importlib.util
import os

import numpy as np
import pytest
import yaml

from test_merge_runner_support import TASKS, make_pool, write_yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(glob.glob(os.path.join(ROOT, "configs", "merge", "*.yaml")))
MERGEKIT = ["dare_simple_average", "slerp", "multislerp", "karcher", "model_stock", "breadcrumbs",
            "breadcrumbs_ties", "della", "della_linear"]


def load(path, overrides=()):
    from ppmerge.config import load_config
    from ppmerge.config.merge_schema import MERGE_SCHEMA

    return load_config(path, list(overrides), schema=MERGE_SCHEMA)


def test_every_mergekit_method_has_a_shipped_gpt_config():
    names = {os.path.basename(p) for p in CONFIGS}
    assert {f"gpt_glue_{m}.yaml" for m in MERGEKIT} <= names


@pytest.mark.parametrize("path", [p for p in CONFIGS if not os.path.basename(p).endswith("_base.yaml")],
                         ids=os.path.basename)
def test_every_shipped_merge_config_loads_and_its_method_parameters_resolve(path):
    from ppmerge.merge import get_method

    cfg = load(path)
    merge = dict(cfg["Merge"])
    method = get_method(merge.pop("method"), "Merge.method")
    resolved = method.resolve(merge)
    assert set(merge) <= set(resolved)
    with open(path) as f:
        raw = yaml.safe_load(f)
    for key, value in (raw.get("Merge") or {}).items():  # what the file writes is what the method gets
        if key != "method":
            assert resolved[key] == value, key
    if os.path.basename(path) == "gpt_glue_slerp.yaml":
        assert len(cfg["ModelPool"]["models"]) == 2


def merge_main():
    spec = importlib.util.spec_from_file_location("merge_tool_main", os.path.join(ROOT, "tools", "merge.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    return make_pool(str(tmp_path_factory.mktemp("pool")))


def slerp_reference(t, a, b):
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    cos = a @ b / np.linalg.norm(a) / np.linalg.norm(b)
    if abs(cos) > 0.9995:
        return (1 - t) * a + t * b
    omega = np.arccos(cos)
    return (np.sin((1 - t) * omega) * a + np.sin(t * omega) * b) / np.sin(omega)


def run_config(method, paths, tasks, glue_suite, tmp_path):
    """A config inheriting the shipped one, on the tiny pool; returns (its path, output dir, shipped path)."""
    out = str(tmp_path / "out")
    shipped = os.path.join(ROOT, "configs", "merge", f"gpt_glue_{method}.yaml")
    write_yaml({"_base_": shipped, "Global": {"device": "cpu", "seed": 7},
                "ModelPool": {"base": paths["base"], "models": {"_inherited_": False, **{t: paths[t] for t in tasks}}},
                "TaskPool": {"tasks": tasks, "data_root": glue_suite["glue"], "batch_size": 16, "max_length": 32,
                             "max_examples": 24, "model": {"name": "gpt-tiny"}},
                "Output": {"dir": out}}, tmp_path / "run.yaml")
    return str(tmp_path / "run.yaml"), out, shipped


@pytest.mark.parametrize("method", ["slerp", "della", "model_stock"])
def test_shipped_config_runs_end_to_end_on_the_tiny_pool(method, pool, glue_suite, tmp_path):
    from ppmerge.merge import get_method
    from ppmerge.models import load_numpy_state_dict

    paths, sds = pool
    tasks = TASKS[:2] if method == "slerp" else TASKS
    run, out, shipped = run_config(method, paths, tasks, glue_suite, tmp_path)
    assert merge_main()(["-c", run]) == 0
    with open(os.path.join(out, "config.yaml")) as f:
        saved = yaml.safe_load(f)
    with open(shipped) as f:
        assert saved["Merge"] == yaml.safe_load(f)["Merge"]
    merged = load_numpy_state_dict(os.path.join(out, "merged_model.pdparams"))
    backbone = {k: v for k, v in sds["base"].items() if k != "score.weight"}
    models = [{k: sds[t][k] for k in backbone} for t in sorted(tasks)]  # safe_dump sorts keys: the pool order
    if method == "slerp":  # the independent formula, t from the shipped file
        expected = {k: slerp_reference(saved["Merge"]["t"], models[0][k], models[1][k]).reshape(backbone[k].shape)
                    for k in backbone}
    else:
        params = {k: v for k, v in saved["Merge"].items() if k != "method"}
        expected = get_method(method)(backbone, models, **params)
    for key in backbone:
        np.testing.assert_allclose(merged[key], np.asarray(expected[key]), rtol=1e-4, atol=1e-5, err_msg=key)
    assert os.path.isfile(os.path.join(out, "report.json"))


@pytest.mark.parametrize("method, override, message", [
    ("slerp", "Merge.t=2", "error: Merge.t: expected an interpolation factor in [0.0, 1.0], got 2"),
    ("della", "Merge.density=0.9", "error: Merge.epsilon: della needs 0 < Merge.density ± Merge.epsilon < 1"),
    ("karcher", "Merge.max_iter=0", "error: Merge.max_iter: expected an integer >= 1, got 0"),
])
def test_out_of_range_override_exits_2_naming_the_key_and_writes_nothing(method, override, message, pool,
                                                                         glue_suite, tmp_path, capsys):
    from ppmerge.cli import run_tool

    paths, _ = pool
    tasks = TASKS[:2] if method == "slerp" else TASKS
    run, out, _ = run_config(method, paths, tasks, glue_suite, tmp_path)
    with pytest.raises(SystemExit) as info:
        run_tool(merge_main(), ["-c", run, "-o", override])
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.startswith(message) and err.count("\n") == 1, err
    assert "sparsify" not in err and "Traceback" not in err
    assert not os.path.exists(out)
