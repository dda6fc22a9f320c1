"""The Trainer's step differentiates only what can train: under LoRA and freeze_encoder it gives
the full-gradient step's losses and updates, keeps the frozen leaves bit-identical, and its
traced program forms no gradient of a frozen kernel (the full-gradient path, which the step was
before and which gradual unfreezing still takes, forms one for each)."""
import json

import flax.linen as nn
import jax
import numpy as np
import optax
import pytest

from conftest import set_fields, tiny_bert_checkpoint
from flaxbert.training.finetune import finetune_config
from flaxbert.training.trainer import Trainer

WORDS = "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima".split()
STEPS = 3
# name -> config fields; LoRA also accumulates gradients over two microbatches.
CASES = {"lora": {"model_overrides.peft": "lora", "train.num_microbatches": 2},
         "freeze_encoder": {"optimizer.freeze_encoder": True}}


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    """A tiny BERT directory and a labelled file (the label is whether 'alpha' occurs)."""
    root = tmp_path_factory.mktemp("trainable_step")
    rs = np.random.RandomState(0)
    model = tiny_bert_checkpoint(root, [" ".join(rs.choice(WORDS, 8)) for _ in range(100)],
                                 vocab_size=80)
    rows = []
    for _ in range(64):
        words = list(rs.choice(WORDS, rs.randint(3, 10)))
        rows.append({"sentence": " ".join(words), "label": "yes" if "alpha" in words else "no"})
    (root / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root, model


def _trainer(task, workdir, fields, full_gradients=False) -> Trainer:
    root, model = task
    c = finetune_config(model=str(model))
    c.data.train = str(root / "train.jsonl")
    c.task.max_seq_length = 16
    c.train.num_steps, c.train.global_batch_size = 10, 8
    c.optimizer.learning_rate, c.optimizer.weight_decay = 1e-2, 0.1  # decay must spare frozen
    c.model_overrides.hidden_dropout_prob = 0.1  # the rng reaches both steps alike
    trainer = Trainer(set_fields(c, **fields), workdir)
    if full_gradients:  # the step as it was: every leaf differentiated, the optimizer masks
        trainer.trainable = None
    return trainer


def _flat(params) -> dict:
    return {jax.tree_util.keystr(p): np.asarray(x)
            for p, x in jax.tree_util.tree_flatten_with_path(jax.device_get(params))[0]}


def _run(trainer, batches):
    state = trainer.init_state()
    initial = _flat(state.params)
    metrics = []
    for batch in batches:
        state, m = trainer.train_step(state, batch)
        metrics.append(jax.device_get(m))
    return initial, _flat(state.params), metrics, state


@pytest.fixture(scope="module", params=sorted(CASES))
def runs(request, task, tmp_path_factory):
    """name -> both steps' runs of STEPS identical batches from the same initial weights."""
    fields = CASES[request.param]
    workdir = tmp_path_factory.mktemp(request.param)
    trainer = _trainer(task, workdir / "trainable", fields)
    reference = _trainer(task, workdir / "full", fields, full_gradients=True)
    stream = trainer.batches()
    batches = [next(stream) for _ in range(STEPS)]
    return {"name": request.param, "trainer": trainer, "reference": reference,
            "batches": batches, "ours": _run(trainer, batches),
            "full": _run(reference, batches)}


def test_same_losses_and_updates_as_the_full_gradient_step(runs):
    trainer = runs["trainer"]
    assert trainer.trainable is not None and 0 < sum(trainer.trainable) < len(trainer.trainable)
    initial, ours, our_metrics, _ = runs["ours"]
    initial_full, full, full_metrics, _ = runs["full"]
    assert initial.keys() == initial_full.keys()
    for key in initial:
        np.testing.assert_array_equal(initial[key], initial_full[key], err_msg=key)
    np.testing.assert_allclose([m["loss"] for m in our_metrics],
                               [m["loss"] for m in full_metrics], rtol=1e-6, atol=0)
    trains = dict(zip(initial, trainer.trainable))
    for key, value in ours.items():
        if trains[key]:
            assert not np.array_equal(value, initial[key]), key  # it really trained
            np.testing.assert_allclose(value, full[key], rtol=1e-5, atol=1e-7, err_msg=key)
        else:  # bit-identical, weight decay included, on both paths
            np.testing.assert_array_equal(value, initial[key], err_msg=key)
            np.testing.assert_array_equal(full[key], initial[key], err_msg=key)
    assert [set(m) for m in our_metrics] == [set(m) for m in full_metrics]
    assert all(m["nonfinite_total"] == 0 for m in our_metrics)


@pytest.mark.parametrize("runs", ["freeze_encoder"], indirect=True)  # one batch, no microbatches
def test_grad_norm_is_the_trainable_gradients_norm(runs):
    """The old step's grad_norm also counted the frozen weights' gradients (nothing zeroed them
    before the metric); now it is the trainable ones' norm, which clipping measures."""
    trainer = runs["trainer"]
    _, _, our_metrics, _ = runs["ours"]
    _, _, full_metrics, _ = runs["full"]
    state = trainer.init_state()  # the first step's gradients of every leaf, with its key
    batch = trainer._global(runs["batches"][0])
    rng = jax.random.fold_in(state.rng, state.step)
    with jax.set_mesh(trainer.mesh), nn.logical_axis_rules(trainer.rules):
        grads = jax.jit(jax.grad(lambda p: trainer._loss(p, batch, rng, None, False)[0]))(
            state.params)
    leaves = jax.tree_util.tree_leaves(grads)
    trainable = optax.global_norm([g for g, t in zip(leaves, trainer.trainable) if t])
    assert float(optax.global_norm(leaves)) > 1.01 * float(trainable)  # frozen ones are not 0
    assert float(our_metrics[0]["grad_norm"]) == pytest.approx(float(trainable), rel=1e-5)
    assert float(full_metrics[0]["grad_norm"]) > 1.01 * float(our_metrics[0]["grad_norm"])


def _dims(shape) -> tuple:
    """A shape's sizes in order of size: a weight gradient may come out transposed."""
    return tuple(sorted(shape))


def _dot_output_dims(jaxpr) -> list[tuple]:
    """`_dims` of every dot_general's output in `jaxpr` and the jaxprs nested in it."""
    from jax.extend.core import ClosedJaxpr, Jaxpr
    shapes = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            shapes.append(_dims(eqn.outvars[0].aval.shape))
        for value in eqn.params.values():
            for sub in value if isinstance(value, (tuple, list)) else (value,):
                if isinstance(sub, ClosedJaxpr):
                    shapes += _dot_output_dims(sub.jaxpr)
                elif isinstance(sub, Jaxpr):
                    shapes += _dot_output_dims(sub)
    return shapes


def test_the_step_forms_no_frozen_kernel_gradient(runs):
    """A kernel's weight gradient is a dot_general with the kernel's own sizes (inputs x output
    gradients, maybe transposed); forward and input-gradient dots carry the batch and length
    axes. Count them for the frozen kernels whose sizes no trainable leaf has."""
    counts = {}
    for side in ("trainer", "reference"):
        trainer = runs[side]
        abstract = trainer.abstract_state()
        batch = {k: jax.ShapeDtypeStruct(np.shape(v), np.asarray(v).dtype,
                                         sharding=trainer.batch_sharding)
                 for k, v in runs["batches"][0].items()}
        with jax.set_mesh(trainer.mesh), nn.logical_axis_rules(trainer.rules):
            traced = trainer._train_step.trace(abstract, batch, trainer.frozen)
        shapes = _dot_output_dims(traced.jaxpr.jaxpr)
        leaves = jax.tree_util.tree_leaves(abstract.params)
        trains = runs["trainer"].trainable
        trainable_shapes = {_dims(x.shape) for x, t in zip(leaves, trains) if t}
        frozen_kernels = {_dims(x.shape) for x, t in zip(leaves, trains)
                          if not t and x.ndim >= 2 and _dims(x.shape) not in trainable_shapes}
        counts[side] = sum(s in frozen_kernels for s in shapes)
        assert frozen_kernels and any(s in trainable_shapes for s in shapes), side
    # Every encoder layer's frozen kernels get a weight gradient on the old path, none now.
    assert counts["reference"] >= 4 * 2 and counts["trainer"] == 0, counts


def test_nonfinite_gradients_still_skip_the_step(runs):
    """A NaN in a trainable weight makes every trainable gradient NaN: apply_if_finite, which
    now sees zeros for the frozen leaves, still skips the step and counts it."""
    trainer = runs["trainer"]
    state = trainer.init_state()
    leaves, treedef = jax.tree_util.tree_flatten(state.params)
    poisoned = next(i for i, t in enumerate(trainer.trainable) if t)
    leaves[poisoned] = leaves[poisoned] * np.nan
    state = state.replace(params=jax.tree_util.tree_unflatten(treedef, leaves))
    before = _flat(state.params)
    state, metrics = trainer.train_step(state, runs["batches"][0])
    assert int(metrics["nonfinite_total"]) == 1 and int(metrics["nonfinite_in_a_row"]) == 1
    after = _flat(state.params)
    for key in before:
        np.testing.assert_array_equal(after[key], before[key], err_msg=key)
