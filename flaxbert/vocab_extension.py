"""Domain words for a trained checkpoint: `flaxbert extend-vocab` and `extend_vocabulary`.

The third route to a domain model beside continued pre-training (BioBERT) and a new vocabulary
trained from scratch (SciBERT; see configs/domain_adapt.py): keep the checkpoint and its
tokenizer, add the domain's words as whole tokens, and grow the token embedding table, the tied
MLM decoder and its bias to match. Each new row starts as the mean of the rows of the sub-words
the OLD tokenizer spelled the word with, a common choice when vocabularies are extended (a
row drawn at random starts as noise the MLM loss must first undo, while the mean already
stands roughly for what the word's pieces meant together).

What grows is found by the logical axis name "vocab" every parameter carries, so the same code
covers each family's embedding table and MLM head (bias included) without naming them.

Tokenizers: a WordPiece vocabulary (BERT, DistilBERT, ELECTRA) gets the words appended to
vocab.txt / tokenizer.json's WordPiece vocabulary, so they are ordinary whole-word entries that
WordPiece's longest-match picks first. Byte-level BPE and SentencePiece tokenizers have merge
rules or scores that a plain entry would not reach; for them the command refuses with one line.
(`tokenizers` added tokens would reach them, but they match before pre-tokenization, so each
convention's word-start mark, Ġ or ▁, and the space before the word would need handling of its
own; that is not done here.)

Old token ids never change: the new words take the ids after the old tokenizer's last one, and
every row an old id reads is copied bit for bit. A table with more rows than the tokenizer has
ids (one padded to a round size) lends its unreachable rows to the first new words, then grows.
"""
from __future__ import annotations

import collections
import json
import logging
import os
import tempfile
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


def _read_words(path: Path, normalize, pre_tokenize) -> list[str]:
    """The words of a --words file (one a line; blank lines and '#' comments skipped), each
    normalized as the tokenizer normalizes text; a line that is not one word is refused."""
    from flaxbert.io import read_text
    words = []
    for number, line in enumerate(read_text(path).splitlines(), 1):
        word = line.strip()
        if not word or word.startswith("#"):
            continue
        pieces = pre_tokenize(normalize(word))
        if len(pieces) != 1:
            raise ValueError(f"{path}:{number}: {word!r} is {len(pieces)} words to this tokenizer "
                             f"({' '.join(pieces)}); a vocabulary entry must be one word")
        words.append(pieces[0])
    return words


def _corpus_candidates(path: Path, normalize, pre_tokenize, spell, top: int) -> list[str]:
    """The `top` words of a corpus whose whole-word tokens would save the most tokens:
    ranked by count x (pieces - 1), alphabetic words only (numbers and codes rarely recur)."""
    from flaxbert.io import read_text
    counts = collections.Counter()
    for line in read_text(path).splitlines():
        counts.update(w for w in pre_tokenize(normalize(line)) if w.isalpha())
    saved = {}
    for word, count in counts.items():
        pieces = len(spell(word))
        if pieces > 1:
            saved[word] = count * (pieces - 1)
    return sorted(saved, key=lambda w: (-saved[w], w))[:top]


def _vocab_axes(model) -> dict:
    """{flattened parameter path: index of its "vocab" axis} for every parameter that has one."""
    import flax.linen as nn
    import jax
    from flax import traverse_util
    boxed = jax.eval_shape(lambda: model.init(jax.random.key(0), **model.dummy_inputs()))
    flat = traverse_util.flatten_dict(boxed["params"], is_leaf=lambda _, v: isinstance(
        v, nn.meta.AxisMetadata))
    return {path: tuple(leaf.names).index("vocab") for path, leaf in flat.items()
            if isinstance(leaf, nn.meta.AxisMetadata) and "vocab" in tuple(leaf.names or ())}


def grow_vocabulary(params: dict, axes: dict, spellings: list[list[int]], first_id: int) -> dict:
    """`params` with new token k at id first_id + k along each vocab axis in `axes`, its slice the
    mean of the slices of spellings[k] (old ids). Slices of ids below first_id stay as they are;
    a table with rows past first_id keeps them unless a new token takes them over."""
    from flax import traverse_util
    flat = traverse_util.flatten_dict(params)
    size = first_id + len(spellings)
    for path, axis in axes.items():
        table = np.asarray(flat[path])
        rows = max(table.shape[axis], size)
        pad = [(0, 0)] * table.ndim
        pad[axis] = (0, rows - table.shape[axis])
        grown = np.pad(table, pad)
        for k, ids in enumerate(spellings):
            mean = np.take(table, ids, axis=axis).astype(np.float64).mean(axis=axis)
            index = [slice(None)] * table.ndim
            index[axis] = first_id + k
            grown[tuple(index)] = mean.astype(table.dtype)
        flat[path] = grown
    return traverse_util.unflatten_dict(flat)


def _wordpiece_files(src: Path, scratch: Path, words: list[str], first_id: int) -> list[Path]:
    """vocab.txt and / or tokenizer.json of `src` with `words` appended at first_id, ..."""
    written = []
    if (src / "vocab.txt").is_file():
        # Read as transformers' load_vocab reads it (strip only "\n"), so old lines keep their ids.
        with open(src / "vocab.txt", encoding="utf-8") as f:
            lines = [line.rstrip("\n") for line in f.readlines()]
        if len(lines) != first_id:
            raise ValueError(f"{src / 'vocab.txt'}: {len(lines)} lines but the tokenizer has "
                             f"{first_id} ids; cannot append words without moving old ids")
        (scratch / "vocab.txt").write_text("".join(t + "\n" for t in lines + words),
                                           encoding="utf-8")
        written.append(scratch / "vocab.txt")
    if (src / "tokenizer.json").is_file():
        from flaxbert.io import read_json
        data = read_json(src / "tokenizer.json")
        vocab = data["model"]["vocab"]
        if max(vocab.values()) + 1 != first_id:
            raise ValueError(f"{src / 'tokenizer.json'}: model.vocab ends at id "
                             f"{max(vocab.values())}, not {first_id - 1}; cannot append words "
                             "without moving old ids")
        vocab.update({w: first_id + k for k, w in enumerate(words)})
        (scratch / "tokenizer.json").write_text(json.dumps(data, ensure_ascii=False, indent=2),
                                                encoding="utf-8")
        written.append(scratch / "tokenizer.json")
    return written


def extend_vocabulary(src_dir: str | os.PathLike, dst_dir: str | os.PathLike, *,
                      words: list[str] | None = None, words_file: str | os.PathLike | None = None,
                      corpus: str | os.PathLike | None = None, top: int | None = None,
                      overwrite: bool = False) -> dict:
    """Write `src_dir` (a checkpoint with a WordPiece tokenizer) to `dst_dir` as a transformers
    directory whose tokenizer knows the new words as single tokens and whose embedding table
    and MLM decoder grew to match (see the module docstring).

    The words come from `words`, from `words_file` (one a line), or from the `top` words of
    `corpus` that the old tokenizer splits most (count x extra pieces). `top` caps the words
    from any source. Words the tokenizer already has are skipped. Returns a summary: the words
    added, their new ids, the old spellings and the table sizes. `dst_dir` is written
    atomically; an existing one is refused unless overwrite=True.
    """
    import flaxbert
    from flaxbert.hub import resolve
    from flaxbert.io import check_destination
    from flaxbert.tokenizer import TOKENIZER_FILES, Tokenizer

    sources = [s for s in (words, words_file, corpus) if s is not None]
    if len(sources) != 1:
        raise ValueError("give exactly one of words, words_file (--words) and corpus (--corpus)")
    if corpus is not None and top is None:
        raise ValueError("corpus (--corpus) needs top (--top N): how many words to add")
    if top is not None and (isinstance(top, bool) or not isinstance(top, int) or top < 1):
        raise ValueError(f"top (--top) must be an int >= 1, got {top!r}")
    check_destination(dst_dir, overwrite)  # before the load: refuse early, not after
    src = resolve(src_dir)
    tokenizer = Tokenizer.from_pretrained(src)
    if tokenizer.kind != "wordpiece":
        raise ValueError(f"{src}: extend-vocab adds whole-word entries to a WordPiece vocabulary "
                         f"(BERT, DistilBERT, ELECTRA); this tokenizer is "
                         f"{tokenizer.kind or 'a tokenizer.json of another model'}, whose merges "
                         "or scores would not reach plain entries")
    backend = tokenizer.backend_tokenizer
    normalize = backend.normalizer.normalize_str if backend.normalizer else (lambda s: s)
    pre_tokenize = (lambda s: [w for w, _ in backend.pre_tokenizer.pre_tokenize_str(s)]) \
        if backend.pre_tokenizer else str.split

    def spell(word):
        return backend.encode(word, add_special_tokens=False).ids

    if words_file is not None:
        candidates = _read_words(Path(words_file), normalize, pre_tokenize)
    elif corpus is not None:
        candidates = _corpus_candidates(Path(corpus), normalize, pre_tokenize, spell, top)
    else:
        candidates = []
        for word in words:
            pieces = pre_tokenize(normalize(word))
            if len(pieces) != 1:
                raise ValueError(f"words: {word!r} is {len(pieces)} words to this tokenizer; a "
                                 "vocabulary entry must be one word")
            candidates.append(pieces[0])
    vocab = backend.get_vocab(with_added_tokens=True)
    new_words, skipped = [], []
    for word in dict.fromkeys(candidates):  # first occurrence wins, order kept
        (skipped if word in vocab else new_words).append(word)
    if top is not None:
        new_words = new_words[:top]
    if skipped:
        log.warning("%d words are already in the vocabulary and were skipped: %s", len(skipped),
                    " ".join(skipped[:20]) + (" ..." if len(skipped) > 20 else ""))
    if not new_words:
        raise ValueError(f"{src}: no new words to add (all {len(skipped)} are already tokens)")

    model, params = flaxbert.from_pretrained(src)
    first_id = tokenizer.vocab_size
    old_rows = model.config.vocab_size
    if first_id > old_rows:
        raise ValueError(f"{src}: the tokenizer has {first_id} ids but the model only "
                         f"{old_rows} embedding rows")
    spellings = [spell(w) for w in new_words]
    axes = _vocab_axes(model)
    if not axes:
        raise ValueError(f"{src}: {type(model.config).__name__} has no parameter with a vocab "
                         "axis to grow")
    params = grow_vocabulary(params, axes, spellings, first_id)
    new_rows = max(old_rows, first_id + len(new_words))
    model = model.clone(config=model.config.replace(vocab_size=new_rows))

    with tempfile.TemporaryDirectory() as scratch:
        rewritten = _wordpiece_files(src, Path(scratch), new_words, first_id)
        names = {f.name for f in rewritten}
        extra = [src / n for n in TOKENIZER_FILES if (src / n).is_file() and n not in names]
        flaxbert.save_pretrained(dst_dir, model, params, format="hf", overwrite=overwrite,
                                 extra_files=extra + rewritten)
    return {"words": new_words, "ids": list(range(first_id, first_id + len(new_words))),
            "spellings": spellings, "skipped": skipped, "old_rows": old_rows,
            "new_rows": new_rows, "grown": ["/".join(p) for p in axes]}


def _run(args) -> None:
    summary = extend_vocabulary(args.checkpoint, args.out, words_file=args.words,
                                corpus=args.corpus, top=args.top, overwrite=args.overwrite)
    n = len(summary["words"])
    shown = " ".join(summary["words"][:10]) + (" ..." if n > 10 else "")
    print(f"wrote {args.out}: {n} words added as ids {summary['ids'][0]}..{summary['ids'][-1]} "
          f"({shown}); {', '.join(summary['grown'])} grew from {summary['old_rows']} to "
          f"{summary['new_rows']} rows, each new row the mean of its old sub-words")


def add_extend_vocab_parser(subparsers):
    """Register `flaxbert extend-vocab` on an argparse subparsers object."""
    p = subparsers.add_parser(
        "extend-vocab", help="add domain words to a checkpoint's WordPiece vocabulary and grow "
                             "its embeddings (new rows: the mean of the old sub-words)",
        description="Write CHECKPOINT_DIR to --out as a transformers directory whose tokenizer "
                    "has the new words as single tokens (old ids unchanged) and whose token "
                    "embeddings, tied MLM decoder and bias grew to match, each new row the mean "
                    "of the rows of the sub-words the old tokenizer spelled the word with. "
                    "WordPiece tokenizers only (BPE / SentencePiece are refused). --out is "
                    "written atomically.")
    p.add_argument("checkpoint", metavar="CHECKPOINT_DIR",
                   help="a transformers or flaxbert directory with its tokenizer files")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--words", metavar="FILE", help="the words to add, one a line")
    source.add_argument("--corpus", metavar="FILE",
                        help="in-domain text: add the --top words the tokenizer splits most "
                             "(count x extra pieces)")
    p.add_argument("--top", type=int, default=None, metavar="N",
                   help="how many words to add (required with --corpus; caps --words)")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="output directory (must not exist unless --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.set_defaults(run=_run)
    return p
