"""Long inputs for classification and token tasks: sliding windows with a stride, and the
numpy post-processing that turns window outputs back into one answer per document.

    windows = split_into_windows(features, max_length=128, stride=32, prefix=1, suffix=1)
    ...run the model on every window...
    document_logits = pool_window_logits(window_logits, windows.layout.document,
                                         windows.layout.num_documents, "max")
    token_logits = document_token_logits(window_token_logits, windows.layout)

A document's content tokens (its encoding without the special tokens) are cut into pieces of
`max_length - prefix - suffix` tokens, consecutive pieces sharing `stride` tokens, as
transformers' fast tokenizers cut them (`truncation=True, stride=..., return_overflowing_tokens=
True`); every window keeps the document's own special tokens (`prefix` of them first, `suffix`
last: 1 and 1 for BERT's [CLS] ... [SEP], 0 and 2 for XLNet's ... <sep> <cls>).

Classification pools the windows' logits per document (mean, max, or the first window's); token
tasks take each token's logits from the window where that token is most central (furthest from
the window's edges, the earlier window on a tie), so each token is read with the most context on
both sides.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

POOLING = ("mean", "max", "first")
LONG_INPUTS = ("truncate", "windows", "chunks")


def window_spans(content_length: int, window: int, stride: int) -> list[tuple[int, int]]:
    """[start, end) of each window over `content_length` tokens: `window` tokens each (the last
    may be shorter), consecutive windows sharing `stride` tokens. An empty document is one
    empty window."""
    if isinstance(window, bool) or not isinstance(window, (int, np.integer)) or window < 1:
        raise ValueError(f"window={window!r} must be a positive int (tokens per window, "
                         "special tokens aside)")
    if isinstance(stride, bool) or not isinstance(stride, (int, np.integer)) or \
            not 0 <= stride < window:
        raise ValueError(f"stride={stride!r} must be an int in [0, {window}): the tokens two "
                         f"consecutive windows of {window} share")
    spans = [(0, min(window, content_length))]
    while spans[-1][1] < content_length:
        start = spans[-1][0] + window - stride
        spans.append((start, min(start + window, content_length)))
    return spans


@dataclass(frozen=True)
class WindowLayout:
    """Where each window sits: its document, the first content token it holds (`start`,
    counted in the document's content, specials aside) and how many (`length`); the special
    tokens around every window and each document's full length (specials included)."""

    document: np.ndarray  # (windows,) int
    start: np.ndarray  # (windows,) int
    length: np.ndarray  # (windows,) int
    prefix: int
    suffix: int
    document_lengths: np.ndarray  # (documents,) int

    @property
    def num_documents(self) -> int:
        return len(self.document_lengths)

    def window_length(self, w: int) -> int:
        """Tokens in window `w`, special tokens included."""
        return self.prefix + int(self.length[w]) + self.suffix


class Windows(Sequence):
    """The window features (what flaxbert.tasks.batching batches) with their `layout` and the
    whole `documents` they were cut from (evaluation scores those)."""

    def __init__(self, features: list[dict], layout: WindowLayout, documents: Sequence[Mapping]):
        self.features, self.layout, self.documents = features, layout, documents

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, i):
        return self.features[i]


def special_layout(tokenizer) -> tuple[int, int]:
    """(prefix, suffix): how many special tokens the tokenizer puts before and after a single
    text, read from the special-tokens mask of an encoded word."""
    backend = tokenizer.backend_tokenizer if hasattr(tokenizer, "backend_tokenizer") \
        else tokenizer
    mask = np.asarray(backend.encode("hello").special_tokens_mask, bool)
    if mask.all():
        raise ValueError("the tokenizer encodes a word as special tokens only; cannot tell "
                         "where a window's text goes")
    first, last = np.flatnonzero(~mask)[[0, -1]]
    if mask[first:last + 1].any():
        raise ValueError("the tokenizer puts special tokens inside a single text; windows "
                         "cannot be cut from it")
    return int(first), int(len(mask) - 1 - last)


def split_into_windows(features: Sequence[Mapping], *, max_length: int, stride: int,
                       prefix: int, suffix: int) -> Windows:
    """Windows of at most `max_length` tokens (specials included) from whole-document
    features of single texts or word lists (flaxbert.tasks.features with no truncation; a
    text pair's middle specials would be cut, so callers refuse pairs). Per-token arrays (input_ids,
    token_type_ids, labels, word_ids) are cut, the specials' entries kept on every window;
    anything else (a document's label) is copied to each of its windows. A document that fits
    is one window, equal to it."""
    content = max_length - prefix - suffix
    if content < 1:
        raise ValueError(f"max_length={max_length} leaves no room for text next to the "
                         f"{prefix + suffix} special tokens")
    windows, document, starts, lengths, totals = [], [], [], [], []
    for d, feature in enumerate(features):
        if isinstance(feature["input_ids"], tuple):
            raise ValueError(f"feature {d}: windows take single texts or word lists, not "
                             "multiple-choice features")
        total = len(feature["input_ids"])
        if total < prefix + suffix:
            raise ValueError(f"feature {d}: {total} tokens, fewer than the {prefix + suffix} "
                             "special tokens of a window")
        per_token = [k for k, v in feature.items() if np.ndim(v) == 1 and len(v) == total]
        body = total - prefix - suffix
        totals.append(total)
        for start, end in window_spans(body, content, stride):
            window = dict(feature)
            for key in per_token:
                values = np.asarray(feature[key])
                window[key] = np.concatenate([values[:prefix], values[prefix + start:
                                                                      prefix + end],
                                              values[total - suffix:]])
            windows.append(window)
            document.append(d)
            starts.append(start)
            lengths.append(end - start)
    layout = WindowLayout(np.asarray(document, np.int64), np.asarray(starts, np.int64),
                          np.asarray(lengths, np.int64), int(prefix), int(suffix),
                          np.asarray(totals, np.int64))
    return Windows(windows, layout, features)


def pool_window_logits(logits: np.ndarray, document: np.ndarray, num_documents: int,
                       mode: str) -> np.ndarray:
    """(windows, classes) logits -> (documents, classes): the mean or the max over each
    document's windows, or its first window's (`document` must list a document's windows in
    order, as split_into_windows does). Every document needs at least one window."""
    if mode not in POOLING:
        raise ValueError(f"window_pooling={mode!r}; choose one of {POOLING}")
    logits, document = np.asarray(logits, np.float32), np.asarray(document)
    if len(logits) != len(document):
        raise ValueError(f"{len(logits)} window logits but {len(document)} window documents")
    counts = np.bincount(document, minlength=num_documents)
    if (counts == 0).any():
        raise ValueError(f"document {int(np.flatnonzero(counts == 0)[0])} has no window")
    out = np.zeros((num_documents,) + logits.shape[1:], np.float32)
    if mode == "mean":
        np.add.at(out, document, logits)
        return out / counts.reshape((-1,) + (1,) * (logits.ndim - 1))
    if mode == "max":
        out[:] = -np.inf
        np.maximum.at(out, document, logits)
        return out
    first = np.unique(document, return_index=True)[1]  # the first row of each document
    return logits[first]


def central_windows(layout: WindowLayout) -> list[np.ndarray]:
    """Per document, for each of its content tokens, the window where the token is most
    central: the largest distance to that window's nearer edge, the earlier window on a tie."""
    best = [np.full(total - layout.prefix - layout.suffix, -1, np.int64)
            for total in layout.document_lengths]
    margin = [np.full(len(b), -1, np.int64) for b in best]
    for w, (d, start, length) in enumerate(zip(layout.document, layout.start, layout.length)):
        inside = np.arange(length)
        distance = np.minimum(inside, length - 1 - inside)
        span = slice(start, start + length)
        better = distance > margin[d][span]
        best[d][span] = np.where(better, w, best[d][span])
        margin[d][span] = np.where(better, distance, margin[d][span])
    return best


def document_token_logits(window_logits: Sequence[np.ndarray], layout: WindowLayout
                          ) -> list[np.ndarray]:
    """Per-window token logits (each (window tokens, classes), unpadded) -> per document
    (document tokens, classes): each content token from its most central window, the leading
    specials from the document's first window and the trailing ones from its last."""
    if len(window_logits) != len(layout.document):
        raise ValueError(f"{len(window_logits)} window outputs but {len(layout.document)} "
                         "windows")
    for w, logits in enumerate(window_logits):
        if len(logits) != layout.window_length(w):
            raise ValueError(f"window {w}: {len(logits)} token outputs for "
                             f"{layout.window_length(w)} tokens")
    p, s = layout.prefix, layout.suffix
    out = []
    for d, chosen in enumerate(central_windows(layout)):
        mine = np.flatnonzero(layout.document == d)
        first, last = window_logits[mine[0]], window_logits[mine[-1]]
        body = np.zeros((len(chosen),) + first.shape[1:], np.float32)
        for w in np.unique(chosen):
            where = np.flatnonzero(chosen == w)
            body[where] = window_logits[w][p + where - layout.start[w]]
        out.append(np.concatenate([first[:p], body, last[len(last) - s:]]).astype(np.float32))
    return out
