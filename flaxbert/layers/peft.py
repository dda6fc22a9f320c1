"""Parameter-efficient fine-tuning layers: LoRA beside a projection, bottleneck adapters.

Config fields choose them (`peft`, `lora_*`, `adapter_*`), so every family gets them from the
shared attention, feed-forward and block; XLNet's own attention calls the same `lora`. Each new
parameter lives in a module named `<projection>_lora` or `<sub-layer>_adapter` beside what it
changes, so base weights keep their checkpoint names and `is_peft_path` finds the new ones. Both
start as the identity (LoRA's B and the adapter's up-projection are zeros): a fresh PEFT model
computes exactly what its base model does.
"""
from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from flaxbert.layers import sharding
from flaxbert.layers.config import EncoderConfig

PEFT_SUFFIXES = ("_lora", "_adapter")
# lora_targets name -> the flax name of the projection it changes.
LORA_MODULES = {"query": "query", "key": "key", "value": "value", "output": "out",
                "mlp_in": "wi", "mlp_out": "wo"}


def is_peft_path(path) -> bool:
    """Whether a parameter path (strings or jax DictKeys) lies in a LoRA or adapter module."""
    names = (getattr(k, "key", k) for k in path)
    return any(isinstance(n, str) and n.endswith(PEFT_SUFFIXES) for n in names)


def lora_scale(cfg: EncoderConfig) -> float:
    return cfg.lora_alpha / cfg.lora_rank


def lora_kernel_delta(cfg: EncoderConfig, lora_params: dict, kernel_shape) -> jnp.ndarray:
    """(alpha / r) B A laid out like the projection's kernel, in float32.

    A is (in..., r) and B (r, out...), so their product is (in..., out...): every flaxbert kernel
    except XLNet's `o`, which is stored (out, in...); no other layout has the same shape, since
    hidden = heads x head_dim."""
    a, b = (jnp.asarray(lora_params[k], jnp.float32) for k in ("a", "b"))
    delta = jnp.tensordot(a, b, axes=1) * lora_scale(cfg)
    if delta.shape != tuple(kernel_shape):
        delta = jnp.moveaxis(delta, -1, 0)  # XLNet's output projection
    if delta.shape != tuple(kernel_shape):
        raise ValueError(f"LoRA factors {a.shape} x {b.shape} do not fit a kernel {kernel_shape}")
    return delta


def apply_lora_params(cfg: EncoderConfig, lora_params: dict, x):
    """The LoRA term of already created factors (DeBERTa reuses the key projection on its
    relative-position table, and so must its LoRA)."""
    a, b = (jnp.asarray(lora_params[k], cfg.compute_dtype) for k in ("a", "b"))
    h = jnp.tensordot(x.astype(cfg.compute_dtype), a, axes=a.ndim - 1)
    return jnp.tensordot(h, b, axes=1) * jnp.asarray(lora_scale(cfg), cfg.compute_dtype)


class LoRA(nn.Module):
    """(alpha / r) B A x for x whose trailing dims (`in_axes`) a projection maps to `features`."""

    config: EncoderConfig
    features: tuple[int, ...]
    in_axes: tuple[str, ...]
    out_axes: tuple[str, ...]
    deterministic: bool = True

    @nn.compact
    def __call__(self, x):
        cfg = self.config
        n_in = len(self.in_axes)
        # A as PEFT initialises it (kaiming-uniform, a=sqrt(5): U(+-1/sqrt(fan_in))); B zero.
        a_init = nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform",
                                                  in_axis=tuple(range(n_in)), out_axis=-1)
        a = self.param("a", sharding.param_init(a_init, self.in_axes + ("lora_rank",)),
                       x.shape[-n_in:] + (cfg.lora_rank,), cfg.weights_dtype)
        b = self.param("b", sharding.param_init(nn.initializers.zeros,
                                                ("lora_rank",) + self.out_axes),
                       (cfg.lora_rank,) + tuple(self.features), cfg.weights_dtype)
        x = nn.Dropout(cfg.lora_dropout, deterministic=self.deterministic)(x)
        return apply_lora_params(cfg, {"a": a, "b": b}, x)


def lora(cfg: EncoderConfig, target: str, features, in_axes, out_axes,
         deterministic: bool = True, projection: str | None = None):
    """The LoRA module for projection `target` (a LORA_TARGETS name), or a function returning 0
    when the config puts none there. Create it once, in the module that owns the projection;
    `projection` is that projection's flax name where it is not the shared one (XLNet's q, k, v,
    o): `merge_lora` folds `<projection>_lora` into it."""
    if cfg.peft != "lora" or target not in cfg.lora_targets:
        return lambda x: 0.0
    return LoRA(cfg, tuple(features), tuple(in_axes), tuple(out_axes), deterministic,
                name=f"{projection or LORA_MODULES[target]}_lora")


class Adapter(nn.Module):
    """h + up(act(down(h))), a bottleneck of width adapter_size; up starts at zero."""

    config: EncoderConfig

    @nn.compact
    def __call__(self, h):
        from flaxbert.layers.feed_forward import activation  # it imports this module
        cfg = self.config

        def proj(features, axes, init, name):
            return nn.Dense(features, dtype=cfg.compute_dtype, param_dtype=cfg.weights_dtype,
                            name=name, kernel_init=sharding.param_init(init, axes),
                            bias_init=sharding.param_init(nn.initializers.zeros, axes[-1:]))

        z = proj(cfg.adapter_size, ("embed", "adapter"),
                 nn.initializers.normal(cfg.initializer_range), "down")(h)
        return h + proj(h.shape[-1], ("adapter", "embed"), nn.initializers.zeros, "up")(
            activation(cfg.adapter_act)(z))


def adapter(cfg: EncoderConfig, sublayer: str):
    """The adapter for `sublayer`'s output ("attention" or "mlp"), or the identity when the
    config puts none there (Houlsby: both sub-layers; Pfeiffer: the feed-forward only)."""
    if cfg.peft == "houlsby" or (cfg.peft == "pfeiffer" and sublayer == "mlp"):
        return Adapter(cfg, name=f"{sublayer}_adapter")
    return lambda h: h

