"""T5 tokenizer (sentencepiece with T5's ids) and the text-to-text GLUE data."""
import numpy as np
import pytest

from ppmerge.errors import UserError


@pytest.fixture(scope="module")
def tok(t5_spiece):
    from ppmerge.data.t5_tokenizer import load_t5_tokenizer

    return load_t5_tokenizer(t5_spiece)


def test_special_ids_encode_decode(tok, t5_spiece):
    import sentencepiece

    sp = sentencepiece.SentencePieceProcessor(model_file=t5_spiece)
    assert (sp.pad_id(), sp.eos_id(), sp.unk_id(), sp.bos_id()) == (0, 1, 2, -1)
    text = "Given the sentence 'the film was great', determine the sentiment."
    ids = tok.encode(text)
    assert ids.dtype == np.int64 and ids[-1] == 1 and list(ids[:-1]) == sp.encode(text)
    assert tok.decode(ids) == text
    # truncation keeps the eos; decoding drops pad / eos / unk and sentinel ids past the vocabulary
    short = tok.encode(text, max_length=4)
    assert len(short) == 4 and short[-1] == 1 and list(short[:3]) == sp.encode(text)[:3]
    noisy = [0] + list(sp.encode("positive")) + [1, tok.vocab_size + 5, 0, 0]
    assert tok.decode(noisy) == "positive"
    for word in ("yes", "no", "entailment", "neutral", "contradiction", "3.8", "0.0", "5.0"):
        assert tok.decode(tok.encode(word)) == word


def test_tokenizer_errors(tmp_path, t5_spiece):
    from ppmerge.data.t5_tokenizer import load_t5_tokenizer

    with pytest.raises(UserError, match="not found"):
        load_t5_tokenizer(tmp_path)                      # a folder without spiece.model
    bad = tmp_path / "spiece.model"
    bad.write_bytes(b"not a model")
    with pytest.raises(UserError, match="could not load"):
        load_t5_tokenizer(tmp_path)
    with pytest.raises(UserError, match="sentencepiece model"):
        load_t5_tokenizer(None)


def test_dataset_items_and_collate(glue_suite, tok):
    from ppmerge.data import read_examples, task_root
    from ppmerge.data.prompts import PROMPTS
    from ppmerge.data.t5_dataset import T5GLUEDataset, collate_t5

    root = task_root("MNLI", glue_suite["fleetx"], "fleetx")      # the other layout reads the same way
    ds = T5GLUEDataset("MNLI", root, "dev_mismatched", tok, max_length=24)
    examples = read_examples("MNLI", root, "dev_mismatched")
    assert len(ds) == len(examples) and ds.has_labels
    words = ("entailment", "neutral", "contradiction")
    for i in (0, 1, 7):
        ex = examples[i]
        text = PROMPTS["MNLI"]["input_text"].format(premise=ex.text_a, hypothesis=ex.text_b)
        full = tok.encode(text)
        item = ds[i]
        expect = full if len(full) <= 24 else np.concatenate([full[:23], [1]])
        np.testing.assert_array_equal(item["input_ids"], expect)
        np.testing.assert_array_equal(item["labels"], tok.encode(words[ex.label]))
        assert item["label"] == ex.label
    batch = collate_t5([ds[0], ds[1], ds[2]])
    lens = [len(ds[i]["input_ids"]) for i in range(3)]
    assert batch["input_ids"].shape == (3, max(lens))
    for r in range(3):
        assert batch["attention_mask"][r].sum() == lens[r]
        assert (batch["input_ids"][r, lens[r]:] == 0).all()
        t = len(ds[r]["labels"])
        np.testing.assert_array_equal(batch["labels"][r, :t], ds[r]["labels"])
        assert (batch["labels"][r, t:] == -100).all()
    assert batch["glue_labels"].dtype == np.int64


def test_stsb_targets_and_test_split(glue_suite, tok):
    from ppmerge.data import read_examples, task_root
    from ppmerge.data.t5_dataset import T5GLUEDataset

    root = task_root("STSB", glue_suite["glue"], "glue")
    ds = T5GLUEDataset("STSB", root, "dev", tok)
    ex = read_examples("STSB", root, "dev")[3]
    assert ds.targets[3] == f"{ex.label:.1f}" and isinstance(ds[3]["label"], float)
    test = T5GLUEDataset("STSB", root, "test", tok)
    assert not test.has_labels and test[0]["label"] == -1.0 and list(test[0]["labels"]) == [1]
    with pytest.raises(UserError, match="no labels"):
        test.require_labels("training")


def test_model_vocabulary_must_hold_the_tokenizer(glue_suite, t5_spiece):
    from ppmerge.data import task_root
    from ppmerge.errors import ConfigError
    from ppmerge.models.families import get_family

    fam = get_family({"name": "t5-tiny", "vocab_size": 50}, {"spiece_model": t5_spiece})
    with pytest.raises(ConfigError, match="Model.vocab_size 50 is smaller than the sentencepiece vocabulary"):
        fam.dataset("SST2", task_root("SST2", glue_suite["glue"], "glue"), "dev")
