"""Byte-level BPE (RoBERTa) in flaxbert.tokenizer must give exactly transformers' ids.

Vocabularies are trained here with `tokenizers`' BpeTrainer on generated text and laid out
the ways RoBERTa checkpoints come (vocab.json + merges.txt, roberta-base's tokenizer.json +
config.json, legacy special_tokens_map.json, ...); each is loaded by both libraries.
"""

import os

# Before transformers / huggingface_hub are imported: never touch the network.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import json
import shutil

import numpy as np
import pytest
import tokenizers
from tokenizers import AddedToken, pre_tokenizers, trainers
from tokenizers.models import BPE
from transformers import AutoTokenizer

from flaxbert.tokenizer import Tokenizer
from tokenizer_cases import (BATCH_KWARGS, COMMON_TEXTS, KEYS, assert_decode_matches,
                             assert_pair_truncation_matches, assert_pairs_match, assert_same,
                             assert_texts_match, corpus_lines, hf_call, pipeline)

TEXTS = COMMON_TEXTS + [
    "ＡＢＣ１２３ ﬁne ½ ™", "3.14159 and 42, 1,000,000 in 2024", "https://example.com/p?q=1&x=y user@mail.org",
    "Hello <mask> world", "Hello<mask>world", "a  <mask>  b", "<mask>", "<s>x</s> <pad> <unk>",
    "[MASK] [CLS] [SEP]", "İstanbul STRASSE straße",
]
PAIRS = list(zip(TEXTS, reversed(TEXTS)))


# ---- fixtures -----------------------------------------------------------------------------
@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """A byte-level BPE model laid out like roberta-base: <mask> last, with lstrip."""
    tok = tokenizers.Tokenizer(BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.train_from_iterator(corpus_lines(), trainers.BpeTrainer(
        vocab_size=700, min_frequency=2, special_tokens=["<s>", "<pad>", "</s>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    tok.add_special_tokens([AddedToken("<mask>", lstrip=True, normalized=False, special=True)])
    root = tmp_path_factory.mktemp("bpe")
    tok.model.save(str(root))
    vocab = json.loads((root / "vocab.json").read_text(encoding="utf-8"))
    vocab["<mask>"] = len(vocab)
    (root / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    # A pre-tokenizer transformers must ignore: RobertaTokenizer rebuilds it from the config.
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.save(str(root / "tokenizer.json"))
    return root


def _layout(root, name, *, files=("vocab.json", "merges.txt"), **json_files):
    d = root / name
    if d.exists():  # layouts are shared by the tests of this module
        return str(d)
    d.mkdir()
    for f in files:
        shutil.copy(root / f, d)
    for fname, content in json_files.items():
        (d / f"{fname}.json").write_text(json.dumps(content), encoding="utf-8")
    return str(d)


LAYOUTS = {
    # transformers 5 from vocab files: <mask> is a plain special token (no lstrip)
    "vocab-files": dict(tokenizer_config={"tokenizer_class": "RobertaTokenizer"}),
    # roberta-base on the Hub: no tokenizer_config.json, class from config.json, lstrip <mask>
    # from tokenizer.json's added_tokens
    "roberta-base": dict(files=("vocab.json", "merges.txt", "tokenizer.json"),
                         config={"model_type": "roberta"}),
    "prefix-space": dict(tokenizer_config={"tokenizer_class": "RobertaTokenizerFast", "add_prefix_space": True,
                                           "trim_offsets": False, "model_max_length": 64}),
    "special-tokens-map": dict(
        tokenizer_config={"tokenizer_class": "RobertaTokenizer"},
        special_tokens_map={"mask_token": {"content": "<mask>", "lstrip": True, "rstrip": False,
                                           "normalized": False, "single_word": False}}),
    # an added non-special token beyond the vocabulary gets the next id
    "added-tokens-decoder": dict(tokenizer_config={
        "tokenizer_class": "RobertaTokenizer",
        "added_tokens_decoder": {
            "700": {"content": "<mask>", "lstrip": True, "rstrip": False, "normalized": False,
                    "single_word": False, "special": True},
            "701": {"content": "newword", "lstrip": False, "rstrip": False, "normalized": True,
                    "single_word": False, "special": False}}}),
}


@pytest.fixture(scope="module", params=list(LAYOUTS))
def layout_dir(request, trained):
    return _layout(trained, request.param, **LAYOUTS[request.param])


@pytest.fixture(scope="module")
def pair(layout_dir):
    return Tokenizer.from_pretrained(layout_dir), AutoTokenizer.from_pretrained(layout_dir)


# ---- parity -------------------------------------------------------------------------------
def test_pipeline_matches_transformers(pair):
    ours, hf = pair
    assert ours.kind == "bpe"
    # Same normalizer, pre-tokenizer, model, added tokens and post-processor: same ids for
    # every input, not just the ones below.
    assert pipeline(ours.backend_tokenizer) == pipeline(hf.backend_tokenizer)


def test_single_texts_match_transformers(pair):
    ours, hf = pair
    assert_texts_match(ours, hf, TEXTS)


def test_pairs_match_transformers(pair):
    ours, hf = pair
    a, b = assert_pairs_match(ours, hf, PAIRS)
    # <s> A </s></s> B </s>, and no token types at all (RoBERTa has none)
    one = ours("a b", "c", return_tensors=None)
    ids_a, ids_b = (ours("a b", add_special_tokens=False, return_tensors=None)["input_ids"],
                    ours("c", add_special_tokens=False, return_tensors=None)["input_ids"])
    cls, sep = ours.cls_token_id, ours.sep_token_id
    assert (cls, sep) == (0, 2)
    assert one["input_ids"] == [cls, *ids_a, sep, sep, *ids_b, sep]
    assert set(np.concatenate(ours(a, b, padding=True)["token_type_ids"])) == {0}


@pytest.mark.parametrize("kwargs", BATCH_KWARGS)
def test_batches_match_transformers(pair, kwargs):
    ours, hf = pair
    assert_same(ours(TEXTS, **kwargs), hf_call(hf, TEXTS, return_tensors="np", **kwargs))
    a, b = map(list, zip(*PAIRS))
    assert_same(ours(a, b, **kwargs), hf_call(hf, a, b, return_tensors="np", **kwargs))


@pytest.mark.parametrize("strategy", ["longest_first", "only_second"])
def test_pair_truncation_matches_transformers(pair, strategy):
    ours, hf = pair
    assert_pair_truncation_matches(ours, hf, strategy)


def test_decode_matches_transformers(pair):
    ours, hf = pair
    assert_decode_matches(ours, hf, TEXTS)


def test_mask_lstrip_follows_the_files(trained):
    """transformers 5 gives <mask> lstrip only where a file says so (tokenizer.json, an
    added_tokens_decoder or special_tokens_map.json); from bare vocab files it does not."""
    def tokens(name):
        d = str(trained / name)
        ours = Tokenizer.from_pretrained(d)
        ids = ours("Hello <mask>", add_special_tokens=False, return_tensors=None)["input_ids"]
        assert ids == AutoTokenizer.from_pretrained(d)("Hello <mask>", add_special_tokens=False)["input_ids"]
        return ours.convert_ids_to_tokens(ids)

    for name in LAYOUTS:
        _layout(trained, name, **LAYOUTS[name])
    assert tokens("vocab-files")[-2:] == ["Ġ", "<mask>"]
    for name in ("roberta-base", "special-tokens-map", "added-tokens-decoder"):
        assert tokens(name)[-2] != "Ġ" and tokens(name)[-1] == "<mask>", name


def test_prefix_space_and_model_max_length_from_config(trained):
    d = _layout(trained, "prefix-space-check", **LAYOUTS["prefix-space"])
    ours = Tokenizer.from_pretrained(d)
    assert ours.model_max_length == 64
    assert ours.tokenize("Hello")[0].startswith("Ġ")
    assert ours("word " * 100, truncation=True)["input_ids"].shape == (64,)


# ---- saving -------------------------------------------------------------------------------
def test_save_pretrained_round_trip(pair, tmp_path):
    ours, hf = pair
    out = tmp_path / "saved"
    ours.save_pretrained(out)
    assert sorted(os.listdir(out)) == ["merges.txt", "tokenizer.json", "tokenizer_config.json", "vocab.json"]
    cfg = json.loads((out / "tokenizer_config.json").read_text())
    assert cfg["tokenizer_class"] == "RobertaTokenizer" and cfg["mask_token"] == "<mask>"
    a, b = map(list, zip(*PAIRS))
    want = hf_call(hf, a, b, padding=True, return_tensors="np")
    for reload in range(2):
        if reload:  # vocab.json + merges.txt alone (no tokenizer.json) must give the same ids too
            os.remove(out / "tokenizer.json")
        assert_same(Tokenizer.from_pretrained(out)(a, b, padding=True), want)
        reloaded_hf = AutoTokenizer.from_pretrained(str(out))
        assert_same(hf_call(reloaded_hf, a, b, padding=True, return_tensors="np"), want)


def test_kind_detection_and_override(trained, tmp_path):
    # vocab.json + merges.txt and nothing else: transformers cannot tell the class, we can
    bare = _layout(trained, "bare")
    with_cfg = _layout(trained, "bare-with-config", tokenizer_config={"tokenizer_class": "RobertaTokenizer"})
    want = hf_call(AutoTokenizer.from_pretrained(with_cfg), TEXTS, padding=True, return_tensors="np")
    assert_same(Tokenizer.from_pretrained(bare)(TEXTS, padding=True), want)
    assert_same(Tokenizer.from_pretrained(bare, kind="bpe")(TEXTS, padding=True), want)
    # a class-less tokenizer.json is used as it is (so does transformers' TokenizersBackend);
    # kind="bpe" rebuilds RoBERTa's pipeline from its vocabulary instead
    json_only = _layout(trained, "json-only", files=("tokenizer.json",))
    verbatim = Tokenizer.from_pretrained(json_only)
    assert verbatim.kind is None
    a, b = map(list, zip(*PAIRS))
    hf = AutoTokenizer.from_pretrained(json_only)
    assert pipeline(verbatim.backend_tokenizer) == pipeline(hf.backend_tokenizer)
    got, want = verbatim(a, b, return_tensors=None), hf_call(hf, a, b)
    assert {k: got[k] for k in KEYS} == {k: want[k] for k in KEYS}
    assert verbatim.tokenize("Hello")[0] == "ĠHello"  # the file's add_prefix_space=True
    rebuilt = Tokenizer.from_pretrained(json_only, kind="bpe")
    assert rebuilt.kind == "bpe" and rebuilt.tokenize("Hello")[0] != "ĠHello"


def test_bad_directories(trained, tmp_path):
    d = _layout(trained, "no-merges", files=("vocab.json",),
                tokenizer_config={"tokenizer_class": "RobertaTokenizer"})
    with pytest.raises(FileNotFoundError, match="merges.txt"):
        Tokenizer.from_pretrained(d)
    d = tmp_path / "bad-vocab"
    d.mkdir()
    (d / "vocab.json").write_text("{not json")
    (d / "merges.txt").write_text("#version: 0.2\n")
    with pytest.raises(ValueError, match="vocab.json"):
        Tokenizer.from_pretrained(d, kind="bpe")
    d = tmp_path / "wordpiece-json"
    d.mkdir()
    wp = tokenizers.Tokenizer(tokenizers.models.WordPiece({"[UNK]": 0, "a": 1}, unk_token="[UNK]"))
    wp.save(str(d / "tokenizer.json"))
    (d / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "RobertaTokenizer"}))
    with pytest.raises(ValueError, match="not a byte-level BPE"):
        Tokenizer.from_pretrained(d)
    with pytest.raises(ValueError, match="unknown tokenizer kind"):
        Tokenizer.from_pretrained(d, kind="roberta")
