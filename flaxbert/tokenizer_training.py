"""Train a tokenizer vocabulary from text files: `train_tokenizer` and `flaxbert train-tokenizer`.

Three kinds, each written as the directory its transformers class expects, so that both
`flaxbert.Tokenizer.from_pretrained` and `transformers.AutoTokenizer.from_pretrained` load
it with identical ids:

* ``wordpiece``: BERT WordPiece (`tokenizers` WordPieceTrainer) -> vocab.txt, BertTokenizer.
* ``bpe``: RoBERTa byte-level BPE (`tokenizers` BpeTrainer) -> vocab.json + merges.txt,
  RobertaTokenizer.
* ``sentencepiece``: a Unigram model from the `sentencepiece` trainer (the format ALBERT,
  DeBERTa-v2/v3 and XLNet ship), with the special pieces at the ids of the original
  checkpoints of the chosen ``style``: ``albert`` (spiece.model), ``deberta`` (spm.model)
  or ``xlnet`` (spiece.model).

The trainer's files are loaded back through `Tokenizer.from_pretrained` and written with
`save_pretrained`, so the output also has the tokenizer.json transformers reads first, and
is put in place atomically.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil

import sentencepiece as spm
import tokenizers
from tokenizers import Regex, normalizers, pre_tokenizers, trainers
from tokenizers.models import BPE, WordPiece

from flaxbert.io import atomic_directory
from flaxbert.tokenizer import Tokenizer

TRAIN_KINDS = ("wordpiece", "bpe", "sentencepiece")
STYLES = ("albert", "deberta", "xlnet")

# Special tokens in id order, starting at 0.
_WORDPIECE_SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
_BPE_SPECIALS = ("<s>", "<pad>", "</s>", "<unk>", "<mask>")  # roberta-base's first four ids
# sentencepiece trainer options putting the special pieces where the released checkpoints
# have them (ALBERT: <pad> <unk> [CLS] [SEP] [MASK]; DeBERTa-v3: [PAD] [CLS] [SEP] [UNK];
# XLNet: <unk> <s> </s> <cls> <sep> <pad> <mask> <eod> <eop>).
_SPM_LAYOUTS = {
    "albert": dict(pad_id=0, pad_piece="<pad>", unk_id=1, unk_piece="<unk>", bos_id=-1, eos_id=-1,
                   control_symbols=["[CLS]", "[SEP]", "[MASK]"]),
    "deberta": dict(pad_id=0, pad_piece="[PAD]", bos_id=1, bos_piece="[CLS]", eos_id=2,
                    eos_piece="[SEP]", unk_id=3, unk_piece="[UNK]", control_symbols=["[MASK]"]),
    "xlnet": dict(unk_id=0, unk_piece="<unk>", bos_id=1, bos_piece="<s>", eos_id=2, eos_piece="</s>",
                  pad_id=-1, control_symbols=["<cls>", "<sep>", "<pad>", "<mask>", "<eod>", "<eop>"]),
}
_SPM_CLASSES = {"albert": ("AlbertTokenizer", "spiece.model"),
                "deberta": ("DebertaV2Tokenizer", "spm.model"),
                "xlnet": ("XLNetTokenizer", "spiece.model")}
_DEFAULT_LOWERCASE = {"wordpiece": True, "bpe": False, "albert": True, "deberta": False, "xlnet": False}


def train_tokenizer(files, output_dir, kind, vocab_size, *, style=None, lowercase=None,
                    min_frequency=2, character_coverage=None, overwrite=False) -> Tokenizer:
    """Train a vocabulary of about `vocab_size` tokens on `files` and write it to `output_dir`.

    kind: "wordpiece", "bpe" or "sentencepiece" (then `style` "albert", "deberta" or
    "xlnet" picks the special tokens, file name and tokenizer_class).
    lowercase: default True for wordpiece and ALBERT, False otherwise; byte-level BPE
    cannot lowercase (transformers' RobertaTokenizer has no normalizer to record it in).
    min_frequency: minimum pair / word count for wordpiece and bpe merges (the Unigram
    trainer has no such setting and ignores it).
    character_coverage: sentencepiece only; the trainer's default (0.9995) if None.
    The trainers stop early on small corpora, so the vocabulary can come out smaller; a
    byte-level BPE vocabulary always holds the 256 byte symbols.

    Returns the trained tokenizer as loaded back from `output_dir`.
    """
    if kind not in TRAIN_KINDS:
        raise ValueError(f"unknown tokenizer kind {kind!r}; expected one of {list(TRAIN_KINDS)}")
    if kind == "sentencepiece":
        if style not in STYLES:
            raise ValueError(f"kind='sentencepiece' needs style= one of {list(STYLES)}, got {style!r}")
    elif style is not None:
        raise ValueError(f"style={style!r} only applies to kind='sentencepiece'")
    elif character_coverage is not None:
        raise ValueError("character_coverage only applies to kind='sentencepiece'")
    convention = style or kind
    lowercase = _DEFAULT_LOWERCASE[convention] if lowercase is None else lowercase
    if not isinstance(lowercase, bool):
        raise TypeError(f"lowercase must be a bool or None, got {lowercase!r}")
    if kind == "bpe" and lowercase:
        raise ValueError("kind='bpe' cannot lowercase: transformers' RobertaTokenizer has no "
                         "normalizer, so a lower-casing tokenizer would not load back the same")
    n_special = _n_special(kind, style)
    for name, value, low in (("vocab_size", vocab_size, n_special + 1), ("min_frequency", min_frequency, 0)):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    if character_coverage is not None and not 0 < character_coverage <= 1:
        raise ValueError(f"character_coverage must be in (0, 1], got {character_coverage!r}")
    files = _check_files(files)
    # Trained inside the destination's temporary, so nothing is left elsewhere, and an
    # existing destination is refused before training, not after.
    with atomic_directory(output_dir, overwrite) as tmp:
        staging = os.path.join(tmp, "trainer-output")
        os.mkdir(staging)
        if kind == "wordpiece":
            _train_wordpiece(files, staging, vocab_size, lowercase, min_frequency)
        elif kind == "bpe":
            _train_bpe(files, staging, vocab_size, min_frequency)
        else:
            _train_sentencepiece(files, staging, style, vocab_size, lowercase, character_coverage)
        tok = Tokenizer.from_pretrained(staging)
        shutil.rmtree(staging)
        tok.save_pretrained(tmp)
    return Tokenizer.from_pretrained(output_dir)


def _n_special(kind, style):
    if kind == "wordpiece":
        return len(_WORDPIECE_SPECIALS)
    if kind == "bpe":
        return len(_BPE_SPECIALS)
    layout = _SPM_LAYOUTS[style]
    meta = sum(layout.get(f"{p}_id", -1) >= 0 for p in ("unk", "bos", "eos", "pad"))
    return meta + len(layout["control_symbols"])


def _check_files(files):
    if isinstance(files, (str, os.PathLike)):
        files = [files]
    files = [os.fspath(f) for f in files]
    if not files:
        raise ValueError("no training files given")
    for f in files:
        if not os.path.isfile(f):
            raise FileNotFoundError(f"training file {f!r} does not exist or is not a file")
    if not any(line.strip() for line in _lines(files)):
        raise ValueError(f"the training files ({', '.join(files)}) contain no text")
    return files


def _lines(files, normalize=None):
    for path in files:
        try:
            with open(path, encoding="utf-8") as f:
                for line in f:
                    line = line.rstrip("\n")
                    yield normalize(line) if normalize else line
        except UnicodeDecodeError as e:
            raise ValueError(f"training file {path!r} is not UTF-8 text: {e}") from e


def _write_config(directory, cfg):
    with open(os.path.join(directory, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(cfg, f, indent=2, ensure_ascii=False)


def _train(tok, files, trainer):
    # Through Python lines rather than tok.train(files): one reader (UTF-8 checked) for all kinds.
    tok.train_from_iterator(_lines(files), trainer)


def _train_wordpiece(files, out, vocab_size, lowercase, min_frequency):
    tok = tokenizers.Tokenizer(WordPiece(unk_token="[UNK]"))
    # The normalizer transformers' BertTokenizer applies for these flags, so the vocabulary
    # is learnt on the text it will see.
    tok.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True,
                                                strip_accents=None, lowercase=lowercase)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    _train(tok, files, trainers.WordPieceTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=list(_WORDPIECE_SPECIALS),
        continuing_subword_prefix="##", show_progress=False))
    vocab = tok.get_vocab()
    with open(os.path.join(out, "vocab.txt"), "w", encoding="utf-8") as f:
        f.writelines(t + "\n" for t in sorted(vocab, key=vocab.get))
    _write_config(out, {"tokenizer_class": "BertTokenizer", "do_lower_case": lowercase,
                        **dict(zip(("pad_token", "unk_token", "cls_token", "sep_token", "mask_token"),
                                   _WORDPIECE_SPECIALS))})


def _train_bpe(files, out, vocab_size, min_frequency):
    tok = tokenizers.Tokenizer(BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    _train(tok, files, trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=list(_BPE_SPECIALS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    tok.model.save(out)  # vocab.json + merges.txt
    bos, pad, eos, unk, mask = _BPE_SPECIALS
    _write_config(out, {
        "tokenizer_class": "RobertaTokenizer", "add_prefix_space": False, "trim_offsets": True,
        "bos_token": bos, "eos_token": eos, "sep_token": eos, "cls_token": bos, "unk_token": unk,
        "pad_token": pad,
        # As in roberta-base: <mask> swallows the space before it ("is <mask>." -> one token
        # for the mask, no stray "Ġ"), which matches how masked positions are made in training.
        "mask_token": {"__type": "AddedToken", "content": mask, "lstrip": True, "rstrip": False,
                       "normalized": False, "single_word": False, "special": True}})


def _spm_prenormalizer(style, lowercase):
    """The tokenizer's normalizer up to (not including) the model's own charsmap.

    The sentencepiece trainer applies its charsmap (NFKC) itself; the steps transformers
    runs before it (accent stripping, lower-casing, quote mapping) must be applied to the
    training text by hand, or the vocabulary would be learnt on text the tokenizer never
    produces. Mirrors flaxbert.tokenizer._build_convention.
    """
    if style == "deberta":
        steps = [normalizers.Lowercase()] if lowercase else []
        steps += [normalizers.Replace(Regex(r"\s{2,}|[\n\r\t]"), " "), normalizers.NFC(),
                  normalizers.Strip(left=False, right=True)]
    else:
        steps = [normalizers.Replace("``", '"'), normalizers.Replace("''", '"'), normalizers.NFKD(),
                 normalizers.StripAccents()]
        if lowercase:
            steps.append(normalizers.Lowercase())
    return normalizers.Sequence(steps).normalize_str


def _train_sentencepiece(files, out, style, vocab_size, lowercase, character_coverage):
    options = dict(_SPM_LAYOUTS[style], model_type="unigram", vocab_size=vocab_size,
                   # A small corpus may not support vocab_size pieces: stop short, not fail.
                   hard_vocab_limit=False, byte_fallback=False,  # transformers sets byte_fallback=False
                   max_sentence_length=1 << 16, num_threads=os.cpu_count() or 1, minloglevel=2)
    if style == "deberta":
        # DebertaV2Tokenizer ignores the model's charsmap, so train on un-NFKC'd text too.
        options["normalization_rule_name"] = "identity"
    if character_coverage is not None:
        options["character_coverage"] = character_coverage
    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=_lines(files, _spm_prenormalizer(style, lowercase)),
            model_writer=model, **options)
    except RuntimeError as e:  # e.g. vocab_size below the number of distinct characters
        raise ValueError(f"sentencepiece training failed: {e}") from e
    cls, name = _SPM_CLASSES[style]
    with open(os.path.join(out, name), "wb") as f:
        f.write(model.getvalue())
    cfg = {"tokenizer_class": cls, "do_lower_case": lowercase}
    if style == "albert":
        cfg["keep_accents"] = False
    _write_config(out, cfg)


# ---- command line -------------------------------------------------------------------------
def _run(args) -> None:
    tok = train_tokenizer(args.files, args.out, args.kind, args.vocab_size, style=args.style,
                          lowercase=args.lowercase, min_frequency=args.min_frequency,
                          overwrite=args.overwrite)
    print(f"wrote {tok.kind} tokenizer ({tok.vocab_size:,} tokens) to {args.out}")


def add_train_tokenizer_parser(subparsers):
    """Register `flaxbert train-tokenizer` on an argparse subparsers object."""
    p = subparsers.add_parser(
        "train-tokenizer", help="train a WordPiece, byte-level BPE or SentencePiece vocabulary",
        description="Train a tokenizer on UTF-8 text FILEs (one or more sentences per line) and "
                    "write a directory that flaxbert and transformers' AutoTokenizer both load "
                    "with identical ids. OUT is written atomically.")
    p.add_argument("files", nargs="+", metavar="FILE", help="UTF-8 training text")
    p.add_argument("--out", required=True, help="output directory (must not exist unless --overwrite)")
    p.add_argument("--kind", required=True, choices=TRAIN_KINDS,
                   help="wordpiece (BERT), bpe (RoBERTa byte-level) or sentencepiece (Unigram)")
    p.add_argument("--vocab-size", type=int, required=True, help="target vocabulary size")
    p.add_argument("--style", choices=STYLES,
                   help="sentencepiece only, required there: whose special tokens and files to use")
    p.add_argument("--lowercase", action=argparse.BooleanOptionalAction, default=None,
                   help="lower-case text (default: yes for wordpiece and albert, no otherwise)")
    p.add_argument("--min-frequency", type=int, default=2,
                   help="wordpiece / bpe: minimum count of a merge (default 2)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
    p.set_defaults(run=_run)
    return p
