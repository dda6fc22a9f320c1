"""Sequence packing: pack_examples / unpack, and models on packed rows computing for each example
what they compute for it alone."""
import functools

import jax
import numpy as np
import pytest

import flaxbert
from flaxbert.convert.hf import abstract_params
from flaxbert.layers.attention import segment_mask
from flaxbert.packing import pack_examples, packing_conventions, packing_efficiency, unpack


def random_params(model, seed=0):
    """transformers-like random parameters at numpy speed (no compiled init): LayerNorm scales
    1, biases 0, other weights normal(0, 0.02)."""
    rs = np.random.RandomState(seed)

    def leaf(path, shape):
        name = getattr(path[-1], "key", "")
        if name == "scale":
            return np.ones(shape.shape, shape.dtype)
        if name == "bias":
            return np.zeros(shape.shape, shape.dtype)
        return rs.normal(0, 0.02, shape.shape).astype(shape.dtype)

    return jax.tree_util.tree_map_with_path(leaf, abstract_params(model))


def random_examples(n, vocab=99, low=3, high=20, seed=0, type_vocab=2):
    rs = np.random.RandomState(seed)
    out = []
    for _ in range(n):
        length = rs.randint(low, high)
        first = rs.randint(1, length)  # a sentence pair: types 0 then 1
        out.append({"input_ids": rs.randint(5, vocab, length),
                    "token_type_ids": (np.arange(length) >= first).astype(np.int64)
                    * (type_vocab > 1)})
    return out


def test_pack_examples_places_every_example_once_with_restarting_positions():
    examples = random_examples(40)
    for ex in examples:
        ex["labels"] = ex["input_ids"] + 1000
    packed = pack_examples(examples, 48, position_offset=2, pad_position=1, pad_id=1,
                           fill={"labels": -100})
    rows = packed["input_ids"].shape[0]
    assert packed["input_ids"].shape == (rows, 48)
    # Every example comes back intact, with its own segment and positions restarting at 2.
    for i, (ids, types, labels, segs, pos) in enumerate(zip(*(
            unpack(packed[k], packed) for k in ("input_ids", "token_type_ids", "labels",
                                                "segment_ids", "position_ids")))):
        np.testing.assert_array_equal(ids, examples[i]["input_ids"])
        np.testing.assert_array_equal(types, examples[i]["token_type_ids"])
        np.testing.assert_array_equal(labels, examples[i]["labels"])
        assert len(set(segs.tolist())) == 1 and segs[0] >= 1
        np.testing.assert_array_equal(pos, 2 + np.arange(len(ids)))
    pad = packed["segment_ids"] == 0
    np.testing.assert_array_equal(packed["attention_mask"], (~pad).astype(np.int32))
    assert (packed["input_ids"][pad] == 1).all() and (packed["position_ids"][pad] == 1).all()
    assert (packed["labels"][pad] == -100).all()
    # Segments are numbered 1, 2, ... in each row, and examples do not overlap.
    for row in packed["segment_ids"]:
        used = sorted(set(row[row > 0].tolist()))
        assert used == list(range(1, len(used) + 1))
    total = sum(len(ex["input_ids"]) for ex in examples)
    assert packed["attention_mask"].sum() == total
    assert rows == -(-total // 48) or rows == -(-total // 48) + 1  # near the lower bound
    naive = total / (len(examples) * 48)
    assert packing_efficiency(packed) == pytest.approx(total / (rows * 48))
    assert packing_efficiency(packed) > 2 * naive
    print(f"\npacking 40 examples of 3-19 tokens into rows of 48: efficiency "
          f"{packing_efficiency(packed):.3f} (one example a row: {naive:.3f})")


def test_pack_examples_limits_and_errors():
    examples = random_examples(12, low=2, high=4)
    assert (pack_examples(examples, 64, max_per_row=3)["segment_ids"].max(1) <= 3).all()
    assert pack_examples(examples, 64, max_per_row=3)["input_ids"].shape[0] == 4
    with_mask = [{"input_ids": np.array([7, 8, 9, 0]), "attention_mask": np.array([1, 1, 1, 0])}]
    assert pack_examples(with_mask, 8)["example_length"].tolist() == [3]
    with pytest.raises(ValueError, match="more than max_length=4"):
        pack_examples([{"input_ids": np.arange(5)}], 4)
    with pytest.raises(ValueError, match="max_length must be a positive int"):
        pack_examples(examples, 0)
    with pytest.raises(ValueError, match="max_per_row"):
        pack_examples(examples, 8, max_per_row=0)
    with pytest.raises(ValueError, match="no tokens"):
        pack_examples([{"input_ids": np.array([], np.int32)}], 8)
    with pytest.raises(ValueError, match="'labels' has shape"):
        pack_examples([{"input_ids": np.arange(3), "labels": np.array(1)}], 8)
    with pytest.raises(TypeError, match="dict with 'input_ids'"):
        pack_examples([np.arange(3)], 8)
    with pytest.raises(ValueError, match="no examples"):
        pack_examples([], 8)
    packed = pack_examples(examples, 64)
    with pytest.raises(ValueError, match="outputs have shape"):
        unpack(np.zeros((1, 3)), packed)


def test_segment_mask_is_block_diagonal():
    mask = np.asarray(segment_mask(np.array([[1, 1, 2, 2, 2, 0]])))[0, 0]
    expected = np.zeros((6, 6), bool)
    expected[:2, :2] = expected[2:5, 2:5] = True
    np.testing.assert_array_equal(mask, expected)


def padded_batch(examples, pad_id):
    """The unpacked reference: one row an example, right-padded."""
    length = max(len(ex["input_ids"]) for ex in examples)
    ids = np.full((len(examples), length), pad_id, np.int32)
    types, mask = np.zeros_like(ids), np.zeros_like(ids)
    for row, ex in enumerate(examples):
        n = len(ex["input_ids"])
        ids[row, :n], types[row, :n], mask[row, :n] = ex["input_ids"], ex["token_type_ids"], 1
    return ids, mask, types


def assert_packed_equals_unpacked(model, params, examples, max_length, *fields):
    """Each per-token output field (a name of the Output, or "last_hidden_state" read from
    hidden_states[-1]) of packed rows equals the example's unpacked output within 1e-5."""
    conventions = packing_conventions(model)
    packed = pack_examples(examples, max_length, **conventions)
    assert packed["input_ids"].shape[0] < len(examples)
    ids, mask, types = padded_batch(examples, conventions["pad_id"])

    def per_token(out):
        return [out.hidden_states[-1] if f == "last_hidden_state" and out.hidden_states
                else out[f] for f in fields]

    @jax.jit
    def forward(packed, ids, mask, types):
        apply = functools.partial(model.apply, {"params": params}, output_hidden_states=True)
        got = apply(packed["input_ids"], packed["attention_mask"], packed["token_type_ids"],
                    packed["position_ids"], segment_ids=packed["segment_ids"])
        return per_token(got), per_token(apply(ids, mask, types))

    inputs = {k: packed[k] for k in ("input_ids", "attention_mask", "token_type_ids",
                                     "position_ids", "segment_ids")}
    got, expected = forward(inputs, ids, mask, types)
    for field, g, e in zip(fields, got, expected):
        for i, piece in enumerate(unpack(g, packed)):
            np.testing.assert_allclose(piece, np.asarray(e)[i, :len(piece)], atol=1e-5,
                                       err_msg=f"{field} of example {i}")


@pytest.mark.parametrize("name", ["bert-tiny", "roberta-tiny", "deberta-v3-tiny"])
def test_packed_outputs_equal_unpacked(name):
    model = flaxbert.create_model(name, "masked-lm")
    examples = random_examples(9, seed=1, type_vocab=model.config.type_vocab_size)
    assert_packed_equals_unpacked(model, random_params(model), examples, 32,
                                  "logits", "last_hidden_state")


def test_packed_token_classification_cudnn_path_and_albert():
    """Token classification works packed; attention_impl='cudnn' (on CPU: jax's XLA
    implementation of the same call) takes the packed block mask too; ALBERT's shared-layer
    encoder passes it along."""
    examples = random_examples(7, seed=2, vocab=90)
    for name, task, impl in (("bert-tiny", "token-classification", "cudnn"),
                             ("albert-tiny", "base", "xla")):
        model = flaxbert.create_model(name, task, attention_impl=impl)
        field = "logits" if task == "token-classification" else "last_hidden_state"
        assert_packed_equals_unpacked(model, random_params(model), examples, 40, field)


def test_packed_inputs_are_validated():
    def init(name, **inputs):
        """Trace init abstractly: the checks run on the concrete inputs closed over."""
        model = flaxbert.create_model(name, "base", conv_kernel_size=3) if "deberta" in name \
            else flaxbert.create_model(name, "base")
        return jax.eval_shape(lambda: model.init(jax.random.key(0), np.ones((1, 6), np.int32),
                                                 **inputs))

    segments, positions = np.array([[1, 1, 2, 2, 0, 0]]), np.zeros((1, 6), np.int32)
    with pytest.raises(ValueError, match="need position_ids"):
        init("bert-tiny", segment_ids=segments)
    with pytest.raises(ValueError, match="segment_ids has shape"):
        init("bert-tiny", position_ids=positions, segment_ids=segments[:, :4])
    with pytest.raises(ValueError, match="segment_ids contains -2"):
        init("bert-tiny", position_ids=positions, segment_ids=-segments)
    with pytest.raises(ValueError, match="convolution"):
        init("deberta-v3-tiny", position_ids=positions, segment_ids=segments)
    init("deberta-v3-tiny", position_ids=positions)  # the convolution is fine unpacked
