"""Shared fixtures. Area-specific fixtures live in the area's own test files."""
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

# Keep paddle's import noise and per-test thread setup predictable.
os.environ.setdefault("GLOG_minloglevel", "2")


@pytest.fixture(scope="session")
def glue_suite(tmp_path_factory):
    """A small generated GLUE suite in both layouts: {"glue": dir, "fleetx": dir}."""
    from ppmerge.data.synthetic import write_glue_suite

    base = tmp_path_factory.mktemp("glue")
    out = {}
    for layout in ("glue", "fleetx"):
        out[layout] = str(base / layout)
        write_glue_suite(out[layout], layout=layout, seed=0)
    return out


@pytest.fixture(scope="session")
def t5_spiece(glue_suite, tmp_path_factory):
    """A sentencepiece model with T5's special ids trained on the generated suite + prompt text (once)."""
    from ppmerge.data.t5_tokenizer import suite_texts, train_sentencepiece

    path = tmp_path_factory.mktemp("spiece") / "spiece.model"
    return train_sentencepiece(suite_texts(glue_suite["glue"]), path, vocab_size=1000)
