"""Position-wise feed-forward (intermediate + output projections) and the activations configs name."""
from __future__ import annotations

import functools

import flax.linen as nn
import jax

from flaxbert.layers import sharding
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


def layer_norm(cfg: EncoderConfig, name: str, axis_name: str = "embed") -> nn.LayerNorm:
    # use_fast_variance=False: the two-pass variance, as torch computes it.
    return nn.LayerNorm(
        epsilon=cfg.layer_norm_eps, dtype=cfg.compute_dtype, param_dtype=cfg.weights_dtype,
        use_fast_variance=False, name=name,
        scale_init=sharding.param_init(nn.initializers.ones, (axis_name,)),
        bias_init=sharding.param_init(nn.initializers.zeros, (axis_name,)))


class FeedForward(nn.Module):
    config: EncoderConfig
    deterministic: bool = True

    @nn.compact
    def __call__(self, x):
        cfg = self.config
        h = dense(cfg, cfg.intermediate_size, ("embed", "mlp"), "wi")(x)
        h = sharding.constrain(activation(cfg.hidden_act)(h), sharding.MLP)
        h = dense(cfg, cfg.hidden_size, ("mlp", "embed"), "wo")(h)
        return nn.Dropout(cfg.hidden_dropout_prob, deterministic=self.deterministic)(h)
