"""Masked-LM inputs made in-graph: BERT's 80/10/10 masking, whole words, ALBERT n-grams.

`mask_batch` works on a whole padded batch with vectorized TensorFlow ops and stateless
random numbers, so a batch's masks depend only on its ids and its seed. Tokens are grouped
into masking units (a token, a whole word, or an n-gram of whole words); each unit gets a
random priority and units are taken in priority order while the running token count stays
within the row's budget, min(P, max(1, round(n * mlm_probability))) for n non-special tokens.
Special tokens and padding are never chosen. Each chosen token becomes the mask token with
probability mask_token_prob, a uniformly random non-special token with random_token_prob, and
stays as it is otherwise.

Words are read off the vocabulary (`MaskingTables.from_tokenizer`): a token continues the
word before it if it is a WordPiece ``##`` piece, a SentencePiece piece without ``▁``, or a
byte-level BPE token without ``Ġ``; pure punctuation always starts a word (as in ALBERT).
"""
from __future__ import annotations

import dataclasses
import unicodedata

import numpy as np

from flaxbert.data.prepare import check_fraction, check_int, tokenizer_info
from flaxbert.tokenizer import Tokenizer

# The mark a token carries when it starts a word (SentencePiece, byte-level BPE), or when it
# continues one (WordPiece), by tokenizer kind.
_WORD_START_MARK = {"albert": "▁", "deberta": "▁", "xlnet": "▁", "bpe": "Ġ"}
_CONTINUATION_MARK = {"wordpiece": "##"}


@dataclasses.dataclass(frozen=True)
class MaskingConfig:
    """How to choose and corrupt masked-LM predictions.

    max_predictions_per_seq (P): predictions per row, padded to P; None means
    max(1, round(mlm_probability * max_seq_length)), which the budget never exceeds.
    whole_word: mask words whole. max_ngram > 1: mask n-grams of whole words, n in
    1..max_ngram with p(n) proportional to 1/n (ALBERT uses 3).
    """
    mlm_probability: float = 0.15
    mask_token_prob: float = 0.8
    random_token_prob: float = 0.1
    max_predictions_per_seq: int | None = None
    whole_word: bool = False
    max_ngram: int = 1

    def __post_init__(self):
        for name in ("mlm_probability", "mask_token_prob", "random_token_prob"):
            check_fraction(f"MaskingConfig.{name}", getattr(self, name))
        if self.mlm_probability == 0:
            raise ValueError("MaskingConfig.mlm_probability must be > 0 (use masking=None for "
                             "no masked-LM targets)")
        if self.mask_token_prob + self.random_token_prob > 1 + 1e-9:
            raise ValueError(f"MaskingConfig.mask_token_prob + random_token_prob must be <= 1, got "
                             f"{self.mask_token_prob} + {self.random_token_prob}")
        if self.max_predictions_per_seq is not None:
            check_int("MaskingConfig.max_predictions_per_seq", self.max_predictions_per_seq, 1)
        if not isinstance(self.whole_word, bool):
            raise TypeError(f"MaskingConfig.whole_word must be a bool, got {self.whole_word!r}")
        check_int("MaskingConfig.max_ngram", self.max_ngram, 1)

    @property
    def uses_words(self) -> bool:
        return self.whole_word or self.max_ngram > 1

    def predictions(self, max_seq_length: int) -> int:
        """P for sequences of max_seq_length tokens."""
        if self.max_predictions_per_seq is not None:
            return self.max_predictions_per_seq
        return max(1, round(self.mlm_probability * max_seq_length))


def _is_punctuation(text: str) -> bool:
    return bool(text) and all(unicodedata.category(c).startswith("P") for c in text)


@dataclasses.dataclass(frozen=True)
class MaskingTables:
    """Per-vocabulary lookups, built once: which ids are special, which start words."""
    special: np.ndarray          # bool [V]
    word_start: np.ndarray       # bool [V]
    mask_id: int
    vocab_size: int

    @classmethod
    def from_tokenizer(cls, tok: Tokenizer, special_ids=None) -> MaskingTables:
        """special_ids: ids never to mask (default: the tokenizer's special and added-special
        tokens and its pad token)."""
        size = tok.vocab_size
        if tok.mask_token_id is None:
            raise ValueError("this tokenizer has no mask token; masked-LM batches need one")
        if special_ids is None:
            special_ids = tokenizer_info(tok)["all_special_ids"]
        special = np.zeros(size, bool)
        special[np.asarray(list(special_ids), np.int64)] = True
        tokens = [""] * size
        for token, i in tok.backend_tokenizer.get_vocab(with_added_tokens=True).items():
            if i < size:
                tokens[i] = token
        if tok.kind in _CONTINUATION_MARK:
            mark = _CONTINUATION_MARK[tok.kind]
            word_start = [not t.startswith(mark) or _is_punctuation(t[len(mark):]) for t in tokens]
        elif tok.kind in _WORD_START_MARK:
            mark = _WORD_START_MARK[tok.kind]
            word_start = [t.startswith(mark) or _is_punctuation(t) for t in tokens]
        else:
            word_start = [True] * size  # unknown convention: every token is its own word
        return cls(special, np.asarray(word_start, bool), int(tok.mask_token_id), size)

    @property
    def knows_words(self) -> bool:
        return not self.word_start.all()


def _mark(values, size):
    """Per row, how often each of 0..size-1 occurs in values [B, N]; other values are ignored."""
    import tensorflow as tf  # here, not at import: MaskingConfig alone needs no TF
    batch = tf.shape(values)[0]
    values = tf.where((values >= 0) & (values < size), values, size)  # a spare bin per row
    flat = values + tf.range(batch)[:, None] * (size + 1)
    counts = tf.math.bincount(tf.reshape(flat, [-1]), minlength=batch * (size + 1))
    return tf.reshape(counts, [batch, size + 1])[:, :size]


def _seeds(seed, n):
    import tensorflow as tf  # here, not at import: MaskingConfig alone needs no TF
    return tf.unstack(tf.random.experimental.stateless_split(seed, n))


def masking_units(input_ids, attention_mask, seed, config: MaskingConfig, tables: MaskingTables):
    """Unit index of every token ([B, S] int32; -1 for special tokens and padding) and the
    non-special mask: tokens of one unit are masked together. seed: int64 [2]."""
    import tensorflow as tf  # here, not at import: MaskingConfig alone needs no TF
    shape = tf.shape(input_ids)
    special = tf.gather(tf.constant(tables.special), input_ids)
    candidate = tf.logical_and(attention_mask > 0, tf.logical_not(special))
    positions = tf.broadcast_to(tf.range(shape[1], dtype=tf.int32), shape)
    if not config.uses_words:
        return tf.where(candidate, positions, -1), candidate
    # A word starts at a non-special token that is marked as a start or follows a special one.
    previous = tf.pad(candidate[:, :-1], [[0, 0], [1, 0]])
    starts = tf.logical_and(candidate, tf.logical_or(
        tf.gather(tf.constant(tables.word_start), input_ids), tf.logical_not(previous)))
    word = tf.cumsum(tf.cast(starts, tf.int32), axis=1) - 1
    if config.max_ngram > 1:
        # Cut the words of a row into consecutive n-grams, n ~ 1/n: segment k starts at word
        # sum(n_0 .. n_{k-1}); a word right after a special token (a document separator, say)
        # starts one too, so no n-gram spans a special token.
        n = np.arange(1, config.max_ngram + 1)
        cdf = np.cumsum(1 / n)[:-1] / np.sum(1 / n)
        draw = tf.random.stateless_uniform([shape[0], shape[1], 1], seed)
        lengths = 1 + tf.reduce_sum(tf.cast(draw > cdf.astype(np.float32), tf.int32), axis=2)
        first_word = tf.cumsum(lengths, axis=1, exclusive=True)
        after_special = tf.where(tf.logical_and(candidate, tf.logical_not(previous)), word, -1)
        is_first = _mark(tf.concat([first_word, after_special], axis=1), shape[1]) > 0
        segment_of_word = tf.cumsum(tf.cast(is_first, tf.int32), axis=1) - 1
        word = tf.gather(segment_of_word, tf.maximum(word, 0), batch_dims=1)
    return tf.where(candidate, word, -1), candidate


def mask_batch(input_ids, attention_mask, seed, config: MaskingConfig, tables: MaskingTables,
               max_predictions: int) -> dict:
    """Mask a padded batch. input_ids / attention_mask: int32 [B, S]; seed: int64 [2].

    Returns input_ids (masked), masked_positions / masked_ids (int32 [B, P], ascending
    positions, padding at position 0 with id 0) and masked_weights (float32 [B, P]).
    """
    import tensorflow as tf  # here, not at import: MaskingConfig alone needs no TF
    unit_seed, priority_seed, action_seed, random_seed = _seeds(seed, 4)
    shape = tf.shape(input_ids)
    batch, length = shape[0], shape[1]
    unit, candidate = masking_units(input_ids, attention_mask, unit_seed, config, tables)
    n_candidates = tf.reduce_sum(tf.cast(candidate, tf.float32), axis=1)
    budget = tf.minimum(max_predictions, tf.maximum(
        1, tf.cast(tf.round(n_candidates * config.mlm_probability), tf.int32)))

    sizes = _mark(unit, length)  # tokens per unit; non-candidates (-1) are not counted
    # Units in random order; take them while the running token count stays within budget.
    order = tf.argsort(tf.random.stateless_uniform([batch, length], priority_seed), axis=1)
    running = tf.cumsum(tf.gather(sizes, order, batch_dims=1), axis=1)
    taken_in_order = running <= budget[:, None]
    taken = tf.gather(taken_in_order, tf.argsort(order, axis=1), batch_dims=1)
    selected = tf.logical_and(candidate, tf.gather(taken, tf.maximum(unit, 0), batch_dims=1))

    # Positions of the selected tokens in ascending order, padded to P.
    positions = tf.broadcast_to(tf.range(length, dtype=tf.int32), shape)
    score = tf.where(selected, length - positions, -1)
    top, index = tf.math.top_k(score, k=max_predictions)
    real = top > 0
    masked_positions = tf.where(real, index, 0)
    masked_ids = tf.where(real, tf.gather(input_ids, masked_positions, batch_dims=1), 0)

    action = tf.random.stateless_uniform([batch, length], action_seed)
    to_mask = tf.logical_and(selected, action < config.mask_token_prob)
    to_random = tf.logical_and(selected, tf.logical_and(
        action >= config.mask_token_prob, action < config.mask_token_prob + config.random_token_prob))
    ordinary = np.flatnonzero(~tables.special).astype(np.int32)
    random_ids = tf.gather(ordinary, tf.random.stateless_uniform(
        [batch, length], random_seed, minval=0, maxval=len(ordinary), dtype=tf.int32))
    masked = tf.where(to_mask, tf.constant(tables.mask_id, tf.int32),
                      tf.where(to_random, random_ids, input_ids))
    return dict(input_ids=masked, masked_positions=masked_positions, masked_ids=masked_ids,
                masked_weights=tf.cast(real, tf.float32))
