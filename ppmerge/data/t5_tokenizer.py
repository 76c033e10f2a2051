"""T5's tokenizer: a sentencepiece model (`spiece.model`) from a local folder or file; nothing downloads.

T5's special ids: pad 0, eos 1, unk 2 (no bos). Encoding appends eos, as HF's / paddlenlp's
T5Tokenizer do; truncation keeps the eos (`max_length - 1` pieces + eos). Decoding drops the special
ids and the sentinel ids above the sentencepiece vocabulary (`<extra_id_*>`, T5's extra 100 rows), as
`batch_decode(..., skip_special_tokens=True)` does. We call the `sentencepiece` package directly
(it is what T5Tokenizer wraps, and its batched C++ encode is fast).

`train_sentencepiece(texts, path, vocab_size)` trains a small model with T5's ids at run time (tests
and the demo: the generated suite plus the prompt text), so the whole T5 path runs without network.
"""
import io
import os

import numpy as np

from ppmerge.errors import UserError

PAD_ID, EOS_ID, UNK_ID = 0, 1, 2
MODEL_FILE = "spiece.model"


def _sentencepiece():
    import sentencepiece

    return sentencepiece


class T5Tokenizer:
    def __init__(self, model_file):
        self.model_file = os.fspath(model_file)
        spm = _sentencepiece()
        self.sp = spm.SentencePieceProcessor()
        try:
            self.sp.load(self.model_file)
        except Exception as exc:  # a corrupt file: name it, no C++ traceback
            raise UserError(f"could not load the sentencepiece model {self.model_file}: "
                            f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
        ids = {"pad": self.sp.pad_id(), "eos": self.sp.eos_id(), "unk": self.sp.unk_id()}
        if ids != {"pad": PAD_ID, "eos": EOS_ID, "unk": UNK_ID}:
            raise UserError(f"{self.model_file}: special ids {ids}, expected T5's pad 0, eos 1, unk 2")
        self.vocab_size = self.sp.get_piece_size()
        self.pad_token_id, self.eos_token_id, self.unk_token_id = PAD_ID, EOS_ID, UNK_ID

    def encode(self, texts, max_length=None):
        """Token ids (np.int64) per text, eos appended, at most `max_length` long (eos kept)."""
        single = isinstance(texts, str)
        pieces = self.sp.encode(list([texts] if single else texts))
        out = []
        for ids in pieces:
            if max_length is not None and len(ids) > max_length - 1:
                ids = ids[:max(max_length - 1, 0)]
            out.append(np.asarray(list(ids) + [EOS_ID], dtype=np.int64))
        return out[0] if single else out

    def decode(self, ids):
        """Text of one id sequence without special / sentinel ids (stops at nothing: all kept ids)."""
        kept = [int(i) for i in np.asarray(ids).reshape(-1) if int(i) > UNK_ID and int(i) < self.vocab_size]
        return self.sp.decode(kept)

    def batch_decode(self, rows):
        return [self.decode(row) for row in rows]


def load_t5_tokenizer(path):
    """A T5Tokenizer from `path`: an spiece.model file, or a folder holding one (an HF Flan-T5 folder)."""
    if path is None:
        raise UserError("Tokenizer.spiece_model: the T5 family needs a sentencepiece model "
                        "(a Flan-T5 folder with spiece.model, or the file itself)")
    path = os.fspath(path)
    model_file = os.path.join(path, MODEL_FILE) if os.path.isdir(path) else path
    if not os.path.isfile(model_file):
        raise UserError(f"sentencepiece model not found: {model_file} (expected T5's {MODEL_FILE})")
    return T5Tokenizer(model_file)


def train_sentencepiece(texts, path, vocab_size=1000, exact=False):
    """Train a unigram sentencepiece model with T5's special ids on `texts`; written atomically to
    `path`. Returns the path. Small and deterministic for a given text list (one thread). `exact`:
    exactly `vocab_size` pieces or a UserError (too few texts for it); else at most that many."""
    from ppmerge.fileio import atomic_path

    spm = _sentencepiece()
    texts = [t for t in texts if t]
    if not texts:
        raise UserError(f"{os.fspath(path)}: no text to train a sentencepiece model on")
    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(texts), model_writer=model, vocab_size=int(vocab_size),
            model_type="unigram", pad_id=PAD_ID, eos_id=EOS_ID, unk_id=UNK_ID, bos_id=-1,
            character_coverage=1.0, num_threads=1, minloglevel=2,
            hard_vocab_limit=bool(exact), split_digits=True)
    except (RuntimeError, ValueError) as exc:  # sentencepiece's C++ check: one line, no traceback
        line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{os.fspath(path)}: sentencepiece could not train a {vocab_size}-piece model "
                        f"on {len(texts)} texts: {line}") from None
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(model.getvalue())
    return os.fspath(path)


def suite_texts(data_root, layout="glue", tasks=None, prompts=None):
    """Every training / dev text of a generated (or any) GLUE suite rendered through the prompts, plus
    the answer words: the corpus `train_sentencepiece` learns the demo's vocabulary from."""
    from ppmerge.data.prompts import load_prompts, render_input, target_text
    from ppmerge.data.readers import read_examples
    from ppmerge.data.synthetic import task_root
    from ppmerge.data.tasks import TASK_NAMES, get_task

    prompts = prompts or load_prompts()
    texts = []
    for name in tasks or TASK_NAMES:
        spec = get_task(name)
        prompt = prompts[spec.name]
        for split in ("train", spec.eval_splits[0]):
            for ex in read_examples(spec, task_root(spec.name, data_root, layout), split):
                texts.append(render_input(prompt, ex))
        if isinstance(prompt["targets"], str):
            texts.extend(prompt["targets"].format(x / 10) for x in range(0, 51))
        else:
            texts.extend(prompt["targets"])
    return texts
