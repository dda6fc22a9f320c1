"""flaxbert.tokenizer_training: trained directories load with identical ids in flaxbert and
transformers, training is quick on small corpora, and bad inputs fail clearly."""

import os

# Before transformers / huggingface_hub are imported: never touch the network.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import argparse
import json
import time

import pytest
from transformers import AutoTokenizer

from flaxbert.tokenizer import Tokenizer
from flaxbert.tokenizer_training import add_train_tokenizer_parser, train_tokenizer
from tokenizer_cases import KEYS, assert_same, corpus_lines, pipeline

TEXTS = [
    "Hello, World! The quick brown fox jumps over the lazy dog.",
    "café naïve Ångström Crème Brûlée e\u0301", "中文字符 日本語のテキスト 한국어", "👍🏽 thumbs 🤗 🇫🇷",
    "!!!???... --==>>", "``quoted'' don't won't", "Donaudampfschifffahrtsgesellschaftskapitänswitwe" * 3,
    "x" * 300, "\x00\x7f\u200b", "tab\there\nnewline\r", "", " ", "  multiple   spaces  ",
    "ＡＢＣ１２３ ﬁne ½ ™", "3.14159 and 42, 1,000,000 2,3,", "The capital is <mask>. [MASK] <mask>",
    "[CLS] [SEP] <s> </s> <pad> <sep> <cls> <eod>",
]
PAIRS = list(zip(TEXTS, reversed(TEXTS)))

# (kind, style) -> (vocab_size, special token ids by role, files beside tokenizer.json / config)
TRAINED = {
    ("wordpiece", None): (600, dict(pad=0, unk=1, cls=2, sep=3, mask=4), ["vocab.txt"]),
    ("bpe", None): (700, dict(cls=0, pad=1, sep=2, unk=3, mask=4), ["merges.txt", "vocab.json"]),
    ("sentencepiece", "albert"): (800, dict(pad=0, unk=1, cls=2, sep=3, mask=4), ["spiece.model"]),
    ("sentencepiece", "deberta"): (800, dict(pad=0, cls=1, sep=2, unk=3, mask=4), ["spm.model"]),
    ("sentencepiece", "xlnet"): (800, dict(unk=0, cls=3, sep=4, pad=5, mask=6), ["spiece.model"]),
}


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "train.txt"
    path.write_text("\n".join(corpus_lines()) + "\n", encoding="utf-8")
    return str(path)


@pytest.fixture(scope="session")
def trained(corpus, tmp_path_factory):
    """(kind, style) -> (output dir, seconds the training took)."""
    root = tmp_path_factory.mktemp("trained")
    out = {}
    for (kind, style), (size, _, _) in TRAINED.items():
        d = root / (style or kind)
        t0 = time.perf_counter()
        train_tokenizer([corpus], d, kind, size, style=style)
        out[kind, style] = str(d), time.perf_counter() - t0
    return out


@pytest.mark.parametrize("kind, style", list(TRAINED))
def test_trained_directory_loads_identically(trained, kind, style):
    d, seconds = trained[kind, style]
    size, ids, files = TRAINED[kind, style]
    assert seconds < 2.0, f"training took {seconds:.2f} s"
    assert sorted(os.listdir(d)) == sorted(files + ["tokenizer.json", "tokenizer_config.json"])
    ours, hf = Tokenizer.from_pretrained(d), AutoTokenizer.from_pretrained(d)
    assert ours.kind == (style or kind)
    assert pipeline(ours.backend_tokenizer) == pipeline(hf.backend_tokenizer)
    assert len(hf) == ours.vocab_size <= size and ours.vocab_size > size // 2
    for role, i in ids.items():
        assert getattr(ours, f"{role}_token_id") == getattr(hf, f"{role}_token_id") == i, role
    for text in TEXTS:
        got, want = ours(text, return_tensors=None), hf(text, return_token_type_ids=True)
        assert {k: got[k] for k in KEYS} == {k: want[k] for k in KEYS}, repr(text)
    a, b = map(list, zip(*PAIRS))
    for kwargs in (dict(padding=True), dict(padding="max_length", max_length=32, truncation=True),
                   dict(padding=True, truncation="longest_first", max_length=40, pad_to_multiple_of=8)):
        got = ours(a, b, **kwargs)
        assert_same(got, hf(a, b, return_tensors="np", return_token_type_ids=True, **kwargs))
    short, long = ["short q", "x"], ["a much longer passage 👍🏽 " * 12, "b " * 40]
    kwargs = dict(truncation="only_second", max_length=20, padding="max_length")
    want = hf(short, long, return_tensors="np", return_token_type_ids=True, **kwargs)
    assert_same(ours(short, long, **kwargs), want)
    if style == "xlnet":
        assert ours.padding_side == hf.padding_side == "left"


def test_vocabulary_is_learnt_from_the_text(trained):
    for (kind, style), (d, _) in trained.items():
        tok = Tokenizer.from_pretrained(d)
        # frequent corpus words come out as few tokens, not character by character
        assert len(tok.tokenize("the quick brown fox")) <= 6, (kind, style)
        assert tok.unk_token_id not in tok("tokenization documents", return_tensors=None)["input_ids"]


def test_bpe_mask_swallows_the_space_before_it(trained):
    d, _ = trained["bpe", None]
    ours, hf = Tokenizer.from_pretrained(d), AutoTokenizer.from_pretrained(d)
    text = "The capital is <mask>."
    ids = ours(text, return_tensors=None)["input_ids"]
    assert ids == hf(text)["input_ids"]
    tokens = ours.convert_ids_to_tokens(ids)
    assert tokens[tokens.index("<mask>") - 1] != "Ġ"


def test_lowercase_option(corpus, tmp_path):
    cased = train_tokenizer(corpus, tmp_path / "wp", "wordpiece", 600, lowercase=False)
    assert cased.tokenize("Hello") != cased.tokenize("hello")
    d = tmp_path / "albert"
    albert = train_tokenizer([corpus], d, "sentencepiece", 800, style="albert", lowercase=False)
    assert albert.tokenize("Hello") != albert.tokenize("hello")
    assert json.loads((d / "tokenizer_config.json").read_text())["do_lower_case"] is False
    hf = AutoTokenizer.from_pretrained(str(d))
    assert_same(albert(TEXTS, padding=True),
                hf(TEXTS, padding=True, return_tensors="np", return_token_type_ids=True))
    lowered = train_tokenizer([corpus], tmp_path / "xlnet", "sentencepiece", 800, style="xlnet",
                              lowercase=True)
    assert lowered.tokenize("HELLO") == lowered.tokenize("hello")


def test_command_line(corpus, tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="flaxbert")
    add_train_tokenizer_parser(parser.add_subparsers(dest="command", required=True))
    out = tmp_path / "cli"
    args = parser.parse_args(["train-tokenizer", corpus, corpus, "--out", str(out), "--kind", "sentencepiece",
                              "--vocab-size", "500", "--style", "deberta", "--lowercase"])
    args.run(args)
    assert f"to {out}" in capsys.readouterr().out
    tok = Tokenizer.from_pretrained(out)
    assert tok.kind == "deberta" and tok.tokenize("HELLO") == tok.tokenize("hello")
    with pytest.raises(FileExistsError, match="overwrite"):
        args.run(args)
    args = parser.parse_args(["train-tokenizer", corpus, "--out", str(out), "--kind", "wordpiece",
                              "--vocab-size", "400", "--no-lowercase", "--min-frequency", "3", "--overwrite"])
    args.run(args)
    assert Tokenizer.from_pretrained(out).kind == "wordpiece"
    for bad in (["--kind", "unigram"], ["--vocab-size", "many"]):
        argv = ["train-tokenizer", corpus, "--out", str(out), "--kind", "bpe", "--vocab-size", "300"] + bad
        with pytest.raises(SystemExit):
            parser.parse_args(argv)


def test_existing_destination(corpus, tmp_path):
    out = tmp_path / "out"
    out.mkdir()  # an empty directory is fine to fill
    train_tokenizer(corpus, out, "bpe", 400)
    (out / "stale.txt").write_text("x")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        train_tokenizer(corpus, out, "wordpiece", 400)
    assert (out / "stale.txt").exists() and (out / "vocab.json").exists()
    train_tokenizer(corpus, out, "wordpiece", 400, overwrite=True)
    assert sorted(os.listdir(out)) == ["tokenizer.json", "tokenizer_config.json", "vocab.txt"]
    assert sorted(os.listdir(tmp_path)) == ["out"]  # no temp dirs left beside it


@pytest.mark.parametrize("call, exc, match", [
    (lambda c, o: train_tokenizer([c, c + ".missing"], o, "bpe", 400), FileNotFoundError, "missing"),
    (lambda c, o: train_tokenizer([], o, "bpe", 400), ValueError, "no training files"),
    (lambda c, o: train_tokenizer(c, o, "unigram", 400), ValueError, "unknown tokenizer kind"),
    (lambda c, o: train_tokenizer(c, o, "sentencepiece", 400), ValueError, "style"),
    (lambda c, o: train_tokenizer(c, o, "sentencepiece", 400, style="t5"), ValueError, "style"),
    (lambda c, o: train_tokenizer(c, o, "wordpiece", 400, style="albert"), ValueError, "style"),
    (lambda c, o: train_tokenizer(c, o, "bpe", 400, lowercase=True), ValueError, "lowercase"),
    (lambda c, o: train_tokenizer(c, o, "bpe", 5), ValueError, "vocab_size"),
    (lambda c, o: train_tokenizer(c, o, "bpe", "400"), ValueError, "vocab_size"),
    (lambda c, o: train_tokenizer(c, o, "bpe", 400, min_frequency=-1), ValueError, "min_frequency"),
    (lambda c, o: train_tokenizer(c, o, "sentencepiece", 12, style="albert"), ValueError, "sentencepiece"),
    (lambda c, o: train_tokenizer(c, o, "sentencepiece", 400, style="xlnet", character_coverage=2),
     ValueError, "character_coverage"),
])
def test_bad_input(corpus, tmp_path, call, exc, match):
    out = tmp_path / "out"
    with pytest.raises(exc, match=match):
        call(corpus, out)
    assert not out.exists()
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("content, match", [(b"", "no text"), (b"\n  \n\t\n", "no text"),
                                            (b"caf\xe9 latin-1\n", "UTF-8")])
def test_bad_training_text(tmp_path, content, match):
    f = tmp_path / "train.txt"
    f.write_bytes(content)
    with pytest.raises(ValueError, match=match):
        train_tokenizer(f, tmp_path / "out", "wordpiece", 400)
    assert not (tmp_path / "out").exists()
