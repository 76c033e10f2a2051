"""Text-to-text prompts for the GLUE tasks (the T5 family): one table of data, overridable from a file.

The eight GLUE templates and target words are FusionBench's (`fusion_bench/tasks/flan_t5_text_generation/
glue_prompt_templates.py`), character for character, typos ("Answere") included: the published
Flan-T5 GLUE models were trained on exactly these strings, and a changed character changes their
input. WNLI is not in FusionBench; its template is OURS (`"ours": True`), written in the same style.

A template's placeholders name the task's text fields in order: `fields[0]` is `Example.text_a`,
`fields[1]` is `Example.text_b` (so QNLI's `{question}` is text_a, `{sentence}` text_b). `targets` is
the answer word per class id (the order of `TaskSpec.labels`), or, for STS-B, a format applied to
the float score (`"{:.1f}"` → "3.8"). No paddle here.
"""
import copy
import string

from ppmerge.errors import ConfigError

PROMPTS = {
    "CoLA": {
        "input_text": "Indicate if the following sentence is grammatically correct or not: \"{sentence}\". "
                      "Answere 'acceptable' or 'unacceptable'.",
        "fields": ("sentence",),
        "targets": ("unacceptable", "acceptable"),
    },
    "MNLI": {
        "input_text": "Does the premise: '{premise}' logically imply, contradict, or is neutral to the "
                      "hypothesis: '{hypothesis}'? Answere with 'entailment', 'contradiction', or 'neutral'.",
        "fields": ("premise", "hypothesis"),
        "targets": ("entailment", "neutral", "contradiction"),
    },
    "MRPC": {
        "input_text": "Are the following sentences '{sentence1}' and '{sentence2}' conveying the same meaning? "
                      "Answere with 'yes' or 'no'.",
        "fields": ("sentence1", "sentence2"),
        "targets": ("no", "yes"),
    },
    "QNLI": {
        "input_text": "Given the context: '{sentence}', does the question '{question}' have an answer based on "
                      "the information provided? Answer with 'yes' or 'no'.",
        "fields": ("question", "sentence"),
        "targets": ("yes", "no"),
    },
    "QQP": {
        "input_text": "Do the questions '{question1}' and '{question2}' have the same intent? "
                      "Answere with 'yes' or 'no'.",
        "fields": ("question1", "question2"),
        "targets": ("no", "yes"),
    },
    "RTE": {
        "input_text": "Does the text: '{sentence1}' entail that '{sentence2}' is true? Provide 'yes' or 'no'.",
        "fields": ("sentence1", "sentence2"),
        "targets": ("yes", "no"),
    },
    "SST2": {
        "input_text": "Given the sentence '{sentence}', determine the sentiment. Is it positive or negative?",
        "fields": ("sentence",),
        "targets": ("negative", "positive"),
    },
    "STSB": {
        "input_text": "Consider the sentences '{sentence1}' and '{sentence2}'. On a scale from 1 (completely "
                      "different) to 5 (completely similar), rate the similarity.",
        "fields": ("sentence1", "sentence2"),
        "targets": "{:.1f}",
    },
    # Ours (FusionBench has no WNLI template); same style as RTE's. Label 1 = entailment in WNLI.
    "WNLI": {
        "input_text": "Does the sentence: '{sentence1}' imply that '{sentence2}' is true? Answer with 'yes' or 'no'.",
        "fields": ("sentence1", "sentence2"),
        "targets": ("no", "yes"),
        "ours": True,
    },
}


def _placeholders(template):
    return [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]


def check_prompt(task, prompt, where="prompts"):
    """A prompt entry must fit its task: placeholders = its fields, one target per class (or a format)."""
    from ppmerge.data.tasks import get_task

    spec = get_task(task)
    for key in ("input_text", "fields", "targets"):
        if key not in prompt:
            raise ConfigError(f"{where}.{spec.name}: missing {key!r} (expected input_text, fields, targets)")
    fields = tuple(prompt["fields"])
    expected = 2 if spec.is_pair else 1
    if len(fields) != expected:
        raise ConfigError(f"{where}.{spec.name}.fields: {spec.name} has {expected} text field(s), got {list(fields)}")
    try:
        used = _placeholders(prompt["input_text"])
    except ValueError as exc:
        raise ConfigError(f"{where}.{spec.name}.input_text: not a format string ({exc})") from None
    if sorted(set(used)) != sorted(fields):
        raise ConfigError(f"{where}.{spec.name}.input_text: placeholders {sorted(set(used))} do not match "
                          f"fields {sorted(fields)}")
    targets = prompt["targets"]
    if spec.is_regression:
        if not isinstance(targets, str):
            raise ConfigError(f"{where}.{spec.name}.targets: expected a format string such as '{{:.1f}}'")
        try:
            targets.format(1.5)
        except (ValueError, IndexError, KeyError) as exc:
            raise ConfigError(f"{where}.{spec.name}.targets: {targets!r} cannot format a score ({exc})") from None
    else:
        if isinstance(targets, str) or len(targets) != spec.num_classes:
            raise ConfigError(f"{where}.{spec.name}.targets: expected {spec.num_classes} answer words "
                              f"(one per label {list(spec.labels)}), got {targets!r}")
        if len(set(targets)) != len(targets) or not all(isinstance(t, str) and t for t in targets):
            raise ConfigError(f"{where}.{spec.name}.targets: answer words must be distinct non-empty strings")


def load_prompts(path=None):
    """The prompt table: ours, with the tasks of the YAML file `path` (if any) replaced.

    The file maps task names to entries of the same shape: `{TASK: {input_text, fields, targets}}`;
    a missing `fields` keeps the built-in one."""
    table = copy.deepcopy(PROMPTS)
    if not path:
        return table
    from ppmerge.config.yamlio import read_yaml
    from ppmerge.data.tasks import get_task

    data = read_yaml(path)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of GLUE task names to prompt entries")
    for name, entry in data.items():
        task = get_task(name).name
        if not isinstance(entry, dict):
            raise ConfigError(f"{path}: {name}: expected a mapping with input_text and targets")
        unknown = sorted(set(entry) - {"input_text", "fields", "targets"})
        if unknown:
            raise ConfigError(f"{path}: {name}: unknown key {unknown[0]!r}; expected input_text, fields, targets")
        merged = {"fields": table[task]["fields"], **entry}
        merged["fields"] = tuple(merged["fields"])
        if not isinstance(merged.get("targets"), str) and merged.get("targets") is not None:
            merged["targets"] = tuple(merged["targets"])
        check_prompt(task, merged, where=str(path))
        table[task] = merged
    return table


def render_input(prompt, example):
    """The input text of one example (an `Example` with text_a / text_b)."""
    fields = prompt["fields"]
    values = {fields[0]: example.text_a}
    if len(fields) > 1:
        values[fields[1]] = example.text_b
    return prompt["input_text"].format(**values)


def target_text(prompt, label):
    """The answer text of a label (class id, or STS-B score); None for an unlabelled example."""
    if label is None:
        return None
    targets = prompt["targets"]
    if isinstance(targets, str):
        return targets.format(float(label))
    return targets[int(label)]
