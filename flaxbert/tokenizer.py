"""Text -> numpy model inputs for flaxbert models, on top of HuggingFace `tokenizers`.

`Tokenizer.from_pretrained(dir)` loads a tokenizer.json, or builds the BERT WordPiece
pipeline from a bare vocab.txt; calling it returns `input_ids`, `token_type_ids` and
`attention_mask` that match `transformers.AutoTokenizer` id for id. `save_pretrained`
writes a directory that transformers loads back to the same ids.

Besides WordPiece it rebuilds, from the same files transformers reads, the pipelines of
transformers' RobertaTokenizer (byte-level BPE: vocab.json + merges.txt) and of the
SentencePiece Unigram tokenizers of ALBERT, DeBERTa-v2/v3 and XLNet (spiece.model /
spm.model). Those are assembled from `tokenizers` components exactly as transformers 5
assembles them (it never calls the sentencepiece library to encode, and its pipeline
differs from sentencepiece's in places), so the ids agree with transformers rather than
with `sentencepiece.SentencePieceProcessor`.
"""

from __future__ import annotations

import base64
import dataclasses
import itertools
import json
import os
import re
import threading
from collections.abc import Sequence

import numpy as np
import tokenizers
from tokenizers import AddedToken, Regex, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import BPE, Unigram, WordPiece

from flaxbert.hub import resolve
from flaxbert.io import atomic_directory

_BERT_SPECIALS = {"unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]",
                  "cls_token": "[CLS]", "mask_token": "[MASK]"}
_ROLES = tuple(_BERT_SPECIALS) + ("bos_token", "eos_token")
# transformers' SPECIAL_TOKENS_ATTRIBUTES order: tokens missing from the vocabulary get
# new ids in this order, so it is part of the id mapping.
_ROLE_ORDER = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token",
               "mask_token")
_TRUNCATIONS = {True: "longest_first", "longest_first": "longest_first",
                "only_first": "only_first", "only_second": "only_second"}
_PADDINGS = {True: "longest", "longest": "longest", "max_length": "max_length"}
_MAX_CACHED_CONFIGS = 8


# Files a checkpoint directory may carry for its tokenizer (what `convert` and exports copy).
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer_config.json",
                   "special_tokens_map.json", "added_tokens.json", "vocab.json", "merges.txt",
                   "spm.model", "spiece.model", "sentencepiece.bpe.model")


class Encoding(dict):
    """The tokenizer's output: a dict that also allows `enc.input_ids`."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def _read_config(directory):
    """tokenizer_config.json overlaid on special_tokens_map.json, token dicts flattened to strings."""
    cfg = {}
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            try:
                with open(path, encoding="utf-8") as f:
                    cfg.update(json.load(f))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path} is not valid JSON: {e}") from e
    for role in _ROLES:
        if isinstance(cfg.get(role), dict):  # transformers may save AddedToken dicts
            cfg[role] = cfg[role]["content"]
    return cfg


def _build_from_tokenizer_json(directory, cfg):
    path = os.path.join(directory, "tokenizer.json")
    try:
        tok = tokenizers.Tokenizer.from_file(path)
    except Exception as e:
        raise ValueError(f"cannot load {path}: {e}") from e
    if tok.post_processor is None:
        # transformers installs this template when the file has no post-processor; without
        # it a pair's second text would get token type 0 instead of 1.
        tok.post_processor = processors.TemplateProcessing(single="$A:0", pair="$A:0 $B:1")
    return tok


def _build_wordpiece(directory, cfg):
    # Read exactly as transformers' load_vocab does (universal newlines, strip only "\n"),
    # so odd vocab lines map to the same ids; Rust's reader also strips other whitespace.
    with open(os.path.join(directory, "vocab.txt"), encoding="utf-8") as f:
        vocab = {line.rstrip("\n"): i for i, line in enumerate(f.readlines())}
    specials = {role: cfg.get(role) or default for role, default in _BERT_SPECIALS.items()}
    tok = tokenizers.Tokenizer(WordPiece(vocab, unk_token=specials["unk_token"],
                                         max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(
        clean_text=True,
        handle_chinese_chars=cfg.get("tokenize_chinese_chars", True),
        strip_accents=cfg.get("strip_accents"),
        lowercase=cfg.get("do_lower_case", True))
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##")
    # Special tokens must be matched before normalization, otherwise "[MASK]" in the text
    # is lowercased and split into "[", "mask", "]".
    tok.add_special_tokens([specials[r] for r in ("pad_token", "unk_token", "cls_token",
                                                  "sep_token", "mask_token")])
    cls, sep = specials["cls_token"], specials["sep_token"]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{cls}:0 $A:0 {sep}:0",
        pair=f"{cls}:0 $A:0 {sep}:0 $B:1 {sep}:1",
        special_tokens=[(cls, tok.token_to_id(cls)), (sep, tok.token_to_id(sep))])
    return tok


# Tried in order when tokenizer_config.json names no class we rebuild ourselves (below).
_BUILDERS = (
    (("tokenizer.json",), _build_from_tokenizer_json),
    (("vocab.txt",), _build_wordpiece),
)


# ---- byte-level BPE (RoBERTa) and SentencePiece Unigram (ALBERT, DeBERTa-v2, XLNet) --------
#
# transformers 5 has no "slow" tokenizers for these. RobertaTokenizer, AlbertTokenizer,
# DebertaV2Tokenizer and XLNetTokenizer each assemble a `tokenizers` pipeline in __init__,
# taking only the *vocabulary* from tokenizer.json when the directory has one (its
# normalizer / pre-tokenizer / post-processor are discarded and rebuilt from the class
# and tokenizer_config.json flags), otherwise from vocab.json + merges.txt or from the
# .model protobuf. We read the same vocabulary from the same file and assemble the same
# components, in the same order, so every input gets the same ids; the tests compare the
# serialized pipelines with transformers' as well as ids.

_SPM_FILES = ("spiece.model", "spm.model")


@dataclasses.dataclass(frozen=True)
class _Convention:
    tokenizer_class: str
    specials: dict            # the class's default special tokens
    flags: dict               # tokenizer_config.json flags that change ids, with class defaults
    model_files: tuple = ()   # SentencePiece file names, the class's own first
    extras: tuple = ()        # the class's default additional special tokens
    padding_side: str = "right"


_CONVENTIONS = {
    "bpe": _Convention(
        "RobertaTokenizer",
        dict(bos_token="<s>", eos_token="</s>", unk_token="<unk>", sep_token="</s>",
             pad_token="<pad>", cls_token="<s>", mask_token="<mask>"),
        dict(add_prefix_space=False, trim_offsets=True)),
    "albert": _Convention(
        "AlbertTokenizer",
        dict(bos_token="[CLS]", eos_token="[SEP]", unk_token="<unk>", sep_token="[SEP]",
             pad_token="<pad>", cls_token="[CLS]", mask_token="[MASK]"),
        dict(do_lower_case=True, keep_accents=False, add_prefix_space=True),
        model_files=("spiece.model", "spm.model")),
    "deberta": _Convention(
        "DebertaV2Tokenizer",
        dict(bos_token="[CLS]", eos_token="[SEP]", unk_token="[UNK]", sep_token="[SEP]",
             pad_token="[PAD]", cls_token="[CLS]", mask_token="[MASK]"),
        dict(do_lower_case=False, split_by_punct=False, add_prefix_space=True),
        model_files=("spm.model", "spiece.model")),
    # XLNet's keep_accents / remove_space change nothing in transformers 5 (accents are
    # always stripped, whitespace always split), so they are not flags here.
    "xlnet": _Convention(
        "XLNetTokenizer",
        dict(bos_token="<s>", eos_token="</s>", unk_token="<unk>", sep_token="<sep>",
             pad_token="<pad>", cls_token="<cls>", mask_token="<mask>"),
        dict(do_lower_case=False),
        model_files=("spiece.model", "spm.model"), extras=("<eop>", "<eod>"), padding_side="left"),
}
KINDS = ("wordpiece",) + tuple(_CONVENTIONS)
_KIND_OF_CLASS = {"BertTokenizer": "wordpiece",
                  **{c.tokenizer_class: kind for kind, c in _CONVENTIONS.items()}}
# config.json model_type -> kind, used (as by AutoTokenizer) when there is no tokenizer_class.
_KIND_OF_MODEL_TYPE = {"roberta": "bpe", "albert": "albert", "deberta-v2": "deberta", "xlnet": "xlnet"}
_ADDED_TOKEN_FIELDS = ("content", "single_word", "lstrip", "rstrip", "normalized", "special")


def _load_json(path):
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from e


def _resolve_kind(directory, cfg, kind):
    """The kind asked for, else the one tokenizer_config.json / config.json imply, else None."""
    if kind is not None:
        if kind not in KINDS:
            raise ValueError(f"unknown tokenizer kind {kind!r}; expected one of {list(KINDS)}")
        return kind
    name = cfg.get("tokenizer_class")
    if not isinstance(name, str):
        model_cfg = _load_json(os.path.join(directory, "config.json"))
        model_cfg = model_cfg if isinstance(model_cfg, dict) else {}
        name = model_cfg.get("tokenizer_class")
        if not isinstance(name, str):
            return _KIND_OF_MODEL_TYPE.get(model_cfg.get("model_type"))
    return _KIND_OF_CLASS.get(name.removesuffix("Fast"))


def _as_added_token(value, **override):
    """A token entry of the config files (str, or an AddedToken dict) as str / AddedToken."""
    if isinstance(value, dict):
        fields = {k: value[k] for k in _ADDED_TOKEN_FIELDS if k in value}
        return AddedToken(**{**fields, **override})
    return value


def _transformers_kwargs(directory, tokenizer_json):
    """tokenizer_config.json as transformers' from_pretrained hands it to the class.

    Returns (config, added) where added maps id -> AddedToken for tokens that are added
    before the special tokens, with their saved flags (lstrip, normalized, ...).
    """
    cfg = _load_json(os.path.join(directory, "tokenizer_config.json")) or {}
    if "additional_special_tokens" in cfg and not cfg.get("extra_special_tokens"):
        cfg["extra_special_tokens"] = cfg.pop("additional_special_tokens")
    if "added_tokens_decoder" in cfg:
        added = {int(i): _as_added_token(t) for i, t in cfg["added_tokens_decoder"].items()}
    else:
        # Legacy layout: special_tokens_map.json *overrides* tokenizer_config.json here, and
        # tokenizer.json's added_tokens (e.g. RoBERTa's lstrip <mask>) carry the flags.
        smap = _load_json(os.path.join(directory, "special_tokens_map.json")) or {}
        for key, value in smap.items():
            if key == "extra_special_tokens" and isinstance(value, list):
                merged = list(cfg.get(key) or [])
                merged += [t for t in map(_as_added_token, value) if t not in merged]
                value = merged
            elif isinstance(value, dict):
                value = _as_added_token(value, special=True)
            cfg[key] = value
        # added_tokens.json (DeBERTa-v3 keeps its [MASK] there, outside spm.model), then
        # tokenizer.json's added_tokens, which win for the same id.
        added = {}
        legacy = _load_json(os.path.join(directory, "added_tokens.json")) or {}
        if legacy:
            special = {str(_as_added_token(cfg[r])) for r in _ROLE_ORDER if cfg.get(r)}
            extras = cfg.get("extra_special_tokens")
            special |= {str(_as_added_token(t)) for t in extras if t} if isinstance(extras, list) else set()
            for content, i in legacy.items():
                added[i] = AddedToken(content, normalized=content not in special,
                                      special=content in special)
        added.update({t["id"]: _as_added_token(t) for t in (tokenizer_json or {}).get("added_tokens", [])})
    by_content = {str(t): t for t in added.values()}
    for role in _ROLE_ORDER:
        if cfg.get(role) is not None:
            cfg[role] = _as_added_token(cfg[role])
            cfg[role] = by_content.get(str(cfg[role]), cfg[role])
    return cfg, added


def _add_special_tokens(tok, added, roles, extras):
    """Add tokens as transformers' TokenizersBackend.__init__ does.

    Order matters: tokens outside the vocabulary get new ids in this order (saved added
    tokens by id, then the named special tokens, then the extra ones). Flags matter too:
    a token listed twice keeps the flags of its *last* entry, which is why XLNet's class
    default `<mask>` (lstrip=True) loses to the plain `<mask>` control piece of the .model.
    """
    tokens = [t for _, t in sorted(added.items())]
    present = {str(t) for t in tokens}
    named = [v for v in roles.values() if v is not None]
    for value in named + list(extras):
        if str(value) not in present and value not in tokens:
            tokens.append(value)
    named_contents = {str(v) for v in named}
    final = []
    for t in tokens:
        if isinstance(t, str):
            t = AddedToken(t, special=True)
        elif not t.special and t.content in named_contents:
            t = AddedToken(t.content, single_word=t.single_word, lstrip=t.lstrip, rstrip=t.rstrip,
                           normalized=t.normalized, special=True)
        final.append(t)
    tok.add_tokens(final)


def _bpe_vocab(directory, tokenizer_json):
    if tokenizer_json is not None:
        model = tokenizer_json.get("model") or {}
        if model.get("type") not in (None, "BPE") or not isinstance(model.get("vocab"), dict):
            raise ValueError(f"{os.path.join(directory, 'tokenizer.json')} holds a "
                             f"{model.get('type')} model, not a byte-level BPE one")
        merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m)
                  for m in model.get("merges", [])]
        return model["vocab"], merges
    paths = [os.path.join(directory, f) for f in ("vocab.json", "merges.txt")]
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise FileNotFoundError(f"byte-level BPE tokenizer needs tokenizer.json or vocab.json + "
                                f"merges.txt; missing {', '.join(missing)}")
    try:
        return BPE.read_file(*paths)  # the reader transformers' BPE(vocab=path, ...) uses
    except Exception as e:
        raise ValueError(f"cannot read {paths[0]} / {paths[1]}: {e}") from e


def _read_spm_proto(path):
    try:
        from sentencepiece import sentencepiece_model_pb2
    except ImportError as e:  # the generated module needs the protobuf runtime
        raise ImportError(f"reading {path} needs the protobuf package (pip install protobuf)") from e
    with open(path, "rb") as f:
        data = f.read()
    proto = sentencepiece_model_pb2.ModelProto()
    try:
        proto.ParseFromString(data)
    except Exception as e:
        raise ValueError(f"{path} is not a SentencePiece model: {e}") from e
    if not proto.pieces:
        raise ValueError(f"{path} is not a SentencePiece model (no pieces)")
    if proto.trainer_spec.model_type != proto.trainer_spec.UNIGRAM:
        raise ValueError(f"{path} is not a Unigram SentencePiece model; ALBERT, DeBERTa-v2 and "
                         "XLNet tokenizers are Unigram")
    return proto


def _json_charsmap(normalizer):
    if not normalizer:
        return None
    items = normalizer.get("normalizers", []) if normalizer.get("type") == "Sequence" else [normalizer]
    for n in items:
        if n.get("type") == "Precompiled" and n.get("precompiled_charsmap"):
            return base64.b64decode(n["precompiled_charsmap"])
    return None


def _unigram_vocab(directory, tokenizer_json, conv):
    """(vocab, unk_id, precompiled charsmap, pieces to add as tokens, .model path or None).

    unk_id and the pieces are None when the vocabulary comes from tokenizer.json, which is
    what transformers sees then too (the class falls back to its config / defaults).
    """
    model_path = next((os.path.join(directory, f) for f in conv.model_files
                       if os.path.isfile(os.path.join(directory, f))), None)
    if tokenizer_json is not None:
        model = tokenizer_json.get("model") or {}
        vocab = model.get("vocab")
        if model.get("type") not in (None, "Unigram") or not (
                isinstance(vocab, list) and vocab and isinstance(vocab[0], list)):
            raise ValueError(f"{os.path.join(directory, 'tokenizer.json')} holds a "
                             f"{model.get('type')} model, not a SentencePiece Unigram one")
        return ([tuple(v) for v in vocab], None, _json_charsmap(tokenizer_json.get("normalizer")),
                None, model_path)
    if model_path is None:
        raise FileNotFoundError(f"{conv.tokenizer_class} needs tokenizer.json or "
                                f"{' / '.join(conv.model_files)} in {directory!r}")
    proto = _read_spm_proto(model_path)
    vocab = [(p.piece, p.score) for p in proto.pieces]
    # Control and user-defined pieces become added tokens, as transformers'
    # SentencePieceExtractor makes them (its "additional_special_tokens").
    kinds = (proto.SentencePiece.CONTROL, proto.SentencePiece.USER_DEFINED)
    pieces = [AddedToken(p.piece, normalized=False, special=p.type == proto.SentencePiece.CONTROL)
              for p in proto.pieces if p.type in kinds]
    return (vocab, proto.trainer_spec.unk_id, proto.normalizer_spec.precompiled_charsmap or None,
            pieces, model_path)


_SPIECE_UNDERLINE = "\u2581"  # "▁", SentencePiece's word-boundary mark


def _metaspace(scheme):
    return pre_tokenizers.Metaspace(replacement=_SPIECE_UNDERLINE, prepend_scheme=scheme)


def _quote_normalizers():
    # ALBERT / XLNet map LaTeX-style quotes to '"' before anything else.
    return [normalizers.Replace("``", '"'), normalizers.Replace("''", '"')]


def _build_convention(directory, kind):
    """(tokenizers.Tokenizer, settings) for one of _CONVENTIONS, as transformers builds it."""
    conv = _CONVENTIONS[kind]
    tokenizer_json = _load_json(os.path.join(directory, "tokenizer.json"))
    cfg, added = _transformers_kwargs(directory, tokenizer_json)
    flags = {k: cfg.get(k, default) for k, default in conv.flags.items()}
    roles = {r: cfg[r] if r in cfg else conv.specials[r] for r in _ROLE_ORDER}
    extras = cfg.get("extra_special_tokens")
    if isinstance(extras, dict):  # model-specific named tokens
        extras = list(extras.values())
    model_path, unk_id = None, None

    if kind == "bpe":
        vocab, merges = _bpe_vocab(directory, tokenizer_json)
        # No unk_token: byte-level BPE can spell any input.
        tok = tokenizers.Tokenizer(BPE(vocab, merges, dropout=None, continuing_subword_prefix="",
                                       end_of_word_suffix="", fuse_unk=False))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=bool(flags["add_prefix_space"]))
        tok.decoder = decoders.ByteLevel()
    else:
        vocab, unk_id, charsmap, pieces, model_path = _unigram_vocab(directory, tokenizer_json, conv)
        if extras is None:
            # From a .model file the control / user-defined pieces replace the class default.
            extras = pieces if pieces is not None else list(conv.extras)
        if kind == "albert":
            unk_id = 1  # AlbertTokenizer hard-codes ALBERT's <unk> id, whatever the model says
        elif kind == "deberta":
            unk = (str(roles["unk_token"]), 0.0)
            unk_id = vocab.index(unk) if unk in vocab else (
                unk_id if unk_id is not None else cfg.get("unk_id", 1))
        else:
            unk_id = unk_id if unk_id is not None else cfg.get("unk_id", 0)
        if not isinstance(unk_id, int) or not 0 <= unk_id < len(vocab):
            raise ValueError(f"unk_id {unk_id} is outside the {len(vocab)}-piece vocabulary")
        tok = tokenizers.Tokenizer(Unigram(vocab, unk_id=unk_id, byte_fallback=False))
        if kind == "deberta":
            # DebertaV2Tokenizer (transformers >= 5.25, like sentencepiece itself) applies the
            # model's precompiled charsmap (NFKC for the released models) where the .model or
            # tokenizer.json has one, and NFC with whitespace folding where neither does; it
            # strips only on the right; "first" prepends "▁" to the first piece only.
            norms = [normalizers.Lowercase()] if flags["do_lower_case"] else []
            if charsmap:
                norms += [normalizers.Precompiled(charsmap),
                          normalizers.Strip(left=False, right=True),
                          normalizers.Replace(Regex(r" {2,}"), " ")]
            else:
                norms += [normalizers.Replace(Regex(r"\s{2,}|[\n\r\t]"), " "), normalizers.NFC(),
                          normalizers.Strip(left=False, right=True)]
            pre = [pre_tokenizers.Punctuation(behavior="isolated")] if flags["split_by_punct"] else []
            scheme = "always" if flags["add_prefix_space"] else "first"
            pre.append(_metaspace(scheme))
        else:
            norms = _quote_normalizers()
            # XLNetTokenizer strips accents even with keep_accents=True (transformers 5).
            if kind == "xlnet" or not flags["keep_accents"]:
                norms += [normalizers.NFKD(), normalizers.StripAccents()]
            if flags["do_lower_case"]:
                norms.append(normalizers.Lowercase())
            if charsmap:
                norms.append(normalizers.Precompiled(charsmap))
            scheme = "never" if kind == "albert" and not flags["add_prefix_space"] else "always"
            pre = [pre_tokenizers.WhitespaceSplit(), _metaspace(scheme)]
        tok.normalizer = normalizers.Sequence(norms)
        tok.pre_tokenizer = pre_tokenizers.Sequence(pre)
        tok.decoder = decoders.Metaspace(replacement=_SPIECE_UNDERLINE, prepend_scheme=scheme)

    if kind == "xlnet" and isinstance(roles["mask_token"], str):
        roles["mask_token"] = AddedToken(roles["mask_token"], lstrip=True, rstrip=False)
    _add_special_tokens(tok, added, roles, extras or [])

    def id_of(role):
        token = roles[role]
        i = None if token is None else tok.token_to_id(str(token))
        if i is None:
            raise ValueError(f"{role} {None if token is None else str(token)!r} is not in the "
                             f"vocabulary of {directory!r}")
        return i

    cls, sep = str(roles["cls_token"]), str(roles["sep_token"])
    if kind == "bpe":
        tok.post_processor = processors.RobertaProcessing(
            (sep, id_of("sep_token")), (cls, id_of("cls_token")),
            trim_offsets=bool(flags["trim_offsets"]), add_prefix_space=bool(flags["add_prefix_space"]))
    elif kind == "xlnet":
        tok.post_processor = processors.TemplateProcessing(
            single=f"$A:0 {sep}:0 {cls}:2", pair=f"$A:0 {sep}:0 $B:1 {sep}:1 {cls}:2",
            special_tokens=[(sep, id_of("sep_token")), (cls, id_of("cls_token"))])
    else:
        # AlbertTokenizer's template names its tokens "[CLS]" / "[SEP]" whatever they are.
        c, s = ("[CLS]", "[SEP]") if kind == "albert" else (cls, sep)
        tok.post_processor = processors.TemplateProcessing(
            single=f"{c}:0 $A:0 {s}:0", pair=f"{c}:0 $A:0 {s}:0 $B:1 {s}:1",
            special_tokens=[(c, id_of("cls_token")), (s, id_of("sep_token"))])

    save_config = {"tokenizer_class": conv.tokenizer_class, **flags}
    if kind in ("deberta", "xlnet"):
        save_config["unk_id"] = unk_id  # what these classes use when loading tokenizer.json
    if extras:
        save_config["extra_special_tokens"] = [str(t) for t in extras]
    model_file = None
    if model_path is not None:
        with open(model_path, "rb") as f:
            model_file = f.read()  # copied on save_pretrained: the .model is the source of truth
    settings = dict(
        specials={r: str(v) for r, v in roles.items() if v is not None},
        padding_side=cfg.get("padding_side", conv.padding_side),
        truncation_side=cfg.get("truncation_side", "right"),
        save_config=save_config, model_file=model_file)
    return tok, settings


class Tokenizer:
    """Thread-safe wrapper around a `tokenizers.Tokenizer` with a transformers-like call.

    Calls always return token_type_ids (all 0 for RoBERTa; 0 / 1, and 2 for XLNet's final
    <cls>), as transformers does with return_token_type_ids=True; it leaves them out by
    default for RoBERTa, ALBERT and XLNet. Padding goes on `padding_side` (left for XLNet).
    """

    def __init__(self, tok: tokenizers.Tokenizer, *, model_max_length=None, padding_side="right",
                 truncation_side="right", **special_tokens):
        unknown = set(special_tokens) - set(_ROLES)
        if unknown:
            raise TypeError(f"unknown special token roles {sorted(unknown)}; expected {_ROLES}")
        for name, side in (("padding_side", padding_side), ("truncation_side", truncation_side)):
            if side not in ("right", "left"):
                raise ValueError(f"{name} must be 'right' or 'left', got {side!r}")
        self._tok = _copy_tokenizer(tok)  # private copy, never mutated
        self._tok.no_truncation()
        self._tok.no_padding()
        self._specials = {r: t for r, t in special_tokens.items() if t is not None}
        self._model_max_length = model_max_length
        self._padding_side = padding_side
        self._truncation_side = truncation_side
        self._kind = None          # set by from_pretrained for the kinds in KINDS
        self._save_config = {}     # tokenizer_config.json entries that reproduce the pipeline
        self._model_file = None    # SentencePiece .model bytes, copied by save_pretrained
        self._truncating = {}
        self._lock = threading.Lock()

    @classmethod
    def from_tokenizer(cls, tok, *, model_max_length=None, padding_side="right",
                       truncation_side="right", **special_tokens):
        """Wrap a `tokenizers.Tokenizer`; BERT special tokens are assumed where they exist."""
        for role, default in _BERT_SPECIALS.items():
            if role not in special_tokens and tok.token_to_id(default) is not None:
                special_tokens[role] = default
        return cls(tok, model_max_length=model_max_length, padding_side=padding_side,
                   truncation_side=truncation_side, **special_tokens)

    @classmethod
    def from_pretrained(cls, path, *, kind=None, revision=None):
        """Load a tokenizer directory (or Hugging Face Hub id "org/name", fetched or read from
        the HF cache by flaxbert.hub.resolve at `revision`) as transformers' AutoTokenizer would.

        The pipeline follows `tokenizer_class` in tokenizer_config.json (else config.json's
        tokenizer_class / model_type): RobertaTokenizer, AlbertTokenizer, DebertaV2Tokenizer
        and XLNetTokenizer are rebuilt from their vocabulary files, anything else loads
        tokenizer.json as is or builds BERT WordPiece from vocab.txt. `kind` (one of KINDS:
        "wordpiece", "bpe", "albert", "deberta", "xlnet") overrides the config.
        """
        if isinstance(path, tokenizers.Tokenizer):
            return cls.from_tokenizer(path)
        directory = os.fspath(resolve(path, revision=revision))
        if not os.path.isdir(directory):
            raise FileNotFoundError(f"tokenizer directory {directory!r} does not exist")
        cfg = _read_config(directory)
        kind = _resolve_kind(directory, cfg, kind)

        def has(*names):
            return all(os.path.isfile(os.path.join(directory, f)) for f in names)

        if kind is None and has("vocab.json", "merges.txt") and not (
                has("tokenizer.json") or has("vocab.txt")):
            kind = "bpe"  # transformers needs a class name here; the files leave no doubt
        max_len = cfg.get("model_max_length")
        if not isinstance(max_len, int) or max_len > 10**12:
            max_len = None  # transformers writes ~1e30 for "no limit"
        if kind in _CONVENTIONS:
            tok, settings = _build_convention(directory, kind)
            self = cls(tok, model_max_length=max_len, padding_side=settings["padding_side"],
                       truncation_side=settings["truncation_side"], **settings["specials"])
            self._kind, self._save_config = kind, settings["save_config"]
            self._model_file = settings["model_file"]
            return self
        for files, build in _BUILDERS:
            if has(*files):
                specials = {r: cfg[r] for r in _ROLES if isinstance(cfg.get(r), str)}
                tok = build(directory, cfg)
                self = cls.from_tokenizer(tok, model_max_length=max_len, **specials,
                                          padding_side=cfg.get("padding_side", "right"),
                                          truncation_side=cfg.get("truncation_side", "right"))
                self._kind = "wordpiece" if isinstance(tok.model, WordPiece) else None
                return self
        spm = [f for f in _SPM_FILES if has(f)]
        if spm:
            named = cfg.get("tokenizer_class")
            why = (f"tokenizer_class {named!r} is not one flaxbert rebuilds" if isinstance(named, str)
                   else "nothing says which convention it follows")
            raise ValueError(f"{spm[0]} in {directory!r} is a SentencePiece model but {why}: set "
                             "tokenizer_class in tokenizer_config.json (AlbertTokenizer, "
                             "DebertaV2Tokenizer or XLNetTokenizer) or pass kind='albert', "
                             "'deberta' or 'xlnet'")
        wanted = " or ".join("+".join(files) for files, _ in _BUILDERS)
        raise FileNotFoundError(f"no usable tokenizer files in {directory!r}: looked for {wanted}, "
                                f"vocab.json+merges.txt or {' / '.join(_SPM_FILES)}")

    # ---- vocabulary ---------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    @property
    def model_max_length(self):
        return self._model_max_length

    @property
    def backend_tokenizer(self) -> tokenizers.Tokenizer:
        """A copy of the `tokenizers` pipeline (no truncation / padding set)."""
        return _copy_tokenizer(self._tok)

    @property
    def kind(self):
        """One of KINDS, or None for a tokenizer.json loaded as it is."""
        return self._kind

    @property
    def padding_side(self) -> str:
        return self._padding_side

    @property
    def truncation_side(self) -> str:
        return self._truncation_side

    def _special_id(self, role):
        token = self._specials.get(role)
        return None if token is None else self._tok.token_to_id(token)

    pad_token_id = property(lambda self: self._special_id("pad_token"))
    bos_token_id = property(lambda self: self._special_id("bos_token"))
    eos_token_id = property(lambda self: self._special_id("eos_token"))
    cls_token_id = property(lambda self: self._special_id("cls_token"))
    sep_token_id = property(lambda self: self._special_id("sep_token"))
    mask_token_id = property(lambda self: self._special_id("mask_token"))
    unk_token_id = property(lambda self: self._special_id("unk_token"))

    def convert_tokens_to_ids(self, tokens):
        if isinstance(tokens, str):
            i = self._tok.token_to_id(tokens)
            return self.unk_token_id if i is None else i
        return [self.convert_tokens_to_ids(t) for t in tokens]

    def convert_ids_to_tokens(self, ids):
        if isinstance(ids, (int, np.integer)):
            return self._tok.id_to_token(int(ids))
        return [self._tok.id_to_token(int(i)) for i in ids]

    def tokenize(self, text: str) -> list[str]:
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        try:
            return self._tok.encode(text, add_special_tokens=False).tokens
        except TypeError:
            _refuse_surrogates("text", [text], single=True)
            raise

    def decode(self, ids, skip_special_tokens=True) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def batch_decode(self, batch, skip_special_tokens=True) -> list[str]:
        return self._tok.decode_batch([[int(i) for i in ids] for ids in batch],
                                      skip_special_tokens=skip_special_tokens)

    # ---- encoding -----------------------------------------------------------------------
    def _truncating_tokenizer(self, strategy, max_length):
        # One copy per truncation setting, never mutated after creation: no call can change
        # a tokenizer another thread is encoding with, so encoding itself needs no lock.
        key = (strategy, max_length)
        with self._lock:
            if key not in self._truncating:
                if len(self._truncating) >= _MAX_CACHED_CONFIGS:
                    self._truncating.clear()  # bounded memory; a rebuild costs ~40 ms
                tok = _copy_tokenizer(self._tok)
                tok.enable_truncation(max_length, strategy=strategy, direction=self._truncation_side)
                self._truncating[key] = tok
            return self._truncating[key]

    def __call__(self, text, text_pair=None, *, max_length=None, truncation=False, padding=False,
                 pad_to_multiple_of=None, return_tensors="np", add_special_tokens=True):
        if text_pair is None and _is_pair_batch(text):  # [(text, text_pair), ...], as transformers
            text, text_pair = [t for t, _ in text], [p for _, p in text]
        single = isinstance(text, str)
        texts = _as_str_list(text, "text")
        pairs = None if text_pair is None else _as_str_list(text_pair, "text_pair")
        if pairs is not None and (single != isinstance(text_pair, str) or len(pairs) != len(texts)):
            raise ValueError(f"text and text_pair must have the same shape; got {len(texts)} "
                             f"text(s) and {len(pairs)} text_pair(s)")
        if return_tensors not in ("np", "jax", None):
            raise ValueError(f"return_tensors must be 'np', 'jax' or None, got {return_tensors!r}")
        strategy = _lookup(_TRUNCATIONS, truncation, "truncation")
        pad_mode = _lookup(_PADDINGS, padding, "padding")
        for name, v in (("max_length", max_length), ("pad_to_multiple_of", pad_to_multiple_of)):
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v <= 0):
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if pad_mode and self.pad_token_id is None:
            raise ValueError("padding requested but this tokenizer has no pad token")

        # Like transformers: truncation / padding='max_length' without max_length use model_max_length.
        length = max_length if max_length is not None else self._model_max_length
        if (strategy or pad_mode == "max_length") and length is None:
            raise ValueError(f"truncation={truncation!r} / padding={padding!r} needs max_length "
                             "(this tokenizer has no model_max_length)")
        if strategy:
            n_special = (self._tok.post_processor.num_special_tokens_to_add(pairs is not None)
                         if add_special_tokens and self._tok.post_processor else 0)
            if length <= n_special:
                raise ValueError(f"max_length={length} leaves no room for text next to the "
                                 f"{n_special} special tokens")
            if strategy == "only_second" and pairs is None:
                raise ValueError("truncation='only_second' needs text_pair")
            if pad_mode and pad_to_multiple_of and length % pad_to_multiple_of:
                raise ValueError(f"truncation length ({length}) is not a multiple of "
                                 f"pad_to_multiple_of ({pad_to_multiple_of})")
        tok = self._truncating_tokenizer(strategy, length) if strategy else self._tok
        inputs = texts if pairs is None else list(zip(texts, pairs))
        try:
            # _fast skips character offsets, which we never return (~10% quicker).
            encs = tok.encode_batch_fast(inputs, add_special_tokens=add_special_tokens)
        except Exception as e:
            if type(e) is Exception:  # how the Rust side reports e.g. truncation errors
                raise ValueError(f"tokenization failed: {e}") from e
            if isinstance(e, TypeError):
                _refuse_surrogates("text", texts, single)
                _refuse_surrogates("text_pair", pairs or [], single)
            raise

        # Padding is done here rather than in Rust: fetching only the real tokens from the
        # Encoding objects and scattering them with a mask is the cheapest route to numpy.
        ids, types = [e.ids for e in encs], [e.type_ids for e in encs]
        lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
        target = int(lengths.max())
        if pad_mode == "max_length":
            target = length  # rows already longer stay longer, as in transformers
        if pad_mode and pad_to_multiple_of:
            target = -(-target // pad_to_multiple_of) * pad_to_multiple_of
        names = ("input_ids", "token_type_ids", "attention_mask")
        left = self._padding_side == "left"  # XLNet pads on the left
        if return_tensors is None:
            def pad(row, v):
                fill = [v] * (target - len(row)) if pad_mode else []
                return fill + row if left else row + fill

            cols = ([pad(r, self.pad_token_id) for r in ids], [pad(r, 0) for r in types],
                    [pad([1] * len(r), 0) for r in ids])
            return Encoding((n, c[0] if single else c) for n, c in zip(names, cols))
        ragged = (lengths > target).any() if pad_mode else (lengths != lengths[0]).any()
        if ragged:
            raise ValueError(f"sequences have lengths {lengths.min()}..{lengths.max()}, cannot stack "
                             "them; pass padding=True (or truncation=True with padding='max_length'), "
                             "or return_tensors=None for lists")
        shape = (len(ids), target if pad_mode else int(lengths[0]))
        if left:
            mask = np.arange(shape[1]) >= (shape[1] - lengths)[:, None]
        else:
            mask = np.arange(shape[1]) < lengths[:, None]

        def scatter(rows, fill):
            arr = np.full(shape, fill, dtype=np.int32)
            arr[mask] = np.fromiter(itertools.chain.from_iterable(rows), np.int32, int(lengths.sum()))
            return arr

        # token_type_ids pad with 0 for every class, XLNet included: its v4 pad type id 3 is
        # reset to 0 by transformers 5's base class.
        arrays = (scatter(ids, self.pad_token_id), scatter(types, 0), mask.astype(np.int32))
        if return_tensors == "jax":
            import jax.numpy as jnp  # only here: the tokenizer itself needs no jax
            arrays = tuple(jnp.asarray(a) for a in arrays)
        return Encoding((n, a[0] if single else a) for n, a in zip(names, arrays))

    # ---- saving -------------------------------------------------------------------------
    def save_pretrained(self, directory, *, overwrite=False):
        """Write the directory atomically: tokenizer.json, tokenizer_config.json and the
        vocabulary files transformers also reads (vocab.txt for WordPiece, vocab.json +
        merges.txt for byte-level BPE, the .model file for SentencePiece)."""
        with atomic_directory(directory, overwrite) as tmp:
            self._write(str(tmp))

    def _write(self, out):
        self._tok.save(os.path.join(out, "tokenizer.json"))
        model = json.loads(self._tok.to_str())
        if self._kind in _CONVENTIONS:
            cfg = {**self._save_config, **self._specials, "padding_side": self._padding_side}
            # The added tokens with their flags, as transformers 4 saved them: without this a
            # reload from the vocabulary files alone (no tokenizer.json) loses e.g. an lstrip
            # <mask>, since transformers then re-adds special tokens with default flags.
            cfg["added_tokens_decoder"] = {
                str(i): {f: getattr(t, f) for f in _ADDED_TOKEN_FIELDS}
                for i, t in sorted(self._tok.get_added_tokens_decoder().items())}
            if model["model"]["type"] == "BPE":
                self._tok.model.save(out)  # vocab.json + merges.txt
            if self._model_file is not None:
                with open(os.path.join(out, _CONVENTIONS[self._kind].model_files[0]), "wb") as f:
                    f.write(self._model_file)
            self._write_config(out, cfg)
            return
        cfg = {"tokenizer_class": "PreTrainedTokenizerFast", **self._specials}
        if self._padding_side != "right":
            cfg["padding_side"] = self._padding_side
        if model["model"]["type"] == "WordPiece":
            cfg["tokenizer_class"] = "BertTokenizer"
            vocab = self._tok.get_vocab(with_added_tokens=False)
            by_id = sorted(vocab, key=vocab.get)
            if [vocab[t] for t in by_id] == list(range(len(by_id))):  # only a gap-free vocab round-trips
                with open(os.path.join(out, "vocab.txt"), "w", encoding="utf-8") as f:
                    f.writelines(t + "\n" for t in by_id)
        norm = model.get("normalizer") or {}
        if norm.get("type") == "BertNormalizer":
            cfg.update(do_lower_case=norm["lowercase"], strip_accents=norm["strip_accents"],
                       tokenize_chinese_chars=norm["handle_chinese_chars"])
        self._write_config(out, cfg)

    def _write_config(self, out, cfg):
        if self._truncation_side != "right":
            cfg["truncation_side"] = self._truncation_side
        if self._model_max_length is not None:
            cfg["model_max_length"] = self._model_max_length
        with open(os.path.join(out, "tokenizer_config.json"), "w", encoding="utf-8") as f:
            json.dump(cfg, f, indent=2, ensure_ascii=False)


def _copy_tokenizer(tok):
    """An independent copy of `tok` that encodes exactly like it.

    Copies go through JSON, and the `tokenizers` JSON reader can land 1 ulp off on floats
    (a few percent of Unigram scores), which may change a segmentation. The serialized text
    itself is exact, so the Unigram model is rebuilt from Python's exact parse of it.
    """
    text = tok.to_str()
    copy = tokenizers.Tokenizer.from_str(text)
    model = json.loads(text)["model"]
    if model.get("type") == "Unigram":
        copy.model = Unigram([tuple(v) for v in model["vocab"]], unk_id=model["unk_id"],
                             byte_fallback=model.get("byte_fallback", False))
    return copy


_SURROGATE = re.compile("[\ud800-\udfff]")


def _refuse_surrogates(name, texts, single):
    """Raise a ValueError at the first lone surrogate (text that is not Unicode, e.g. decoded
    with errors="surrogateescape"); tokenizers' own error for one is a TypeError saying the
    input "must be str", which it is."""
    for i, text in enumerate(texts):
        found = _SURROGATE.search(text)
        if found:
            raise ValueError(f"{name if single else f'{name}[{i}]'} holds a lone surrogate "
                             f"{found.group()!r} at position {found.start()}, which is not valid "
                             f"Unicode; fix or re-decode the text") from None


def _is_pair_batch(x):
    """Whether `x` is a list of (text, text_pair) tuples (its first item says; every item must
    then be a pair)."""
    if isinstance(x, str) or not isinstance(x, Sequence) or not x or not isinstance(
            x[0], (tuple, list)):
        return False
    for i, item in enumerate(x):
        if not isinstance(item, (tuple, list)) or len(item) != 2:
            raise ValueError(f"text[{i}] must be a (text, text_pair) pair like text[0], got "
                             f"{item!r:.80}")
    return True


def _as_str_list(x, name):
    if isinstance(x, str):
        return [x]
    if not isinstance(x, Sequence) or isinstance(x, (bytes, bytearray)):
        raise TypeError(f"{name} must be a str or a list of str, got {type(x).__name__}")
    if not x:
        raise ValueError(f"{name} is an empty list")
    for i, s in enumerate(x):
        if not isinstance(s, str):
            raise TypeError(f"{name}[{i}] must be a str, got {type(s).__name__}")
    return list(x)


def _lookup(table, value, name):
    if value is False or value is None:
        return None
    try:
        return table[value]
    except (KeyError, TypeError):
        raise ValueError(f"unknown {name} strategy {value!r}; expected one of "
                         f"{[False] + list(table)}") from None
