"""GLUE tasks, readers (both layouts, real formats, errors) and the generated suite."""
import os
import subprocess
import sys

import pandas as pd
import pytest

from ppmerge.data import TASK_NAMES, data_file, detect_layout, get_task, read_examples, task_root
from ppmerge.data.synthetic import make_examples, write_glue_suite
from ppmerge.errors import DataError, UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write(folder, name, lines):
    path = os.path.join(folder, name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write("".join(line + "\n" for line in lines))
    return path


# ---------------------------------------------------------------- task registry

def test_task_specs():
    assert [get_task(t).name for t in TASK_NAMES] == TASK_NAMES
    assert {t: get_task(t).num_classes for t in TASK_NAMES} == {
        "CoLA": 2, "SST2": 2, "MRPC": 2, "STSB": 1, "QQP": 2, "MNLI": 3, "QNLI": 2, "RTE": 2, "WNLI": 2}
    assert get_task("CoLA").metric == "Mcc"
    assert get_task("MRPC").metric == get_task("QQP").metric == "AccuracyAndF1"
    assert get_task("STSB").metric == "PearsonAndSpearman"
    assert {get_task(t).metric for t in ("SST2", "MNLI", "QNLI", "RTE", "WNLI")} == {"Accuracy"}
    assert get_task("STSB").loss == "MSELoss" and get_task("STSB").is_regression
    assert not get_task("SST2").is_regression and get_task("SST2").loss == "CrossEntropyLoss"
    assert {t: get_task(t).num_train_epochs for t in TASK_NAMES} == {
        t: (5 if t in ("MRPC", "WNLI") else 3) for t in TASK_NAMES}
    assert get_task("MNLI").eval_splits == ("dev_matched", "dev_mismatched")
    assert get_task("MNLI").label_map == {"entailment": 0, "neutral": 1, "contradiction": 2}
    assert get_task("QNLI").label_map == get_task("RTE").label_map == {"entailment": 0, "not_entailment": 1}


@pytest.mark.parametrize("alias,name", [("SST-2", "SST2"), ("sst2", "SST2"), ("sst-2", "SST2"),
                                        ("STS-B", "STSB"), ("stsb", "STSB"), ("cola", "CoLA"),
                                        ("MNLI", "MNLI"), ("qqp", "QQP"), ("Wnli", "WNLI")])
def test_task_aliases(alias, name):
    assert get_task(alias).name == name


def test_unknown_task_lists_valid_names():
    with pytest.raises(UserError) as err:
        get_task("SST3")
    assert "SST3" in str(err.value) and all(t in str(err.value) for t in TASK_NAMES)


# ---------------------------------------------------------------- hand-written files, real formats

def test_real_glue_formats(tmp_path):
    d = str(tmp_path)
    # CoLA train/dev: no header; source, label, original label, sentence (quotes stay literal).
    write(d, "CoLA/train.tsv", ["gj04\t1\t\tOur friends won't buy this analysis, let alone the next one we propose.",
                                'cj99\t0\t*\tThe "more we study verbs, the crazier they get.'])
    write(d, "CoLA/test.tsv", ["index\tsentence", "0\tBill whistled past the house."])
    write(d, "SST-2/dev.tsv", ["sentence\tlabel", "it 's a charming and often affecting journey . \t1",
                               'unflinchingly " bleak and desperate \t0'])
    write(d, "MRPC/train.tsv", ["Quality\t#1 ID\t#2 ID\t#1 String\t#2 String",
                                "1\t702876\t702977\tAmrozi accused his brother .\tReferring to him , Amrozi accused ."])
    write(d, "STS-B/dev.tsv", ["index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore",
                               "0\tmain-captions\tMSRvid\t2012test\t0000\tnone\tnone\tA man with a hard hat is dancing.\t"
                               "A man wearing a hard hat is dancing.\t5.000",
                               "1\tmain-captions\tMSRvid\t2012test\t0002\tnone\tnone\tA man is feeding a mouse.\t"
                               "A man is slicing a tomato.\t0.600"])
    write(d, "STS-B/test.tsv", ["index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2",
                                "0\tmain-captions\tMSRvid\t2012test\t0024\tnone\tnone\tA girl is styling her hair.\t"
                                "A girl is brushing her hair."])
    write(d, "QQP/train.tsv", ["id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate",
                               "133273\t213221\t213222\tHow is the life of a math student?\tWhich level of prepration "
                               "is enough?\t0"])
    write(d, "QQP/test.tsv", ["id\tquestion1\tquestion2", "0\tWhy am I mentally very lonely?\tHow can I stop?"])
    head = ("index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\tsentence1_parse\t"
            "sentence2_parse\tsentence1\tsentence2")
    write(d, "MNLI/dev_matched.tsv", [head + "\tlabel1\tlabel2\tlabel3\tlabel4\tlabel5\tgold_label",
                                      "0\t63735\t63735n\tslate\t( x )\t( y )\t(ROOT x)\t(ROOT y)\tThe new rights are "
                                      "nice enough\tEveryone really likes the newest benefits \tneutral\tentailment\t"
                                      "neutral\tneutral\tneutral\tneutral",
                                      "1\t1\t1c\tslate\t( x )\t( y )\t(ROOT x)\t(ROOT y)\tNo majority\there\tneutral\t"
                                      "entailment\tcontradiction\tneutral\tentailment\t-",
                                      "2\t91383\t91383c\tgovernment\t( x )\t( y )\t(ROOT x)\t(ROOT y)\tThis site "
                                      "includes a list\tThe Government Executive articles\tcontradiction\t"
                                      "contradiction\tcontradiction\tcontradiction\tcontradiction\tcontradiction"])
    write(d, "MNLI/train.tsv", [head + "\tlabel1\tgold_label",
                                "0\t31193\t31193n\tgovernment\t( x )\t( y )\t(ROOT x)\t(ROOT y)\tConceptually cream "
                                "skimming\tProduct and geography\tneutral\tneutral"])
    write(d, "MNLI/test_mismatched.tsv", [head, "0\t1\t1\tletters\t( x )\t( y )\t(ROOT x)\t(ROOT y)\tA\tB"])
    write(d, "QNLI/dev.tsv", ["index\tquestion\tsentence\tlabel",
                              "0\tWhat came into force after the new constitution?\tAs of that day, the new "
                              "constitution came into force.\tentailment"])
    write(d, "RTE/train.tsv", ["index\tsentence1\tsentence2\tlabel",
                               "0\tNo Weapons of Mass Destruction Found in Iraq Yet.\tWeapons Found.\tnot_entailment"])
    write(d, "WNLI/train.tsv", ["index\tsentence1\tsentence2\tlabel",
                                "0\tI stuck a pin through a carrot. When I pulled the pin out, it had a hole.\t"
                                "The carrot had a hole.\t1"])
    write(d, "WNLI/test.tsv", ["index\tsentence1\tsentence2", "0\tMaude and Dora had seen the trains.\tHorns."])

    r = lambda task, split: read_examples(task, os.path.join(d, get_task(task).glue_name), split)  # noqa: E731
    cola = r("CoLA", "train")
    assert cola[0] == ("Our friends won't buy this analysis, let alone the next one we propose.", None, 1)
    assert cola[1] == ('The "more we study verbs, the crazier they get.', None, 0)
    assert r("CoLA", "test") == [("Bill whistled past the house.", None, None)]
    assert r("SST-2", "dev") == [("it 's a charming and often affecting journey . ", None, 1),
                                 ('unflinchingly " bleak and desperate ', None, 0)]
    assert r("MRPC", "train") == [("Amrozi accused his brother .", "Referring to him , Amrozi accused .", 1)]
    stsb = r("STS-B", "dev")
    assert stsb[1] == ("A man is feeding a mouse.", "A man is slicing a tomato.", 0.6)
    assert isinstance(stsb[0].label, float) and stsb[0].label == 5.0
    assert r("STSB", "test") == [("A girl is styling her hair.", "A girl is brushing her hair.", None)]
    assert r("QQP", "train")[0].label == 0 and r("QQP", "test")[0].text_b == "How can I stop?"
    mnli = r("MNLI", "dev")   # dev = dev_matched; the '-' row is skipped
    assert [(e.text_a, e.label) for e in mnli] == [("The new rights are nice enough", 1),
                                                   ("This site includes a list", 2)]
    assert r("MNLI", "train")[0] == ("Conceptually cream skimming", "Product and geography", 1)
    assert r("MNLI", "test_mismatched") == [("A", "B", None)]
    assert r("QNLI", "dev")[0].label == 0 and r("RTE", "train")[0].label == 1
    assert r("WNLI", "train")[0].label == 1 and r("WNLI", "test")[0].label is None


def test_fleetx_original_formats(tmp_path):
    d = str(tmp_path)
    write(d, "cola_public/raw/in_domain_train.tsv", ["gj04\t1\t\tOur friends won't buy this analysis.",
                                                     "gj04\t0\t*\tThey drank the pub."])
    write(d, "cola_public/raw/out_of_domain_dev.tsv", ["clc95\t1\t\tSomebody just left."])
    head = ("gold_label\tsentence1_binary_parse\tsentence2_binary_parse\tsentence1_parse\tsentence2_parse\t"
            "sentence1\tsentence2\tpromptID\tpairID\tgenre\tlabel1\tlabel2\tlabel3\tlabel4\tlabel5")
    write(d, "multinli_1.0/multinli_1.0_train.txt", [
        head,
        "neutral\t( x )\t( y )\t(ROOT x)\t(ROOT y)\tConceptually cream skimming\tProduct and geography\t31193\t"
        "31193n\tgovernment\tneutral\t\t\t\t",
        "-\t( x )\t( y )\t(ROOT x)\t(ROOT y)\tUnclear\tCase\t1\t1n\tfiction\tneutral",   # no majority: skipped
        'entailment\t( x )\t( y )\t(ROOT x)\t(ROOT y)\the said "yes\the agreed\t2\t2e\tfiction\tentailment'])
    write(d, "MRPC/msr_paraphrase_test.txt", ["Quality\t#1 ID\t#2 ID\t#1 String\t#2 String",
                                              "1\t1089874\t1089925\tPCCW 's chief will leave .\tThe chief will go ."])
    cola = os.path.join(d, "cola_public")
    assert detect_layout("CoLA", cola) == "fleetx"
    assert read_examples("cola", cola, "train") == [("Our friends won't buy this analysis.", None, 1),
                                                    ("They drank the pub.", None, 0)]
    assert read_examples("CoLA", cola, "dev_out_of_domain") == [("Somebody just left.", None, 1)]
    mnli = read_examples("MNLI", os.path.join(d, "multinli_1.0"), "train")
    assert mnli == [("Conceptually cream skimming", "Product and geography", 1), ('he said "yes', "he agreed", 0)]
    # FleetX evaluates MRPC on msr_paraphrase_test.txt as dev.
    assert read_examples("MRPC", os.path.join(d, "MRPC"), "dev")[0].label == 1
    # A parent folder is accepted too: dataset/ -> dataset/cola_public/.
    assert read_examples("CoLA", d, "train")[1].label == 0
    with pytest.raises(DataError, match="no 'test' split"):
        read_examples("CoLA", cola, "test")


# ---------------------------------------------------------------- errors

def test_missing_folder_and_file_name_the_path(tmp_path):
    with pytest.raises(DataError) as err:
        read_examples("SST2", str(tmp_path / "nowhere"), "train")
    assert str(tmp_path / "nowhere") in str(err.value) and "gluebenchmark.com" in str(err.value)
    os.makedirs(tmp_path / "SST-2")
    with pytest.raises(DataError) as err:
        read_examples("SST2", str(tmp_path / "SST-2"), "dev")
    assert os.path.join(str(tmp_path / "SST-2"), "dev.tsv") in str(err.value)
    os.makedirs(tmp_path / "multinli_1.0")
    with pytest.raises(DataError) as err:
        read_examples("MNLI", str(tmp_path / "multinli_1.0"), "dev_mismatched")
    msg = str(err.value)
    assert "dev_mismatched.tsv" in msg and "multinli_1.0_dev_mismatched.txt" in msg and "cims.nyu.edu" in msg
    with pytest.raises(DataError, match="split 'validation'"):
        read_examples("RTE", str(tmp_path), "validation")


def test_bad_rows_name_file_and_line(tmp_path):
    d = str(tmp_path)
    path = write(d, "RTE/train.tsv", ["index\tsentence1\tsentence2\tlabel", "0\ta\tb\tentailment",
                                      "", "1\ta\tb\tmaybe"])
    with pytest.raises(DataError) as err:
        read_examples("RTE", os.path.join(d, "RTE"), "train")
    assert f"{path}:4" in str(err.value) and "'maybe'" in str(err.value) and "not_entailment" in str(err.value)
    path = write(d, "QQP/train.tsv", ["id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate", "0\t1\t2\tq\tp\t1",
                                      "1\t3\t4\tq with a\ttab\tp\t0"])
    with pytest.raises(DataError) as err:
        read_examples("QQP", os.path.join(d, "QQP"), "train")
    assert f"{path}:3" in str(err.value) and "7" in str(err.value) and "expected 6" in str(err.value)
    path = write(d, "CoLA/dev.tsv", ["gj04\t1\t\tfine.", "gj04\t1\tno sentence"])
    with pytest.raises(DataError, match=f"{path}:2.*expected 4"):
        read_examples("CoLA", os.path.join(d, "CoLA"), "dev")
    path = write(d, "STS-B/train.tsv", ["\t".join("abcdefghij"), "0\tg\tf\ty\to\ts\ts\ta\tb\tfive"])
    with pytest.raises(DataError, match=f"{path}:2.*'five'"):
        read_examples("STSB", os.path.join(d, "STS-B"), "train")


# ---------------------------------------------------------------- the generated suite

# Columns by header name, read with pandas: an implementation independent of the reader's tables.
_BY_NAME = {"SST2": ("sentence", None, "label"), "MRPC": ("#1 String", "#2 String", "Quality"),
            "STSB": ("sentence1", "sentence2", "score"), "QQP": ("question1", "question2", "is_duplicate"),
            "MNLI": ("sentence1", "sentence2", "gold_label"), "QNLI": ("question", "sentence", "label"),
            "RTE": ("sentence1", "sentence2", "label"), "WNLI": ("sentence1", "sentence2", "label")}


@pytest.mark.parametrize("layout", ["glue", "fleetx"])
def test_generated_suite_reads_back(glue_suite, layout):
    base = glue_suite[layout]
    for name in TASK_NAMES:
        task = get_task(name)
        root = task_root(name, base, layout)
        assert os.path.isdir(root)
        for split in ("train",) + task.eval_splits:
            examples = read_examples(name, root, split)
            expected = make_examples(name, split, len(examples), seed=0)
            assert len(examples) == {"train": 256}.get(split, 128)
            assert [(e.text_a, e.text_b) for e in examples] == [(a, b) for a, b, _ in expected]
            if task.is_regression:
                assert [e.label for e in examples] == [float(y) for _, _, y in expected]
                assert min(e.label for e in examples) == 0.0 and max(e.label for e in examples) == 5.0
            else:
                assert [e.label for e in examples] == [task.label_map[y] for _, _, y in expected]
                counts = pd.Series([e.label for e in examples]).value_counts()
                assert len(counts) == task.num_classes and counts.max() - counts.min() <= 1
            assert all(len((e.text_a + " " + (e.text_b or "")).split()) <= 40 for e in examples)
            path, _, found = data_file(name, root, split)
            assert found == ("fleetx" if layout == "fleetx" and name in ("CoLA", "MNLI", "MRPC") else "glue")
            if name in _BY_NAME and found == "glue":   # cross-check against pandas by column name
                a, b, y = _BY_NAME[name]
                frame = pd.read_csv(path, sep="\t", quoting=3, dtype=str, keep_default_na=False)
                assert list(frame[a]) == [e.text_a for e in examples]
                if b:
                    assert list(frame[b]) == [e.text_b for e in examples]
        if "test" in task.splits or name == "MNLI":
            if layout == "glue" or name not in ("CoLA", "MNLI", "MRPC"):
                test = read_examples(name, root, "test")
                assert len(test) == 32 and all(e.label is None for e in test)


def test_fleetx_mnli_has_skipped_rows(glue_suite):
    path = os.path.join(task_root("MNLI", glue_suite["fleetx"], "fleetx"), "multinli_1.0_train.txt")
    frame = pd.read_csv(path, sep="\t", quoting=3, dtype=str, keep_default_na=False)
    assert (frame["gold_label"] == "-").sum() > 0
    assert len(read_examples("MNLI", os.path.dirname(path), "train")) == (frame["gold_label"] != "-").sum()


def test_generator_rules():
    sst = make_examples("SST2", "train", 64)
    from ppmerge.data import words
    for text, _, label in sst:
        pos = any(w in words.POSITIVE for w in text.split())
        neg = any(w in words.NEGATIVE for w in text.split())
        assert (pos, neg) == ((True, False) if label == "1" else (False, True))
    for text, _, label in make_examples("CoLA", "train", 64):
        if label == "1":
            assert text.split()[0] in ("the", "a")
    for a, b, score in make_examples("STSB", "train", 64):
        kept = sum(x == y for x, y in zip(a.split(), b.split())) - 1   # minus the final "."
        assert float(score) == pytest.approx(5 * kept / 8)
        assert 8 - kept == sum(w in words.NOISE_WORDS for w in b.split())
    for a, b, label in make_examples("MNLI", "dev_mismatched", 30):
        assert not any(p in a.split() for p in words.PLACES_MATCHED)
        if label == "contradiction":
            assert "not" in b.split() or "never" in b.split()
    for a, b, label in make_examples("RTE", "train", 30):
        verb = b.split()[2]
        assert (verb in a.split()) == (label == "entailment")
        assert verb in (words.VERB_ANTONYMS if label == "entailment" else words.VERB_ANTONYMS.values())
    for q, sentence, label in make_examples("QNLI", "train", 30):
        assert q.startswith("where") and (" in the " in sentence) == (label == "entailment")
    for a, b, label in make_examples("WNLI", "train", 30):
        adj = b.split()[-2]
        assert a.split()[1] == b.split()[1] and a.split()[-2] == adj
        assert (adj in words.GIVER_ADJS) == (label == "1")


def test_same_seed_same_files_and_subset(tmp_path):
    one = write_glue_suite(tmp_path / "a", n_train=20, n_dev=10, n_test=4, seed=3)
    two = write_glue_suite(tmp_path / "b", n_train=20, n_dev=10, n_test=4, seed=3, tasks=["rte", "sst-2"])
    other = write_glue_suite(tmp_path / "c", n_train=20, n_dev=10, n_test=4, seed=4, tasks=["RTE"])
    assert sorted(two) == ["RTE", "SST2"] and len(one) == 9
    for name in two:
        for f in os.listdir(one[name]):
            assert open(os.path.join(one[name], f)).read() == open(os.path.join(two[name], f)).read()
    assert open(os.path.join(one["RTE"], "train.tsv")).read() != open(os.path.join(other["RTE"], "train.tsv")).read()
    # Written atomically: no temporary folders are left beside the task folders.
    assert sorted(n for n in os.listdir(tmp_path / "a") if n != ".ppmerge-output") == sorted(
        [get_task(t).glue_name for t in TASK_NAMES] + ["diagnostic"])  # + GLUE's diagnostic set (AX)
    # the diagnostic set: MNLI's unlabelled `diagnostic` split, with GLUE's columns
    ax = read_examples("MNLI", one["MNLI"], "diagnostic")
    assert len(ax) == 4 and all(e.label is None and e.text_b for e in ax)
    assert "diagnostic" not in os.listdir(tmp_path / "c")  # only with MNLI


def test_cli_writes_both_layouts(tmp_path):
    out = tmp_path / "suite"
    cmd = [sys.executable, os.path.join(ROOT, "tools", "make_glue_data.py"), "--out", str(out), "--layout", "both",
           "--n-train", "8", "--n-dev", "4", "--n-test", "2", "--tasks", "CoLA", "MNLI"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert os.path.isfile(out / "glue" / "CoLA" / "train.tsv")
    assert os.path.isfile(out / "fleetx" / "cola_public" / "raw" / "in_domain_train.tsv")
    assert len(read_examples("MNLI", str(out / "fleetx" / "multinli_1.0"), "dev_mismatched")) == 4
    module = subprocess.run([sys.executable, "-m", "ppmerge.data.synthetic", "--out", str(tmp_path / "m"),
                             "--n-train", "4", "--n-dev", "2", "--n-test", "2", "--tasks", "WNLI"],
                            capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert module.returncode == 0 and module.stderr == "", module.stderr
    assert len(read_examples("WNLI", str(tmp_path / "m" / "WNLI"), "train")) == 4
    bad = subprocess.run(cmd[:-3] + ["--tasks", "SST3"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and bad.stderr.startswith("error: unknown GLUE task 'SST3'")
    assert len(bad.stderr.strip().splitlines()) == 1
