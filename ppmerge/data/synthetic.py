"""A generated GLUE suite: all nine tasks, in either on-disk layout, from simple learnable rules.

Real English words (ppmerge.data.words), short sentences, balanced labels, and each task its own
rule so that the nine fine-tuned models differ:

  CoLA  grammatical template sentence (1) vs the same words scrambled (0)
  SST2  one sentiment word among neutral words: positive (1) / negative (0)
  MRPC  paraphrase by synonym swap (1) vs an unrelated sentence of the same shape (0)
  QQP   question re-phrased with synonyms (1) vs a near-miss question about another thing (0)
  STSB  the second sentence keeps some of the first's 8 words in place and replaces the others
        with unrelated words: score = 5 * kept / 8 (0-5)
  MNLI  hypothesis is a subset of the premise (entailment), adds a reason (neutral), or negates
        it (contradiction); dev_mismatched uses other genres and places
  QNLI  "where did ...?": the sentence says where (entailment) or only when (not_entailment)
  RTE   hypothesis restates one clause of a two-clause premise (entailment) or restates it with
        the verb's antonym, opened -> closed (not_entailment)
  WNLI  "the A gave the B ... because it was ADJ" => "the A was ADJ"? True when the adjective
        makes "it" the giver (generous, kind), false when it makes "it" the receiver (hungry, poor)

The files follow the real GLUE column layouts exactly (and FleetX's original sources for CoLA,
MNLI, MRPC in the "fleetx" layout). Each (task, split) has its own seeded generator, so the same
seed gives identical files whatever subset of tasks is written.
"""
import argparse
import os
import random

from ppmerge.data import words as W
from ppmerge.data.readers import FOLDERS
from ppmerge.data.tasks import TASK_NAMES, get_task
from ppmerge.errors import UserError
from ppmerge.fileio import atomic_dir, mark_output_dir, prepare_output_dir

LAYOUTS = ("glue", "fleetx")
KIND = "glue-data"  # the kind of output folder (ppmerge.fileio's marker)


def task_root(task, base_dir, layout="glue"):
    """The folder `task` lives in under `base_dir` (SST-2/, cola_public/, multinli_1.0/, ...)."""
    if layout not in LAYOUTS:
        raise UserError(f"unknown data layout {layout!r}: expected one of {', '.join(LAYOUTS)}")
    return os.path.join(os.fspath(base_dir), FOLDERS[layout][get_task(task).name])


# ---------------------------------------------------------------- sentence makers (rng -> text)

def _clause(rng, places=W.PLACES_MATCHED):
    subj, (base, past), obj = rng.choice(W.SUBJECTS), rng.choice(W.VERBS), rng.choice(W.OBJECTS)
    return dict(adj=rng.choice(W.ADJECTIVES), subj=subj, base=base, past=past, obj=obj,
                place=rng.choice(places))


def _balanced(rng, n, num_classes):
    labels = [i % num_classes for i in range(n)]
    rng.shuffle(labels)
    return labels


def cola(rng, label):
    c = _clause(rng)
    forms = [f"the {c['adj']} {c['subj']} {c['past']} the {c['obj']}",
             f"the {c['subj']} {c['past']} the {c['obj']} in the {c['place']}",
             f"a {c['subj']} {c['past']} a {c['adj']} {c['obj']}"]
    sentence = rng.choice(forms).split()
    if label == 0:
        scrambled = sentence[:]
        while scrambled == sentence:
            rng.shuffle(scrambled)
        sentence = scrambled
    return " ".join(sentence) + " ."


def sst2(rng, label):
    word = rng.choice(W.POSITIVE if label == 1 else W.NEGATIVE)
    noun, other = rng.sample(W.FILM_NOUNS, 2)
    neutral = rng.choice(W.NEUTRAL_ADJS)
    forms = [f"the {noun} was {word} and the {other} was {neutral}",
             f"a {word} {noun} with a {neutral} {other}",
             f"i found the {noun} {word}",
             f"the {other} is {neutral} , but the {noun} feels {word}"]
    text = rng.choice(forms)
    if rng.random() < 0.125:   # an unbalanced quote, as real GLUE text has: must stay literal
        text = '" ' + text
    return text


def _synonym_sentence(rng):
    """A sentence whose adjective, noun and verb all have synonyms."""
    adj = rng.choice(["big", "small", "quick", "happy", "rich", "quiet", "angry", "old"])
    noun = rng.choice(["car", "child", "house", "shop", "road", "city"])
    verb = rng.choice(["buy", "fix", "show", "help", "choose", "make"])
    subj = rng.choice(W.PEOPLE)
    return f"the {subj} will {verb} the {adj} {noun} in the {rng.choice(W.PLACES_MATCHED)}"


def mrpc(rng, label):
    a = _synonym_sentence(rng)
    if label == 1:
        b = " ".join(W.SYNONYMS.get(w, w) for w in a.split())
    else:
        b = _synonym_sentence(rng)
        while b == a:
            b = _synonym_sentence(rng)
    return a + " .", b + " ."


def qqp(rng, label):
    verb, obj, adj = rng.choice(W.QUESTION_VERBS), rng.choice(W.QUESTION_OBJECTS), rng.choice(W.QUESTION_ADJS)
    a = f"how can i {verb} a {adj} {obj} ?"
    if label == 1:
        s = W.SYNONYMS.get
        b = f"what is the best way to {s(verb, verb)} a {s(adj, adj)} {s(obj, obj)} ?"
    else:
        other = rng.choice([o for o in W.QUESTION_OBJECTS if o != obj])
        b = f"what is the best way to {verb} a {adj} {other} ?"
    return a, b


def stsb(rng):
    """(a, b, score): b keeps `kept` of a's 8 content words in place, the rest are replaced."""
    a = rng.sample(W.PEOPLE + W.OBJECTS + W.ADJECTIVES + W.PLACES_MATCHED, 8)
    kept = rng.randint(0, 8)
    replaced = set(rng.sample(range(8), 8 - kept))
    fresh = iter(rng.sample(W.NOISE_WORDS, 8))
    b = [next(fresh) if i in replaced else w for i, w in enumerate(a)]
    return " ".join(a) + " .", " ".join(b) + " .", 5.0 * kept / 8


MNLI_LABELS = ("entailment", "neutral", "contradiction")
GENRES_MATCHED = ["fiction", "government", "slate", "telephone", "travel"]
GENRES_MISMATCHED = ["facetoface", "letters", "nineeleven", "oup", "verbatim"]


def mnli(rng, label, places):
    c = _clause(rng, places)
    premise = f"the {c['adj']} {c['subj']} {c['past']} the {c['obj']} in the {c['place']} ."
    if label == 0:
        hypothesis = rng.choice([f"the {c['subj']} {c['past']} the {c['obj']} .",
                                 f"the {c['subj']} {c['past']} something in the {c['place']} ."])
    elif label == 1:
        hypothesis = f"the {c['subj']} {c['past']} the {c['obj']} {rng.choice(W.REASONS)} ."
    else:
        hypothesis = rng.choice([f"the {c['subj']} did not {c['base']} the {c['obj']} .",
                                 f"the {c['subj']} never {c['past']} anything in the {c['place']} ."])
    return premise, hypothesis


def qnli(rng, label):
    c = _clause(rng)
    question = f"where did the {c['subj']} {c['base']} the {c['obj']} ?"
    answer = f"in the {c['place']}" if label == 0 else rng.choice(W.TIME_PHRASES)
    sentence = f"the {rng.choice(W.ADJECTIVES)} {c['subj']} {c['past']} a {c['obj']} {answer} ."
    return question, sentence


def rte(rng, label):
    one, two = _clause(rng), _clause(rng)
    verbs = rng.sample(list(W.VERB_ANTONYMS), 2)
    premise = (f"the {one['subj']} {verbs[0]} the {one['obj']} and then "
               f"the {two['subj']} {verbs[1]} the {two['obj']} .")
    which = rng.randrange(2)
    c, verb = (one, two)[which], verbs[which]
    hypothesis = f"the {c['subj']} {verb if label == 0 else W.VERB_ANTONYMS[verb]} the {c['obj']} ."
    return premise, hypothesis


def wnli(rng, label):
    giver, receiver = rng.sample(W.SUBJECTS, 2)
    adj = rng.choice(W.GIVER_ADJS if label == 1 else W.RECEIVER_ADJS)
    premise = (f"the {giver} {rng.choice(W.GIVE_VERBS)} the {receiver} a {rng.choice(W.OBJECTS)} "
               f"because it was {adj} .")
    return premise, f"the {giver} was {adj} ."


# ---------------------------------------------------------------- examples per task and split

def make_examples(task, split, n, seed=0):
    """n (text_a, text_b, label) rows for `task`/`split`; label is the file's label string."""
    task = get_task(task)
    rng = random.Random(f"ppmerge-glue-{seed}-{task.name}-{split}")
    if task.is_regression:
        rows = []
        for _ in range(n):
            a, b, score = stsb(rng)
            rows.append((a, b, f"{score:.3f}"))
        return rows
    places = W.PLACES_MISMATCHED if split.endswith("mismatched") else W.PLACES_MATCHED
    rows = []
    for label in _balanced(rng, n, task.num_classes):
        if task.name == "CoLA":
            a, b = cola(rng, label), None
        elif task.name == "SST2":
            a, b = sst2(rng, label), None
        elif task.name == "MNLI":
            a, b = mnli(rng, label, places)
        else:
            a, b = {"MRPC": mrpc, "QQP": qqp, "QNLI": qnli, "RTE": rte, "WNLI": wnli}[task.name](rng, label)
        rows.append((a, b, task.labels[label]))
    return rows


# ---------------------------------------------------------------- file writers (real layouts)

def _write_tsv(path, header, rows):
    with open(path, "w", encoding="utf-8", newline="") as f:
        if header:
            f.write("\t".join(header) + "\n")
        for row in rows:
            f.write("\t".join(str(x) for x in row) + "\n")


def _parse(text):
    """Stand-ins for the parse columns of MNLI files (not read by anything)."""
    return "( " + " ".join(text.split()) + " )", "(ROOT (S " + " ".join(text.split()) + "))"


def _glue_rows(task, rows, test, rng, split):
    """(header, rows) of one GLUE-zip file."""
    name = task.name
    if name == "CoLA":
        if test:
            return ["index", "sentence"], [(i, a) for i, (a, _, _) in enumerate(rows)]
        return None, [(rng.choice(["gj04", "bc01", "ks08", "r-67"]), y, "" if y == "1" else "*", a)
                      for a, _, y in rows]
    if name == "SST2":
        if test:
            return ["index", "sentence"], [(i, a) for i, (a, _, _) in enumerate(rows)]
        return ["sentence", "label"], [(a, y) for a, _, y in rows]
    if name == "MRPC":
        ids = [(rng.randint(10000, 3000000), rng.randint(10000, 3000000)) for _ in rows]
        if test:
            return (["index", "#1 ID", "#2 ID", "#1 String", "#2 String"],
                    [(i, p, q, a, b) for i, ((a, b, _), (p, q)) in enumerate(zip(rows, ids))])
        return (["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"],
                [(y, p, q, a, b) for (a, b, y), (p, q) in zip(rows, ids)])
    if name == "STSB":
        header = ["index", "genre", "filename", "year", "old_index", "source1", "source2", "sentence1",
                  "sentence2"] + ([] if test else ["score"])
        return header, [(i, "main-captions", "MSRvid", "2012test", f"{i:04d}", "none", "none", a, b)
                        + (() if test else (y,)) for i, (a, b, y) in enumerate(rows)]
    if name == "QQP":
        if test:
            return ["id", "question1", "question2"], [(i, a, b) for i, (a, b, _) in enumerate(rows)]
        return (["id", "qid1", "qid2", "question1", "question2", "is_duplicate"],
                [(i, 2 * i + 1, 2 * i + 2, a, b, y) for i, (a, b, y) in enumerate(rows)])
    if name == "MNLI":
        genres = GENRES_MISMATCHED if "mismatched" in split else GENRES_MATCHED
        head = ["index", "promptID", "pairID", "genre", "sentence1_binary_parse", "sentence2_binary_parse",
                "sentence1_parse", "sentence2_parse", "sentence1", "sentence2"]
        out = []
        for i, (a, b, y) in enumerate(rows):
            prompt = rng.randint(1000, 150000)
            row = [i, prompt, f"{prompt}{(y or 'e')[0]}", rng.choice(genres), _parse(a)[0], _parse(b)[0],
                   _parse(a)[1], _parse(b)[1], a, b]
            if not test:
                row += [y] if split == "train" else [y, y, y, y, y]
                row += [y]   # gold_label
            out.append(row)
        if test:
            return head, out
        labels = ["label1"] if split == "train" else ["label1", "label2", "label3", "label4", "label5"]
        return head + labels + ["gold_label"], out
    # QNLI, RTE, WNLI
    cols = ["question", "sentence"] if name == "QNLI" else ["sentence1", "sentence2"]
    if test:
        return ["index"] + cols, [(i, a, b) for i, (a, b, _) in enumerate(rows)]
    return ["index"] + cols + ["label"], [(i, a, b, y) for i, (a, b, y) in enumerate(rows)]


def _multinli_rows(rows, rng, split):
    """multinli_1.0_*.txt: gold_label first; a few '-' rows (no majority) as the real files have."""
    genres = GENRES_MISMATCHED if "mismatched" in split else GENRES_MATCHED
    header = ["gold_label", "sentence1_binary_parse", "sentence2_binary_parse", "sentence1_parse",
              "sentence2_parse", "sentence1", "sentence2", "promptID", "pairID", "genre",
              "label1", "label2", "label3", "label4", "label5"]
    out = []
    for i, (a, b, y) in enumerate(rows):
        if i % 16 == 5:   # an unresolved pair, skipped by every reader
            out.append(["-"] + [*_parse(a)[:1], *_parse(b)[:1], _parse(a)[1], _parse(b)[1], a, b,
                                "7", "7n", rng.choice(genres), "neutral", "contradiction",
                                "entailment", "neutral", "contradiction"])
        prompt = rng.randint(1000, 150000)
        labels = [y] if split == "train" else [y] * 5
        row = [y, _parse(a)[0], _parse(b)[0], _parse(a)[1], _parse(b)[1], a, b, prompt, f"{prompt}{y[0]}",
               rng.choice(genres)] + labels
        out.append(row + [""] * (len(header) - len(row)))
    return header, out


def _write_task(task, folder, layout, sizes, seed):
    """Write one task's files into `folder` (a fresh temporary folder)."""
    split_sizes = {"train": sizes[0], "dev": sizes[1], "test": sizes[2]}
    if task.name == "MNLI":
        split_sizes = {"train": sizes[0], "dev_matched": sizes[1], "dev_mismatched": sizes[1],
                       "test_matched": sizes[2], "test_mismatched": sizes[2]}
    rng = random.Random(f"ppmerge-glue-ids-{seed}-{task.name}")
    for split, n in split_sizes.items():
        rows = make_examples(task, split, n, seed)
        test = split.startswith("test")
        if layout == "fleetx" and task.name == "CoLA":
            if test:
                continue   # cola_public has no test split
            names = {"train": ["in_domain_train.tsv"], "dev": ["in_domain_dev.tsv", "out_of_domain_dev.tsv"]}
            os.makedirs(os.path.join(folder, "raw"), exist_ok=True)
            for i, name in enumerate(names[split]):
                part = rows if i == 0 else make_examples(task, "dev_out_of_domain", n, seed)
                header, out = _glue_rows(task, part, False, rng, split)
                _write_tsv(os.path.join(folder, "raw", name), header, out)
        elif layout == "fleetx" and task.name == "MNLI":
            if test:
                continue   # multinli_1.0 has no test split
            header, out = _multinli_rows(rows, rng, split)
            _write_tsv(os.path.join(folder, f"multinli_1.0_{split}.txt"), header, out)
        elif layout == "fleetx" and task.name == "MRPC":
            if test:
                continue   # FleetX evaluates on msr_paraphrase_test.txt as dev
            header, out = _glue_rows(task, rows, False, rng, split)
            name = "msr_paraphrase_train.txt" if split == "train" else "msr_paraphrase_test.txt"
            _write_tsv(os.path.join(folder, name), header, out)
        else:
            header, out = _glue_rows(task, rows, test, rng, split)
            _write_tsv(os.path.join(folder, f"{split}.tsv"), header, out)


def write_glue_suite(out_dir, layout="glue", n_train=256, n_dev=128, n_test=32, seed=0, tasks=None,
                     overwrite=False):
    """Write the generated suite under out_dir in one layout; returns {task name: its folder}.

    out_dir must be new, empty, an earlier generated suite, or `overwrite` (ppmerge.fileio's rule:
    nothing else in it is touched). Everything is written into a temporary folder first, then moved
    into place file by file: a failed run leaves nothing behind."""
    if layout not in LAYOUTS:
        raise UserError(f"unknown data layout {layout!r}: expected one of {', '.join(LAYOUTS)}")
    for what, n in (("n_train", n_train), ("n_dev", n_dev), ("n_test", n_test)):
        if not isinstance(n, int) or n < 1:
            raise UserError(f"{what} must be a positive integer, got {n!r}")
    names = [get_task(t).name for t in (tasks or TASK_NAMES)]
    prepare_output_dir(out_dir, KIND, overwrite=overwrite, what="--out")
    roots = {}
    with atomic_dir(out_dir, kind=KIND) as tmp:
        for name in names:
            folder = task_root(name, tmp, layout)
            os.makedirs(folder)
            _write_task(get_task(name), folder, layout, (n_train, n_dev, n_test), seed)
            roots[name] = task_root(name, out_dir, layout)
        if "MNLI" in names:  # GLUE's diagnostic set (AX): MNLI pairs, no labels, beside the task folders
            os.makedirs(os.path.join(tmp, "diagnostic"))
            rows = make_examples("MNLI", "diagnostic", n_test, seed)
            _write_tsv(os.path.join(tmp, "diagnostic", "diagnostic.tsv"), ["index", "sentence1", "sentence2"],
                       [(i, a, b) for i, (a, b, _) in enumerate(rows)])
    return roots


def main(argv=None):
    parser = argparse.ArgumentParser(description="Write a generated GLUE suite (all nine tasks) in "
                                                 "the GLUE-zip layout, FleetX's original layout, or both.")
    parser.add_argument("--out", required=True, help="output folder (both: OUT/glue and OUT/fleetx)")
    parser.add_argument("--layout", choices=["glue", "fleetx", "both"], default="glue")
    parser.add_argument("--n-train", type=int, default=256)
    parser.add_argument("--n-dev", type=int, default=128)
    parser.add_argument("--n-test", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tasks", nargs="+", default=None, help="subset of tasks (default: all nine)")
    parser.add_argument("--overwrite", action="store_true",
                        help="write into a non-empty --out that is not an earlier generated suite (only the "
                             "generated files are replaced; nothing else is deleted)")
    args = parser.parse_args(argv)
    layouts = LAYOUTS if args.layout == "both" else (args.layout,)
    outs = [os.path.join(args.out, layout) if args.layout == "both" else args.out for layout in layouts]
    for n in (args.n_train, args.n_dev, args.n_test):
        if n < 1:
            raise UserError(f"--n-train / --n-dev / --n-test must be >= 1, got {n}")
    if args.layout == "both":  # OUT holds the two layouts' folders: the same rule for OUT itself
        prepare_output_dir(args.out, KIND, overwrite=args.overwrite, what="--out")
    for out in outs:  # every folder checked before anything is written
        prepare_output_dir(out, KIND, overwrite=args.overwrite, what="--out")
    for layout, out in zip(layouts, outs):
        roots = write_glue_suite(out, layout, args.n_train, args.n_dev, args.n_test, args.seed, args.tasks,
                                 overwrite=args.overwrite)
        print(f"{layout}: wrote {len(roots)} tasks under {out}")
    if args.layout == "both":
        mark_output_dir(args.out, KIND)
    return 0


if __name__ == "__main__":
    from ppmerge.cli import run_tool

    run_tool(main)
