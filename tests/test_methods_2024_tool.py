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
        "TaskPool.batch_size=16", "TaskPool.max_examples=12", f"Output.dir={out}", *extra]
    argv = ["-c", os.path.join(ROOT, "configs", "merge", f"gpt_glue_{name}.yaml")]
    for o in overrides:
        argv += ["-o", o]
    assert merge_main()(argv) == 0
    with open(os.path.join(out, "report.json")) as f:
        return json.load(f)


def _backbones(sds):
    backbone = {k: v for k, v in sds["base"].items() if k != "score.weight"}
    return backbone, [{k: sds[t][k] for k in backbone} for t in TASKS]


@pytest.mark.parametrize("name,params,extra", [
    ("task_singular_vectors", {"alpha": 1.0}, []), ("iso_c", {"scaling_factor": 1.0}, []),
    ("iso_cts", {"scaling_factor": 1.0, "common_space_fraction": 0.8}, []),
    ("wudi_merging", {"iter_num": 3, "lr": 1e-5}, ["Merge.iter_num=3"])])
def test_data_free_methods_through_the_tool(pool, glue_suite, tmp_path, capsys, name, params, extra):
    from ppmerge.merge import get_method
    from ppmerge.models import load_numpy_state_dict

    paths, sds = pool
    out = str(tmp_path / "out")
    report = run_config(name, paths, glue_suite["glue"], out, extra)
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


def _task_pool(data_root):
    from ppmerge.evaluation.task_pool import TaskPool

    return TaskPool(TASKS, dict(MODEL_CFG), data_root=data_root, layout="glue", batch_size=16, max_length=32,
                    max_examples=12, progress=False)


def test_emr_merging_through_the_tool_saves_one_file(pool, glue_suite, tmp_path):
    from ppmerge.merge import MergeContext, get_method
    from ppmerge.merge.methods.emr_merging import FILE, load_emr

    paths, sds = pool
    out = str(tmp_path / "out")
    report = run_config("emr_merging", paths, glue_suite["glue"], out)
    assert report["model_file"] == os.path.join(out, FILE)
    assert not os.path.exists(os.path.join(out, "merged_model.pdparams"))
    backbone, models = _backbones(sds)
    loaded, heads = load_emr(os.path.join(out, FILE), backbone)
    assert loaded.task_names == TASKS and set(heads) == set(TASKS)
    ctx = MergeContext(task_names=TASKS, heads=[{"score.weight": sds[t]["score.weight"]} for t in TASKS],
                       task_pool=None, model_cfg=dict(MODEL_CFG))
    direct = get_method("emr_merging")(backbone, models, context=ctx)
    task_pool = _task_pool(glue_suite["glue"])
    row = [r for r in report["rows"] if r["kind"] == "merged"][0]
    for task in TASKS:
        expected = direct.task_backbone(task)
        for key, value in loaded.task_backbone(task).items():
            np.testing.assert_allclose(value, expected[key], rtol=1e-6, atol=1e-7, err_msg=key)
        np.testing.assert_array_equal(heads[task]["score.weight"], sds[task]["score.weight"])
        # each task was evaluated with its own backbone θ₀ + λ_t M_t ⊙ τ_uni
        own = task_pool.evaluate(expected, {task: {"score.weight": sds[task]["score.weight"]}}, [task])[task]
        assert row["metrics"][task]["main"] == pytest.approx(own["main"], abs=1e-6)
    # size: τ_uni once + N bits per parameter, against N full float32 backbones
    size = os.path.getsize(os.path.join(out, FILE))
    params = sum(v.size for v in backbone.values())
    assert size < params * 4 * (1 + len(TASKS) / 32) * 1.05 + 200_000 < len(TASKS) * params * 4


def test_adamerging_through_the_tool_reports_and_reuses_its_table(pool, glue_suite, tmp_path):
    from ppmerge.models import load_numpy_state_dict

    paths, sds = pool
    out = str(tmp_path / "out")
    report = run_config("adamerging", paths, glue_suite["glue"], out,
                        ["Merge.max_steps=2", "Merge.granularity=layer_wise", "Merge.batch_size=8"])
    row = [r for r in report["rows"] if r["kind"] == "merged"][0]
    table = row["method_info"]["adamerging"]
    assert table["steps"] == 2 and len(table["entropy"]) == 2 and len(table["lambdas"]) == len(TASKS)
    first = load_numpy_state_dict(os.path.join(out, "merged_model.pdparams"))
    # the saved table, loaded from the report, gives the same model without training
    again = str(tmp_path / "again")
    report2 = run_config("adamerging", paths, glue_suite["glue"], again,
                         ["Merge.granularity=layer_wise", f"Merge.lambdas={os.path.join(out, 'report.json')}"])
    second = load_numpy_state_dict(os.path.join(again, "merged_model.pdparams"))
    assert [r for r in report2["rows"] if r["kind"] == "merged"][0]["method_info"]["adamerging"]["steps"] == 0
    for key, value in first.items():
        np.testing.assert_allclose(second[key], value, rtol=1e-6, atol=1e-7, err_msg=key)


def test_regmean_plusplus_through_the_tool(pool, glue_suite, tmp_path):
    from ppmerge.models import load_numpy_state_dict

    paths, sds = pool
    out = str(tmp_path / "out")
    report = run_config("regmean_plusplus", paths, glue_suite["glue"], out,
                        ["Merge.num_regmean_examples=8", "Merge.batch_size=8"])
    row = [r for r in report["rows"] if r["kind"] == "merged"][0]
    assert set(row["metrics"]) == set(TASKS) and row["average"] is not None
    merged = load_numpy_state_dict(os.path.join(out, "merged_model.pdparams"))
    backbone, models = _backbones(sds)
    from ppmerge.merge import MergeContext, get_method

    ctx = MergeContext(task_names=TASKS, heads=[{"score.weight": sds[t]["score.weight"]} for t in TASKS],
                       task_pool=_task_pool(glue_suite["glue"]), model_cfg=dict(MODEL_CFG),
                       seed=report["config"]["Global"]["seed"])
    expected = get_method("regmean_plusplus")(backbone, models, context=ctx, num_regmean_examples=8, batch_size=8)
    for key in backbone:
        np.testing.assert_allclose(merged[key], expected[key], rtol=1e-5, atol=1e-6, err_msg=key)


def test_a_sweep_over_iso_cts_and_adamerging_points(pool, glue_suite, tmp_path):
    from ppmerge.merge import get_method
    from ppmerge.models import load_numpy_state_dict

    paths, sds = pool
    out = str(tmp_path / "out")
    report = run_config("iso_cts", paths, glue_suite["glue"], out,
                        ['Sweep.grid={"Merge.common_space_fraction": [0.5, 0.8]}'])
    points = [r for r in report["rows"] if r["kind"] == "sweep"]
    assert [r["params"]["common_space_fraction"] for r in points] == [0.5, 0.8]
    best = [r for r in points if r["best"]][0]
    merged = load_numpy_state_dict(os.path.join(out, "merged_model.pdparams"))
    backbone, models = _backbones(sds)
    expected = get_method("iso_cts")(backbone, models, **best["params"])
    for key in backbone:
        np.testing.assert_allclose(merged[key], expected[key], rtol=1e-5, atol=1e-6, err_msg=key)
    # AdaMerging in a sweep: every point keeps its own λ table
    report = run_config("adamerging", paths, glue_suite["glue"], str(tmp_path / "ada"),
                        ["Merge.max_steps=0", 'Sweep.grid={"Merge.init": [0.2, 0.4]}'])
    tables = [r["method_info"]["adamerging"]["lambdas"] for r in report["rows"] if r["kind"] == "sweep"]
    assert tables == [[0.2] * len(TASKS), [0.4] * len(TASKS)]


def test_tsv_compression_through_the_tool(pool, glue_suite, tmp_path):
    from ppmerge.merge.methods.tsv_compression import FILE, load_tsv_c

    paths, sds = pool
    out = str(tmp_path / "out")
    report = run_config("tsv_compression", paths, glue_suite["glue"], out)
    assert report["model_file"] == os.path.join(out, FILE)
    backbone, models = _backbones(sds)
    loaded, heads = load_tsv_c(os.path.join(out, FILE), backbone)
    row = [r for r in report["rows"] if r["kind"] == "merged"][0]
    task_pool = _task_pool(glue_suite["glue"])
    for task, model in zip(TASKS, models):
        bb = loaded.task_backbone(task)
        key = "gpt.decoder.layers.0.linear1.weight"   # 64 x 256: r = 64, k = 21 per task
        tau = model[key].astype(np.float64) - backbone[key]
        u, s, vh = np.linalg.svd(tau, full_matrices=False)
        np.testing.assert_allclose(bb[key], backbone[key] + (u[:, :21] * s[:21]) @ vh[:21], rtol=1e-4, atol=1e-5)
        own = task_pool.evaluate(bb, {task: heads[task]}, [task])[task]
        assert row["metrics"][task]["main"] == pytest.approx(own["main"], abs=1e-6)
