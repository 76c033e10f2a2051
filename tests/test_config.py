"""ppmerge.config: YAML + _base_ inheritance, -o overrides, schema validation, shipped configs."""
import glob
import os
import textwrap

import pytest
import yaml

from ppmerge.config import (TRAIN_SCHEMA, Field, Section, dump_config, load_config, parse_override,
                            save_config, validate)
from ppmerge.config.overrides import apply_override
from ppmerge.errors import ConfigError, UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GPT_CONFIGS = os.path.join(ROOT, "configs", "gpt")
CONFIG_345M = os.path.join(GPT_CONFIGS, "finetune_gpt_345M_single_card_glue.yaml")
TINY = os.path.join(GPT_CONFIGS, "finetune_gpt_tiny_glue.yaml")


def write(folder, name, text):
    path = os.path.join(folder, name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(textwrap.dedent(text))
    return path


# A small schema for the mechanics, independent of the training schema.
TOY = Section({
    "A": Section({
        "x": Field(int, default=1),
        "y": Field(float, default=0.5),
        "tags": Field(list, default=[]),
        "sub": Section({"p": Field(str, default="p0"), "q": Field(str, default="q0")}),
    }),
    "B": Section({"name": Field(str), "mode": Field(str, default="epoch", choices=["epoch", "step"])}),
    "Opt": Section({"kind": Field(str, default="k")}, open=True),
    "Maybe": Section({"v": Field(int, default=7)}, nullable=True),
})


# ---------------------------------------------------------------- YAML values and -o parsing

@pytest.mark.parametrize("text", ["2e-5", "2E-5", "1e6", "-3e+2", "+1.5", "1.5e-3", ".5", "3.", "1_000.5"])
def test_yaml_floats_without_dot_are_floats(text):
    key, value = parse_override(f"Optimizer.lr.learning_rate={text}")
    assert key == "Optimizer.lr.learning_rate"
    assert isinstance(value, float) and value == float(text.replace("_", ""))


@pytest.mark.parametrize("text, expected", [
    ("3", 3), ("-1", -1), ("True", True), ("false", False), ("null", None), ("", None),
    ("[1,2]", [1, 2]), ("[1e-5, b]", [1e-5, "b"]), ("1e", "1e"), ("e5", "e5"), ("gpu:0", "gpu:0"),
    ("./dataset/SST-2/", "./dataset/SST-2/"), ("a=b=c", "a=b=c"), ("[1,2", "[1,2"),
])
def test_override_values_are_yaml(text, expected):
    assert parse_override(f"K.k={text}") == ("K.k", expected)


@pytest.mark.parametrize("text", ["noequals", "=3", "A..b=1", ".A=1"])
def test_malformed_override(text):
    with pytest.raises(ConfigError, match="-o"):
        parse_override(text)


def test_yaml_file_reads_2e_5_as_float(tmp_path):
    path = write(tmp_path, "c.yaml", """
        A: {y: 2e-5}
        B: {name: n}
    """)
    assert load_config(path, schema=TOY)["A"]["y"] == 2e-5


# ---------------------------------------------------------------- inheritance

def test_base_chain_is_recursive_relative_and_deep_merged(tmp_path):
    write(tmp_path, "bases/root.yaml", """
        A: {x: 1, tags: [r], sub: {p: root_p, q: root_q}}
        B: {name: root}
    """)
    write(tmp_path, "bases/mid.yaml", """
        _base_: ./root.yaml
        A: {sub: {p: mid_p}}
    """)
    top = write(tmp_path, "top/top.yaml", """
        _base_: ../bases/mid.yaml
        A: {x: 3}
    """)
    cfg = load_config(top, schema=TOY)
    assert cfg["A"] == {"x": 3, "y": 0.5, "tags": ["r"], "sub": {"p": "mid_p", "q": "root_q"}}
    assert cfg["B"] == {"name": "root", "mode": "epoch"}


def test_list_of_bases_merge_in_order(tmp_path):
    write(tmp_path, "one.yaml", "A: {x: 1, sub: {p: one}}\nB: {name: one}\n")
    write(tmp_path, "two.yaml", "A: {x: 2}\n")
    top = write(tmp_path, "top.yaml", "_base_: [one.yaml, two.yaml]\nB: {mode: step}\n")
    cfg = load_config(top, schema=TOY)
    assert (cfg["A"]["x"], cfg["A"]["sub"]["p"], cfg["B"]) == (2, "one", {"name": "one", "mode": "step"})


def test_inherited_false_replaces_the_section(tmp_path):
    write(tmp_path, "base.yaml", "A: {x: 5, sub: {p: base_p, q: base_q}}\nB: {name: b}\n")
    top = write(tmp_path, "top.yaml", """
        _base_: base.yaml
        A:
          sub: {_inherited_: False, p: mine}
    """)
    cfg = load_config(top, schema=TOY)
    assert cfg["A"]["x"] == 5                                # sibling still merged
    assert cfg["A"]["sub"] == {"p": "mine", "q": "q0"}       # base's q dropped, default filled


def test_diamond_is_not_a_cycle(tmp_path):
    write(tmp_path, "root.yaml", "B: {name: r}\n")
    write(tmp_path, "l.yaml", "_base_: root.yaml\nA: {x: 1}\n")
    write(tmp_path, "r.yaml", "_base_: root.yaml\nA: {y: 2}\n")
    top = write(tmp_path, "top.yaml", "_base_: [l.yaml, r.yaml]\n")
    assert load_config(top, schema=TOY)["A"]["y"] == 2.0


def test_cycle_is_an_error(tmp_path):
    write(tmp_path, "a.yaml", "_base_: b.yaml\n")
    write(tmp_path, "b.yaml", "_base_: a.yaml\n")
    with pytest.raises(ConfigError, match=r"cycle.*a\.yaml -> .*b\.yaml -> .*a\.yaml"):
        load_config(os.path.join(tmp_path, "a.yaml"), schema=TOY)


def test_missing_base_names_path_and_includer(tmp_path):
    top = write(tmp_path, "top.yaml", "_base_: ./nowhere.yaml\n")
    with pytest.raises(ConfigError) as err:
        load_config(top, schema=TOY)
    assert "nowhere.yaml" in str(err.value) and "top.yaml" in str(err.value)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="not found: .*absent.yaml"):
        load_config(os.path.join(tmp_path, "absent.yaml"))


def test_bad_yaml_names_file_and_line(tmp_path):
    path = write(tmp_path, "bad.yaml", "A:\n  x: [1, 2\nB: {name: n}\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml:\d+: invalid YAML"):
        load_config(path, schema=TOY)


# ---------------------------------------------------------------- overrides

@pytest.fixture
def toy_file(tmp_path):
    return write(tmp_path, "toy.yaml", """
        A: {x: 1, tags: [a, b, c]}
        B: {name: n}
        Opt: {kind: k, extra: 1}
    """)


def test_overrides_apply_in_order(toy_file):
    cfg = load_config(toy_file, ["A.x=2", "A.y=3e-4", "A.sub.p=a=b", "A.tags.1=B", "A.tags.-1=C",
                                 "B.mode=step", "A.x=4"], schema=TOY)
    assert cfg["A"] == {"x": 4, "y": 3e-4, "tags": ["a", "B", "C"], "sub": {"p": "a=b", "q": "q0"}}
    assert cfg["B"]["mode"] == "step"


def test_override_can_replace_a_whole_list(toy_file):
    assert load_config(toy_file, ["A.tags=[1, 2]"], schema=TOY)["A"]["tags"] == [1, 2]


def test_override_into_null_section_and_open_section(toy_file):
    cfg = load_config(toy_file, ["Maybe.v=9", "Opt.new_param=0.3", "Opt.nested.deep=1"], schema=TOY)
    assert cfg["Maybe"] == {"v": 9}
    assert cfg["Opt"] == {"kind": "k", "extra": 1, "new_param": 0.3, "nested": {"deep": 1}}


def test_override_unknown_key_suggests(toy_file):
    with pytest.raises(ConfigError) as err:
        load_config(toy_file, ["A.sub.pp=1"], schema=TOY)
    message = str(err.value)
    assert "-o A.sub.pp=1" in message and "toy.yaml" in message
    assert "unknown key 'A.sub.pp'; did you mean 'A.sub.p'?" in message


def test_override_unknown_section_suggests_full_path(toy_file):
    with pytest.raises(ConfigError, match=r"unknown key 'Aa\.sub\.p'; did you mean 'A\.sub\.p'\?"):
        load_config(toy_file, ["Aa.sub.p=1"], schema=TOY)


def test_override_list_index_errors(toy_file):
    with pytest.raises(ConfigError, match="index 3 is out of range for 'A.tags'"):
        load_config(toy_file, ["A.tags.3=x"], schema=TOY)
    with pytest.raises(ConfigError, match="'A.tags' is a list; 'first' is not an index"):
        load_config(toy_file, ["A.tags.first=x"], schema=TOY)
    with pytest.raises(ConfigError, match="'A.x' is 1 .int., not a section"):
        load_config(toy_file, ["A.x.y=1"], schema=TOY)


def test_override_without_schema_only_sets_existing_keys():
    cfg = {"a": {"b": 1}}
    apply_override(cfg, "a.b", 2)
    assert cfg == {"a": {"b": 2}}
    with pytest.raises(ConfigError, match="unknown key 'a.bb'; did you mean 'a.b'"):
        apply_override(cfg, "a.bb", 2)


def test_exact_typo_on_the_shipped_config():
    with pytest.raises(ConfigError) as err:
        load_config(CONFIG_345M, ["Engine.num_train_epoch=3"])
    message = str(err.value)
    assert isinstance(err.value, UserError) and "\n" not in message
    assert "'Engine.num_train_epoch'" in message and "num_train_epochs" in message
    assert "-o Engine.num_train_epoch=3" in message


def test_key_under_the_wrong_section_is_pointed_to_the_right_one():
    with pytest.raises(ConfigError, match=r"did you mean 'Optimizer\.lr\.learning_rate'\?"):
        load_config(TINY, ["Engine.learning_rate=1e-4"])


# ---------------------------------------------------------------- validation

def test_unknown_key_in_a_base_file_blames_that_file(tmp_path):
    write(tmp_path, "base.yaml", "A: {xx: 1}\nB: {name: n}\n")
    top = write(tmp_path, "top.yaml", "_base_: base.yaml\n")
    with pytest.raises(ConfigError) as err:
        load_config(top, schema=TOY)
    assert str(err.value) == (f"{os.path.join(tmp_path, 'base.yaml')}: unknown key 'A.xx'; "
                              "did you mean 'A.x'?")


def test_unknown_key_without_suggestion_lists_known_keys():
    with pytest.raises(ConfigError, match=r"unknown key 'B\.zzz'; known keys in 'B': name, mode"):
        validate({"B": {"name": "n", "zzz": 1}}, TOY)


def test_wrong_type_names_key_expected_and_value(tmp_path):
    path = write(tmp_path, "c.yaml", "A: {x: three}\nB: {name: n}\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: key 'A\.x' expects int, got 'three' \(str\)"):
        load_config(path, schema=TOY)


def test_override_type_error_blames_the_override(toy_file):
    with pytest.raises(ConfigError, match=r"toy\.yaml, -o A\.y=fast: key 'A\.y' expects float"):
        load_config(toy_file, ["A.y=fast"], schema=TOY)


@pytest.mark.parametrize("value", [True, 1.5, None, [1]])
def test_int_field_rejects_bool_float_null_list(value):
    with pytest.raises(ConfigError, match="'A.x'"):
        validate({"A": {"x": value}, "B": {"name": "n"}}, TOY)


def test_int_becomes_float_and_defaults_fill():
    cfg = validate({"A": {"y": 2}, "B": {"name": "n"}}, TOY)
    assert cfg["A"]["y"] == 2.0 and isinstance(cfg["A"]["y"], float)
    assert cfg == {"A": {"x": 1, "y": 2.0, "tags": [], "sub": {"p": "p0", "q": "q0"}},
                   "B": {"name": "n", "mode": "epoch"}, "Opt": {"kind": "k"}, "Maybe": None}


def test_defaults_are_not_shared_between_results():
    one = validate({"B": {"name": "n"}}, TOY)
    one["A"]["tags"].append("x")
    assert validate({"B": {"name": "n"}}, TOY)["A"]["tags"] == []


def test_missing_required_key():
    with pytest.raises(ConfigError, match=r"cfg\.yaml: missing required key 'B\.name'"):
        validate({"A": {}}, TOY, where="cfg.yaml")


def test_bad_choice_lists_allowed_and_case_is_normalised():
    with pytest.raises(ConfigError, match=r"key 'B\.mode' is 'steps'; allowed values: epoch, step"):
        validate({"B": {"name": "n", "mode": "steps"}}, TOY)
    assert validate({"B": {"name": "n", "mode": "STEP"}}, TOY)["B"]["mode"] == "step"


def test_section_must_be_a_mapping():
    with pytest.raises(ConfigError, match=r"key 'A' must be a mapping of keys, got 3 \(int\)"):
        validate({"A": 3, "B": {"name": "n"}}, TOY)


# ---------------------------------------------------------------- training schema and shipped configs

@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(GPT_CONFIGS, "*.yaml"))),
                         ids=os.path.basename)
def test_every_shipped_config_validates(path):
    cfg = load_config(path)
    assert set(cfg) == {"Global", "Engine", "Model", "Optimizer", "Data", "Tokenizer", "Distributed"}
    assert cfg["Data"]["Train"]["dataset"]["split"] == "train"
    assert cfg["Data"]["Eval"]["dataset"]["split"] == "dev"
    assert cfg["Data"]["Test"] is None


def test_345m_config_has_fleetx_values():
    cfg = load_config(CONFIG_345M)
    assert cfg["Global"]["device"] == "gpu" and cfg["Global"]["local_batch_size"] == 32
    assert cfg["Engine"]["num_train_epochs"] == 3
    assert cfg["Engine"]["mix_precision"]["enable"] is True
    amp = cfg["Engine"]["mix_precision"]
    assert (amp["dtype"], amp["level"]) == ("float16", "O2")
    assert cfg["Optimizer"]["epsilon"] == 1e-6 and cfg["Optimizer"]["weight_decay"] == 0.0
    assert cfg["Optimizer"]["lr"] == {"name": "LinearDecayWithWarmup", "learning_rate": 2e-5, "warmup": 0.1}
    assert cfg["Optimizer"]["grad_clip"]["clip_norm"] == 1.0
    assert cfg["Model"]["name"] == "gpt-345m"
    assert cfg["Model"]["pretrained"] == "./ckpt/PaddleFleetX_GPT_345M_220826/model"
    glue_keys = ("name", "root", "split", "max_length")  # the other keys describe custom datasets (null here)
    assert {k: cfg["Data"]["Train"]["dataset"][k] for k in glue_keys} == {"name": "SST2", "root": "./dataset/SST-2/",
                                                                          "split": "train", "max_length": 128}
    assert all(v is None for k, v in cfg["Data"]["Train"]["dataset"].items() if k not in glue_keys)
    assert cfg["Data"]["Train"]["sampler"]["batch_size"] == 32


def test_gpt2_medium_and_tiny_configs():
    medium = load_config(os.path.join(GPT_CONFIGS, "finetune_gpt2_medium_glue.yaml"))
    assert (medium["Model"]["name"], medium["Model"]["vocab_size"]) == ("gpt2-medium-en", 50257)
    assert medium["Model"]["pretrained"] == "./ckpt/gpt2-medium-en/model_state.pdparams"
    tiny = load_config(TINY)
    assert tiny["Global"]["device"] == "cpu" and tiny["Model"]["name"] == "gpt-tiny"
    assert tiny["Engine"]["mix_precision"]["enable"] is False
    assert tiny["Model"]["hidden_dropout_prob"] == 0.0 and tiny["Model"]["pretrained"] is None
    assert tiny["Engine"]["save_load"]["output_dir"] == "./output/tiny"


def test_model_name_gpt_is_an_alias_of_345m():
    for name in ("GPT", "gpt", "GPT-345M"):
        assert load_config(TINY, [f"Model.name={name}"])["Model"]["name"] == "gpt-345m"


def test_training_schema_choices_and_test_split():
    cfg = load_config(TINY, ["Data.Test.dataset.name=RTE", "Data.Test.dataset.root=./d/RTE",
                             "Model.loss.train.name=mseloss", "Model.metric.eval.name=Mcc"])
    assert {k: cfg["Data"]["Test"]["dataset"][k] for k in ("name", "root", "split", "max_length")} == {
        "name": "RTE", "root": "./d/RTE", "split": "test", "max_length": 128}
    assert cfg["Data"]["Test"]["sampler"]["shuffle"] is False
    assert cfg["Model"]["loss"]["train"]["name"] == "MSELoss"
    for override, allowed in [("Engine.mix_precision.dtype=float32", "float16, bfloat16"),
                              ("Optimizer.lr.name=Cosine", "LinearDecayWithWarmup, Constant"),
                              ("Model.metric.eval.name=F1",
                               "Accuracy, Mcc, AccuracyAndF1, PearsonAndSpearman")]:
        with pytest.raises(ConfigError, match=f"allowed values: {allowed}"):
            load_config(TINY, [override])


# ---------------------------------------------------------------- dump / save

def test_dump_and_save_round_trip(tmp_path):
    cfg = load_config(CONFIG_345M, ["Optimizer.lr.learning_rate=3e-5", "Data.Test.dataset.name=SST2",
                                    "Data.Test.dataset.root=./x"])
    save_path = os.path.join(tmp_path, "out", "config.yaml")
    save_config(cfg, save_path)
    assert load_config(save_path, schema=TRAIN_SCHEMA) == cfg
    assert yaml.safe_load(dump_config(cfg)) == cfg  # plain YAML, readable by any loader
    assert os.listdir(os.path.dirname(save_path)) == ["config.yaml"]  # no temp file left behind


# ---------------------------------------------------------------- docs

def test_config_docs_are_generated_from_the_schema():
    from ppmerge.config.markdown import config_markdown, schema_markdown

    with open(os.path.join(ROOT, "docs", "CONFIG.md"), encoding="utf-8") as f:
        assert f.read() == config_markdown(), "run: python -m ppmerge.config.markdown docs/CONFIG.md"
    toy = schema_markdown(TOY)
    assert "| `A.y` | float | `0.5` |" in toy
    assert "| `B.name` | str | **required** |" in toy
    assert "| `Maybe` | section or null | `null` |" in toy
    assert "one of `epoch`, `step`" in toy


def test_duplicate_key_in_a_file_is_an_error(tmp_path):
    path = write(tmp_path, "dup.yaml", "A:\n  x: 1\n  y: 2\n  x: 3\nB: {name: n}\n")
    with pytest.raises(ConfigError, match=r"dup\.yaml:4: invalid YAML: duplicate key 'x'"):
        load_config(path, schema=TOY)


def test_config_package_does_not_import_paddle():
    import subprocess
    import sys

    code = ("import sys, ppmerge.config, ppmerge.config.markdown; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('paddle', 'paddlenlp')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
