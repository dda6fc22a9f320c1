"""Sparse (sliding-window + global) attention: exact against dense `xla` attention under the
equivalent mask, linear in memory (no (length, length) array in the traced program), and the
position-table extension that makes a checkpoint take longer inputs."""
import functools
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import flaxbert
from flaxbert import cli
from flaxbert.convert import extend_position_embeddings
from flaxbert.layers.attention import (SelfAttention, dot_product_attention, segment_mask,
                                       sparse_pattern_mask)
from flaxbert.models.bert import BertConfig
from flaxbert.models.deberta import DebertaV2Config
from flaxbert.models.roberta import RobertaConfig
from flaxbert.models.xlnet import XLNetConfig
from flaxbert.tokenizer import Tokenizer

TOL = dict(atol=1e-5, rtol=1e-5)
# "rbg" keys: threefry's random bits alone take 5-10 s to compile on a 2-core CPU.
INIT_KEY = jax.random.key(0, impl="rbg")


def _close(got, want, **kw):
    """Within 1e-5 of `want`, relative to the largest entry of the tensor when that is above 1
    (gradients reach the hundreds; float32 sums in another order differ in the last bits)."""
    scale = max(1.0, float(np.abs(np.asarray(want)).max()))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * scale, **kw)


def _assert_same(result, reference, rows):
    """Outputs at the real queries `rows`, and every gradient, agree."""
    (_, out), grads = result
    (_, ref), ref_grads = reference
    np.testing.assert_allclose(np.asarray(out)[rows], np.asarray(ref)[rows], **TOL)
    for got, want in zip(grads, ref_grads):
        _close(got, want)


def _qkv(batch, length, heads=2, head_dim=8, seed=0):
    rng = np.random.default_rng(seed)
    return tuple(jnp.asarray(rng.normal(size=(batch, length, heads, head_dim)), jnp.float32)
                 for _ in range(4))  # query, key, value and an output cotangent


def _loss_and_grads(impl, mask, valid_queries, window=None, global_tokens=0, **kw):
    """The attention output and the gradients wrt (q, k, v) of <output, cotangent> over the
    queries that are real tokens (what a padding query computes is never read)."""
    def loss(q, k, v, cotangent):
        out, _ = dot_product_attention(q, k, v, mask=mask, impl=impl, attention_window=window,
                                       global_tokens=global_tokens, **kw)
        return jnp.sum(out * cotangent * valid_queries[:, :, None, None]), out
    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))


def _padding(batch, length, seed):
    """Right padding on one row, holes in another."""
    rng = np.random.default_rng(seed)
    mask = np.ones((batch, length), np.int32)
    mask[0, length - length // 3:] = 0
    mask[-1, rng.choice(np.arange(1, length), size=length // 4, replace=False)] = 0
    return mask


CASES = {  # length, window, global tokens, padded: lengths that are and are not block multiples
    "blocks-exact": (16, 4, 1, False),
    "ragged-padded-2-global": (37, 5, 2, True),
    "window-1-no-global-padded": (23, 1, 0, True),
}


@pytest.mark.parametrize("case", CASES)
def test_sparse_equals_dense_with_the_pattern_mask(case):
    length, window, global_tokens, padded = CASES[case]
    q, k, v, cotangent = _qkv(2, length, seed=length)
    mask = jnp.asarray(_padding(2, length, length)) if padded else None
    valid = jnp.ones((2, length)) if mask is None else mask.astype(jnp.float32)
    dense_mask = sparse_pattern_mask(length, window, global_tokens, mask)
    reference = _loss_and_grads("xla", dense_mask, valid)(q, k, v, cotangent)
    rows = np.asarray(valid, bool)
    _assert_same(_loss_and_grads("sparse", mask, valid, window, global_tokens)(
        q, k, v, cotangent), reference, rows)
    # The pattern is not dense: the same inputs under the padding mask alone differ.
    plain, _ = jax.jit(dot_product_attention)(q, k, v, mask=mask)
    assert np.abs(np.asarray(plain - reference[0][1])[rows]).max() > 1e-3


def test_window_longer_than_the_sequence_is_plain_dense_attention():
    length = 13
    q, k, v, cotangent = _qkv(2, length, seed=3)
    mask = jnp.asarray(_padding(2, length, 3))
    valid = mask.astype(jnp.float32)
    _assert_same(_loss_and_grads("sparse", mask, valid, 40, 1)(q, k, v, cotangent),
                 _loss_and_grads("xla", mask, valid)(q, k, v, cotangent), np.asarray(mask, bool))


def test_packed_segment_mask_is_honoured():
    length = 30
    segments = np.zeros((2, length), np.int32)
    segments[0, :12], segments[0, 12:27] = 1, 2  # two examples, then padding
    segments[1, :30] = np.repeat([1, 2, 3], 10)
    mask = segment_mask(jnp.asarray(segments))
    q, k, v, cotangent = _qkv(2, length, seed=5)
    valid = jnp.asarray(segments > 0, jnp.float32)
    dense_mask = sparse_pattern_mask(length, 4, 1, mask)
    _assert_same(_loss_and_grads("sparse", mask, valid, 4, 1)(q, k, v, cotangent),
                 _loss_and_grads("xla", dense_mask, valid)(q, k, v, cotangent), segments > 0)


def test_dropout_on_probabilities_keeps_the_expectation():
    copies = 400  # one row, repeated: each copy draws its own dropout masks
    q, k, v = (jnp.tile(x, (copies, 1, 1, 1)) for x in _qkv(1, 20, seed=7)[:3])

    @functools.partial(jax.jit, static_argnums=1)
    def attend(rng, rate):
        return dot_product_attention(q, k, v, impl="sparse", attention_window=3,
                                     global_tokens=1, dropout_rate=rate, dropout_rng=rng)[0]

    clean = attend(None, 0.3)[0]
    dropped = attend(jax.random.key(1, impl="rbg"), 0.3)
    assert np.abs(np.asarray(dropped[0] - clean)).max() > 0.05
    # Inverted dropout: the mean over many masks comes back to the undropped output, within a
    # few standard errors of that mean.
    error = np.asarray(dropped.std(0)) / np.sqrt(len(dropped))
    assert np.all(np.abs(np.asarray(dropped.mean(0) - clean)) <= 5 * error + 1e-4)


def _array_shapes(jaxpr):
    """Every intermediate shape of a jaxpr, nested jaxprs (jit, custom_jvp, ...) included."""
    for eqn in jaxpr.eqns:
        yield from (v.aval.shape for v in eqn.outvars if hasattr(v.aval, "shape"))
        for param in eqn.params.values():
            for sub in param if isinstance(param, (tuple, list)) else (param,):
                sub = getattr(sub, "jaxpr", sub)
                if hasattr(sub, "eqns"):
                    yield from _array_shapes(sub)


def _quadratic(shapes, length):
    return [s for s in shapes if sum(d >= length for d in s) >= 2]


def test_no_length_by_length_array_in_attention_or_its_gradient():
    length = 96
    q, k, v, cotangent = _qkv(1, length, seed=9)
    mask = jnp.ones((1, length), jnp.int32)

    def shapes(impl):
        loss = _loss_and_grads(impl, mask, mask.astype(jnp.float32), 8, 1)
        return list(_array_shapes(jax.make_jaxpr(loss)(q, k, v, cotangent).jaxpr))

    assert not _quadratic(shapes("sparse"), length)
    assert _quadratic(shapes("xla"), length)  # the check does see a dense (L, L) array


# ----------------------------------------------------------------------------- whole model

TINY = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                  intermediate_size=64, max_position_embeddings=128)


@pytest.fixture(scope="module")
def tiny_bert():
    length = 45
    config = TINY.replace(attention_impl="sparse", attention_window=6)
    model = flaxbert.create_model(config)
    rng = np.random.default_rng(0)
    ids = jnp.asarray(rng.integers(1, 100, size=(2, length)), jnp.int32)
    mask = np.ones((2, length), np.int32)
    mask[1, 30:] = 0
    # The parameters do not depend on the attention implementation or the length.
    params = jax.jit(flaxbert.create_model(TINY).init)(INIT_KEY, ids[:, :8])["params"]
    return model, params, ids, jnp.asarray(mask)


def _with_dense_pattern(model, length):
    """Run `model` (an xla one) with every SelfAttention's padding mask replaced by the dense
    mask the sparse pattern is equal to."""
    cfg = model.config

    def interceptor(call, args, kwargs, context):
        if isinstance(context.module, SelfAttention) and context.method_name == "__call__":
            x, mask, *rest = args
            args = (x, sparse_pattern_mask(length, 6, cfg.global_attention_tokens, mask), *rest)
        return call(*args, **kwargs)

    def apply(params, ids, mask):
        with nn.intercept_methods(interceptor):
            return model.apply({"params": params}, ids, mask)
    return apply


def test_tiny_bert_sparse_equals_xla_with_the_pattern_mask(tiny_bert):
    model, params, ids, mask = tiny_bert
    dense = _with_dense_pattern(model.clone(config=model.config.replace(attention_impl="xla")),
                                ids.shape[1])
    weights = jnp.asarray(np.random.default_rng(1).normal(size=(*ids.shape, 32)), jnp.float32)
    weights = weights * mask[:, :, None]

    def loss(apply):  # a random projection: sum() of a LayerNorm output has ~zero gradient
        def value(p):
            hidden = apply(p, ids, mask).last_hidden_state
            return jnp.sum(hidden * weights), hidden
        return jax.jit(jax.value_and_grad(value, has_aux=True))

    (sparse_loss, hidden), sparse_grads = loss(
        lambda p, i, m: model.apply({"params": p}, i, m))(params)
    (dense_loss, _), dense_grads = loss(dense)(params)
    _close(sparse_loss, dense_loss)
    flat = jax.tree_util.tree_leaves_with_path(sparse_grads)
    assert len(flat) == len(jax.tree_util.tree_leaves(dense_grads)) > 20
    for (path, got), want in zip(flat, jax.tree_util.tree_leaves(dense_grads)):
        _close(got, want, err_msg=jax.tree_util.keystr(path))
    assert max(float(jnp.abs(g).max()) for g in jax.tree_util.tree_leaves(sparse_grads)) > 1e-3

    # output_attentions runs the dense reference with the same pattern: the same outputs.
    with_probs = jax.jit(lambda p: model.apply({"params": p}, ids, mask,
                                               output_attentions=True))(params)
    rows = np.asarray(mask, bool)
    np.testing.assert_allclose(np.asarray(with_probs.last_hidden_state)[rows],
                               np.asarray(hidden)[rows], **TOL)
    probs = np.asarray(with_probs.attentions[0])
    assert probs.shape == (2, 2, 45, 45) and probs[0, :, 20, 27].max() == 0  # outside the band
    assert probs[0, :, 20, 0].min() > 0 and probs[0, :, 0, 40].min() > 0  # CLS column and row


def test_tiny_bert_program_has_no_length_by_length_array():
    length = 128
    model = flaxbert.create_model(TINY.replace(attention_impl="sparse", attention_window=8))
    ids = jnp.ones((1, length), jnp.int32)
    params = jax.eval_shape(lambda: model.init(jax.random.key(0), ids))["params"]

    def loss(p):
        return jnp.sum(model.apply({"params": p}, ids, jnp.ones_like(ids)).last_hidden_state)

    jaxpr = jax.make_jaxpr(jax.grad(loss))(params).jaxpr
    assert not _quadratic(_array_shapes(jaxpr), length)


def test_refusals_name_the_field():
    for config_cls in (DebertaV2Config, XLNetConfig):
        with pytest.raises(ValueError, match=r"attention_impl='sparse' is not available"):
            config_cls(attention_impl="sparse")
    with pytest.raises(ValueError, match=r"attention_window=0 must be >= 1"):
        TINY.replace(attention_impl="sparse", attention_window=0)
    with pytest.raises(ValueError, match=r"global_attention_tokens=-1 must be >= 0"):
        TINY.replace(global_attention_tokens=-1)
    q, k, v, _ = _qkv(1, 8)
    with pytest.raises(ValueError, match="no additive score bias"):
        dot_product_attention(q, k, v, bias=jnp.zeros((1, 2, 8, 8)), impl="sparse",
                              attention_window=2)
    with pytest.raises(ValueError, match=r"q_len = kv_len = 8, got shape \(1, 1, 8\)"):
        dot_product_attention(q, k, v, mask=jnp.ones((1, 1, 8)), impl="sparse",
                              attention_window=2)
    with pytest.raises(ValueError, match="never materialises"):
        dot_product_attention(q, k, v, impl="sparse", attention_window=2, return_probs=True)


# ----------------------------------------------------------------------------- longer positions

def _checkpoint(directory, config, task="masked-lm"):
    model = flaxbert.create_model(config, task)
    params = jax.jit(model.init)(INIT_KEY, jnp.ones((1, 8), jnp.int32))["params"]
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"tok{i}" for i in range(95)]
    flaxbert.save_pretrained(directory, model, params)
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n")
    (directory / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "BertTokenizer", "do_lower_case": True, "model_max_length": 64}))
    return nn.meta.unbox(params)


def _position_table(params):
    return np.asarray(params["backbone"]["embeddings"]["position_embeddings"]["embedding"])


@pytest.fixture(scope="module")
def extended(tmp_path_factory):
    root = tmp_path_factory.mktemp("extend")
    src_params = _checkpoint(root / "bert", TINY.replace(max_position_embeddings=64))
    extend_position_embeddings(root / "bert", root / "long", max_positions=1024,
                               attention_window=32)
    return root, src_params


def test_extended_table_repeats_the_learned_positions(extended):
    root, src_params = extended
    model, params = flaxbert.from_pretrained(root / "long")
    old, new = _position_table(src_params), _position_table(params)
    assert new.shape == (1024, 32)
    assert np.array_equal(new[:64], old)  # bit-identical
    assert np.array_equal(new, old[np.arange(1024) % 64])
    config = model.config
    assert (config.max_position_embeddings, config.attention_impl, config.attention_window) == (
        1024, "sparse", 32)
    flat = dict(jax.tree_util.tree_leaves_with_path(params))
    for path, value in jax.tree_util.tree_leaves_with_path(src_params):
        if "position_embeddings" not in jax.tree_util.keystr(path):
            assert np.array_equal(flat[path], value), jax.tree_util.keystr(path)
    assert Tokenizer.from_pretrained(root / "long").model_max_length == 1024

    ids = jnp.asarray(np.random.default_rng(0).integers(5, 100, size=(1, 1030)), jnp.int32)
    with pytest.raises(ValueError, match="exceeds the 1024 positions"):
        model.apply({"params": params}, ids)
    logits = jax.jit(model.apply)({"params": params}, ids[:, :1024]).logits
    assert logits.shape == (1, 1024, 100) and bool(jnp.isfinite(logits).all())


def test_roberta_keeps_its_padding_offset_rows(tmp_path):
    src_params = _checkpoint(tmp_path / "roberta", RobertaConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=66))
    extend_position_embeddings(tmp_path / "roberta", tmp_path / "long", max_positions=300,
                               attention_window=16, format="hf")
    model, params = flaxbert.from_pretrained(tmp_path / "long", attention_impl="sparse",
                                             attention_window=16)
    old, new = _position_table(src_params), _position_table(params)
    assert new.shape == (302, 32) and model.config.max_sequence_length == 300
    assert np.array_equal(new[:66], old)
    assert np.array_equal(new[2:], old[2 + np.arange(300) % 64])


def test_extend_refuses_bad_requests(extended, capsys):
    root, _ = extended
    with pytest.raises(FileExistsError, match="already exists"):
        extend_position_embeddings(root / "bert", root / "long", max_positions=1024)
    with pytest.raises(ValueError, match=r"bert: max_positions=64 must exceed the 64 tokens"):
        extend_position_embeddings(root / "bert", root / "short", max_positions=64)
    assert not (root / "short").exists()

    args = ["extend-positions", str(root / "bert"), str(root / "cli"), "--max-positions", "256",
            "--attention-window", "16"]
    assert cli.main(args) == 0
    assert cli.main(args) == 2
    assert "already exists" in capsys.readouterr().err
    assert cli.main(args + ["--overwrite"]) == 0
    model, params = flaxbert.from_pretrained(root / "cli")
    assert _position_table(params).shape == (256, 32) and model.config.attention_window == 16
