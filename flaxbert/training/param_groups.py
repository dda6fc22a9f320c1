"""Where each parameter of a task model sits in the network, for fine-tuning's optimizer options.

A task model's tree is {"backbone": ..., <head>: ...} in every family. Depths count from the input:

    0            everything in the backbone outside the layer stack: embeddings (ELECTRA's and
                 ALBERT's embeddings_project, XLNet's mask_emb) and DeBERTa's relative
                 embeddings, which every layer reads
    i + 1        encoder layer i (`layers_i`; scanned `layers` hold depths 1..L along axis 0)
    L + 1        the head: every top-level entry but "backbone", plus the backbone's pooler
                 (so BERT's pooler + classifier is one head, as RoBERTa's two-layer classifier is)

ALBERT's layers share parameters: each group `group_g_layer_j` is one depth (g + 1), so the
usual single-group ALBERT has depths 0 (embeddings), 1 (the shared layer), 2 (head).

Only the tree's paths and shapes are read, so the same functions label boxed (nn.Partitioned)
trees, plain ones and optimizer updates alike. A box is one leaf here: the labels of a boxed tree
are a prefix of it, so optax.masked swaps whole boxes for MaskedNode and the boxed optimizer state
(from which the trainer takes shardings) unboxes to the plain one's structure.
"""
from __future__ import annotations

import re

import flax.linen as nn
import jax
import numpy as np

_UNROLLED = re.compile(r"layers_(\d+)$")
_ALBERT = re.compile(r"group_(\d+)_layer_\d+$")


def _names(path) -> tuple[str, ...]:
    return tuple(str(k.key) for k in path if isinstance(k, jax.tree_util.DictKey))


def _is_box(x) -> bool:
    return isinstance(x, nn.meta.AxisMetadata)


def _leaves(tree):
    return jax.tree_util.tree_leaves_with_path(tree, is_leaf=_is_box)


def _layer(names: tuple[str, ...]):
    """(kind, index) of the stack entry under backbone/encoder, or None outside the stack."""
    if len(names) < 3 or names[1] != "encoder":
        return None
    if names[2] == "layers":
        return "scanned", None
    for kind, pattern in (("unrolled", _UNROLLED), ("albert", _ALBERT)):
        if m := pattern.match(names[2]):
            return kind, int(m.group(1))
    return None


def num_layer_depths(tree, field: str = "optimizer") -> tuple[int, bool]:
    """(L, scanned): how many layer depths the tree's stack has (ALBERT: groups) and whether
    the stack is scanned. ValueError, naming `field`, when the tree is not a task model's."""
    leaves = _leaves(tree)
    tops = sorted({_names(p)[0] for p, _ in leaves if _names(p)})
    if "backbone" not in tops:
        raise ValueError(f"{field} needs a task model's parameters ('backbone' and a head); got "
                         f"top-level keys {tops}")
    scanned, indices = set(), set()
    for path, leaf in leaves:
        names = _names(path)
        if names[0] != "backbone" or (found := _layer(names)) is None:
            continue
        if found[0] == "scanned":
            scanned.add(int(np.shape(leaf.unbox() if _is_box(leaf) else leaf)[0]))
        else:
            indices.add(found[1])
    if not scanned and not indices:
        raise ValueError(f"{field}: no encoder layers under backbone/encoder (layers_<i>, "
                         "layers or group_<g>_layer_<j>)")
    if scanned:
        return scanned.pop(), True
    return max(indices) + 1, False


def depths(tree, field: str = "optimizer") -> tuple[object, int]:
    """(a tree like `tree` of depths, head depth D = L + 1). A depth is an int, or for a
    scanned layer leaf an int array (1..L) to broadcast along its leading axis."""
    num, scanned = num_layer_depths(tree, field)
    head = num + 1

    def depth(path, _):
        names = _names(path)
        if names[0] != "backbone" or (len(names) > 1 and names[1] == "pooler"):
            return head
        found = _layer(names)
        if found is None:
            return 0
        return np.arange(1, num + 1) if found[0] == "scanned" else found[1] + 1

    return jax.tree_util.tree_map_with_path(depth, tree, is_leaf=_is_box), head


def is_head(tree, field: str = "optimizer"):
    """True for the head's leaves (depth L + 1), False for the rest of the backbone."""
    tree_depths, head = depths(tree, field)
    return jax.tree_util.tree_map(lambda d: bool(np.all(np.asarray(d) == head)), tree_depths)
