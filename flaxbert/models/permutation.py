"""XLNet's permutation-language-modelling inputs, built in the input pipeline (pure NumPy).

A batch of token ids becomes what XLNetLMHeadModel trains on: `perm_mask` (batch, length, length;
1 where token i may not attend to token j), `target_mapping` (batch, num_predict, length; one-hot
rows, the positions predicted), `labels` (batch, num_predict; -100 where nothing is predicted) and
the input ids. Two ways of choosing what to predict:

- `span_plm_batch`: transformers' DataCollatorForPermutationLanguageModeling. Spans of 1 to
  max_span_length tokens, one per context of span_length / plm_probability tokens, are predicted;
  their ids become <mask>; the factorisation order permutes the two halves of the sequence alike
  (so half a segment can be reused as memory without leaking), hence an even length.
- `partial_prediction_batch`: the paper's partial prediction. Sample a factorisation order and
  predict its last 1/K tokens (K=6 in the paper, the same budget as plm_probability=1/6).

Both are deterministic for a seed: `rng` is an int seed or a numpy Generator (anything with
`integers(low, high)` and `permutation(n)` works, which is how the tests replay transformers'
own random draws). Shapes depend only on the batch shape and the arguments (static under jit).
"""
from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np

IGNORE = -100  # the label transformers' losses skip


def _generator(rng):
    return np.random.default_rng(rng) if rng is None or isinstance(rng, (int, np.integer)) else rng


def _check_ids(input_ids) -> np.ndarray:
    ids = np.asarray(input_ids)
    if ids.ndim != 2:
        raise ValueError(f"input_ids must be (batch, length), got shape {ids.shape}")
    if not np.issubdtype(ids.dtype, np.integer):
        raise TypeError(f"input_ids must be integers, got dtype {ids.dtype}")
    return ids


def span_mask(length: int, rng, plm_probability: float = 1 / 6,
              max_span_length: int = 5) -> np.ndarray:
    """(length,) bool: transformers' span masking. Repeatedly draw a span length s in
    [1, max_span_length], reserve a context of int(s / plm_probability) tokens and mask s
    consecutive tokens at a random offset inside it, until the sequence is covered."""
    if not 0 < plm_probability <= 1:
        raise ValueError(f"plm_probability={plm_probability} must be in (0, 1]")
    if max_span_length < 1:
        raise ValueError(f"max_span_length={max_span_length} must be >= 1")
    masked = np.zeros(length, bool)
    cur = 0
    while cur < length:
        span = int(rng.integers(1, max_span_length + 1))
        context = int(span / plm_probability)
        start = cur + int(rng.integers(0, context - span + 1))
        masked[start:start + span] = True
        cur += context
    return masked


def factorisation_order(length: int, rng, perm_size: int | None = None) -> np.ndarray:
    """(length,) int: each token's place in a sampled factorisation order. The sequence is cut
    into length / perm_size chunks permuted alike, so chunk c holds places [c * perm_size,
    (c + 1) * perm_size) (XLNet's _local_perm; perm_size=length is one free permutation)."""
    perm_size = length if perm_size is None else perm_size
    if perm_size < 1 or length % perm_size:
        raise ValueError(f"perm_size={perm_size} must divide the length {length}")
    chunks = np.arange(length).reshape(-1, perm_size).T  # (perm_size, chunks)
    return chunks[np.asarray(rng.permutation(perm_size))].T.reshape(-1)


def permutation_mask(order: np.ndarray, targets: np.ndarray,
                     functional: np.ndarray | None = None) -> np.ndarray:
    """(length, length) float32, 1 where token i may not attend to token j: j is a target and
    does not come before i in the order (so no target sees itself; the model still lets the
    content stream see its own token). Other tokens are context: everyone sees them and they see
    no target. transformers gives `functional` tokens (special, padding) their place in the order
    instead, so they see earlier targets; that leaks nothing only because its targets' ids are
    replaced by <mask>. Leave `functional` None for the leak-free rule."""
    rank = np.where(targets | (False if functional is None else functional), order, -1)
    return ((rank[:, None] <= rank[None, :]) & targets[None, :]).astype(np.float32)


def _assemble(ids, targets, orders, functional, mask_token_id, num_predict) -> dict:
    batch, length = ids.shape
    perm_mask = np.stack([permutation_mask(o, t, f) for o, t, f in zip(orders, targets, functional)])
    inputs = ids.copy() if mask_token_id is None else np.where(targets, mask_token_id, ids)
    if num_predict is None:  # transformers: predict at every position, labels -100 elsewhere
        target_mapping = np.broadcast_to(np.eye(length, dtype=np.float32), (batch, length, length))
        labels = np.where(targets, ids, IGNORE)
    else:  # compact: row p of target_mapping names the p-th target (by position), then zeros
        target_mapping = np.zeros((batch, num_predict, length), np.float32)
        labels = np.full((batch, num_predict), IGNORE, ids.dtype)
        for b in range(batch):
            where = np.flatnonzero(targets[b])
            target_mapping[b, np.arange(len(where)), where] = 1.0
            labels[b, :len(where)] = ids[b, where]
    return {"input_ids": inputs.astype(np.int64), "perm_mask": perm_mask,
            "target_mapping": target_mapping.copy(), "labels": labels.astype(np.int64)}


def _functional(ids, special_ids, pad_token_id) -> np.ndarray:
    functional = np.isin(ids, np.asarray(list(special_ids), dtype=ids.dtype))
    return functional | (ids == pad_token_id) if pad_token_id is not None else functional


def _check_num_predict(num_predict):
    if num_predict is not None and num_predict < 1:
        raise ValueError(f"num_predict={num_predict} must be >= 1 (or None: one row a position)")


def span_plm_batch(input_ids, rng=None, *, mask_token_id: int, special_ids: Iterable[int] = (),
                   pad_token_id: int | None = None, plm_probability: float = 1 / 6,
                   max_span_length: int = 5, num_predict: int | None = None) -> dict:
    """transformers' DataCollatorForPermutationLanguageModeling on a (batch, length) id array, as
    numpy: {"input_ids", "perm_mask", "target_mapping", "labels"}. Special and padding tokens are
    never predicted. With num_predict=None target_mapping is the identity (transformers); with an
    int it is compact, (batch, num_predict, length), and a row with more targets keeps the first
    num_predict (the rest become ordinary context: unmasked, visible, unpredicted)."""
    ids = _check_ids(input_ids)
    batch, length = ids.shape
    if length % 2:
        raise ValueError(f"span_plm_batch needs an even length (the order permutes two halves "
                         f"alike, so that half a segment can be memory without leaking); got "
                         f"{length}")
    _check_num_predict(num_predict)
    rng = _generator(rng)
    functional = _functional(ids, special_ids, pad_token_id)
    targets = np.stack([span_mask(length, rng, plm_probability, max_span_length)
                        for _ in range(batch)]) & ~functional
    if num_predict is not None:
        targets &= np.cumsum(targets, axis=1) <= num_predict
    orders = [factorisation_order(length, rng, length // 2) for _ in range(batch)]
    return _assemble(ids, targets, orders, functional, mask_token_id, num_predict)


def partial_prediction_batch(input_ids, rng=None, *, K: float = 6, special_ids: Iterable[int] = (),
                             pad_token_id: int | None = None, perm_size: int | None = None,
                             num_predict: int | None = None,
                             mask_token_id: int | None = None) -> dict:
    """The paper's partial prediction: sample a factorisation order of each row and predict the
    last ceil(n / K) of its n ordinary tokens (special and padding tokens are context). The
    content stream keeps the real ids (mask_token_id=None, as in the paper); the leak-free mask
    keeps each target from seeing itself or later targets, directly or through other tokens.
    num_predict defaults to ceil(length / K), the most a row can have, so shapes are static."""
    ids = _check_ids(input_ids)
    batch, length = ids.shape
    if not K >= 1:
        raise ValueError(f"K={K} must be >= 1 (K=1 predicts every token)")
    num_predict = math.ceil(length / K) if num_predict is None else num_predict
    _check_num_predict(num_predict)
    rng = _generator(rng)
    functional = _functional(ids, special_ids, pad_token_id)
    orders = [factorisation_order(length, rng, perm_size) for _ in range(batch)]
    targets = np.zeros((batch, length), bool)
    for b in range(batch):
        candidates = np.flatnonzero(~functional[b])
        count = min(math.ceil(len(candidates) / K), num_predict)
        last = np.argsort(orders[b][candidates])[len(candidates) - count:]
        targets[b, candidates[last]] = True
    return _assemble(ids, targets, orders, [None] * batch, mask_token_id, num_predict)
