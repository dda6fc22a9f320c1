"""flaxbert.data.masking: BERT's 15% / 80-10-10 statistics, special tokens never chosen,
whole words kept whole for WordPiece (##), SentencePiece (▁) and byte-level BPE (Ġ)
vocabularies, ALBERT n-grams of whole words, deterministic masks, clear config errors."""
import numpy as np
import pytest
import tensorflow as tf

from data_cases import english_documents, trained_tokenizer, words_of
from flaxbert.data.masking import MaskingConfig, MaskingTables, mask_batch, masking_units
from flaxbert.tokenizer import Tokenizer

LENGTH = 64


def _batch(tokenizer_dir, rows=128):
    """Real documents, truncated / padded to LENGTH (rows of different lengths)."""
    tok = Tokenizer.from_pretrained(tokenizer_dir)
    enc = tok(list(english_documents()[:rows]), truncation=True, max_length=LENGTH,
              padding="max_length")
    return tok, enc["input_ids"], enc["attention_mask"]


def _key(seed):
    return tf.constant([seed, 7], tf.int64)


def _mask(ids, attention, config, tables, seed=0):
    out = mask_batch(tf.constant(ids), tf.constant(attention), _key(seed), config, tables,
                     config.predictions(LENGTH))
    return {k: v.numpy() for k, v in out.items()}


def _selected(out):
    """Per row, the set of selected positions (real predictions only)."""
    return [set(p[w > 0].tolist()) for p, w in zip(out["masked_positions"], out["masked_weights"])]


def _tokenizer(name, minilm_dir):
    return {"wordpiece": lambda: str(minilm_dir), "bpe": lambda: trained_tokenizer("bpe"),
            "albert": lambda: trained_tokenizer("sentencepiece", "albert")}[name]()


def test_token_masking_statistics(minilm_dir):
    tok, ids, attention = _batch(minilm_dir)
    tables = MaskingTables.from_tokenizer(tok)
    config = MaskingConfig()
    P = config.predictions(LENGTH)
    assert P == round(0.15 * LENGTH)
    candidates = (attention > 0) & ~tables.special[ids]
    budget = np.minimum(P, np.maximum(1, np.round(candidates.sum(1) * 0.15))).astype(int)
    actions = {"mask": 0, "random": 0, "kept": 0}
    picks = 0
    for seed in range(8):
        out = _mask(ids, attention, config, tables, seed)
        positions, weights = out["masked_positions"], out["masked_weights"]
        assert positions.shape == (len(ids), P) and out["masked_ids"].dtype == np.int32
        assert weights.dtype == np.float32 and out["input_ids"].dtype == np.int32
        assert (weights.sum(1) == budget).all()  # exactly round(15%) of the non-special tokens
        for row in range(len(ids)):
            real = weights[row] > 0
            pos = positions[row][real]
            assert (np.diff(pos) > 0).all() and real[:real.sum()].all()
            assert (positions[row][~real] == 0).all() and (out["masked_ids"][row][~real] == 0).all()
            assert candidates[row, pos].all(), "a special or padding token was chosen"
            assert (out["masked_ids"][row][real] == ids[row, pos]).all()
            untouched = np.setdiff1d(np.arange(LENGTH), pos)
            assert (out["input_ids"][row, untouched] == ids[row, untouched]).all()
            new = out["input_ids"][row, pos]
            actions["mask"] += int((new == tok.mask_token_id).sum())
            actions["kept"] += int((new == ids[row, pos]).sum())
            random = new[(new != tok.mask_token_id) & (new != ids[row, pos])]
            actions["random"] += len(random)
            assert not tables.special[random].any()
            picks += len(pos)
    assert picks > 5000
    assert abs(picks / (8 * candidates.sum()) - 0.15) < 0.01
    assert abs(actions["mask"] / picks - 0.8) < 0.02
    assert abs(actions["random"] / picks - 0.1) < 0.015
    assert abs(actions["kept"] / picks - 0.1) < 0.015


@pytest.mark.parametrize("kind", ["wordpiece", "albert", "bpe"])
def test_whole_words_are_masked_whole(kind, minilm_dir):
    tok, ids, attention = _batch(_tokenizer(kind, minilm_dir))
    tables = MaskingTables.from_tokenizer(tok)
    config = MaskingConfig(whole_word=True)
    multi_piece_words = selected_total = 0
    candidates = (attention > 0) & ~tables.special[ids]
    for seed in range(3):
        out = _mask(ids, attention, config, tables, seed)
        for row, chosen in enumerate(_selected(out)):
            words = words_of(ids[row], tables.word_start, tables.special)
            for w in {words[p] for p in chosen}:
                members = set(np.flatnonzero(words == w).tolist())
                assert members <= chosen, f"word {tok.convert_ids_to_tokens(ids[row, sorted(members)])} cut"
                multi_piece_words += len(members) > 1
            selected_total += len(chosen)
            assert len(chosen) <= config.predictions(LENGTH)
    assert multi_piece_words > 20  # the test saw words of several pieces
    assert abs(selected_total / (3 * candidates.sum()) - 0.15) < 0.03


def test_word_start_tables_follow_each_vocabulary(minilm_dir):
    cases = {"wordpiece": {"the": True, "##ing": False, ",": True},
             "albert": {"▁the": True, ",": True},
             "bpe": {"Ġthe": True, ",": True}}
    for kind, expected in cases.items():
        tok = Tokenizer.from_pretrained(_tokenizer(kind, minilm_dir))
        table = MaskingTables.from_tokenizer(tok).word_start
        vocab = tok.backend_tokenizer.get_vocab()
        for token, start in expected.items():
            assert table[vocab[token]] == start, (kind, token)
        continuations = [t for t in vocab if not table[vocab[t]]]
        assert continuations and all(not t.startswith(("▁", "Ġ")) for t in continuations)


def test_ngrams_are_up_to_three_whole_words(minilm_dir):
    tok, ids, attention = _batch(_tokenizer("albert", minilm_dir))
    tables = MaskingTables.from_tokenizer(tok)
    config = MaskingConfig(max_ngram=3)
    sizes = []
    for seed in range(3):
        key = tf.random.experimental.stateless_split(_key(seed), 4)[0]  # mask_batch's unit seed
        units = masking_units(tf.constant(ids), tf.constant(attention), key, config, tables)[0].numpy()
        out = _mask(ids, attention, config, tables, seed)
        for row, chosen in enumerate(_selected(out)):
            words = words_of(ids[row], tables.word_start, tables.special)
            last_word = words.max()
            for u in set(units[row].tolist()) - {-1}:
                members = np.flatnonzero(units[row] == u)
                assert (np.diff(members) == 1).all(), "an n-gram is not contiguous (or spans a special)"
                unit_words = set(words[members].tolist())
                assert all(set(np.flatnonzero(words == w)) <= set(members) for w in unit_words)
                assert len(unit_words) <= 3
                if last_word not in unit_words:  # the row's end cuts its last n-gram short
                    sizes.append(len(unit_words))
            # Selections are unions of whole units.
            for u in {units[row][p] for p in chosen}:
                assert set(np.flatnonzero(units[row] == u).tolist()) <= chosen
    freq = np.bincount(sizes, minlength=4)[1:] / len(sizes)
    assert np.abs(freq - np.array([6, 3, 2]) / 11).max() < 0.04, freq


def test_masks_depend_only_on_the_seed(minilm_dir):
    tok, ids, attention = _batch(minilm_dir, rows=16)
    tables = MaskingTables.from_tokenizer(tok)
    config = MaskingConfig(whole_word=True)
    a, b, c = (_mask(ids, attention, config, tables, s) for s in (3, 3, 4))
    assert all((a[k] == b[k]).all() for k in a)
    assert (a["masked_positions"] != c["masked_positions"]).any()


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(mlm_probability=1.5), ValueError, "mlm_probability"),
    (dict(mlm_probability=0.0), ValueError, "masking=None"),
    (dict(mask_token_prob=0.95, random_token_prob=0.1), ValueError, "<= 1"),
    (dict(random_token_prob=-0.1), ValueError, "random_token_prob"),
    (dict(max_predictions_per_seq=0), ValueError, "max_predictions_per_seq"),
    (dict(max_predictions_per_seq=2.5), ValueError, "max_predictions_per_seq"),
    (dict(max_ngram=0), ValueError, "max_ngram"),
    (dict(whole_word="yes"), TypeError, "whole_word"),
])
def test_bad_masking_values_fail_clearly(kwargs, error, match):
    with pytest.raises(error, match=match):
        MaskingConfig(**kwargs)


def test_predictions_per_sequence():
    assert MaskingConfig().predictions(128) == 19
    assert MaskingConfig(max_predictions_per_seq=20).predictions(128) == 20
    assert MaskingConfig(mlm_probability=0.3).predictions(128) == 38
