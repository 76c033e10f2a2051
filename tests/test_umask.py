"""Written files and folders honour the user's umask (not mkstemp's 0600 / mkdtemp's 0700)."""
import json
import os
import stat
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = """
import json, os, sys
import numpy as np
os.umask(int(sys.argv[2], 8))
from ppmerge.fileio import atomic_dir, current_umask, write_text
from ppmerge.models import save_state_dict
from ppmerge.evaluation.reports import write_reports
out = sys.argv[1]
write_text(os.path.join(out, "a.txt"), "x")
save_state_dict({"w": np.ones(3, np.float32)}, os.path.join(out, "m.pdparams"))
save_state_dict({"w": np.ones(3, np.float32)}, os.path.join(out, "m.safetensors"))
with atomic_dir(os.path.join(out, "folder")) as tmp:
    os.makedirs(os.path.join(tmp, "sub"))
    write_text(os.path.join(tmp, "sub", "b.txt"), "y")
write_reports({"method": "m", "params": {}, "tasks": [], "best": None, "sweep": None, "rows": [],
               "timings": {}, "config": {}}, os.path.join(out, "folder"))
print(oct(current_umask()))
"""


@pytest.mark.parametrize("umask, file_mode, dir_mode", [("022", 0o644, 0o755), ("077", 0o600, 0o700),
                                                        ("002", 0o664, 0o775)])
def test_modes_follow_the_umask(tmp_path, umask, file_mode, dir_mode):
    out = tmp_path / "out"
    out.mkdir()
    result = subprocess.run([sys.executable, "-c", SCRIPT, str(out), umask], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == oct(int(umask, 8))  # read back without being changed
    files = ["a.txt", "m.pdparams", "m.safetensors", "folder/sub/b.txt", "folder/report.json", "folder/report.xlsx",
             "folder/report.md"]
    for name in files:
        assert stat.S_IMODE(os.stat(out / name).st_mode) == file_mode, name
    for name in ["folder", "folder/sub"]:
        assert stat.S_IMODE(os.stat(out / name).st_mode) == dir_mode, name
    assert json.loads((out / "folder" / "report.json").read_text())["method"] == "m"
