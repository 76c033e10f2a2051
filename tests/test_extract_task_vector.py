"""tools/extract_task_vector.py: tau = theta_ft - theta_base per key; keys the base lacks kept and named."""
import os
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))

import extract_task_vector  # noqa: E402


def test_task_vector_file(tmp_path, capsys):
    from ppmerge.models import load_numpy_state_dict, save_state_dict

    rng = np.random.default_rng(0)
    base = {"a.weight": rng.normal(size=(4, 3)).astype(np.float32), "b.bias": rng.normal(size=5).astype(np.float32)}
    ft = {k: v + rng.normal(size=v.shape).astype(np.float32) for k, v in base.items()}
    ft["score.weight"] = rng.normal(size=(3, 2)).astype(np.float32)
    save_state_dict(base, tmp_path / "base.pdparams")
    save_state_dict(ft, tmp_path / "ft.pdparams")
    out = tmp_path / "tv" / "tau.safetensors"
    code = extract_task_vector.main(["--finetuned_model_path", str(tmp_path / "ft.pdparams"),
                                     "--base_model_path", str(tmp_path / "base.pdparams"), "--save_path", str(out)])
    assert code == 0
    assert "kept as they are (not in the base model): score.weight" in capsys.readouterr().out
    tau = load_numpy_state_dict(out)
    assert sorted(tau) == sorted(ft)
    for key in base:
        np.testing.assert_allclose(tau[key], ft[key] - base[key], rtol=1e-6)
    np.testing.assert_array_equal(tau["score.weight"], ft["score.weight"])


def test_shape_mismatch_and_missing_file(tmp_path):
    from ppmerge.errors import UserError
    from ppmerge.models import save_state_dict

    save_state_dict({"w": np.zeros((2, 3), np.float32)}, tmp_path / "base.pdparams")
    save_state_dict({"w": np.zeros((3, 3), np.float32)}, tmp_path / "ft.pdparams")
    args = ["--finetuned_model_path", str(tmp_path / "ft.pdparams"), "--base_model_path",
            str(tmp_path / "base.pdparams"), "--save_path", str(tmp_path / "tau.pdparams")]
    with pytest.raises(UserError, match=r"key 'w': fine-tuned shape \[3, 3\] vs base \[2, 3\]"):
        extract_task_vector.main(args)
    with pytest.raises(UserError, match="nope.pdparams' does not exist"):
        extract_task_vector.main(args[:1] + [str(tmp_path / "nope.pdparams")] + args[2:])
    assert not os.path.exists(tmp_path / "tau.pdparams")
