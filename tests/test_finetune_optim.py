"""Fine-tuning's optimizer options on real task-model trees: layer-wise lr decay (unrolled,
scanned, ALBERT's shared layer), a head learning rate, a frozen encoder and gradual unfreezing.
Multipliers are measured, not recomputed: one AdamW step on unit gradients with and without the
option, whose ratio is the leaf's effective lr multiplier. Optimizer steps run on a sample of
each model's real leaves (one per module: XLA compiles per leaf); depths are checked on every
leaf of every family."""
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import traverse_util

import flaxbert
from flaxbert.training import param_groups
from flaxbert.training.optim import DEFAULTS, make_optimizer, nonfinite_counts

SMALL = dict(vocab_size=64, hidden_size=16, num_attention_heads=2, intermediate_size=32,
             max_position_embeddings=16, num_labels=3)


def _abstract(name, task="sequence-classification", **overrides):
    """Boxed abstract params, as the trainer's eval_shape of init holds them."""
    model = flaxbert.create_model(name, task, **{**SMALL, **overrides})
    ids = jnp.zeros((1, 2, 8) if task == "multiple-choice" else (1, 8), jnp.int32)
    return jax.eval_shape(lambda: model.init({"params": jax.random.PRNGKey(0)}, ids)["params"])


def _trees(name, **overrides):
    """(boxed abstract, concrete) params holding one leaf of each module of the real tree."""
    kept = {}
    for path, leaf in traverse_util.flatten_dict(_abstract(name, **overrides)).items():
        kept.setdefault(path[:3], (path, leaf))
    boxed = traverse_util.unflatten_dict(dict(kept.values()))
    rng = np.random.RandomState(0)
    params = jax.tree_util.tree_map(lambda a: jnp.asarray(0.02 * rng.randn(*a.shape), a.dtype),
                                    nn.meta.unbox(boxed))
    return boxed, params


@pytest.fixture(scope="module")
def bert():
    return _trees("bert-tiny", num_hidden_layers=3)


def _cfg(**options):
    return {**DEFAULTS, "learning_rate": 1e-3, "decay": "constant", "weight_decay": 0.0,
            "clip_norm": 0.0, **options}


def _flat(tree):
    return traverse_util.flatten_dict(tree, sep="/")


def _init(tx, boxed, params):
    """As the trainer does: shardings come from the state of the boxed tree, so it must unbox to
    the structure of the real state."""
    state = tx.init(params)
    assert (jax.tree_util.tree_structure(nn.get_partition_spec(jax.eval_shape(tx.init, boxed)))
            == jax.tree_util.tree_structure(state))
    return state


def _first_update(trees, **options):
    boxed, params = trees
    tx, _ = make_optimizer(_cfg(**options), 10, params=boxed)
    state = tx.init(params) if boxed is None else _init(tx, boxed, params)
    updates, _ = jax.jit(tx.update)(jax.tree_util.tree_map(jnp.ones_like, params), state, params)
    return _flat(updates)


@pytest.fixture(scope="module")
def plain_step():
    """AdamW's first update of a unit gradient without options: the same number for any leaf."""
    return float(_first_update((None, {"w": jnp.ones(3)}))["w"][0])


def _multipliers(trees, plain_step, **options):
    return {k: np.asarray(v) / plain_step for k, v in _first_update(trees, **options).items()}


def _expected_depth(path, num_layers):
    """The depth the docs promise, written independently of flaxbert.training.param_groups."""
    if not path.startswith("backbone/") or path.startswith("backbone/pooler/"):
        return num_layers + 1
    if m := re.match(r"backbone/encoder/(?:layers_|group_)(\d+)", path):
        return int(m.group(1)) + 1
    if path.startswith("backbone/encoder/layers/"):
        return list(range(1, num_layers + 1))
    return 0


@pytest.mark.parametrize("name, task, overrides", [
    ("bert-tiny", "sequence-classification", {}), ("roberta-tiny", "token-classification", {}),
    ("distilbert-tiny", "question-answering", {}), ("electra-tiny", "multiple-choice", {}),
    ("xlnet-tiny", "sequence-classification", {}), ("deberta-v3-tiny", "sequence-classification",
                                                    {}),
    ("albert-tiny", "sequence-classification", dict(num_hidden_groups=2, num_hidden_layers=4)),
    ("bert-tiny", "masked-lm", dict(scan_layers=True)),
    ("xlnet-tiny", "question-answering", dict(scan_layers=True)),
])
def test_every_leaf_of_every_family_gets_its_depth(name, task, overrides):
    tree = _abstract(name, task, **{"num_hidden_layers": 3, **overrides})
    num = overrides.get("num_hidden_groups", 3)
    got, head = param_groups.depths(tree)
    assert head == num + 1
    got = _flat(nn.meta.unbox(got))
    assert {k for k in got} == set(_flat(nn.meta.unbox(tree)))
    for path, depth in got.items():
        assert np.asarray(depth).tolist() == _expected_depth(path, num), path
    assert {0, 1, num, num + 1} <= {d for v in got.values() for d in np.ravel(v)}


def _leaf(flat, prefix):
    return next(v for k, v in flat.items() if k.startswith(prefix))


@pytest.mark.parametrize("family", ["bert", "deberta"])
def test_layer_decay_and_head_lr_multiply_each_leaf_by_the_formula(family, bert, plain_step):
    trees = bert if family == "bert" else _trees("deberta-v3-tiny", num_hidden_layers=3)
    got = _multipliers(trees, plain_step, layer_decay=0.5, head_learning_rate=4e-3)
    depths = {k: _expected_depth(k, 3) for k in got}
    assert set(depths.values()) == {0, 1, 2, 3, 4}
    for path, ratio in got.items():
        want = 4.0 if depths[path] == 4 else 0.5 ** (4 - depths[path])
        np.testing.assert_allclose(ratio, want, rtol=1e-6, err_msg=path)
    if family == "bert":
        np.testing.assert_allclose(_leaf(got, "backbone/pooler/"), 4.0)  # trains with the head
    if family == "deberta":  # shared by every layer: with the embeddings, at the lowest rate
        np.testing.assert_allclose(got["backbone/encoder/rel_embeddings/embedding"], 0.5 ** 4)


def test_layer_decay_scales_scanned_layers_per_slice(plain_step):
    got = _multipliers(_trees("bert-tiny", num_hidden_layers=3, scan_layers=True), plain_step,
                       layer_decay=0.5)
    stacked = [v for k, v in got.items() if k.startswith("backbone/encoder/layers/")]
    assert stacked and all(v.shape[0] == 3 for v in stacked)
    for v in stacked:  # layer i at depth i + 1 of D = 4: 0.5^3, 0.5^2, 0.5
        np.testing.assert_allclose(v, np.broadcast_to(
            np.array([0.125, 0.25, 0.5]).reshape((3,) + (1,) * (v.ndim - 1)), v.shape), rtol=1e-6)
    np.testing.assert_allclose(_leaf(got, "backbone/embeddings/"), 0.5 ** 4)
    np.testing.assert_allclose(_leaf(got, "classifier/"), 1.0)


def test_albert_shared_layer_is_one_depth(plain_step):
    got = _multipliers(_trees("albert-tiny"), plain_step, layer_decay=0.5)
    # depths: embeddings (and embeddings_project) 0, the one shared layer 1, head 2
    np.testing.assert_allclose(_leaf(got, "backbone/embeddings_project/"), 0.25)
    np.testing.assert_allclose(_leaf(got, "backbone/encoder/group_0_layer_0/"), 0.5)
    np.testing.assert_allclose(_leaf(got, "classifier/"), 1.0)


def _run(trees, steps, **options):
    """`steps` AdamW steps (weight decay 0.1) with random gradients: (grads, params, state)
    after each step, the first entry being the start."""
    boxed, params = trees
    tx, _ = make_optimizer(_cfg(weight_decay=0.1, **options), 100, params=boxed)
    state = _init(tx, boxed, params)
    update = jax.jit(tx.update)
    history, rng = [(None, _flat(params), state)], np.random.RandomState(0)
    for _ in range(steps):
        grads = jax.tree_util.tree_map(lambda p: jnp.asarray(rng.randn(*p.shape), p.dtype), params)
        updates, state = update(grads, state, params)
        params = optax.apply_updates(params, updates)
        history.append((_flat(grads), _flat(params), state))
    return history


def _adam_states(state):
    return [s for s in jax.tree_util.tree_leaves(
        state, is_leaf=lambda s: isinstance(s, optax.ScaleByAdamState))
        if isinstance(s, optax.ScaleByAdamState)]


def test_frozen_encoder_is_bit_identical_and_has_no_moments(bert):
    history = _run(bert, 4, freeze_encoder=True)
    before, after, state = history[0][1], history[-1][1], history[-1][2]
    for path, value in after.items():
        if path.startswith(("classifier/", "backbone/pooler/")):
            assert not np.array_equal(value, before[path]), path
        else:
            assert np.asarray(value).tobytes() == np.asarray(before[path]).tobytes(), path
    # Adam holds moments for the head only: no memory spent on the frozen encoder.
    (adam,) = _adam_states(state)
    head = [k for k in before if k.startswith(("classifier/", "backbone/pooler/"))]
    assert len(head) == 3 and len(before) == 10  # embeddings 4, layers 3
    assert (sum(x.size for x in jax.tree_util.tree_leaves(adam.mu))
            == sum(before[k].size for k in head))


def test_gradual_unfreezing_opens_one_depth_every_n_steps_from_the_top(bert):
    """unfreeze_every=2 on 3 layers: head at step 0, layer 2 at 2, layer 1 at 4, layer 0 at 6,
    embeddings at 8. Until then a depth is bit-identical with its Adam state untouched; when it
    opens, its first update is a first Adam step (own step count: no stale bias correction)."""
    history = _run(bert, 10, unfreeze_every=2)
    prefixes = {"head": "classifier/", "layer_2": "backbone/encoder/layers_2/",
                "layer_1": "backbone/encoder/layers_1/", "layer_0": "backbone/encoder/layers_0/",
                "embeddings": "backbone/embeddings/"}
    opened = {}
    for name, prefix in prefixes.items():
        for path in [k for k in history[0][1] if k.startswith(prefix)]:
            values = [np.asarray(h[1][path]) for h in history]
            changed = [i for i in range(10) if values[i + 1].tobytes() != values[i].tobytes()]
            assert changed == list(range(changed[0], 10)), (path, changed)  # open: every step
            opened.setdefault(name, changed[0])
            assert opened[name] == changed[0], path
            g = np.asarray(history[changed[0] + 1][0][path])
            decays = "bias" not in path.rsplit("/", 1)[-1] and not path.endswith("/scale")
            first_adam = g / (np.abs(g) + DEFAULTS["eps"]) + 0.1 * decays * values[changed[0]]
            np.testing.assert_allclose(values[changed[0] + 1] - values[changed[0]],
                                       -1e-3 * first_adam, rtol=1e-4, atol=1e-9, err_msg=path)
    assert opened == {"head": 0, "layer_2": 2, "layer_1": 4, "layer_0": 6, "embeddings": 8}

    # After 7 steps the embeddings (depth 0) are closed: moments zero, step count 0.
    inner = [s for s in jax.tree_util.tree_leaves(
        history[7][2], is_leaf=lambda s: isinstance(s, optax.transforms.PartitionState))
        if isinstance(s, optax.transforms.PartitionState)][-1].inner_states  # the Adam gate
    adam = {g: _adam_states(s)[0] for g, s in inner.items()}
    assert {g: int(a.count) for g, a in adam.items()} == {
        "depth_0": 0, "depth_1": 1, "depth_2": 3, "depth_3": 5, "depth_4": 7}
    assert not any(np.any(np.asarray(x)) for x in jax.tree_util.tree_leaves(adam["depth_0"].mu))


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


def test_nonfinite_steps_are_still_skipped_and_counted():
    params = {"backbone": {"embeddings": {"w": jnp.ones(2)}, "encoder": {"layers_0": {
        "w": jnp.ones(2)}}}, "classifier": {"w": jnp.ones(2)}}
    tx, _ = make_optimizer(_cfg(unfreeze_every=1, layer_decay=0.8), 10)  # options, no params
    step = jax.jit(tx.update)
    state = tx.init(params)
    grads = jax.tree_util.tree_map(jnp.ones_like, params)
    updates, state = step({**grads, "classifier": {"w": jnp.array([1.0, jnp.nan])}}, state, params)
    assert not any(np.any(np.asarray(u)) for u in jax.tree_util.tree_leaves(updates))
    assert [int(x) for x in nonfinite_counts(state)] == [1, 1]
    updates, state = step(grads, state, params)  # the skipped step did not count: head only
    assert [bool(np.any(np.asarray(u))) for u in jax.tree_util.tree_leaves(updates)] == [
        False, False, True]
    assert [int(x) for x in nonfinite_counts(state)] == [0, 1]


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
