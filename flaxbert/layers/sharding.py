"""Logical axis names and the one place that maps them to mesh axes.

Every parameter in flaxbert is created with logical axis names and key activations carry logical
constraints (t5x / MaxText style). Which mesh axis a logical name lands on is decided only here, by
`LOGICAL_AXIS_RULES`, or by the rules a training config passes in. A single device is a 1x1x1 mesh.
"""
from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")

# Parameter axes: vocab, embed, heads, kv, mlp, positions, types, classes, layers.
# Activation axes carry an `act_` prefix so that, for example, a parameter's `embed` can be
# FSDP-sharded while the activation's hidden dimension stays whole.
LOGICAL_AXIS_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("kv", None),
    ("mlp", "tensor"),
    ("positions", None),
    ("types", None),
    ("classes", None),
    ("conv_width", None),
    ("layers", None),
    # The output side of an embed->embed projection (pooler, MLM transform, ALBERT/ELECTRA
    # factorised embeddings), kept whole so the two sides of one kernel never share a mesh axis.
    ("embed_proj", None),
    ("act_batch", ("data", "fsdp")),
    ("act_length", None),
    ("act_embed", None),
    ("act_heads", "tensor"),
    ("act_kv", None),
    ("act_mlp", "tensor"),
    ("act_vocab", "tensor"),
)

HIDDEN = ("act_batch", "act_length", "act_embed")
HEADS = ("act_batch", "act_length", "act_heads", "act_kv")
MLP = ("act_batch", "act_length", "act_mlp")


def constrain(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
    """Logical sharding constraint; a no-op outside a mesh + rules context."""
    return nn.with_logical_constraint(x, tuple(names))


def param_init(init_fn, names: Sequence[str | None]):
    """Wrap an initializer so the parameter carries logical axis names."""
    return nn.with_logical_partitioning(init_fn, tuple(names))


def make_mesh(data: int = -1, fsdp: int = 1, tensor: int = 1, devices=None) -> Mesh:
    """A (data, fsdp, tensor) mesh over `devices` (all by default); -1 takes what is left."""
    devices = np.asarray(jax.devices() if devices is None else devices)
    sizes = [data, fsdp, tensor]
    if sizes.count(-1) > 1:
        raise ValueError(f"at most one mesh axis may be -1, got data={data} fsdp={fsdp} tensor={tensor}")
    known = int(np.prod([s for s in sizes if s != -1]))
    if -1 in sizes:
        if devices.size % known:
            raise ValueError(f"{devices.size} devices do not divide into fsdp*tensor={known}")
        sizes[sizes.index(-1)] = devices.size // known
    if int(np.prod(sizes)) != devices.size:
        raise ValueError(f"mesh {dict(zip(MESH_AXES, sizes))} needs {int(np.prod(sizes))} devices, "
                         f"have {devices.size}")
    return Mesh(devices.reshape(sizes), MESH_AXES)


def logical_shardings(abstract_boxed_tree, mesh: Mesh, rules=LOGICAL_AXIS_RULES):
    """NamedShardings for a tree of boxed (nn.Partitioned) abstract values, e.g. from eval_shape(init)."""
    specs = nn.get_partition_spec(abstract_boxed_tree)
    return nn.logical_to_mesh_sharding(specs, mesh, rules)


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def sharded_init(init_fn, mesh: Mesh, rules=LOGICAL_AXIS_RULES, *args):
    """The one sharded-init recipe: eval_shape -> logical specs -> shardings -> jit(out_shardings).

    `init_fn(*args)` must return a boxed variable tree (what `module.init` returns). Returns the
    unboxed tree, each leaf created directly with its sharding (nothing is materialised whole).
    """
    abstract = jax.eval_shape(init_fn, *args)
    shardings = logical_shardings(abstract, mesh, rules)
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        boxed = jax.jit(init_fn, out_shardings=shardings)(*args)
    return nn.meta.unbox(boxed)
