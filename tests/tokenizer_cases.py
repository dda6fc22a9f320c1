"""Shared cases for the tokenizer parity tests (test_tokenizer_bpe, test_tokenizer_sentencepiece,
test_tokenizer_training): a generated training corpus, the texts and call options to compare
on, and the helpers that compare flaxbert's output with transformers'.

No test functions here, and nothing that imports transformers or huggingface_hub: the test
modules set HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE before those are imported.
"""

import json
import random

import numpy as np

KEYS = ("input_ids", "token_type_ids", "attention_mask")
_SYLLABLES = "ka ri to ne mu sa lo vi da pe zu qua str ght ion ing er th ch sh ow ai".split()
_WORDS = ("the quick brown fox jumps over a lazy dog model reads long documents about naïve cafés "
          "Ångström Crème Brûlée résumé façade über straße Größe São Zürich İstanbul Hello World "
          "DON'T won't it's I'm tokenization 東京 中文字符 日本語のテキスト 한국어 Привет مرحبا שלום "
          "👍 🤗 👍🏽 😀 🇫🇷 ＡＢＣ１２３ ﬁne ½ ™ 3.14159 42 1,000,000 2,3, 2024 12:30 user@mail.org "
          "https://example.com/p?q=1&x=y !!! ??? ... --==>> ``quoted'' \"dq\" (paren) [brack] #hash $100 "
          "50% a&b").split()


def corpus_lines(n=600, seed=0):
    """Words from many scripts, emoji, numbers, punctuation runs and made-up words."""
    rng = random.Random(seed)
    lines = []
    for _ in range(n):
        words = []
        for _ in range(rng.randint(3, 20)):
            w = ("".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(1, 4)))
                 if rng.random() < 0.4 else rng.choice(_WORDS))
            words.append(w.upper() if rng.random() < 0.08 else w.capitalize() if rng.random() < 0.08 else w)
        lines.append(" ".join(words))
    return lines


# Texts every pretrained-layout parity test runs; each family appends its own (special tokens
# in the text, extra normalization cases) after these.
COMMON_TEXTS = [
    "Hello, World! The quick brown fox jumps over the lazy dog.",
    "café naïve Ångström Crème Brûlée e\u0301", "中文字符 日本語のテキスト 한국어", "mixed 中文 and english",
    "👍🏽 thumbs 🤗 hugging 🇫🇷", "!!!???...", "--==>>", "``quoted'' don't won't",
    "Donaudampfschifffahrtsgesellschaftskapitänswitwe" * 3, "x" * 300,
    "\x00", "\t", "\u200b", "\x7f", "a\rb", "tab\there\nnewline", "\u2028x\u2029", "",
    " ", "   ", " leading", "trailing ", "  multiple   spaces  here  ",
]
BATCH_KWARGS = [
    dict(padding=True),
    dict(padding="longest", pad_to_multiple_of=8),
    dict(padding="max_length", max_length=48, truncation=True),
    dict(padding=True, truncation="longest_first", max_length=12),
]


def pipeline(tok):
    """The serialized pipeline without the (call-time) truncation / padding settings."""
    j = json.loads(tok.to_str())
    j.pop("truncation")
    j.pop("padding")
    return j


def hf_call(hf, *args, **kwargs):
    return hf(*args, return_token_type_ids=True, **kwargs)


def assert_same(got, want):
    for k in KEYS:
        np.testing.assert_array_equal(np.asarray(got[k]), np.asarray(want[k]), err_msg=k)


# Parity checks shared by the pretrained-layout tests. This module is not rewritten by pytest's
# assertion rewriting, so the assertions carry their own messages.
def assert_texts_match(ours, hf, texts):
    """Each text alone: the same ids, token types, mask and tokens as transformers."""
    for text in texts:
        got, want = ours(text, return_tensors=None), hf_call(hf, text)
        got, want = {k: got[k] for k in KEYS}, {k: want[k] for k in KEYS}
        assert got == want, f"{text!r}: {got} != {want}"
        got, want = ours.tokenize(text), hf.tokenize(text)
        assert got == want, f"{text!r}: {got} != {want}"


def assert_pairs_match(ours, hf, pairs):
    """The pairs as one unpadded batch; returns the two lists of texts."""
    a, b = map(list, zip(*pairs))
    got, want = ours(a, b, return_tensors=None), hf_call(hf, a, b)
    got, want = {k: got[k] for k in KEYS}, {k: want[k] for k in KEYS}
    assert got == want, f"{got} != {want}"
    return a, b


def assert_pair_truncation_matches(ours, hf, strategy):
    """Short and long texts paired (the long one first for only_first), truncated and padded
    to two lengths."""
    short, long = ["short q", "x", "tiny"], ["a much longer passage 👍🏽 " * 12, "b " * 40, "ça " * 30]
    a, b = (long, short) if strategy == "only_first" else (short, long)
    for max_length in (16, 23):
        kw = dict(truncation=strategy, max_length=max_length, padding="max_length")
        got = ours(a, b, **kw)
        assert_same(got, hf_call(hf, a, b, return_tensors="np", **kw))
        assert got["input_ids"].shape == (3, max_length), f"{got['input_ids'].shape} at max_length={max_length}"


def assert_decode_matches(ours, hf, texts):
    batch = ours(texts, padding=True)["input_ids"]
    for skip in (True, False):
        got = ours.batch_decode(batch, skip_special_tokens=skip)
        want = hf.batch_decode(batch.tolist(), skip_special_tokens=skip)
        assert got == want, f"skip_special_tokens={skip}: {got} != {want}"
