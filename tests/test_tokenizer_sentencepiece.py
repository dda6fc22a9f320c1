"""SentencePiece tokenizers (ALBERT, DeBERTa-v2/v3, XLNet) must give exactly transformers' ids.

Unigram models are trained here with the `sentencepiece` trainer on generated text, with the
special pieces where the released checkpoints have them, and laid out as those checkpoints
ship (bare .model + tokenizer_config.json, ALBERT's v4 tokenizer.json + config.json,
DeBERTa-v3's [MASK] in added_tokens.json, ...).
"""

import os

# Before transformers / huggingface_hub are imported: never touch the network.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import io
import json

import pytest
import sentencepiece as spm
from transformers import AutoTokenizer

from flaxbert.tokenizer import Tokenizer
from tokenizer_cases import (BATCH_KWARGS, COMMON_TEXTS, assert_decode_matches,
                             assert_pair_truncation_matches, assert_pairs_match, assert_same,
                             assert_texts_match, corpus_lines, hf_call, pipeline)

TEXTS = COMMON_TEXTS + [
    "ＡＢＣ１２３ ﬁne ½ ™ ｶﾀｶﾅ", "3.14159 and 42, 1,000,000 in 2024 2,3,",
    "https://example.com/p?q=1&x=y user@mail.org", "[MASK] is special, [mask] is not",
    "a [MASK]b [CLS] [SEP] [PAD] [UNK]", "<mask> <sep> <cls> <pad> <eod> <eop> <s></s>",
    "İstanbul STRASSE straße",
]
PAIRS = list(zip(TEXTS, reversed(TEXTS)))

# Special pieces where albert-base-v2, deberta-v3-base and xlnet-base-cased have them.
SPM_LAYOUTS = {
    "albert": dict(pad_id=0, pad_piece="<pad>", unk_id=1, unk_piece="<unk>", bos_id=-1, eos_id=-1,
                   control_symbols=["[CLS]", "[SEP]", "[MASK]"]),
    "deberta": dict(pad_id=0, pad_piece="[PAD]", bos_id=1, bos_piece="[CLS]", eos_id=2, eos_piece="[SEP]",
                    unk_id=3, unk_piece="[UNK]", control_symbols=["[MASK]"]),
    # DeBERTa-v3's spm.model has no [MASK]: it is added after the vocabulary
    "deberta-v3": dict(pad_id=0, pad_piece="[PAD]", bos_id=1, bos_piece="[CLS]", eos_id=2, eos_piece="[SEP]",
                       unk_id=3, unk_piece="[UNK]"),
    "xlnet": dict(unk_id=0, unk_piece="<unk>", bos_id=1, bos_piece="<s>", eos_id=2, eos_piece="</s>",
                  pad_id=-1, control_symbols=["<cls>", "<sep>", "<pad>", "<mask>", "<eod>", "<eop>"]),
}


# ---- fixtures -----------------------------------------------------------------------------
@pytest.fixture(scope="session")
def models():
    """name -> .model bytes, one Unigram model per special-piece layout."""
    lines = corpus_lines()
    out = {}
    for name, layout in SPM_LAYOUTS.items():
        buf = io.BytesIO()
        spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_writer=buf, model_type="unigram",
                                       vocab_size=800, hard_vocab_limit=False, minloglevel=2, **layout)
        out[name] = buf.getvalue()
    return out


def _write(d, model, model_file, **json_files):
    d.mkdir()
    (d / model_file).write_bytes(model)
    for fname, content in json_files.items():
        (d / f"{fname}.json").write_text(json.dumps(content), encoding="utf-8")
    return str(d)


def _n_pieces(model):
    return spm.SentencePieceProcessor(model_proto=model).get_piece_size()


LAYOUTS = {
    "albert": lambda d, m: _write(d, m["albert"], "spiece.model",
                                  tokenizer_config={"tokenizer_class": "AlbertTokenizer"}),
    "albert-cased": lambda d, m: _write(d, m["albert"], "spiece.model", tokenizer_config={
        "tokenizer_class": "AlbertTokenizerFast", "do_lower_case": False, "keep_accents": True}),
    "albert-no-prefix-space": lambda d, m: _write(d, m["albert"], "spiece.model", tokenizer_config={
        "tokenizer_class": "AlbertTokenizer", "add_prefix_space": False}),
    "albert-hub": lambda d, m: _albert_hub_layout(d, m),
    "deberta": lambda d, m: _write(d, m["deberta"], "spm.model",
                                   tokenizer_config={"tokenizer_class": "DebertaV2Tokenizer"}),
    "deberta-v3": lambda d, m: _write(
        d, m["deberta-v3"], "spm.model",
        tokenizer_config={"tokenizer_class": "DebertaV2Tokenizer", "do_lower_case": False,
                          "vocab_type": "spm"},
        added_tokens={"[MASK]": _n_pieces(m["deberta-v3"])},
        special_tokens_map={"bos_token": "[CLS]", "eos_token": "[SEP]", "unk_token": "[UNK]",
                            "sep_token": "[SEP]", "pad_token": "[PAD]", "cls_token": "[CLS]",
                            "mask_token": "[MASK]"}),
    "deberta-options": lambda d, m: _write(d, m["deberta"], "spm.model", tokenizer_config={
        "tokenizer_class": "DebertaV2Tokenizer", "do_lower_case": True, "split_by_punct": True,
        "add_prefix_space": False, "truncation_side": "left"}),
    "xlnet": lambda d, m: _write(d, m["xlnet"], "spiece.model",
                                 tokenizer_config={"tokenizer_class": "XLNetTokenizer"}),
    # keep_accents changes nothing in transformers 5: XLNet strips accents regardless
    "xlnet-options": lambda d, m: _write(d, m["xlnet"], "spiece.model", tokenizer_config={
        "tokenizer_class": "XLNetTokenizer", "do_lower_case": True, "keep_accents": True}),
}


def _albert_hub_layout(d, models):
    """albert-base-v2 as on the Hub: spiece.model + a v4 tokenizer.json (lstrip [MASK]) +
    config.json, no tokenizer_config.json."""
    src = d.parent / (d.name + "-src")
    LAYOUTS["albert"](src, models)
    tok = json.loads(Tokenizer.from_pretrained(src).backend_tokenizer.to_str())
    for t in tok["added_tokens"]:
        t["lstrip"] = t["content"] == "[MASK]"
    tok["normalizer"]["normalizers"].insert(0, {"type": "Lowercase"})  # ignored by transformers
    return _write(d, models["albert"], "spiece.model", tokenizer=tok, config={"model_type": "albert"})


@pytest.fixture(scope="module", params=list(LAYOUTS))
def layout(request, models, tmp_path_factory):
    return request.param, LAYOUTS[request.param](tmp_path_factory.mktemp("spm") / request.param, models)


@pytest.fixture(scope="module")
def pair(layout):
    _, d = layout
    return Tokenizer.from_pretrained(d), AutoTokenizer.from_pretrained(d)


# ---- parity -------------------------------------------------------------------------------
def test_pipeline_matches_transformers(pair, layout):
    ours, hf = pair
    assert ours.kind == layout[0].split("-")[0]
    # Same normalizer, pre-tokenizer, Unigram model (scores to the last bit), added tokens and
    # post-processor: same ids for every input, not just the ones below.
    assert pipeline(ours.backend_tokenizer) == pipeline(hf.backend_tokenizer)
    assert ours.padding_side == hf.padding_side


def test_single_texts_match_transformers(pair):
    ours, hf = pair
    assert_texts_match(ours, hf, TEXTS)


def test_pairs_match_transformers(pair):
    ours, hf = pair
    assert_pairs_match(ours, hf, PAIRS)


@pytest.mark.parametrize("kwargs", BATCH_KWARGS)
def test_batches_match_transformers(pair, kwargs):
    ours, hf = pair
    got = ours(TEXTS, **kwargs)
    assert_same(got, hf_call(hf, TEXTS, return_tensors="np", **kwargs))
    if "pad_to_multiple_of" in kwargs:
        assert got["input_ids"].shape[1] % 8 == 0
    a, b = map(list, zip(*PAIRS))
    assert_same(ours(a, b, **kwargs), hf_call(hf, a, b, return_tensors="np", **kwargs))


@pytest.mark.parametrize("strategy", ["longest_first", "only_second", "only_first"])
def test_pair_truncation_matches_transformers(pair, strategy):
    ours, hf = pair
    assert_pair_truncation_matches(ours, hf, strategy)


def test_decode_matches_transformers(pair):
    ours, hf = pair
    assert_decode_matches(ours, hf, TEXTS)


# ---- the three conventions ----------------------------------------------------------------
def _dir(name, models, tmp_path):
    return LAYOUTS[name](tmp_path / name, models)


def test_albert_and_deberta_put_cls_first(models, tmp_path):
    for name, (cls, sep) in (("albert", (2, 3)), ("deberta", (1, 2)), ("deberta-v3", (1, 2))):
        tok = Tokenizer.from_pretrained(_dir(name, models, tmp_path))
        a = tok("hello world", add_special_tokens=False, return_tensors=None)["input_ids"]
        b = tok("again", add_special_tokens=False, return_tensors=None)["input_ids"]
        got = tok("hello world", "again", return_tensors=None)
        assert (tok.cls_token_id, tok.sep_token_id) == (cls, sep), name
        assert got["input_ids"] == [cls, *a, sep, *b, sep], name
        assert got["token_type_ids"] == [0] * (len(a) + 2) + [1] * (len(b) + 1), name
        assert tok.padding_side == "right"
    v3 = Tokenizer.from_pretrained(tmp_path / "deberta-v3")
    assert v3.mask_token_id == _n_pieces(models["deberta-v3"])  # appended after the spm vocabulary


def test_xlnet_puts_cls_last_and_pads_left(models, tmp_path):
    tok = Tokenizer.from_pretrained(_dir("xlnet", models, tmp_path))
    sep, cls, pad = tok.sep_token_id, tok.cls_token_id, tok.pad_token_id
    assert (tok.unk_token_id, sep, cls, pad, tok.mask_token_id) == (0, 4, 3, 5, 6)
    a = tok("hello world", add_special_tokens=False, return_tensors=None)["input_ids"]
    b = tok("again", add_special_tokens=False, return_tensors=None)["input_ids"]
    got = tok("hello world", "again", return_tensors=None)
    assert got["input_ids"] == [*a, sep, *b, sep, cls]
    assert got["token_type_ids"] == [0] * (len(a) + 1) + [1] * (len(b) + 1) + [2]
    batch = tok(["hello world", "hi"], padding=True, pad_to_multiple_of=8)
    n = len(tok("hi", return_tensors=None)["input_ids"])
    assert tok.padding_side == "left"
    assert (batch["input_ids"][1, :-n] == pad).all() and batch["input_ids"][1, -1] == cls
    width = batch["input_ids"].shape[1]
    assert width % 8 == 0 and batch["attention_mask"][1].tolist() == [0] * (width - n) + [1] * n
    # transformers 5 pads XLNet's token types with 0 (v4 used 3)
    assert (batch["token_type_ids"][1, :-n] == 0).all() and batch["token_type_ids"][1, -1] == 2
    listed = tok(["hello world", "hi"], padding=True, return_tensors=None)
    assert listed["input_ids"][1][:2] == [pad, pad] and listed["attention_mask"][1][0] == 0


def test_lower_casing_defaults(models, tmp_path):
    albert = Tokenizer.from_pretrained(_dir("albert", models, tmp_path))
    cased = Tokenizer.from_pretrained(_dir("albert-cased", models, tmp_path))
    deberta = Tokenizer.from_pretrained(_dir("deberta", models, tmp_path))
    assert albert.tokenize("HELLO Café") == albert.tokenize("hello cafe")
    assert cased.tokenize("HELLO Café") != cased.tokenize("hello cafe")
    assert deberta.tokenize("HELLO") != deberta.tokenize("hello")


def test_sentencepiece_library_agrees_on_plain_text(models, tmp_path):
    """The same Unigram model underneath: on lower-case ASCII words (nothing for the
    transformers-specific normalization to change) the sentencepiece library gives our ids.
    It differs elsewhere (case, accents, ``quotes'', special tokens in the text, ...), which
    is why the pipeline is built on `tokenizers` exactly as transformers builds it."""
    text = "the quick brown fox jumps over a lazy dog while tokenization reads documents"
    for name, file in (("albert", "spiece.model"), ("deberta", "spm.model"), ("xlnet", "spiece.model")):
        d = _dir(name, models, tmp_path)
        sp = spm.SentencePieceProcessor(model_file=os.path.join(d, file))
        ours = Tokenizer.from_pretrained(d)(text, add_special_tokens=False, return_tensors=None)["input_ids"]
        assert ours == sp.encode(text), name
    sp = spm.SentencePieceProcessor(model_file=os.path.join(tmp_path / "albert", "spiece.model"))
    albert = Tokenizer.from_pretrained(tmp_path / "albert")
    assert albert("Hello", add_special_tokens=False, return_tensors=None)["input_ids"] != sp.encode("Hello")


# ---- saving -------------------------------------------------------------------------------
def test_save_pretrained_round_trip(pair, layout, tmp_path):
    ours, hf = pair
    name, src = layout
    out = tmp_path / "saved"
    ours.save_pretrained(out)
    model_file = "spm.model" if name.startswith("deberta") else "spiece.model"
    assert sorted(os.listdir(out)) == sorted([model_file, "tokenizer.json", "tokenizer_config.json"])
    assert (out / model_file).read_bytes() == open(os.path.join(src, model_file), "rb").read()
    cfg = json.loads((out / "tokenizer_config.json").read_text())
    assert cfg["tokenizer_class"] == {"albert": "AlbertTokenizer", "deberta": "DebertaV2Tokenizer",
                                      "xlnet": "XLNetTokenizer"}[ours.kind]
    assert cfg["padding_side"] == ours.padding_side
    a, b = map(list, zip(*PAIRS))
    kw = dict(padding=True, truncation=True, max_length=20)  # padding / truncation sides too
    want = hf_call(hf, a, b, return_tensors="np", **kw)
    reloaded_hf = AutoTokenizer.from_pretrained(str(out))
    assert pipeline(reloaded_hf.backend_tokenizer) == pipeline(ours.backend_tokenizer)
    assert_same(hf_call(reloaded_hf, a, b, return_tensors="np", **kw), want)
    assert_same(Tokenizer.from_pretrained(out)(a, b, **kw), want)
    # the .model + tokenizer_config.json alone must reproduce the ids in both libraries too
    os.remove(out / "tokenizer.json")
    assert_same(hf_call(AutoTokenizer.from_pretrained(str(out)), a, b, return_tensors="np", **kw), want)
    assert_same(Tokenizer.from_pretrained(out)(a, b, **kw), want)


# ---- choosing the convention --------------------------------------------------------------
@pytest.mark.parametrize("kind, cls, file", [("albert", "AlbertTokenizer", "spiece.model"),
                                             ("deberta", "DebertaV2Tokenizer", "spm.model"),
                                             ("xlnet", "XLNetTokenizer", "spiece.model")])
def test_kind_override(models, tmp_path, kind, cls, file):
    model = models[kind]
    bare = _write(tmp_path / "bare", model, file)
    with pytest.raises(ValueError, match="kind="):
        Tokenizer.from_pretrained(bare)
    reference = _write(tmp_path / "ref", model, file, tokenizer_config={"tokenizer_class": cls})
    hf = AutoTokenizer.from_pretrained(reference)
    ours = Tokenizer.from_pretrained(bare, kind=kind)
    assert ours.kind == kind
    assert pipeline(ours.backend_tokenizer) == pipeline(hf.backend_tokenizer)
    # kind= wins over the config, and config.json's model_type is used when there is no class
    other = _write(tmp_path / "other", model, file, tokenizer_config={"tokenizer_class": "BertTokenizer"})
    overridden = Tokenizer.from_pretrained(other, kind=kind)
    assert pipeline(overridden.backend_tokenizer) == pipeline(hf.backend_tokenizer)
    by_type = _write(tmp_path / "by-type", model, file,
                     config={"model_type": {"deberta": "deberta-v2"}.get(kind, kind)})
    assert Tokenizer.from_pretrained(by_type).kind == kind


def test_bad_model_files(models, tmp_path):
    cfg = {"tokenizer_class": "AlbertTokenizer"}
    with pytest.raises(ValueError, match="not a SentencePiece model"):
        Tokenizer.from_pretrained(_write(tmp_path / "garbage", b"\xff\xfe not a proto", "spiece.model",
                                         tokenizer_config=cfg))
    with pytest.raises(ValueError, match="not a SentencePiece model"):
        Tokenizer.from_pretrained(_write(tmp_path / "empty", b"", "spiece.model", tokenizer_config=cfg))
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(corpus_lines(200)), model_writer=buf,
                                   model_type="bpe", vocab_size=300, hard_vocab_limit=False, minloglevel=2)
    bpe_dir = _write(tmp_path / "bpe", buf.getvalue(), "spiece.model", tokenizer_config=cfg)
    with pytest.raises(ValueError, match="Unigram"):
        Tokenizer.from_pretrained(bpe_dir)
    missing = tmp_path / "missing"
    missing.mkdir()
    (missing / "tokenizer_config.json").write_text(json.dumps(cfg))
    with pytest.raises(FileNotFoundError, match="spiece.model"):
        Tokenizer.from_pretrained(missing)
    with pytest.raises(ValueError, match="unknown tokenizer kind"):
        Tokenizer.from_pretrained(tmp_path / "garbage", kind="sentencepiece")
