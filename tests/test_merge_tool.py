"""tools/merge.py as users run it (subprocess): the shipped-config path, --device, -o, exit codes."""
import os
import subprocess
import sys

import numpy as np
import pytest
import yaml

from test_merge_runner_support import TASKS, make_pool, raw_config, write_yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL = os.path.join(ROOT, "tools", "merge.py")


def merge_tool(*args):
    return subprocess.run([sys.executable, TOOL, *args], capture_output=True, text=True, timeout=300, cwd=ROOT)


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    return make_pool(str(tmp_path_factory.mktemp("pool")))


def test_ties_merging_cli_with_overrides_and_device(pool, glue_suite, tmp_path):
    """A config inheriting a base file, -o overrides and --device cpu; the table is printed."""
    paths, sds = pool
    out = str(tmp_path / "out")
    base = raw_config(paths, glue_suite["glue"], out, method="ties_merging")
    base["Global"]["device"] = "gpu"  # --device cpu must win over the file
    write_yaml(base, tmp_path / "base.yaml")
    write_yaml({"_base_": "./base.yaml", "Merge": {"threshold": 50}}, tmp_path / "ties.yaml")
    done = merge_tool("-c", str(tmp_path / "ties.yaml"), "-o", "Merge.scaling_factor=0.7",
                      "-o", "Merge.topk_scope=tensor", "--device", "cpu")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "| ties_merging |" in done.stdout and f"reports written to {out}" in done.stdout
    with open(os.path.join(out, "config.yaml")) as f:
        saved = yaml.safe_load(f)
    assert saved["Global"]["device"] == "cpu"
    assert saved["Merge"] == {"method": "ties_merging", "threshold": 50, "scaling_factor": 0.7, "topk_scope": "tensor"}
    for name in ("report.json", "report.csv", "report.md", "report.xlsx", "merged_model.pdparams"):
        assert os.path.isfile(os.path.join(out, name))
    from ppmerge.merge import get_method
    from ppmerge.models import load_numpy_state_dict

    merged = load_numpy_state_dict(os.path.join(out, "merged_model.pdparams"))
    backbone = {k: v for k, v in sds["base"].items() if k != "score.weight"}
    expected = get_method("ties_merging")(backbone, [{k: sds[t][k] for k in backbone} for t in TASKS],
                                          threshold=50, scaling_factor=0.7, topk_scope="tensor")
    for key in backbone:
        np.testing.assert_allclose(merged[key], np.asarray(expected[key]), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("case", ["nan", "device"])
def test_cli_errors_exit_2_one_line_no_output(pool, glue_suite, tmp_path, case):
    from ppmerge.models import save_state_dict

    paths, sds = pool
    paths = dict(paths)
    out = str(tmp_path / "out")
    args = []
    if case == "nan":
        sd = {k: v.copy() for k, v in sds["MNLI"].items()}
        sd["gpt.embeddings.position_embeddings.weight"][0, 0] = np.inf
        paths["MNLI"] = str(tmp_path / "inf.pdparams")
        save_state_dict(sd, paths["MNLI"])
        expected = "error: model MNLI "
    else:
        args = ["--device", "gpu:x"]
        expected = "error: device 'gpu:x' is not valid"
    write_yaml(raw_config(paths, glue_suite["glue"], out), tmp_path / "merge.yaml")
    done = merge_tool("-c", str(tmp_path / "merge.yaml"), *args)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(expected), done.stderr[-2000:]
    assert not os.path.exists(out) and sorted(os.listdir(tmp_path)) == sorted(
        n for n in os.listdir(tmp_path) if not n.startswith(".out"))


def test_help_is_instant():
    done = subprocess.run([sys.executable, "-X", "importtime", TOOL, "--help"], capture_output=True, text=True,
                          timeout=60, cwd=ROOT)
    assert done.returncode == 0 and "--device" in done.stdout
    assert "paddle" not in {line.split("|")[-1].strip().split(".")[0] for line in done.stderr.splitlines()}
