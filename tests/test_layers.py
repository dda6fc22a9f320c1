"""Shared layers: attention implementations, scan/remat equivalence, logical axes, sharding."""
import textwrap

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import flaxbert
from flaxbert.layers.attention import dot_product_attention
from flaxbert.layers.encoder import stack_layers, unstack_layers
from conftest import run_on_8_cpu_devices, token_batch


def _qkv(seed=0, b=3, s=7, n=2, h=8):
    k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
    return (jax.random.normal(k, (b, s, n, h)) for k in (k1, k2, k3))


def test_cudnn_path_matches_reference_on_right_padding(caplog):
    q, k, v = _qkv()
    mask = jnp.array([[1] * 7, [1] * 4 + [0] * 3, [1] + [0] * 6])
    ref, probs = dot_product_attention(q, k, v, mask=mask, impl="xla", return_probs=True)
    assert probs.shape == (3, 2, 7, 7)
    np.testing.assert_allclose(np.asarray(probs.sum(-1)), 1.0, rtol=1e-6)
    assert float(probs[1, :, :, 4:].max()) == 0.0  # padded keys get no weight
    out, none = dot_product_attention(q, k, v, mask=mask, impl="cudnn")
    assert none is None
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), atol=1e-5)
    if jax.default_backend() != "gpu":
        assert "cuDNN attention needs a CUDA GPU" in caplog.text or caplog.text == ""  # warned once


def test_cudnn_path_poisons_masks_it_cannot_express():
    q, k, v = _qkv()
    mask = jnp.array([[1] * 7, [0, 0, 1, 1, 1, 1, 1], [1, 0, 1, 0, 1, 0, 1]])  # left pad, holes
    out = np.asarray(dot_product_attention(q, k, v, mask=mask, impl="cudnn")[0])
    assert np.isfinite(out[0]).all()
    assert np.isnan(out[1]).all() and np.isnan(out[2]).all()
    with pytest.raises(ValueError, match="attention probabilities need attention_impl='xla'"):
        dot_product_attention(q, k, v, mask=mask, impl="cudnn", return_probs=True)


def test_model_with_cudnn_impl_matches_xla():
    model = flaxbert.create_model("bert-tiny", "base", vocab_size=99)
    params = flaxbert.init_params(model)
    ids, mask, types = token_batch()
    a = model.apply({"params": params}, ids, mask, types).last_hidden_state
    cudnn = model.clone(config=model.config.replace(attention_impl="cudnn"))
    b = cudnn.apply({"params": params}, ids, mask, types).last_hidden_state
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)


def test_every_parameter_has_logical_axes():
    for task in flaxbert.TASKS:
        for scan in (False, True):
            model = flaxbert.create_model("bert-tiny", task, scan_layers=scan)
            boxed = jax.eval_shape(lambda: model.init(jax.random.key(0), **model.dummy_inputs()))
            leaves = jax.tree_util.tree_leaves(boxed["params"],
                                               is_leaf=lambda x: isinstance(x, nn.Partitioned))
            for leaf in leaves:
                assert isinstance(leaf, nn.Partitioned), (task, leaf)
                assert len(leaf.names) == leaf.value.ndim and None not in leaf.names
                assert (leaf.names[0] == "layers") == (scan and leaf.value.ndim > 0 and
                                                       "layers" in leaf.names)


def _loss_and_grads(model, params, ids, mask):
    def loss(p):
        return jnp.mean(model.apply({"params": p}, ids, mask).logits ** 2)
    return jax.value_and_grad(loss)(params)


@pytest.mark.parametrize("policy", ["full", "dots", "attention_out"])
def test_scan_and_remat_give_the_same_loss_and_grads(policy):
    ids, mask, _ = token_batch()
    unrolled = flaxbert.create_model("bert-tiny", "masked-lm", vocab_size=99)
    params = flaxbert.init_params(unrolled)
    scanned = flaxbert.create_model("bert-tiny", "masked-lm", vocab_size=99, scan_layers=True,
                                    remat_policy=policy)
    loss_a, grads_a = _loss_and_grads(unrolled, params, ids, mask)
    loss_b, grads_b = _loss_and_grads(scanned, stack_layers(params), ids, mask)
    np.testing.assert_allclose(float(loss_a), float(loss_b), rtol=1e-6)
    for a, b in zip(jax.tree_util.tree_leaves(grads_a),
                    jax.tree_util.tree_leaves(unstack_layers(grads_b))):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)


def test_bfloat16_compute_stays_close_to_float32():
    model = flaxbert.create_model("bert-tiny", "base", vocab_size=99)
    params = flaxbert.init_params(model)
    ids, mask, types = token_batch()
    ref = model.apply({"params": params}, ids, mask, types).last_hidden_state
    bf16 = model.clone(config=model.config.replace(dtype="bfloat16"))
    out = bf16.apply({"params": params}, ids, mask, types).last_hidden_state
    assert out.dtype == jnp.bfloat16
    assert float(jnp.abs(out.astype(jnp.float32) - ref).max()) < 0.1
    half = flaxbert.init_params(model.clone(config=model.config.replace(param_dtype="bfloat16")))
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree_util.tree_leaves(half))


MESH_SCRIPT = textwrap.dedent("""
    import jax, jax.numpy as jnp, numpy as np, flax.linen as nn
    import flaxbert
    from flaxbert.layers import sharding
    assert jax.device_count() == 8
    ids = np.random.RandomState(0).randint(1, 99, (8, 16))
    mask = np.ones_like(ids); mask[3, 9:] = 0
    for name, scan in (("bert-tiny", False), ("bert-tiny", True), ("deberta-v3-tiny", True)):
        model = flaxbert.create_model(name, "masked-lm", vocab_size=128, scan_layers=scan)
        ref_params = flaxbert.init_params(model, 0)
        ref = model.apply({"params": ref_params}, ids, mask).logits
        for data, fsdp, tensor in ((8, 1, 1), (2, 4, 1), (2, 2, 2), (4, 1, 2)):
            mesh = sharding.make_mesh(data, fsdp, tensor)
            init = lambda k: model.init(k, **model.dummy_inputs())
            params = sharding.sharded_init(init, mesh, sharding.LOGICAL_AXIS_RULES,
                                           jax.random.key(0))["params"]
            kernel = params["backbone"]["encoder"]["layers" if scan else "layers_0"]["mlp"]["wi"]["kernel"]
            if tensor > 1:
                assert not kernel.sharding.is_fully_replicated
            with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.LOGICAL_AXIS_RULES):
                out = jax.jit(lambda p, i, m: model.apply({"params": p}, i, m).logits)(params, ids, mask)
            err = float(jnp.abs(out - ref).max())
            assert err < 1e-5, (name, scan, data, fsdp, tensor, err)
    print("mesh ok")
""")


def test_sharded_init_and_forward_on_an_8_device_mesh():
    assert "mesh ok" in run_on_8_cpu_devices(MESH_SCRIPT)
