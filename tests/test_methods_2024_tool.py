"""The 2024-2025 methods end to end: each shipped config through tools/merge.py main() on a tiny
generated pool (overrides point it at the pool, as the demo does); the saved model equals the method
called directly."""
import importlib.util
import json
import os

import numpy as np
import pytest

from test_merge_runner_support import MODEL_CFG, TASKS, make_pool

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def merge_main():
    spec = importlib.util.spec_from_file_location("ppmerge_tool_merge_2024", os.path.join(ROOT, "tools", "merge.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    return make_pool(str(tmp_path_factory.mktemp("pool2024")))


def run_config(name, paths, data_root, out, extra=()):
    overrides = [
        f"ModelPool.base={paths['base']}", f"ModelPool.models={json.dumps({t: paths[t] for t in TASKS})}",
        f"TaskPool.tasks={json.dumps(TASKS)}", "Global.device=cpu", f"TaskPool.data_root={data_root}",
        "TaskPool.layout=glue", f"TaskPool.model.name={MODEL_CFG['name']}", "TaskPool.max_length=32",
        "TaskPool.batch_size=16", "TaskPool.max_examples=24", f"Output.dir={out}", *extra]
    argv = ["-c", os.path.join(ROOT, "configs", "merge", f"gpt_glue_{name}.yaml")]
    for o in overrides:
        argv += ["-o", o]
    assert merge_main()(argv) == 0
    with open(os.path.join(out, "report.json")) as f:
        return json.load(f)


def _backbones(sds):
    backbone = {k: v for k, v in sds["base"].items() if k != "score.weight"}
    return backbone, [{k: sds[t][k] for k in backbone} for t in TASKS]


@pytest.mark.parametrize("name,params", [("task_singular_vectors", {"alpha": 1.0}), ("iso_c", {"scaling_factor": 1.0}),
                                         ("iso_cts", {"scaling_factor": 1.0, "common_space_fraction": 0.8})])
def test_data_free_svd_methods_through_the_tool(pool, glue_suite, tmp_path, capsys, name, params):
    from ppmerge.merge import get_method
    from ppmerge.models import load_numpy_state_dict

    paths, sds = pool
    out = str(tmp_path / "out")
    report = run_config(name, paths, glue_suite["glue"], out)
    assert f"| {name} |" in capsys.readouterr().out
    row = [r for r in report["rows"] if r["kind"] == "merged"][0]
    assert set(row["metrics"]) == set(TASKS) and report["params"] == params
    merged = load_numpy_state_dict(os.path.join(out, "merged_model.pdparams"))
    backbone, models = _backbones(sds)
    expected = get_method(name)(backbone, models, **params)
    for key in backbone:
        np.testing.assert_allclose(merged[key], expected[key], rtol=1e-5, atol=1e-6, err_msg=key)
    for task in TASKS:
        np.testing.assert_array_equal(merged[f"heads.{task}.score.weight"], sds[task]["score.weight"])
