"""Logical axis names and the one place that maps them to mesh axes.

Every parameter in flaxbert is created with logical axis names and key activations carry logical
constraints (t5x / MaxText style). Which mesh axis a logical name lands on is decided only here, by
`LOGICAL_AXIS_RULES`, or by the rules a training config passes in. A single device is a 1x1x1 mesh.

Rules must hold at every size: a dimension its mesh axes do not divide (a LayerNorm scale of 768
on fsdp=512, two heads on tensor=4) keeps only the axes that divide it, or with
indivisible="error" is refused by name before anything compiles (`check_layout`); the
vocabulary is padded for tensor parallelism instead (`vocab_pad_multiple`, EncoderConfig's
field of the same name). `make_mesh` lays the (data, fsdp, tensor) mesh along TPU links.
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


# How a dimension that its rule's mesh axes do not divide is laid out: "replicate" keeps the
# longest prefix of those axes that does divide (none: the dimension is whole on every chip);
# "error" refuses the layout, naming the parameter (check_layout).
INDIVISIBLE = ("replicate", "error")


def _has_topology(device) -> bool:
    """Whether the device kind has physical links to follow (TPU chips carry torus coords)."""
    return getattr(device, "platform", "") == "tpu" and hasattr(device, "coords")


def _device_grid(sizes: list[int], devices: np.ndarray) -> np.ndarray:
    """`devices` arranged as `sizes`: on TPU by jax's mesh_utils, which gives the last axes
    (tensor, then fsdp) the physical torus links, splitting a physical axis only where no
    assignment keeps them whole, and data over DCN across slices; elsewhere (CPU, and GPU,
    whose jax ordering is already by id) a plain reshape."""
    from jax.experimental import mesh_utils

    flat = list(devices.flat)
    if not _has_topology(flat[0]):
        return devices.reshape(sizes)
    slices = len({getattr(d, "slice_index", 0) for d in flat})
    if slices > 1:  # multi-slice: data crosses the data-centre network, the rest stays in a slice
        if sizes[0] % slices:
            raise ValueError(f"mesh data={sizes[0]} must be a multiple of the {slices} TPU slices "
                             "(the data axis spans slices)")
        return mesh_utils.create_hybrid_device_mesh(
            [sizes[0] // slices, *sizes[1:]], [slices, 1, 1], flat, allow_split_physical_axes=True)
    try:
        return mesh_utils.create_device_mesh(sizes, flat)
    except (ValueError, NotImplementedError, AssertionError):
        # e.g. (1, 2, 8) on a 4x4 v5e slice: no assignment keeps every physical axis whole.
        return mesh_utils.create_device_mesh(sizes, flat, allow_split_physical_axes=True)


def mesh_sizes(data: int = -1, fsdp: int = 1, tensor: int = 1, num_devices: int = 1) -> list[int]:
    """[data, fsdp, tensor] with the one -1 resolved to what `num_devices` leaves."""
    sizes = [data, fsdp, tensor]
    if sizes.count(-1) > 1:
        raise ValueError(f"at most one mesh axis may be -1, got data={data} fsdp={fsdp} tensor={tensor}")
    known = int(np.prod([s for s in sizes if s != -1]))
    if -1 in sizes:
        if num_devices % known:
            other = "*".join(n for n, s in zip(MESH_AXES, sizes) if s != -1)
            raise ValueError(f"{num_devices} devices do not divide into {other}={known}")
        sizes[sizes.index(-1)] = num_devices // known
    if int(np.prod(sizes)) != num_devices:
        raise ValueError(f"mesh {dict(zip(MESH_AXES, sizes))} needs {int(np.prod(sizes))} devices, "
                         f"have {num_devices}")
    return sizes


def make_mesh(data: int = -1, fsdp: int = 1, tensor: int = 1, devices=None) -> Mesh:
    """A (data, fsdp, tensor) mesh over `devices` (all by default); -1 takes what is left.

    On TPU the devices follow the torus (see `_device_grid`), so `tensor` and `fsdp` collectives
    run over direct links; on devices without a topology (CPU) it is the devices in order."""
    devices = np.asarray(jax.devices() if devices is None else devices, dtype=object)
    sizes = mesh_sizes(data, fsdp, tensor, devices.size)
    # Auto axes: shardings come from the logical rules and jit, not from array types.
    return Mesh(_device_grid(sizes, devices), MESH_AXES,
                axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES))


def vocab_pad_multiple(mesh: Mesh, lane: int = 128) -> int:
    """The vocab_pad_multiple a run on `mesh` gets by default: `lane` x tensor when the mesh
    splits the vocabulary over `tensor` (each shard a whole number of 128-wide MXU / vector lanes),
    0 (no padding, the checkpoint's exact shapes) otherwise."""
    tensor = mesh.shape.get("tensor", 1)
    return lane * tensor if tensor > 1 else 0


def describe_mesh(mesh: Mesh) -> str:
    return "mesh (" + ", ".join(f"{name}={size}" for name, size in mesh.shape.items()) + ")"


def _path_name(path) -> str:
    parts = []
    for key in path:
        for attr in ("key", "name", "idx"):
            if hasattr(key, attr):
                parts.append(str(getattr(key, attr)))
                break
        else:
            parts.append(str(key))
    return "/".join(parts)


def _rule_of(name, rules) -> str:
    for logical, target in rules:
        if logical == name:
            return f"{name!r} -> {target!r}"
    return f"{name!r} (no rule)"


def fit_spec(names: Sequence[str | None], shape: Sequence[int], mesh: Mesh, rules=LOGICAL_AXIS_RULES,
             what: str = "an array", indivisible: str = "replicate") -> tuple[PartitionSpec, list[str]]:
    """The mesh PartitionSpec for an array with logical axis `names` and `shape`, and a note for
    each dimension laid out other than its rule says.

    A dimension keeps the longest prefix of its rule's mesh axes whose product divides it, so a
    LayerNorm scale of 768 on fsdp=512, or 37 intermediate units on tensor=4, is whole on every
    chip instead of failing at compile time (with indivisible="error", it is refused). A rule
    naming a mesh axis this mesh does not have is always refused: nothing can place it."""
    if indivisible not in INDIVISIBLE:
        raise ValueError(f"indivisible={indivisible!r}; choose one of {INDIVISIBLE}")
    if len(names) != len(shape):
        raise ValueError(f"{what}: {len(names)} logical axis names {tuple(names)} for shape "
                         f"{tuple(shape)}")
    mesh_axes = nn.logical_to_mesh_axes(tuple(names), rules)
    out, notes = [], []
    for dim, (name, size, axes) in enumerate(zip(names, shape, mesh_axes)):
        axes = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
        unknown = [a for a in axes if a not in mesh.shape]
        if unknown:
            raise ValueError(f"cannot lay out {what} of shape {tuple(shape)}: rule "
                             f"{_rule_of(name, rules)} names mesh axis {unknown[0]!r}, which "
                             f"{describe_mesh(mesh)} does not have")
        kept, shards = [], 1
        for axis in axes:
            if size % (shards * mesh.shape[axis]):
                break
            kept.append(axis)
            shards *= mesh.shape[axis]
        if len(kept) < len(axes):
            split = "x".join(f"{a}={mesh.shape[a]}" for a in axes)
            problem = (f"{what} of shape {tuple(shape)}: dimension {dim} ({size}, rule "
                       f"{_rule_of(name, rules)}) does not divide over {split} in "
                       f"{describe_mesh(mesh)}")
            if indivisible == "error":
                raise ValueError(f"cannot lay out {problem} (mesh.indivisible='error'; pad it, "
                                 "change the rule or the mesh, or allow 'replicate')")
            notes.append(problem + (f"; sharded over {'x'.join(kept)} only" if kept
                                    else "; replicated"))
        out.append(None if not kept else kept[0] if len(kept) == 1 else tuple(kept))
    return PartitionSpec(*out), notes


def _is_box(x) -> bool:
    return isinstance(x, nn.Partitioned)


def check_layout(abstract_boxed_tree, mesh: Mesh, rules=LOGICAL_AXIS_RULES,
                 indivisible: str = "replicate"):
    """(NamedShardings, notes) for a tree of boxed abstract values (eval_shape of an init).

    Raises ValueError naming the parameter's path, shape, rule and the mesh when one cannot be
    laid out (with indivisible="error", every parameter that needs an uneven split, the first
    few by name); `notes` says which dimensions the "replicate" fallback kept whole. Leaves
    without logical names are replicated."""
    if indivisible not in INDIVISIBLE:
        raise ValueError(f"indivisible={indivisible!r}; choose one of {INDIVISIBLE}")
    notes: list[str] = []

    def one(path, leaf):
        if not _is_box(leaf):
            return NamedSharding(mesh, PartitionSpec())
        spec, leaf_notes = fit_spec(leaf.names, np.shape(leaf.value), mesh, rules,
                                    what=_path_name(path))
        notes.extend(leaf_notes)
        return NamedSharding(mesh, spec)

    shardings = jax.tree_util.tree_map_with_path(one, abstract_boxed_tree, is_leaf=_is_box)
    if notes and indivisible == "error":
        unique = list(dict.fromkeys(n.rsplit("; ", 1)[0] for n in notes))
        more = f" (and {len(unique) - 5} more)" if len(unique) > 5 else ""
        raise ValueError(f"mesh.indivisible='error': cannot lay out {len(unique)} parameter(s) "
                         f"without an uneven split: " + "; ".join(unique[:5]) + more +
                         "; pad them, change the rules or the mesh, or allow 'replicate'")
    return shardings, notes


def logical_shardings(abstract_boxed_tree, mesh: Mesh, rules=LOGICAL_AXIS_RULES,
                      indivisible: str = "replicate"):
    """NamedShardings for a tree of boxed (nn.Partitioned) abstract values, e.g. from
    eval_shape(init), with dimensions their mesh axes do not divide laid out by `indivisible`
    (see `fit_spec`)."""
    return check_layout(abstract_boxed_tree, mesh, rules, indivisible)[0]


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def sharded_init(init_fn, mesh: Mesh, rules=LOGICAL_AXIS_RULES, *args, indivisible="replicate"):
    """The one sharded-init recipe: eval_shape -> logical specs -> shardings -> jit(out_shardings).

    `init_fn(*args)` must return a boxed variable tree (what `module.init` returns). Returns the
    unboxed tree, each leaf created directly with its sharding (nothing is materialised whole).
    """
    abstract = jax.eval_shape(init_fn, *args)
    shardings = logical_shardings(abstract, mesh, rules, indivisible)
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        boxed = jax.jit(init_fn, out_shardings=shardings)(*args)
    return nn.meta.unbox(boxed)
