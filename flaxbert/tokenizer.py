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
import shutil
import tempfile
import threading
from collections.abc import Sequence

import numpy as np
import tokenizers
from tokenizers import AddedToken, Regex, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import BPE, Unigram, WordPiece

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
        return tokenizers.Tokenizer.from_file(path)
    except Exception as e:
        raise ValueError(f"cannot load {path}: {e}") from e


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


# Tried in order; a new kind (byte-level BPE: vocab.json + merges.txt, SentencePiece:
# spm.model) is one more (required files, builder) entry.
_BUILDERS = (
    (("tokenizer.json",), _build_from_tokenizer_json),
    (("vocab.txt",), _build_wordpiece),
)


class Tokenizer:
    """Thread-safe wrapper around a `tokenizers.Tokenizer` with a transformers-like call."""

    def __init__(self, tok: tokenizers.Tokenizer, *, model_max_length=None, **special_tokens):
        unknown = set(special_tokens) - set(_ROLES)
        if unknown:
            raise TypeError(f"unknown special token roles {sorted(unknown)}; expected {_ROLES}")
        self._tok = tokenizers.Tokenizer.from_str(tok.to_str())  # private copy, never mutated
        self._tok.no_truncation()
        self._tok.no_padding()
        self._specials = {r: t for r, t in special_tokens.items() if t is not None}
        self._model_max_length = model_max_length
        self._truncating = {}
        self._lock = threading.Lock()

    @classmethod
    def from_tokenizer(cls, tok, *, model_max_length=None, **special_tokens):
        """Wrap a `tokenizers.Tokenizer`; BERT special tokens are assumed where they exist."""
        for role, default in _BERT_SPECIALS.items():
            if role not in special_tokens and tok.token_to_id(default) is not None:
                special_tokens[role] = default
        return cls(tok, model_max_length=model_max_length, **special_tokens)

    @classmethod
    def from_pretrained(cls, path):
        if isinstance(path, tokenizers.Tokenizer):
            return cls.from_tokenizer(path)
        directory = os.fspath(path)
        if not os.path.isdir(directory):
            raise FileNotFoundError(f"tokenizer directory {directory!r} does not exist")
        cfg = _read_config(directory)
        for files, build in _BUILDERS:
            if all(os.path.isfile(os.path.join(directory, f)) for f in files):
                specials = {r: cfg[r] for r in _ROLES if isinstance(cfg.get(r), str)}
                max_len = cfg.get("model_max_length")
                if not isinstance(max_len, int) or max_len > 10**12:
                    max_len = None  # transformers writes ~1e30 for "no limit"
                return cls.from_tokenizer(build(directory, cfg), model_max_length=max_len, **specials)
        wanted = " or ".join("+".join(files) for files, _ in _BUILDERS)
        raise FileNotFoundError(f"no usable tokenizer files in {directory!r}: looked for {wanted}")

    # ---- vocabulary ---------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    @property
    def model_max_length(self):
        return self._model_max_length

    def _special_id(self, role):
        token = self._specials.get(role)
        return None if token is None else self._tok.token_to_id(token)

    pad_token_id = property(lambda self: self._special_id("pad_token"))
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
        return self._tok.encode(text, add_special_tokens=False).tokens

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
                tok = tokenizers.Tokenizer.from_str(self._tok.to_str())
                tok.enable_truncation(max_length, strategy=strategy)
                self._truncating[key] = tok
            return self._truncating[key]

    def __call__(self, text, text_pair=None, *, max_length=None, truncation=False, padding=False,
                 pad_to_multiple_of=None, return_tensors="np", add_special_tokens=True):
        single = isinstance(text, str)
        texts = _as_str_list(text, "text")
        pairs = None if text_pair is None else _as_str_list(text_pair, "text_pair")
        if pairs is not None and (single != isinstance(text_pair, str) or len(pairs) != len(texts)):
            raise ValueError(f"text and text_pair must have the same shape; got {len(texts)} "
                             f"text(s) and {len(pairs)} text_pair(s)")
        if return_tensors not in ("np", None):
            raise ValueError(f"return_tensors must be 'np' or None, got {return_tensors!r}")
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
        if return_tensors is None:
            pad = (lambda row, v: row + [v] * (target - len(row))) if pad_mode else (lambda row, v: row)
            cols = ([pad(r, self.pad_token_id) for r in ids], [pad(r, 0) for r in types],
                    [pad([1] * len(r), 0) for r in ids])
            return Encoding((n, c[0] if single else c) for n, c in zip(names, cols))
        ragged = (lengths > target).any() if pad_mode else (lengths != lengths[0]).any()
        if ragged:
            raise ValueError(f"sequences have lengths {lengths.min()}..{lengths.max()}, cannot stack "
                             "them; pass padding=True (or truncation=True with padding='max_length'), "
                             "or return_tensors=None for lists")
        shape = (len(ids), target if pad_mode else int(lengths[0]))
        mask = np.arange(shape[1]) < lengths[:, None]

        def scatter(rows, fill):
            arr = np.full(shape, fill, dtype=np.int32)
            arr[mask] = np.fromiter(itertools.chain.from_iterable(rows), np.int32, int(lengths.sum()))
            return arr

        arrays = (scatter(ids, self.pad_token_id), scatter(types, 0), mask.astype(np.int32))
        return Encoding((n, a[0] if single else a) for n, a in zip(names, arrays))

    # ---- saving -------------------------------------------------------------------------
    def save_pretrained(self, directory, *, overwrite=False):
        """Write tokenizer.json (+ vocab.txt for WordPiece) and tokenizer_config.json atomically."""
        dest = os.path.abspath(os.fspath(directory))
        if os.path.exists(dest) and not (os.path.isdir(dest) and not os.listdir(dest)) and not overwrite:
            raise FileExistsError(f"{dest} already exists and is not empty; pass overwrite=True")
        parent = os.path.dirname(dest)
        os.makedirs(parent, exist_ok=True)
        tmp = tempfile.mkdtemp(dir=parent, prefix=f".{os.path.basename(dest)}.tmp-")
        try:
            self._write(tmp)
            if not os.path.lexists(dest):
                os.rename(tmp, dest)
                return
            # Move the old one aside first so a failed swap can put it back.
            old = tempfile.mkdtemp(dir=parent, prefix=f".{os.path.basename(dest)}.old-")
            os.rename(dest, os.path.join(old, "x"))
            try:
                os.rename(tmp, dest)
            except BaseException:
                os.rename(os.path.join(old, "x"), dest)
                os.rmdir(old)
                raise
            shutil.rmtree(old)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def _write(self, out):
        self._tok.save(os.path.join(out, "tokenizer.json"))
        model = json.loads(self._tok.to_str())
        cfg = {"tokenizer_class": "PreTrainedTokenizerFast", **self._specials}
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
        if self._model_max_length is not None:
            cfg["model_max_length"] = self._model_max_length
        with open(os.path.join(out, "tokenizer_config.json"), "w", encoding="utf-8") as f:
            json.dump(cfg, f, indent=2, ensure_ascii=False)


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
