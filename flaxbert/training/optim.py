"""Optimizers and learning-rate schedules for pre-training, built from a config's `optimizer` block.

    lr: linear warmup to `learning_rate` over `warmup_steps`, then `decay` ("linear", "cosine",
        "polynomial" with `power`, or "constant") to `end_learning_rate` at `total_steps`.
    update: clip by global norm `clip_norm` -> AdamW (BERT, RoBERTa, ELECTRA) or LAMB (ALBERT,
        large-batch BERT), weight decay masked off biases and LayerNorm parameters ->
        `optax.apply_if_finite`, which skips any step whose gradients hold NaN/inf and counts it.

Fine-tuning adds (fields of finetune_config's optimizer block, FINETUNE_DEFAULTS; depths as in
flaxbert.training.param_groups: embeddings 0, layer i at i + 1, head and pooler at D = L + 1):

    layer_decay         lr x layer_decay^(D - depth): the head trains at full lr, the top layer at
                        lr x decay, the embeddings at lr x decay^D (1: off). Scanned layers get a
                        per-slice multiplier along their leading axis.
    head_learning_rate  the head's peak lr, on the same warmup/decay shape (0: learning_rate)
    freeze_encoder      only the head trains (a linear probe); the rest has no optimizer state
    unfreeze_every      N > 0: the head trains from step 0, the top layer from step N, the next
                        from 2N, ..., the embeddings from D x N. Each depth has its own Adam state
                        (optax.transforms.conditionally_mask), so while frozen its moments and
                        step count stay as they were and its updates (weight decay too) are
                        exactly zero; the lr schedule follows the global step. Needs unrolled
                        layers (scan_layers=False): one scanned leaf cannot hold per-layer counts.

Steps are the optimizer's own count: updates applied, so NaN/inf steps skipped do not count.
Everything here is optax; nothing is hand-written except choosing which pieces to chain.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax

from flaxbert.training import param_groups

SCHEDULES = ("linear", "cosine", "polynomial", "constant")
OPTIMIZERS = ("adamw", "lamb")
# apply_if_finite's own limit: after this many consecutive non-finite steps it applies updates
# anyway. The trainer halts long before (train.max_consecutive_nonfinite), so keep it out of reach.
_NEVER = 2**30
# The optimizer block of training.config.default_config, and what a key missing from `cfg` means.
DEFAULTS = dict(name="adamw", learning_rate=1e-4, warmup_steps=0, decay="linear",
                end_learning_rate=0.0, power=1.0, b1=0.9, b2=0.999, eps=1e-6, weight_decay=0.01,
                clip_norm=1.0)
# Fine-tuning's extra fields (finetune_config adds them); the defaults leave every option off.
FINETUNE_DEFAULTS = dict(layer_decay=1.0, head_learning_rate=0.0, freeze_encoder=False,
                         unfreeze_every=0)


def _get(cfg: Mapping[str, Any], name: str):
    default = {**DEFAULTS, **FINETUNE_DEFAULTS}[name]
    return cfg.get(name, default) if hasattr(cfg, "get") else getattr(cfg, name, default)


def check_optimizer(cfg: Mapping[str, Any], total_steps: int) -> None:
    """Raise ValueError naming the first bad optimizer value. The one place these rules live:
    `check_config` runs them before a run starts, `make_optimizer` for direct callers."""
    def need(ok, message):
        if not ok:
            raise ValueError(f"optimizer.{message}")

    name, decay, peak, end = (_get(cfg, k) for k in ("name", "decay", "learning_rate",
                                                      "end_learning_rate"))
    need(name in OPTIMIZERS, f"name={name!r}; choose one of {OPTIMIZERS}")
    need(decay in SCHEDULES, f"decay={decay!r}; choose one of {SCHEDULES}")
    need(peak > 0, f"learning_rate={peak} must be > 0")
    need(0 <= _get(cfg, "warmup_steps") <= total_steps,
         f"warmup_steps={_get(cfg, 'warmup_steps')} must be in [0, train.num_steps={total_steps}]")
    need(0 <= end <= peak, f"end_learning_rate={end} must be in [0, learning_rate={peak}]")
    need(_get(cfg, "power") > 0, f"power={_get(cfg, 'power')} must be > 0")
    for beta in ("b1", "b2"):
        need(0 <= _get(cfg, beta) < 1, f"{beta}={_get(cfg, beta)} must be in [0, 1)")
    need(_get(cfg, "eps") > 0, f"eps={_get(cfg, 'eps')} must be > 0")
    need(_get(cfg, "weight_decay") >= 0, f"weight_decay={_get(cfg, 'weight_decay')} must be >= 0")
    need(_get(cfg, "clip_norm") >= 0,
         f"clip_norm={_get(cfg, 'clip_norm')} must be >= 0 (0 turns clipping off)")
    decay, head, freeze, every = (_get(cfg, k) for k in FINETUNE_DEFAULTS)
    need(0 < decay <= 1, f"layer_decay={decay} must be in (0, 1] (1 turns it off)")
    need(head >= 0, f"head_learning_rate={head} must be >= 0 (0: learning_rate)")
    need(isinstance(freeze, bool), f"freeze_encoder={freeze!r} must be True or False")
    need(isinstance(every, int) and not isinstance(every, bool) and every >= 0,
         f"unfreeze_every={every!r} must be an int >= 0 (0 turns it off)")
    need(not (freeze and every), f"unfreeze_every={every} contradicts freeze_encoder=True; "
                                 "choose one")
    need(not (freeze and decay != 1), f"layer_decay={decay} has no effect with "
                                      "freeze_encoder=True (only the head trains); leave it 1")


def learning_rate_schedule(cfg: Mapping[str, Any], total_steps: int) -> optax.Schedule:
    """Warmup then decay; `cfg` is the config's optimizer block."""
    check_optimizer(cfg, total_steps)
    peak = float(_get(cfg, "learning_rate"))
    warmup = int(_get(cfg, "warmup_steps"))
    end = float(_get(cfg, "end_learning_rate"))
    decay = _get(cfg, "decay")
    decay_steps = max(total_steps - warmup, 1)
    if decay == "constant":
        after = optax.constant_schedule(peak)
    elif decay == "cosine":
        after = optax.cosine_decay_schedule(peak, decay_steps, alpha=end / peak)
    else:
        power = 1.0 if decay == "linear" else float(_get(cfg, "power"))
        after = optax.polynomial_schedule(peak, end, power, decay_steps)
    if warmup == 0:
        return after
    return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), after], [warmup])


def decay_mask(params) -> Any:
    """True where weight decay applies: not biases (any name with 'bias', e.g. XLNet's r_w_bias)
    and not LayerNorm scales, as in BERT's and transformers' recipes."""
    def decays(path, _):
        # The last dict key is the parameter's name (boxed trees add an attribute after it).
        name = next(str(k.key) for k in reversed(path) if isinstance(k, jax.tree_util.DictKey))
        return "bias" not in name and name != "scale"
    return jax.tree_util.tree_map_with_path(decays, params)


def make_optimizer(cfg: Mapping[str, Any], total_steps: int, params=None, model_config=None
                   ) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """(clip -> AdamW | LAMB with masked decay [-> fine-tuning options], wrapped in
    apply_if_finite), and its schedule. `params` (any tree with the parameters' paths and shapes:
    boxed, abstract or concrete) lets the fine-tuning options be checked against the model now;
    without it they are checked when the optimizer is initialised."""
    schedule = learning_rate_schedule(cfg, total_steps)  # checks every optimizer value
    kwargs = dict(b1=float(_get(cfg, "b1")), b2=float(_get(cfg, "b2")), eps=float(_get(cfg, "eps")),
                  weight_decay=float(_get(cfg, "weight_decay")), mask=decay_mask)
    name = _get(cfg, "name")
    clip = _get(cfg, "clip_norm")
    chain = [optax.clip_by_global_norm(float(clip))] if clip else []
    decay, head_lr, freeze, every = (_get(cfg, k) for k in FINETUNE_DEFAULTS)
    if params is not None and (decay != 1 or head_lr or freeze or every):
        _check_params(cfg, params)
    if every:
        # Adam (+ decay, + LAMB's trust ratio) per depth, each masked off until its step; the
        # first gate zeroes frozen gradients so that clipping measures only what trains.
        direction = optax.chain(
            optax.scale_by_adam(kwargs["b1"], kwargs["b2"], kwargs["eps"]),
            optax.add_decayed_weights(kwargs["weight_decay"], decay_mask),
            *([optax.scale_by_trust_ratio()] if name == "lamb" else []))
        gate = _unfreezing(cfg, every)
        chain = [gate(optax.identity()), *chain, gate(direction),
                 optax.scale_by_learning_rate(schedule)]
    else:
        update = (optax.adamw if name == "adamw" else optax.lamb)(schedule, **kwargs)
        if freeze:  # the rest gets no moments or decay at all; clipping measures the head only
            def labels(tree):
                return jax.tree_util.tree_map(lambda head: "head" if head else "frozen",
                                              param_groups.is_head(tree, _field(cfg)))
            chain = [optax.multi_transform({"head": optax.chain(*chain, update),
                                            "frozen": optax.set_to_zero()}, labels)]
        else:
            chain = [*chain, update]
    if decay != 1 or head_lr:
        chain.append(_scale_by_depth(cfg))
    tx = optax.chain(*chain)
    if getattr(model_config, "peft", "none") != "none":
        # Adapters / LoRA: only they and the head train; the base gets no update and no state.
        from flaxbert.peft import freeze
        tx = freeze(tx, model_config)
    return optax.apply_if_finite(tx, _NEVER), schedule


def trainable_leaves(cfg: Mapping[str, Any], params, model_config=None):
    """A tree of bools like `params` (boxed, abstract or concrete): True for the leaves the
    optimizer of `make_optimizer(cfg, ..., model_config=model_config)` can update at some step
    of the run, False for those it always hands a zero update (the base under PEFT, all but the
    head under freeze_encoder). None when that is every leaf, as under gradual unfreezing (each
    depth trains from its step on). The train step differentiates the True leaves only."""
    masks = []
    if _get(cfg, "freeze_encoder"):
        masks.append(param_groups.is_head(params, _field(cfg)))
    if getattr(model_config, "peft", "none") != "none":
        from flaxbert.peft import trainable_mask
        masks.append(trainable_mask(params, model_config))
    if not masks:
        return None
    trains = jax.tree_util.tree_map(lambda *flags: all(flags), *masks)
    return None if all(jax.tree_util.tree_leaves(trains)) else trains


def _field(cfg) -> str:
    """The first fine-tuning option in use, for errors about the model it is applied to."""
    return next((f"optimizer.{k}" for k in FINETUNE_DEFAULTS
                 if _get(cfg, k) != FINETUNE_DEFAULTS[k]), "optimizer")


def _check_params(cfg, params) -> None:
    """The fine-tuning options that depend on the model, as one line naming the field."""
    _, scanned = param_groups.num_layer_depths(params, _field(cfg))
    if scanned and _get(cfg, "unfreeze_every"):
        raise ValueError(f"optimizer.unfreeze_every={_get(cfg, 'unfreeze_every')} needs "
                         "scan_layers=False: a scanned stack keeps every layer in one leaf, "
                         "which cannot hold an Adam step count per layer")


def _unfreezing(cfg, every: int):
    """inner -> the same transform per depth, passing nothing (state untouched) until depth d's
    step (D - d) x every."""
    def labels(tree):
        _check_params(cfg, tree)
        return jax.tree_util.tree_map(lambda d: f"depth_{d}",
                                      param_groups.depths(tree, _field(cfg))[0])

    def gate(inner):
        def per_depth(tree):  # the labels need the tree; build the groups when it comes
            _, head = param_groups.depths(tree, _field(cfg))
            return {f"depth_{d}": optax.transforms.conditionally_mask(
                inner, lambda step, start=(head - d) * every: step >= start)
                for d in range(head + 1)}
        return _lazy_partition(per_depth, labels)
    return gate


def _lazy_partition(transforms_for, labels) -> optax.GradientTransformation:
    """optax.multi_transform whose group transforms depend on the tree (the number of depths)."""
    def init(params):
        return optax.multi_transform(transforms_for(params), labels).init(params)

    def update(updates, state, params=None):
        return optax.multi_transform(transforms_for(updates), labels).update(updates, state,
                                                                             params)
    return optax.GradientTransformation(init, update)


def _scale_by_depth(cfg) -> optax.GradientTransformation:
    """Multiply each leaf's update by head_learning_rate / learning_rate (head) and by
    layer_decay^(D - depth); a scanned leaf by one factor per layer along its leading axis."""
    decay = float(_get(cfg, "layer_decay"))
    head_lr = float(_get(cfg, "head_learning_rate"))
    head_ratio = head_lr / float(_get(cfg, "learning_rate")) if head_lr else 1.0

    def scale(updates, params=None):
        tree_depths, head = param_groups.depths(updates, _field(cfg))

        def times(u, d):
            d = jnp.asarray(d)
            factor = (decay ** (head - d).astype(jnp.float32)) * jnp.where(d == head,
                                                                            head_ratio, 1.0)
            return u * factor.reshape(factor.shape + (1,) * (u.ndim - factor.ndim)).astype(u.dtype)
        return jax.tree_util.tree_map(times, updates, tree_depths)
    return optax.stateless(scale)


def nonfinite_counts(opt_state) -> tuple[jax.Array, jax.Array]:
    """(consecutive, total) skipped non-finite steps, from apply_if_finite's state."""
    return opt_state.notfinite_count, opt_state.total_notfinite
