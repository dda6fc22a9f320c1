"""Shared material of the flaxbert.data tests: a small real-English corpus (stdlib
docstrings), small trained tokenizers, prepared directories, and helpers to read records."""
import atexit
import functools
import inspect
import shutil
import tempfile
from pathlib import Path

import numpy as np

_ROOT = Path(tempfile.mkdtemp(prefix="flaxbert-data-tests-"))
atexit.register(shutil.rmtree, _ROOT, ignore_errors=True)

_MODULES = ("argparse", "collections", "json", "textwrap", "inspect", "pathlib", "shutil",
            "tempfile", "functools", "unittest", "logging", "csv")

@functools.lru_cache(None)
def english_documents() -> tuple:
    """Distinct documents (paragraphs of stdlib docstrings, 2+ lines each), in a fixed order."""
    import importlib
    seen, docs = set(), []
    for name in _MODULES:
        module = importlib.import_module(name)
        for attr in sorted(vars(module)):
            value = getattr(module, attr)
            # Submodules are skipped: they become attributes when anything imports them
            # (unittest.mock, logging.handlers, ...), so the corpus would depend on test order.
            public = not attr.startswith("_") and not inspect.ismodule(value)
            doc = inspect.getdoc(value) if public else None
            for block in (doc or "").split("\n\n"):
                lines = [line.strip() for line in block.splitlines() if line.strip()]
                text = "\n".join(lines)
                if len(lines) >= 2 and len(text) > 80 and text not in seen and ">>>" not in text:
                    seen.add(text)
                    docs.append(text)
    return tuple(docs)

@functools.lru_cache(None)
def corpus_file() -> str:
    path = _ROOT / "corpus.txt"
    path.write_text("\n\n".join(english_documents()) + "\n", encoding="utf-8")
    return str(path)

@functools.lru_cache(None)
def trained_tokenizer(kind, style=None) -> str:
    """A small tokenizer trained on the corpus: 'bpe' (Ġ words) or sentencepiece styles (▁)."""
    from flaxbert.tokenizer_training import train_tokenizer
    out = _ROOT / f"tokenizer-{style or kind}"
    train_tokenizer([corpus_file()], out, kind, 800, style=style)
    return str(out)

@functools.lru_cache(None)
def prepared(tokenizer_dir, mode, **kwargs) -> str:
    """`prepare` of the corpus (cached per arguments); returns the data directory."""
    from flaxbert.data.prepare import prepare
    out = _ROOT / f"data-{len(list(_ROOT.iterdir()))}"
    kwargs = {"max_seq_length": 64, "num_shards": 4, "workers": 1, **kwargs}
    prepare([corpus_file()], out, tokenizer_dir, mode=mode, **kwargs)
    return str(out)

def read_records(data_dir, split="train"):
    """All records of a split as dicts of numpy arrays, shard by shard."""
    import tensorflow as tf

    from flaxbert.data.prepare import read_manifest
    records = []
    for path in read_manifest(data_dir)["files"][split]:
        for raw in tf.data.TFRecordDataset(path).as_numpy_iterator():
            example = tf.train.Example.FromString(raw)
            records.append({k: np.array(v.int64_list.value) for k, v in example.features.feature.items()})
    return records

def document_streams(tokenizer_dir):
    """Each corpus document as one string of its token ids, ' 1 2 3 ', for substring search."""
    from flaxbert.data.prepare import split_sentences
    from flaxbert.tokenizer import Tokenizer
    tok = Tokenizer.from_pretrained(tokenizer_dir)
    streams = []
    for doc in english_documents():
        ids = tok(split_sentences(doc), add_special_tokens=False, return_tensors=None)["input_ids"]
        streams.append(as_text([t for sentence in ids for t in sentence]))
    return streams

def as_text(ids) -> str:
    return " " + " ".join(map(str, ids)) + " "

def words_of(ids, word_start, special):
    """Word index of each token (-1 for special ones), from a word-start table."""
    out, word, previous_special = [], -1, True
    for i in ids:
        if special[i]:
            out.append(-1)
            previous_special = True
            continue
        if word_start[i] or previous_special:
            word += 1
        out.append(word)
        previous_special = False
    return np.array(out)
