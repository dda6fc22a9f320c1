"""Post-LN transformer block and the layer stack (unrolled, or `nn.scan` with optional remat)."""
from __future__ import annotations

import re

import flax.linen as nn
import jax
from jax.ad_checkpoint import checkpoint_name
import jax.numpy as jnp

from flaxbert.layers import peft, sharding
from flaxbert.layers.attention import SelfAttention
from flaxbert.layers.config import EncoderConfig
from flaxbert.layers.feed_forward import FeedForward, layer_norm

# Named remat policies; "none" disables rematerialisation.
REMAT_POLICIES = {
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "attention_out": jax.checkpoint_policies.save_only_these_names("attention_out"),
}


def rematerialised(block: type[nn.Module], cfg: EncoderConfig) -> type[nn.Module]:
    """`block` wrapped in nn.remat with the config's named policy ("none": unchanged)."""
    if cfg.remat_policy == "none":
        return block
    return nn.remat(block, policy=REMAT_POLICIES[cfg.remat_policy], prevent_cse=not cfg.scan_layers)


class TransformerBlock(nn.Module):
    """x -> LN(x + Attn(x)) -> LN(. + FFN(.)), BERT's post-LN layer (adapters, when configured,
    on Attn's and FFN's outputs).

    Returns (x, (x or None, probs or None)) so that the same block serves the unrolled loop and
    `nn.scan` (whose per-layer outputs are the second element).
    """

    config: EncoderConfig
    deterministic: bool = True
    output_attentions: bool = False
    collect_hidden: bool = False
    attention: type[nn.Module] = SelfAttention

    @nn.compact
    def __call__(self, x, mask, *attention_args):
        cfg = self.config
        attn, probs = self.attention(cfg, self.deterministic, name="attention")(
            x, mask, *attention_args, output_attentions=self.output_attentions)
        attn = checkpoint_name(attn, "attention_out")
        attn = nn.Dropout(cfg.hidden_dropout_prob, deterministic=self.deterministic)(attn)
        # Adapters (config.peft) sit on each sub-layer's output, before the residual LayerNorm.
        x = layer_norm(cfg, "attention_norm")(x + peft.adapter(cfg, "attention")(attn))
        mlp = FeedForward(cfg, self.deterministic, name="mlp")(x)
        x = layer_norm(cfg, "mlp_norm")(x + peft.adapter(cfg, "mlp")(mlp))
        x = sharding.constrain(x, sharding.HIDDEN)
        return x, (x if self.collect_hidden else None, probs)


class Encoder(nn.Module):
    """`num_hidden_layers` blocks. Unrolled blocks are named layers_0..; scanned ones share `layers`
    with a leading `layers` axis on every parameter (see `stack_layers` / `unstack_layers`).

    Extra positional arguments go to every block's attention (DeBERTa's relative positions).
    Families may override `after_layer` (unrolled stacks only).
    """

    config: EncoderConfig
    deterministic: bool = True
    block: type[nn.Module] = TransformerBlock

    def after_layer(self, index: int, encoder_input, x, mask):
        return x

    def works_between_layers(self) -> bool:
        """True when `after_layer` does something for this config (then the stack can't scan)."""
        return False

    @nn.compact
    def __call__(self, x, mask, *, output_hidden_states: bool = False,
                 output_attentions: bool = False):
        return self.stack(x, mask, output_hidden_states=output_hidden_states,
                          output_attentions=output_attentions)

    def stack(self, x, mask, *attention_args, output_hidden_states: bool = False,
              output_attentions: bool = False):
        """The layer loop; families with their own `__call__` (DeBERTa) call it with extras."""
        cfg = self.config
        block = rematerialised(self.block, cfg)
        kwargs = dict(deterministic=self.deterministic, output_attentions=output_attentions,
                      collect_hidden=output_hidden_states)
        if cfg.scan_layers:
            if self.works_between_layers():
                raise ValueError(f"{type(self).__name__} runs code between layers; "
                                 "scan_layers=True cannot express that")
            stack = nn.scan(
                block, variable_axes={"params": 0}, split_rngs={"params": True, "dropout": True},
                in_axes=(nn.broadcast,) * (1 + len(attention_args)), length=cfg.num_hidden_layers,
                metadata_params={nn.PARTITION_NAME: "layers"})
            x, (hidden, probs) = stack(cfg, name="layers", **kwargs)(x, mask, *attention_args)
            return (x, None if hidden is None else tuple(hidden),
                    None if probs is None else tuple(probs))
        encoder_input, hidden, probs = x, [], []
        for i in range(cfg.num_hidden_layers):
            x, (_, p) = block(cfg, name=f"layers_{i}", **kwargs)(x, mask, *attention_args)
            x = self.after_layer(i, encoder_input, x, mask)
            hidden.append(x)
            probs.append(p)
        return (x, tuple(hidden) if output_hidden_states else None,
                tuple(probs) if output_attentions else None)


_LAYER = re.compile(r"layers_(\d+)$")


def unstack_layers(tree):
    """Scanned params ({'layers': leaves with a leading L axis}) -> {'layers_0': .., 'layers_1': ..}."""
    if not isinstance(tree, dict):
        return tree
    out = {}
    for key, value in tree.items():
        if key == "layers" and isinstance(value, dict):
            n = jax.tree_util.tree_leaves(value)[0].shape[0]
            for i in range(n):
                out[f"layers_{i}"] = jax.tree_util.tree_map(lambda a, i=i: a[i], value)
        else:
            out[key] = unstack_layers(value)
    return out


def stack_layers(tree):
    """Inverse of `unstack_layers`."""
    if not isinstance(tree, dict):
        return tree
    layers = sorted((int(m.group(1)), k) for k in tree if (m := _LAYER.match(k)))
    out = {k: stack_layers(v) for k, v in tree.items() if not _LAYER.match(k)}
    if layers:
        if [i for i, _ in layers] != list(range(len(layers))):
            raise ValueError(f"layer indices are not 0..{len(layers) - 1}: {[k for _, k in layers]}")
        out["layers"] = jax.tree_util.tree_map(
            lambda *xs: jnp.stack(xs), *[tree[k] for _, k in layers])
    return out
