"""Which parameters train under a PEFT config, and an optimizer that leaves the rest alone."""
from __future__ import annotations

import flax.linen as nn
import jax
import numpy as np
import optax

from flaxbert.layers.config import EncoderConfig
from flaxbert.layers.peft import is_peft_path


def trainable_mask(params, config: EncoderConfig):
    """A tree of bools like `params` (boxed or not): True for LoRA / adapter weights and the task
    head (everything outside `backbone`), False for the frozen backbone. peft="none": all True.
    The optimizer (`freeze`) and the train step (which differentiates only the True leaves, via
    flaxbert.training.optim.trainable_leaves) both follow it, so they cannot disagree."""
    def trains(path, _):
        names = [k.key for k in path if isinstance(k, jax.tree_util.DictKey)]
        return config.peft == "none" or names[0] != "backbone" or is_peft_path(names)
    # A boxed leaf (nn.Partitioned) is one leaf, so the labels of a boxed tree and of the
    # unboxed one give optimizer states of the same structure (the trainer shards by the former).
    return jax.tree_util.tree_map_with_path(
        trains, params, is_leaf=lambda x: isinstance(x, nn.meta.AxisMetadata))


def freeze(tx: optax.GradientTransformation, config: EncoderConfig) -> optax.GradientTransformation:
    """`tx` on the trainable leaves only: frozen ones get zero updates (so stay bit-identical,
    weight decay included) and hold no optimizer state. Put it inside `optax.apply_if_finite`
    and around any clipping, so the clipped norm is the trainable gradients'."""
    if config.peft == "none":
        return tx

    def labels(params):
        return jax.tree_util.tree_map(lambda t: "train" if t else "frozen",
                                      trainable_mask(params, config))  # bools: leaves either way
    return optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)


def trainable_count(params, config: EncoderConfig) -> int:
    """Parameters that train (abstract shapes do: nothing is allocated)."""
    mask = jax.tree_util.tree_leaves(trainable_mask(params, config))
    return int(sum(np.prod(np.shape(x)) for x, t in zip(jax.tree_util.tree_leaves(params), mask)
                   if t))


def optimizer_state_bytes(tx: optax.GradientTransformation, params) -> int:
    """Bytes of `tx`'s state for `params` (abstract shapes do: traced, not run)."""
    state = jax.eval_shape(tx.init, params)
    return int(sum(np.prod(x.shape) * np.dtype(x.dtype).itemsize
                   for x in jax.tree_util.tree_leaves(state)))
