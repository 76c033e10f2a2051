"""The prompt table: FusionBench's eight GLUE templates character for character, WNLI ours, overrides."""
import pytest

from ppmerge.data import Example
from ppmerge.data.prompts import PROMPTS, load_prompts, render_input, target_text
from ppmerge.errors import ConfigError

# Copied by hand from fusion_bench/tasks/flan_t5_text_generation/glue_prompt_templates.py (typos included).
FUSIONBENCH = {
    "CoLA": ("Indicate if the following sentence is grammatically correct or not: \"{sentence}\". Answere 'acceptable' or 'unacceptable'.",
             {"0": "unacceptable", "1": "acceptable"}),
    "MNLI": ("Does the premise: '{premise}' logically imply, contradict, or is neutral to the hypothesis: '{hypothesis}'? Answere with 'entailment', 'contradiction', or 'neutral'.",
             {"0": "entailment", "1": "neutral", "2": "contradiction"}),
    "MRPC": ("Are the following sentences '{sentence1}' and '{sentence2}' conveying the same meaning? Answere with 'yes' or 'no'.",
             {"0": "no", "1": "yes"}),
    "QNLI": ("Given the context: '{sentence}', does the question '{question}' have an answer based on the information provided? Answer with 'yes' or 'no'.",
             {"0": "yes", "1": "no"}),
    "QQP": ("Do the questions '{question1}' and '{question2}' have the same intent? Answere with 'yes' or 'no'.",
            {"0": "no", "1": "yes"}),
    "RTE": ("Does the text: '{sentence1}' entail that '{sentence2}' is true? Provide 'yes' or 'no'.",
            {"0": "yes", "1": "no"}),
    "SST2": ("Given the sentence '{sentence}', determine the sentiment. Is it positive or negative?",
             {"0": "negative", "1": "positive"}),
    "STSB": ("Consider the sentences '{sentence1}' and '{sentence2}'. On a scale from 1 (completely different) to 5 (completely similar), rate the similarity.",
             "{:.1f}"),
}


@pytest.mark.parametrize("task", sorted(FUSIONBENCH))
def test_templates_are_fusionbench_character_for_character(task):
    template, targets = FUSIONBENCH[task]
    assert PROMPTS[task]["input_text"] == template
    if isinstance(targets, str):
        assert PROMPTS[task]["targets"] == targets
    else:
        assert list(PROMPTS[task]["targets"]) == [targets[str(i)] for i in range(len(targets))]
    assert not PROMPTS[task].get("ours")


def test_wnli_is_ours_and_every_glue_task_has_a_prompt():
    from ppmerge.data import TASK_NAMES

    assert sorted(PROMPTS) == sorted(TASK_NAMES)
    assert PROMPTS["WNLI"]["ours"] is True
    assert PROMPTS["WNLI"]["targets"] == ("no", "yes")   # WNLI label 1 = entailment


def test_render_and_targets_by_field_order():
    # QNLI's GLUE columns are question (text_a), sentence (text_b); the template names them.
    ex = Example("where is it?", "it is in the box.", 1)
    assert render_input(PROMPTS["QNLI"], ex) == FUSIONBENCH["QNLI"][0].format(question="where is it?",
                                                                               sentence="it is in the box.")
    assert target_text(PROMPTS["QNLI"], 1) == "no"
    assert target_text(PROMPTS["STSB"], 3.84) == "3.8"
    assert target_text(PROMPTS["STSB"], 5) == "5.0"
    assert target_text(PROMPTS["SST2"], None) is None


def test_override_file(tmp_path):
    path = tmp_path / "prompts.yaml"
    path.write_text("rte:\n  input_text: \"Premise {sentence1} Hypothesis {sentence2}\"\n  targets: [true, false]\n")
    with pytest.raises(ConfigError, match="answer words"):
        load_prompts(str(path))   # YAML booleans are not words
    path.write_text("rte:\n  input_text: \"Premise {sentence1} Hypothesis {sentence2}\"\n  targets: ['y', 'n']\n")
    table = load_prompts(str(path))
    assert table["RTE"]["input_text"] == "Premise {sentence1} Hypothesis {sentence2}"
    assert table["RTE"]["targets"] == ("y", "n") and table["RTE"]["fields"] == ("sentence1", "sentence2")
    assert table["SST2"] == PROMPTS["SST2"]


@pytest.mark.parametrize("body, match", [
    ("SST2:\n  input_text: 'Review {text}'\n  targets: [bad, good]\n", "placeholders"),
    ("MNLI:\n  input_text: '{premise} {hypothesis}'\n  targets: [a, b]\n", "3 answer words"),
    ("STSB:\n  input_text: '{sentence1} {sentence2}'\n  targets: [low, high]\n", "format string"),
    ("SST2:\n  input_text: '{sentence}'\n  targets: [a, b]\n  extra: 1\n", "unknown key 'extra'"),
    ("NOPE:\n  input_text: '{sentence}'\n", "unknown GLUE task"),
])
def test_bad_override_names_the_problem(tmp_path, body, match):
    from ppmerge.errors import UserError

    path = tmp_path / "p.yaml"
    path.write_text(body)
    with pytest.raises(UserError, match=match):
        load_prompts(str(path))
