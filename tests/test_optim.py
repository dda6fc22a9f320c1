"""Optimizer pieces: schedules, the weight-decay mask, NaN/inf skipping, config checks."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from flaxbert.models.registry import create_model
from flaxbert.training.config import check_config, default_config
from flaxbert.training.optim import decay_mask, learning_rate_schedule, make_optimizer, nonfinite_counts


@pytest.mark.parametrize("decay", ["linear", "cosine", "polynomial", "constant"])
def test_schedule_warms_up_then_decays(decay):
    cfg = {"learning_rate": 1e-3, "warmup_steps": 10, "decay": decay, "end_learning_rate": 1e-5,
           "power": 2.0}
    lr = learning_rate_schedule(cfg, 110)
    values = np.array([float(lr(s)) for s in range(111)])
    assert values[0] == 0.0
    np.testing.assert_allclose(values[5], 5e-4, rtol=1e-6)  # linear warmup
    np.testing.assert_allclose(values[10], 1e-3, rtol=1e-6)  # peak
    assert np.all(np.diff(values[:11]) > 0)
    if decay == "constant":
        np.testing.assert_allclose(values[10:], 1e-3, rtol=1e-6)
    else:
        assert np.all(np.diff(values[10:]) <= 1e-12)
        np.testing.assert_allclose(values[110], 1e-5, rtol=1e-4)
    if decay == "linear":
        np.testing.assert_allclose(values[60], (1e-3 + 1e-5) / 2, rtol=1e-5)


def test_weight_decay_skips_biases_and_layernorm_on_boxed_and_plain_trees():
    model = create_model("bert-tiny", "pretraining", vocab_size=64)
    boxed = jax.eval_shape(lambda r: model.init(r, jnp.ones((1, 8), jnp.int32))["params"],
                           jax.random.PRNGKey(0))
    plain = nn.meta.unbox(boxed)
    for tree in (boxed, plain):
        flat = jax.tree_util.tree_flatten_with_path(decay_mask(tree))[0]
        names = {"/".join(str(getattr(k, "key", "")) for k in p).rstrip("/"): v for p, v in flat}
        assert names["backbone/encoder/layers_0/attention/query/kernel"]
        assert names["backbone/embeddings/word_embeddings/embedding"]
        assert not names["backbone/encoder/layers_0/attention/query/bias"]
        assert not names["backbone/encoder/layers_0/mlp_norm/scale"]
        assert not names["mlm_head/bias"]


def test_decay_touches_only_masked_parameters():
    params = {"dense": {"kernel": jnp.ones((2, 2)), "bias": jnp.ones((2,))},
              "norm": {"scale": jnp.ones((2,))}}
    tx, _ = make_optimizer({"learning_rate": 0.1, "weight_decay": 0.5, "clip_norm": 0}, 10)
    state = tx.init(params)
    zero = jax.tree_util.tree_map(jnp.zeros_like, params)
    updates, _ = tx.update(zero, state, params)
    assert float(jnp.abs(updates["dense"]["kernel"]).max()) > 0  # decayed
    assert float(jnp.abs(updates["dense"]["bias"]).max()) == 0
    assert float(jnp.abs(updates["norm"]["scale"]).max()) == 0


@pytest.mark.parametrize("name", ["adamw", "lamb"])
def test_nonfinite_gradients_are_skipped_and_counted(name):
    params = {"w": jnp.ones((3,))}
    tx, _ = make_optimizer({"name": name, "learning_rate": 0.1}, 10)
    state = tx.init(params)
    good = {"w": jnp.ones((3,))}
    bad = {"w": jnp.array([1.0, jnp.nan, 1.0])}
    updates, state = tx.update(bad, state, params)
    assert float(jnp.abs(updates["w"]).max()) == 0  # skipped: params would not move
    assert tuple(int(x) for x in nonfinite_counts(state)) == (1, 1)
    updates, state = tx.update(bad, state, params)
    assert tuple(int(x) for x in nonfinite_counts(state)) == (2, 2)
    updates, state = tx.update(good, state, params)
    assert float(jnp.abs(updates["w"]).max()) > 0
    assert tuple(int(x) for x in nonfinite_counts(state)) == (0, 2)


def test_clipping_bounds_the_global_norm():
    params = {"w": jnp.zeros((4,))}
    tx, _ = make_optimizer({"learning_rate": 1.0, "warmup_steps": 0, "decay": "constant",
                            "clip_norm": 1.0, "weight_decay": 0.0, "name": "adamw"}, 10)
    # Adam normalises, so check the clip transform in the chain directly on a huge gradient.
    clip = optax.clip_by_global_norm(1.0)
    clipped, _ = clip.update({"w": jnp.full((4,), 100.0)}, clip.init(params))
    np.testing.assert_allclose(float(optax.global_norm(clipped)), 1.0, rtol=1e-6)
    updates, _ = tx.update({"w": jnp.full((4,), 100.0)}, tx.init(params), params)
    assert np.all(np.isfinite(np.asarray(updates["w"])))


@pytest.mark.parametrize("field, value, message", [
    ("train.num_steps", 0, "train.num_steps"),
    ("train.num_microbatches", 3, "num_microbatches"),
    ("optimizer.name", "sgd", "optimizer.name"),
    ("optimizer.decay", "step", "optimizer.decay"),
    ("optimizer.warmup_steps", 5000, "warmup_steps"),
    ("data.mlm_probability", 1.5, "mlm_probability"),
    ("data.train", "", "data.train is empty"),
    ("mesh.fsdp", 0, "mesh.fsdp"),
])
def test_bad_config_values_name_the_field(field, value, message):
    c = default_config()
    c.data.train = "somewhere"
    section, key = field.split(".")
    c[section][key] = value
    with pytest.raises(ValueError, match=message):
        check_config(c)


def test_unknown_optimizer_is_refused():
    with pytest.raises(ValueError, match="optimizer.name='sgd'"):
        make_optimizer({"name": "sgd"}, 10)
