"""Fine-tuning's optimizer options on real task-model trees: layer-wise lr decay (unrolled,
scanned, ALBERT's shared layer), a head learning rate, a frozen encoder and gradual unfreezing.
Multipliers are measured, not recomputed: one AdamW step on unit gradients with and without the
option, whose ratio is the leaf's effective lr multiplier."""
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import traverse_util

import flaxbert
from flaxbert.training.optim import DEFAULTS, make_optimizer, nonfinite_counts

SMALL = dict(vocab_size=64, hidden_size=16, num_attention_heads=2, intermediate_size=32,
             max_position_embeddings=16, num_labels=3)


def _trees(name, task="sequence-classification", **overrides):
    """(boxed, plain) params; the trainer inits the optimizer on the boxed tree."""
    model = flaxbert.create_model(name, task, **SMALL, **overrides)
    boxed = model.init({"params": jax.random.PRNGKey(0)}, jnp.zeros((1, 8), jnp.int32))["params"]
    return boxed, nn.meta.unbox(boxed)


@pytest.fixture(scope="module")
def bert():
    return _trees("bert-tiny", num_hidden_layers=3)


def _cfg(**options):
    return dict(DEFAULTS, learning_rate=1e-3, decay="constant", weight_decay=0.0, clip_norm=0.0,
                **options)


def _flat(tree):
    return traverse_util.flatten_dict(tree, sep="/")


def _first_update(trees, **options):
    boxed, params = trees
    tx, _ = make_optimizer(_cfg(**options), 10, params=boxed)
    state = jax.tree_util.tree_map(jnp.asarray, nn.meta.unbox(tx.init(boxed)))
    updates, _ = tx.update(jax.tree_util.tree_map(jnp.ones_like, params), state, params)
    return _flat(updates)


def _multipliers(trees, **options):
    plain, scaled = _first_update(trees), _first_update(trees, **options)
    return {k: np.asarray(scaled[k] / plain[k]) for k in plain}


def _expected_depth(path, num_layers):
    """The depth the docs promise, written independently of flaxbert.training.param_groups."""
    if not path.startswith("backbone/") or path.startswith("backbone/pooler/"):
        return num_layers + 1
    if m := re.match(r"backbone/encoder/(?:layers_|group_)(\d+)", path):
        return int(m.group(1)) + 1
    return 0


@pytest.mark.parametrize("family", ["bert", "electra", "deberta"])
def test_layer_decay_and_head_lr_multiply_each_leaf_by_the_formula(family, bert):
    trees = bert if family == "bert" else _trees(
        {"electra": "electra-tiny", "deberta": "deberta-v3-tiny"}[family], num_hidden_layers=3)
    got = _multipliers(trees, layer_decay=0.5, head_learning_rate=4e-3)
    depths = {k: _expected_depth(k, 3) for k in got}
    assert set(depths.values()) == {0, 1, 2, 3, 4}
    for path, ratio in got.items():
        want = 4.0 if depths[path] == 4 else 0.5 ** (4 - depths[path])
        np.testing.assert_allclose(ratio, want, rtol=1e-6, err_msg=path)
    if family == "bert":
        assert depths["backbone/pooler/dense/kernel"] == 4  # the pooler trains with the head
    if family == "deberta":  # shared by every layer: with the embeddings, at the lowest rate
        np.testing.assert_allclose(got["backbone/encoder/rel_embeddings/embedding"], 0.5 ** 4)


def test_layer_decay_scales_scanned_layers_per_slice():
    got = _multipliers(_trees("bert-tiny", num_hidden_layers=3, scan_layers=True),
                       layer_decay=0.5)
    kernel = got["backbone/encoder/layers/attention/query/kernel"]
    assert kernel.shape[0] == 3
    np.testing.assert_allclose(kernel, np.broadcast_to(
        np.array([0.25, 0.5, 1.0]).reshape(3, 1, 1, 1) * 0.5, kernel.shape), rtol=1e-6)
    np.testing.assert_allclose(got["backbone/embeddings/word_embeddings/embedding"], 0.5 ** 4)
    np.testing.assert_allclose(got["classifier/dense/kernel"], 1.0)


def test_albert_shared_layer_is_one_depth():
    got = _multipliers(_trees("albert-tiny"), layer_decay=0.5)
    # depths: embeddings (and embeddings_project) 0, the one shared layer 1, head 2
    np.testing.assert_allclose(got["backbone/embeddings_project/kernel"], 0.25)
    np.testing.assert_allclose(got["backbone/encoder/group_0_layer_0/mlp/wi/kernel"], 0.5)
    np.testing.assert_allclose(got["classifier/dense/kernel"], 1.0)


def _run(trees, steps, **options):
    """`steps` AdamW steps (weight decay on) with random gradients: params after each step,
    the final optimizer state, and the optimizer."""
    boxed, params = trees
    tx, _ = make_optimizer(_cfg(weight_decay=0.1, **options), 100, params=boxed)
    state = jax.tree_util.tree_map(jnp.asarray, nn.meta.unbox(tx.init(boxed)))
    update = jax.jit(tx.update)
    history, rng = [], np.random.RandomState(0)
    for _ in range(steps):
        grads = jax.tree_util.tree_map(lambda p: jnp.asarray(rng.randn(*p.shape), p.dtype), params)
        updates, state = update(grads, state, params)
        params = optax.apply_updates(params, updates)
        history.append(_flat(params))
    return history, state, tx


def test_frozen_encoder_is_bit_identical_and_has_no_moments(bert):
    history, state, _ = _run(bert, 4, freeze_encoder=True)
    before = _flat(bert[1])
    for path, value in history[-1].items():
        if path.startswith("classifier/") or path.startswith("backbone/pooler/"):
            assert not np.array_equal(value, before[path]), path
        else:
            assert np.asarray(value).tobytes() == np.asarray(before[path]).tobytes(), path
    # Adam holds moments for the head only: no memory spent on the frozen encoder.
    adam = [s for s in jax.tree_util.tree_leaves(
        state, is_leaf=lambda s: isinstance(s, optax.ScaleByAdamState))
        if isinstance(s, optax.ScaleByAdamState)]
    assert len(adam) == 1
    assert sum(x.size for x in jax.tree_util.tree_leaves(adam[0].mu)) == 16 * 16 + 16 + 16 * 3 + 3


def test_gradual_unfreezing_opens_one_depth_every_n_steps_from_the_top(bert):
    """unfreeze_every=2 on 3 layers: head at step 0, layer 2 at 2, layer 1 at 4, layer 0 at 6,
    embeddings at 8; until then each is bit-identical, its Adam state untouched."""
    history, state, tx = _run(bert, 10, unfreeze_every=2)
    groups = {"head": "classifier/dense/kernel", "layer_2": "backbone/encoder/layers_2/mlp/wi/kernel",
              "layer_1": "backbone/encoder/layers_1/mlp/wi/kernel",
              "layer_0": "backbone/encoder/layers_0/attention_norm/scale",
              "embeddings": "backbone/embeddings/word_embeddings/embedding"}
    first_change = {}
    for name, path in groups.items():
        values = [_flat(bert[1])[path]] + [h[path] for h in history]
        changed = [i for i in range(10) if values[i + 1].tobytes() != values[i].tobytes()]
        first_change[name] = changed[0]
        assert changed == list(range(changed[0], 10)), (name, changed)  # open: every step
    assert first_change == {"head": 0, "layer_2": 2, "layer_1": 4, "layer_0": 6, "embeddings": 8}

    # After 7 steps the embeddings are still closed: their moments and step count never moved.
    _, state7, _ = _run(bert, 7, unfreeze_every=2)
    adam = _adam_by_group(state7)
    assert int(adam["depth_0"].count) == 0
    assert all(not np.any(np.asarray(x)) for x in jax.tree_util.tree_leaves(adam["depth_0"].mu))
    assert {g: int(a.count) for g, a in adam.items()} == {
        "depth_0": 0, "depth_1": 1, "depth_2": 3, "depth_3": 5, "depth_4": 7}


def _adam_by_group(state):
    """depth label -> the ScaleByAdamState of that depth's own optimizer."""
    partitions = [s for s in jax.tree_util.tree_leaves(
        state, is_leaf=lambda s: isinstance(s, optax.transforms.PartitionState))
        if isinstance(s, optax.transforms.PartitionState)]
    inner = partitions[-1].inner_states  # the second gate holds Adam
    return {g: s.inner_state.inner_state[0] for g, s in inner.items()}


def test_newly_unfrozen_layer_starts_adam_fresh(bert):
    """Its own step count: the first update of a layer opened at step 2 is a first Adam step
    (|update| = lr on unit gradients), not one with a stale bias correction."""
    boxed, params = bert
    tx, _ = make_optimizer(_cfg(unfreeze_every=2), 100, params=boxed)
    state = jax.tree_util.tree_map(jnp.asarray, nn.meta.unbox(tx.init(boxed)))
    ones = jax.tree_util.tree_map(jnp.ones_like, params)
    update = jax.jit(tx.update)
    for _ in range(3):
        updates, state = update(ones, state, params)
    top = np.asarray(_flat(updates)["backbone/encoder/layers_2/mlp/wi/kernel"])
    np.testing.assert_allclose(-top, 1e-3, rtol=1e-4)


def test_default_options_keep_the_pretraining_optimizer(bert):
    _, params = bert
    cfg = dict(DEFAULTS, weight_decay=0.01)
    tx, schedule = make_optimizer(cfg, 10)  # no params: the old call
    from flaxbert.training.optim import decay_mask
    old = optax.apply_if_finite(optax.chain(
        optax.clip_by_global_norm(1.0),
        optax.adamw(schedule, b1=0.9, b2=0.999, eps=1e-6, weight_decay=0.01, mask=decay_mask)),
        2**30)
    assert (jax.tree_util.tree_structure(tx.init(params))
            == jax.tree_util.tree_structure(old.init(params)))  # old checkpoints still restore


def test_nonfinite_steps_are_still_skipped_and_counted(bert):
    boxed, params = bert
    tx, _ = make_optimizer(_cfg(unfreeze_every=1, layer_decay=0.8), 10)  # options, no params
    state = tx.init(params)
    grads = jax.tree_util.tree_map(jnp.ones_like, params)
    grads["classifier"]["dense"]["bias"] = grads["classifier"]["dense"]["bias"].at[0].set(jnp.nan)
    updates, state = tx.update(grads, state, params)
    assert all(not np.any(np.asarray(u)) for u in jax.tree_util.tree_leaves(updates))
    assert [int(x) for x in nonfinite_counts(state)] == [1, 1]


@pytest.mark.parametrize("options, message", [
    (dict(layer_decay=0.0), "optimizer.layer_decay=0.0 must be in (0, 1]"),
    (dict(layer_decay=1.5), "optimizer.layer_decay=1.5 must be in (0, 1]"),
    (dict(head_learning_rate=-1e-3), "optimizer.head_learning_rate=-0.001 must be >= 0"),
    (dict(unfreeze_every=-1), "optimizer.unfreeze_every=-1 must be an int >= 0"),
    (dict(unfreeze_every=2.5), "optimizer.unfreeze_every=2.5 must be an int >= 0"),
    (dict(freeze_encoder=1), "optimizer.freeze_encoder=1 must be True or False"),
    (dict(freeze_encoder=True, unfreeze_every=3),
     "optimizer.unfreeze_every=3 contradicts freeze_encoder=True"),
    (dict(freeze_encoder=True, layer_decay=0.9),
     "optimizer.layer_decay=0.9 has no effect with freeze_encoder=True"),
])
def test_bad_values_are_refused_naming_the_field(options, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        make_optimizer(_cfg(**options), 10)


def test_options_refuse_trees_they_cannot_split():
    boxed, _ = _trees("bert-tiny", num_hidden_layers=2, scan_layers=True)
    with pytest.raises(ValueError, match=r"optimizer.unfreeze_every=2 needs scan_layers=False"):
        make_optimizer(_cfg(unfreeze_every=2), 10, params=boxed)
    with pytest.raises(ValueError, match=r"optimizer.layer_decay needs a task model's parameters "
                                         r"\('backbone' and a head\); got top-level keys \['w'\]"):
        make_optimizer(_cfg(layer_decay=0.9), 10, params={"w": jnp.zeros(3)})
    tx, _ = make_optimizer(_cfg(freeze_encoder=True), 10)  # checked at init without params
    with pytest.raises(ValueError, match=r"optimizer.freeze_encoder: no encoder layers"):
        tx.init({"backbone": {"embeddings": jnp.zeros(3)}, "head": jnp.zeros(2)})
