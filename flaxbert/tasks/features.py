"""Examples -> model features: tokenized texts, pairs, word lists and choices with their labels.

Each function returns one feature per example, a dict of unpadded numpy arrays that
flaxbert.tasks.batching pads and batches: `input_ids`, `token_type_ids` (for multiple choice,
tuples of one array per choice) and `labels` (a scalar id / float, or per token).

Texts longer than `max_length` tokens (specials included) are cut as transformers'
`truncation=True` cuts them (longest first for pairs), with one warning saying how many
were cut; `overflow="error"` refuses the first one instead, naming its file and line.

Token classification follows transformers' run_ner: words are tokenized as pre-split words
(`is_split_into_words`; byte-level BPE with a prefix space before every word, as run_ner
loads RoBERTa with add_prefix_space=True), the first sub-word of a word carries its label and
the rest, like special tokens, get -100 (IGNORE_INDEX); with label_all_subwords every sub-word
carries it, B- tags continuing as I-. `word_ids` (-1 off words) maps tokens back to words.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np
import tokenizers

from flaxbert.tasks.labels import IGNORE_INDEX, LabelMap

log = logging.getLogger(__name__)
OVERFLOW = ("truncate", "error")


def _backend(tokenizer, words: bool = False) -> tokenizers.Tokenizer:
    """A private copy of the tokenizer's pipeline (callers set truncation on it)."""
    backend = tokenizer.backend_tokenizer
    if words and isinstance(backend.pre_tokenizer, tokenizers.pre_tokenizers.ByteLevel):
        # Without a prefix space the words after the first would be spelt as if glued to the
        # previous one ("Ġ" missing), unlike the same words inside a sentence.
        backend.pre_tokenizer.add_prefix_space = True
    return backend


def _encode(tokenizer, inputs: list, examples: Sequence[Mapping], max_length: int,
            overflow: str, words: bool = False) -> list[tokenizers.Encoding]:
    """Encodings of `inputs` (texts, pairs or word lists), the long ones truncated or refused."""
    if overflow not in OVERFLOW:
        raise ValueError(f"overflow={overflow!r}; choose one of {OVERFLOW}")
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length <= 0:
        raise ValueError(f"max_length must be a positive int, got {max_length!r}")
    backend = _backend(tokenizer, words)
    # word_ids need the full encoding; texts need no offsets (the fast call skips them).
    encode = backend.encode_batch if words else backend.encode_batch_fast
    encodings = encode(inputs, is_pretokenized=words)
    long = [i for i, e in enumerate(encodings) if len(e.ids) > max_length]
    if not long:
        return encodings
    lengths = [len(encodings[i].ids) for i in long]
    if overflow == "error":
        raise ValueError(f"{examples[long[0]].get('origin', f'example {long[0]}')}: "
                         f"{lengths[0]} tokens, more than max_length={max_length} (shorten it, "
                         f"or let long texts be truncated)")
    specials = backend.post_processor.num_special_tokens_to_add(isinstance(inputs[0], tuple)) \
        if backend.post_processor else 0
    if max_length <= specials:
        raise ValueError(f"max_length={max_length} leaves no room for text next to the "
                         f"{specials} special tokens")
    backend.enable_truncation(max_length, strategy="longest_first",
                              direction=tokenizer.truncation_side)
    for i, encoding in zip(long, encode([inputs[i] for i in long], is_pretokenized=words)):
        encodings[i] = encoding
    source = str(examples[long[0]].get("origin", "the input")).rsplit(":", 1)[0]
    log.warning("%d of %d examples (from %s) had more than max_length=%d tokens (up to %d) "
                "and were truncated", len(long), len(inputs), source, max_length, max(lengths))
    return encodings


def _ids(encoding) -> dict[str, np.ndarray]:
    return {"input_ids": np.asarray(encoding.ids, np.int32),
            "token_type_ids": np.asarray(encoding.type_ids, np.int32)}


def _check_examples(examples: Sequence[Mapping], keys: Sequence[str]) -> None:
    if not len(examples):
        raise ValueError("no examples to encode")
    for i, example in enumerate(examples):
        missing = [k for k in keys if k not in example]
        if missing:
            raise ValueError(f"{example.get('origin', f'example {i}')}: the example has no "
                             f"{missing[0]!r} (keys: {sorted(example)})")


def encode_sequences(examples: Sequence[Mapping], tokenizer, label_map: LabelMap | None = None,
                     *, max_length: int, overflow: str = "truncate") -> list[dict]:
    """Single texts or text pairs (examples with "text_pair") -> features; with a label map,
    each feature's `labels` is its example's id (a float32 value for regression)."""
    _check_examples(examples, ["text"])
    pairs = "text_pair" in examples[0]
    _check_examples(examples, ["text_pair"] if pairs else [])
    inputs = [(e["text"], e["text_pair"]) if pairs else e["text"] for e in examples]
    encodings = _encode(tokenizer, inputs, examples, max_length, overflow)
    features = []
    for example, encoding in zip(examples, encodings):
        feature = _ids(encoding)
        if label_map is not None:
            _check_examples([example], ["label"])
            value = label_map.encode(example["label"], example.get("origin", "?"))
            feature["labels"] = np.float32(value) if label_map.regression else np.int32(value)
        features.append(feature)
    return features


def align_labels(word_ids: Sequence[int | None], word_labels: Sequence[int] | None,
                 label_all_subwords: bool = False,
                 inside_ids: np.ndarray | None = None) -> np.ndarray:
    """Per-token label ids from per-word ones, as run_ner aligns them: the first sub-word of
    each word gets the word's label, other sub-words IGNORE_INDEX (or, with
    label_all_subwords, the label mapped through `inside_ids`, B- -> I-), specials
    (word id None) IGNORE_INDEX."""
    out = np.full(len(word_ids), IGNORE_INDEX, np.int32)
    previous = None
    for t, word in enumerate(word_ids):
        if word is not None:
            label = word_labels[word]
            if word != previous:
                out[t] = label
            elif label_all_subwords:
                out[t] = label if inside_ids is None else inside_ids[label]
        previous = word
    return out


def encode_words(examples: Sequence[Mapping], tokenizer, label_map: LabelMap | None = None, *,
                 max_length: int, overflow: str = "truncate",
                 label_all_subwords: bool = False) -> list[dict]:
    """Word lists ({"words", "tags"?}) -> features with `word_ids` (-1 on specials) and, with
    a label map, per-token `labels` aligned as `align_labels` says."""
    _check_examples(examples, ["words"])
    for i, example in enumerate(examples):
        if not example["words"]:
            raise ValueError(f"{example.get('origin', f'example {i}')}: the example has no words")
    encodings = _encode(tokenizer, [list(e["words"]) for e in examples], examples, max_length,
                        overflow, words=True)
    inside = label_map.inside_ids() if label_map is not None else None
    features = []
    for example, encoding in zip(examples, encodings):
        feature = _ids(encoding)
        feature["word_ids"] = np.array([-1 if w is None else w for w in encoding.word_ids],
                                       np.int32)
        if label_map is not None:
            _check_examples([example], ["tags"])
            origin = example.get("origin", "?")
            word_labels = [label_map.encode(tag, origin) for tag in example["tags"]]
            feature["labels"] = align_labels(encoding.word_ids, word_labels,
                                             label_all_subwords, inside)
        features.append(feature)
    return features


def encode_choices(examples: Sequence[Mapping], tokenizer, *, max_length: int,
                   overflow: str = "truncate", with_labels: bool = True) -> list[dict]:
    """Multiple choice ({"text", "choices", "label"?}) -> features whose `input_ids` and
    `token_type_ids` are tuples of one (text, choice) pair each; `labels` is the index of
    the right choice (the label must be 0 .. len(choices) - 1)."""
    _check_examples(examples, ["text", "choices"] + (["label"] if with_labels else []))
    counts = {len(e["choices"]) for e in examples}
    if len(counts) != 1:
        raise ValueError(f"examples have different numbers of choices: {sorted(counts)}")
    (count,) = counts
    inputs = [(e["text"], choice) for e in examples for choice in e["choices"]]
    rows = [e for e in examples for _ in range(count)]  # the example of each input, for errors
    encodings = _encode(tokenizer, inputs, rows, max_length, overflow)
    features = []
    for n, example in enumerate(examples):
        choices = [_ids(e) for e in encodings[n * count:(n + 1) * count]]
        feature = {k: tuple(c[k] for c in choices) for k in ("input_ids", "token_type_ids")}
        if with_labels:
            label = str(example["label"])
            if not label.isdigit() or int(label) >= count:
                raise ValueError(f"{example.get('origin', f'example {n}')}: label {label!r} is "
                                 f"not a choice index 0..{count - 1}")
            feature["labels"] = np.int32(int(label))
        features.append(feature)
    return features
