"""Optimizers and learning-rate schedules for pre-training, built from a config's `optimizer` block.

    lr: linear warmup to `learning_rate` over `warmup_steps`, then `decay` ("linear", "cosine",
        "polynomial" with `power`, or "constant") to `end_learning_rate` at `total_steps`.
    update: clip by global norm `clip_norm` -> AdamW (BERT, RoBERTa, ELECTRA) or LAMB (ALBERT,
        large-batch BERT), weight decay masked off biases and LayerNorm parameters ->
        `optax.apply_if_finite`, which skips any step whose gradients hold NaN/inf and counts it.

Everything here is optax; nothing is hand-written except choosing which pieces to chain.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import optax

SCHEDULES = ("linear", "cosine", "polynomial", "constant")
OPTIMIZERS = ("adamw", "lamb")
# apply_if_finite's own limit: after this many consecutive non-finite steps it applies updates
# anyway. The trainer halts long before (train.max_consecutive_nonfinite), so keep it out of reach.
_NEVER = 2**30
# The optimizer block of training.config.default_config, and what a key missing from `cfg` means.
DEFAULTS = dict(name="adamw", learning_rate=1e-4, warmup_steps=0, decay="linear",
                end_learning_rate=0.0, power=1.0, b1=0.9, b2=0.999, eps=1e-6, weight_decay=0.01,
                clip_norm=1.0)


def _get(cfg: Mapping[str, Any], name: str):
    default = DEFAULTS[name]
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


def make_optimizer(cfg: Mapping[str, Any], total_steps: int) -> tuple[optax.GradientTransformation,
                                                                      optax.Schedule]:
    """(clip -> AdamW | LAMB with masked decay, wrapped in apply_if_finite), and its schedule."""
    schedule = learning_rate_schedule(cfg, total_steps)  # checks every optimizer value
    kwargs = dict(b1=float(_get(cfg, "b1")), b2=float(_get(cfg, "b2")), eps=float(_get(cfg, "eps")),
                  weight_decay=float(_get(cfg, "weight_decay")), mask=decay_mask)
    name = _get(cfg, "name")
    update = optax.adamw(schedule, **kwargs) if name == "adamw" else optax.lamb(schedule, **kwargs)
    clip = _get(cfg, "clip_norm")
    chain = [optax.clip_by_global_norm(float(clip))] if clip else []
    return optax.apply_if_finite(optax.chain(*chain, update), _NEVER), schedule


def nonfinite_counts(opt_state) -> tuple[jax.Array, jax.Array]:
    """(consecutive, total) skipped non-finite steps, from apply_if_finite's state."""
    return opt_state.notfinite_count, opt_state.total_notfinite
