"""`flaxbert predict --task token-classification` writes one tag per input word (its first
sub-word's prediction, as training aligns labels), the same tags transformers' tokenizer and
model give through word_ids(); a sentence longer than the model is cut with a warning and its
last words tagged null, or refused with --overflow error; --entities keeps the pipeline's
entities."""
import json
import logging
import shutil

import numpy as np
import pytest
import torch
import transformers

from conftest import tiny_bert_checkpoint
from flaxbert.cli import main
from test_finetune import ENTITIES, WORDS

TAGS = ("O", "B-LOC", "I-LOC")


@pytest.fixture(scope="module")
def tagger(tmp_path_factory):
    """A tiny random transformers BertForTokenClassification with its WordPiece tokenizer."""
    root = tmp_path_factory.mktemp("tagger")
    rs = np.random.RandomState(0)
    lines = [" ".join(rs.choice(WORDS, 8)) for _ in range(200)] + [" ".join(WORDS)] \
        + [" ".join(ENTITIES)]
    base = tiny_bert_checkpoint(root, lines)
    torch.manual_seed(1)
    model = transformers.BertForTokenClassification.from_pretrained(
        base, num_labels=len(TAGS), id2label=dict(enumerate(TAGS)),
        label2id={t: i for i, t in enumerate(TAGS)})
    model.eval().save_pretrained(root / "tagger")
    for f in (root / "tok").iterdir():
        shutil.copy(f, root / "tagger" / f.name)
    return root / "tagger"


def _reference_tags(directory, words, max_length):
    """transformers: is_split_into_words, truncated; each word's first sub-word's argmax."""
    tokenizer = transformers.AutoTokenizer.from_pretrained(directory)
    model = transformers.AutoModelForTokenClassification.from_pretrained(directory).eval()
    enc = tokenizer(words, is_split_into_words=True, truncation=True, max_length=max_length,
                    return_tensors="pt")
    with torch.no_grad():
        predicted = model(**enc).logits[0].argmax(-1).tolist()
    tags, previous = [None] * len(words), None
    for token, word in enumerate(enc.word_ids()):
        if word is not None and word != previous:
            tags[word] = model.config.id2label[predicted[token]]
        previous = word
    return tags


@pytest.fixture(scope="module")
def sentences():
    rs = np.random.RandomState(3)
    out = []
    for n in range(6):
        words = [str(w) for w in rs.choice(WORDS, rs.randint(2, 7))]
        words.insert(rs.randint(len(words) + 1), ENTITIES[n % len(ENTITIES)])
        out.append(words)
    out.append([str(w) for w in rs.choice(WORDS + ENTITIES, 40)])  # far over 32 tokens
    return out


def _conll(path, sentences):
    path.write_text("\n\n".join("\n".join(words) for words in sentences) + "\n")
    return path


def test_tags_align_one_to_one_with_words(tagger, sentences, tmp_path, caplog):
    tokenizer = transformers.AutoTokenizer.from_pretrained(tagger)
    split = [w for words in sentences[:-1] for w in words if len(tokenizer.tokenize(w)) > 1]
    assert len(split) >= 6  # the first-sub-word rule is exercised
    data, out = _conll(tmp_path / "test.conll", sentences), tmp_path / "tags.jsonl"
    with caplog.at_level(logging.WARNING):
        assert main(["predict", str(tagger), "--data", str(data), "--task",
                     "token-classification", "--max-seq-length", "32", "--batch-size", "4",
                     "--output", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["words"] for r in rows] == sentences
    for row, words in zip(rows, sentences):
        assert len(row["tags"]) == len(words)
        assert row["tags"] == _reference_tags(tagger, words, 32)
    assert all(None not in r["tags"] and set(r["tags"]) <= set(TAGS) for r in rows[:-1])
    assert len({t for r in rows for t in r["tags"]} - {None}) > 1  # not one constant tag
    # The long sentence: its first words tagged, the ones past 32 tokens explicitly null.
    long = rows[-1]["tags"]
    first_null = long.index(None)
    assert 5 < first_null < len(long) and all(t is None for t in long[first_null:])
    assert "were truncated" in caplog.text
    assert f"{len(long) - first_null} word(s) lie past max_length=32 tokens" in caplog.text


def test_overflow_error_refuses_and_entities_stay_available(tagger, sentences, tmp_path,
                                                            capsys):
    data = _conll(tmp_path / "test.conll", sentences)
    out = tmp_path / "tags.jsonl"
    assert main(["predict", str(tagger), "--data", str(data), "--task", "token-classification",
                 "--max-seq-length", "32", "--overflow", "error", "--output", str(out)]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and error[0].startswith("flaxbert predict: error: ")
    assert str(data) in error[0] and "more than max_length=32" in error[0]
    assert not out.exists()
    # The pipeline's entities, one list per sentence, as before.
    assert main(["predict", str(tagger), "--data", str(data), "--task", "token-classification",
                 "--entities", "--output", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == len(sentences) and all(isinstance(r, list) for r in rows)
    assert all({"entity", "score", "word", "start", "end"} <= set(e) for r in rows for e in r)
    # An existing destination is refused without --overwrite.
    assert main(["predict", str(tagger), "--data", str(data), "--task", "token-classification",
                 "--output", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
