"""Position-wise feed-forward (intermediate + output projections) and the activations configs name."""
from __future__ import annotations

import functools

import flax.linen as nn
import jax

from flaxbert.layers import peft, sharding
from flaxbert.layers.config import EncoderConfig

# transformers' ACT2FN names -> JAX. "gelu" is the exact erf form, as in BERT and transformers.
ACTIVATIONS = {
    "gelu": functools.partial(jax.nn.gelu, approximate=False),
    "gelu_new": functools.partial(jax.nn.gelu, approximate=True),
    "gelu_pytorch_tanh": functools.partial(jax.nn.gelu, approximate=True),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
    "tanh": jax.numpy.tanh,
}


def activation(name: str):
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; known: {sorted(ACTIVATIONS)}") from None


def dense(cfg: EncoderConfig, features: int, axes: tuple[str, str], name: str, **kwargs) -> nn.Dense:
    """A Dense layer with transformers' init (normal(initializer_range), zero bias) and logical axes."""
    return nn.Dense(
        features, dtype=cfg.compute_dtype, param_dtype=cfg.weights_dtype, name=name,
        kernel_init=sharding.param_init(nn.initializers.normal(cfg.initializer_range), axes),
        bias_init=sharding.param_init(nn.initializers.zeros, axes[-1:]), **kwargs)


def layer_norm(cfg: EncoderConfig, name: str, axis_name: str = "embed",
               epsilon: float | None = None) -> nn.LayerNorm:
    """`epsilon` overrides layer_norm_eps (MobileBERT keeps torch's 1e-5 on two of its norms)."""
    # use_fast_variance=False: the two-pass variance, as torch computes it.
    return nn.LayerNorm(
        epsilon=cfg.layer_norm_eps if epsilon is None else epsilon,
        dtype=cfg.compute_dtype, param_dtype=cfg.weights_dtype,
        use_fast_variance=False, name=name,
        scale_init=sharding.param_init(nn.initializers.ones, (axis_name,)),
        bias_init=sharding.param_init(nn.initializers.zeros, (axis_name,)))


def projection(cfg: EncoderConfig, target: str, x, deterministic: bool = True):
    """The feed-forward's `wi` (target "mlp_in") or `wo` ("mlp_out"), plus its LoRA term."""
    features, axes = ((cfg.intermediate_size, ("embed", "mlp")) if target == "mlp_in"
                      else (cfg.hidden_size, ("mlp", "embed")))
    return (dense(cfg, features, axes, peft.LORA_MODULES[target])(x)
            + peft.lora(cfg, target, (features,), axes[:1], axes[1:], deterministic)(x))


class FeedForward(nn.Module):
    config: EncoderConfig
    deterministic: bool = True

    @nn.compact
    def __call__(self, x):
        cfg = self.config
        h = projection(cfg, "mlp_in", x, self.deterministic)
        h = sharding.constrain(activation(cfg.hidden_act)(h), sharding.MLP)
        h = projection(cfg, "mlp_out", h, self.deterministic)
        return nn.Dropout(cfg.hidden_dropout_prob, deterministic=self.deterministic)(h)
