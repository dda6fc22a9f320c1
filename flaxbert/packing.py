"""Sequence packing: several short tokenized examples share one row of a fixed length.

Rows are filled by best-fit decreasing (examples longest first, each into the open row whose free
space fits it most tightly, else a new row): the classic bin-packing heuristic, within 11/9 of the
optimal row count plus a constant. Each example in a row gets its own segment id (1, 2, ...;
0 is padding) and positions that restart at its first token, so that a model called with
`segment_ids=` (attention blocked between segments, see flaxbert.layers.attention.segment_mask)
computes for every example exactly what it computes for that example alone.

    packed = pack_examples(examples, 128, **packing_conventions(model))
    out = model.apply({"params": params}, packed["input_ids"], packed["attention_mask"],
                      packed["token_type_ids"], packed["position_ids"],
                      segment_ids=packed["segment_ids"])
    per_example = unpack(out.last_hidden_state, packed)
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import jax.numpy as jnp
import numpy as np

# Per-token keys pack_examples writes itself; any other per-token key of an example is carried.
_GENERATED = ("attention_mask", "position_ids", "segment_ids")
# Where unpack finds each example.
INDEX_KEYS = ("example_row", "example_start", "example_length")


def packing_conventions(model) -> dict[str, int]:
    """pad_id, position_offset and pad_position for `model`'s family, read off its backbone's
    default positions (RoBERTa-style families count real tokens from padding_idx + 1 and give
    padding position padding_idx; the rest count from 0)."""
    cfg = model.config
    pad = cfg.pad_token_id
    backbone = getattr(model, "backbone_cls", None)
    positions = None
    if backbone is not None:
        row = jnp.asarray([[(pad + 1) % cfg.vocab_size, pad]], jnp.int32)
        positions = backbone(cfg).default_position_ids(row)
    if positions is None:
        return {"pad_id": pad, "position_offset": 0, "pad_position": 0}
    first, padding = (int(p) for p in np.asarray(positions)[0])
    return {"pad_id": pad, "position_offset": first, "pad_position": padding}


def _real_tokens(example: Mapping, index: int) -> dict[str, np.ndarray]:
    if not isinstance(example, Mapping) or "input_ids" not in example:
        raise TypeError(f"example {index} must be a dict with 'input_ids', got "
                        f"{type(example).__name__}")
    ids = np.asarray(example["input_ids"])
    if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"example {index}: input_ids must be a 1-D integer array, got shape "
                         f"{ids.shape} dtype {ids.dtype}")
    keep = (np.asarray(example["attention_mask"]).astype(bool)
            if "attention_mask" in example else np.ones(len(ids), bool))
    if keep.shape != ids.shape:
        raise ValueError(f"example {index}: attention_mask has shape {keep.shape}, input_ids "
                         f"{ids.shape}")
    tokens = {}
    for key, value in example.items():
        if key in _GENERATED:
            continue
        value = np.asarray(value)
        if value.shape != ids.shape:
            raise ValueError(f"example {index}: {key!r} has shape {value.shape}; packing carries "
                             f"only per-token arrays shaped like input_ids {ids.shape}")
        tokens[key] = value[keep]
    if not len(tokens["input_ids"]):
        raise ValueError(f"example {index} has no tokens")
    return tokens


def _best_fit_decreasing(lengths: np.ndarray, max_length: int, max_per_row: int) -> list[list[int]]:
    rows: list[list[int]] = []
    open_rows: list[list[int]] = [[] for _ in range(max_length + 1)]  # free space -> rows
    has_open = np.zeros(max_length + 1, bool)
    for i in np.argsort(-lengths, kind="stable"):
        n = int(lengths[i])
        fits = np.flatnonzero(has_open[n:])
        if fits.size:
            free = n + int(fits[0])
            row = open_rows[free].pop()
            has_open[free] = bool(open_rows[free])
        else:
            free, row = max_length, len(rows)
            rows.append([])
        rows[row].append(int(i))
        if free - n > 0 and len(rows[row]) < max_per_row:
            open_rows[free - n].append(row)
            has_open[free - n] = True
    return rows


def pack_examples(examples: Sequence[Mapping], max_length: int, *,
                  max_per_row: int | None = None, pad_id: int = 0, position_offset: int = 0,
                  pad_position: int = 0, fill: Mapping[str, int] | None = None
                  ) -> dict[str, np.ndarray]:
    """Pack tokenized examples (dicts of 1-D arrays: input_ids, optional token_type_ids,
    attention_mask (tokens where it is 0 are dropped) and any other per-token arrays such as
    labels) into rows of `max_length`.

    Returns numpy arrays (rows, max_length): input_ids (padded with `pad_id`), attention_mask,
    token_type_ids, segment_ids (1, 2, ... per example in the row, 0 = padding), position_ids
    (`position_offset` + 0, 1, ... per example, `pad_position` on padding), every other
    per-token key (padded with `fill[key]`, default 0), and per example (n,) `example_row`,
    `example_start`, `example_length` for `unpack`. `packing_conventions(model)` gives a
    family's pad_id / position_offset / pad_position.
    """
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length <= 0:
        raise ValueError(f"max_length must be a positive int, got {max_length!r}")
    if max_per_row is not None and (isinstance(max_per_row, bool) or
                                    not isinstance(max_per_row, int) or max_per_row <= 0):
        raise ValueError(f"max_per_row must be a positive int or None, got {max_per_row!r}")
    if not len(examples):
        raise ValueError("no examples to pack")
    tokens = [_real_tokens(ex, i) for i, ex in enumerate(examples)]
    keys = set(tokens[0])
    for i, t in enumerate(tokens):
        if set(t) != keys:
            raise ValueError(f"example {i} has keys {sorted(t)}, example 0 has {sorted(keys)}")
    lengths = np.array([len(t["input_ids"]) for t in tokens])
    if lengths.max() > max_length:
        i = int(lengths.argmax())
        raise ValueError(f"example {i} has {lengths[i]} tokens, more than max_length="
                         f"{max_length}; truncate it first")

    rows = _best_fit_decreasing(lengths, max_length, max_per_row or max_length)
    shape = (len(rows), max_length)
    fills = {"input_ids": pad_id, "token_type_ids": 0, **(fill or {})}
    dtypes = {"input_ids": np.int32, "token_type_ids": np.int32}
    out = {key: np.full(shape, fills.get(key, 0), dtypes.get(key) or tokens[0][key].dtype)
           for key in keys | {"token_type_ids"}}
    out["segment_ids"] = np.zeros(shape, np.int32)
    out["position_ids"] = np.full(shape, pad_position, np.int32)
    index = {key: np.zeros(len(tokens), np.int32) for key in INDEX_KEYS}
    for r, members in enumerate(rows):
        start = 0
        for segment, i in enumerate(members, start=1):
            n = int(lengths[i])
            span = slice(start, start + n)
            for key, value in tokens[i].items():
                out[key][r, span] = value
            out["segment_ids"][r, span] = segment
            out["position_ids"][r, span] = position_offset + np.arange(n)
            index["example_row"][i], index["example_start"][i] = r, start
            index["example_length"][i] = n
            start += n
    out["attention_mask"] = (out["segment_ids"] > 0).astype(np.int32)
    return {**out, **index}


def packing_efficiency(packed: Mapping[str, np.ndarray]) -> float:
    """Real tokens / computed tokens (rows x max_length)."""
    mask = np.asarray(packed["attention_mask"])
    return float(mask.sum() / mask.size)


def unpack(outputs, packed: Mapping[str, np.ndarray]) -> list:
    """Per-example slices of packed per-token outputs.

    `outputs`: an array (rows, max_length, ...) -> a list of arrays (length_i, ...), in the
    order the examples were given; or a dict / model Output of such arrays -> a list of dicts
    (entries that are not per-token arrays, e.g. pooler_output or hidden_states, are left out).
    """
    missing = [k for k in INDEX_KEYS if k not in packed]
    if missing:
        raise ValueError(f"packed batch lacks {missing}; pass what pack_examples returned")
    rows, length = np.shape(packed["segment_ids"])
    spans = list(zip(*(np.asarray(packed[k]) for k in INDEX_KEYS)))

    def split(array):
        array = np.asarray(array)
        return [array[r, s:s + n] for r, s, n in spans]

    if hasattr(outputs, "items"):  # a dict or a model Output
        per_token = {k: split(v) for k, v in outputs.items()
                     if hasattr(v, "shape") and v.shape[:2] == (rows, length)}
        return [{k: v[i] for k, v in per_token.items()} for i in range(len(spans))]
    if np.shape(outputs)[:2] != (rows, length):
        raise ValueError(f"outputs have shape {np.shape(outputs)}; packed rows are "
                         f"({rows}, {length}, ...)")
    return split(outputs)
