"""The Python API (`import ppmerge`): the README's example runs as written on tiny generated models,
merge results equal the numpy formulas, nothing is written unless asked, paddle loads lazily."""
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from ppmerge.models import load_numpy_state_dict
from test_merge_runner_support import make_pool

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TASKS = ["SST2", "MNLI"]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """models/{base,SST2,MNLI}.pdparams (gpt-tiny) and a generated GLUE suite in dataset/."""
    from ppmerge.data.synthetic import write_glue_suite

    root = tmp_path_factory.mktemp("api")
    paths, sds = make_pool(str(root / "models"), tasks=TASKS)
    write_glue_suite(str(root / "dataset"), layout="glue", n_train=32, n_dev=40, n_test=4, seed=0, tasks=TASKS)
    return root, paths, sds


def readme_example():
    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    section = text[text.index("## Python API"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_example_runs(workspace, monkeypatch, capsys):
    root, paths, sds = workspace
    code = readme_example()
    assert len(code.strip().splitlines()) <= 12
    monkeypatch.chdir(root)
    # the README is written for GPT-345M; the test's models are gpt-tiny (the only change made)
    exec(compile(code.replace('model="gpt-345m"', 'model="gpt-tiny"'), "README.md", "exec"), {})
    printed = capsys.readouterr().out.split("\n")
    assert [line.split()[0] for line in printed if line] == TASKS
    assert all(0 <= float(line.split()[1]) <= 100 for line in printed if line)
    saved = load_numpy_state_dict(root / "merged.pdparams")
    assert saved["heads.MNLI.score.weight"].shape == (64, 3) and saved["gpt.decoder.norm.weight"].dtype == np.uint16
    for task in TASKS:
        assert sorted(os.listdir(root / "merged_hf" / task)) == ["config.json", "model.safetensors"]


def test_merge_equals_the_formula_and_writes_nothing(workspace, monkeypatch, tmp_path):
    import ppmerge

    root, paths, sds = workspace
    monkeypatch.chdir(tmp_path)
    pool = ppmerge.load_pool({t: paths[t] for t in TASKS}, base=paths["base"])
    merged = ppmerge.merge(pool, "task_arithmetic", scaling_factor={"SST2": 0.2, "MNLI": 0.7})
    for key, base in sds["base"].items():
        if key.startswith("score."):
            assert key not in merged
            continue
        want = base + 0.2 * (sds["SST2"][key] - base) + 0.7 * (sds["MNLI"][key] - base)
        np.testing.assert_allclose(merged[key], want, rtol=1e-5, atol=1e-6)
        assert merged[key].dtype == base.dtype
    average = ppmerge.merge(pool, "simple_average")
    key = "gpt.decoder.layers.0.linear1.weight"
    np.testing.assert_allclose(average[key], (sds["SST2"][key] + sds["MNLI"][key]) / 2, rtol=1e-6, atol=1e-7)
    assert os.listdir(tmp_path) == []  # nothing written
    assert "simple_average" in ppmerge.methods()
    from ppmerge.errors import UserError

    with pytest.raises(UserError, match="task_pool"):
        ppmerge.merge(pool, "fisher_merging")
    with pytest.raises(UserError, match="Merge.scaling_factr"):
        ppmerge.merge(pool, "task_arithmetic", scaling_factr=0.3)


def test_evaluate_is_the_task_pools_and_save_round_trips(workspace, tmp_path):
    import ppmerge

    root, paths, sds = workspace
    pool = ppmerge.load_pool({t: paths[t] for t in TASKS}, base=paths["base"])
    data = ppmerge.task_pool(TASKS, data_root=root / "dataset", model="gpt-tiny", max_examples=24)
    backbone = {k: v for k, v in sds["SST2"].items() if not k.startswith("score.")}
    metrics = ppmerge.evaluate(backbone, pool, data)
    direct = data.evaluate(backbone, {t: {"score.weight": sds[t]["score.weight"]} for t in TASKS})
    for task in TASKS:
        assert metrics[task]["main"] == direct[task]["main"] and metrics[task]["num_examples"] == 24
    ensemble = ppmerge.merge(pool, "simple_ensemble")
    assert set(ppmerge.evaluate(ensemble, pool, data)) == set(TASKS)
    path = ppmerge.save(backbone, tmp_path / "m.safetensors", pool=pool, dtype="float16")
    saved = ppmerge.load(path)
    assert saved["gpt.decoder.norm.weight"].dtype == np.float16
    np.testing.assert_array_equal(saved["heads.MNLI.score.weight"], sds["MNLI"]["score.weight"].astype(np.float16))
    ppmerge.init_model(tmp_path / "init.pdparams", "gpt-tiny", seed=2)
    assert "score.weight" not in ppmerge.load(tmp_path / "init.pdparams")


def test_import_is_cheap_and_merge_stays_the_package():
    code = ("import sys, ppmerge; assert 'paddle' not in sys.modules; "
            "import ppmerge.merge; assert callable(ppmerge.merge) and 'ties_merging' in ppmerge.merge.METHODS; "
            "assert 'paddle' not in sys.modules; print(sorted(ppmerge.__all__))")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "load_pool" in result.stdout and "convert" in result.stdout
