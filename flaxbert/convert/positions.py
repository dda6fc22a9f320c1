"""Longer inputs for a trained checkpoint: copy its learned position table out to more positions
and switch it to sparse attention, as Longformer made its 4,096-token models from RoBERTa
(Beltagy et al., 2020, section 5: the 512 learned rows, repeated, start far better than random).

Families with a learned absolute position table (BERT, RoBERTa, DistilBERT, ALBERT, ELECTRA)
qualify; DeBERTa's relative bias and XLNet's two-stream attention cannot run sparse attention.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import flax.linen as nn
import numpy as np
from flax import traverse_util

from flaxbert.convert.hf import load_hf, save_hf
from flaxbert.convert.native import is_native, load_native, save_native
from flaxbert.hub import resolve
from flaxbert.io import check_destination, read_json

POSITION_TABLE = ("position_embeddings", "embedding")


def repeated_position_table(table: np.ndarray, rows: int, offset: int) -> np.ndarray:
    """`table` grown to `rows` rows: the first `offset` rows (RoBERTa's two padding-offset rows,
    which real tokens never use) stay, and the learned rows after them repeat until `rows`."""
    learned = table[offset:]
    copies = -(-(rows - offset) // len(learned))
    return np.concatenate([table[:offset], np.tile(learned, (copies, 1))[:rows - offset]])


def extend_position_embeddings(src_dir: str | os.PathLike, dst_dir: str | os.PathLike, *,
                               max_positions: int = 4096, attention_window: int = 256,
                               overwrite: bool = False, format: str = "flax") -> Path:
    """Write `src_dir`'s checkpoint to `dst_dir` taking `max_positions` tokens, with
    attention_impl="sparse" and `attention_window` keys on either side of each query.

    `max_positions` counts tokens: RoBERTa-style tables keep their padding offset on top, as
    transformers' position ids (padding_idx + 1 + i) need, so RoBERTa gets max_positions + 2 rows.
    The tokenizer files in `src_dir` are copied along with model_max_length = max_positions.
    format="flax" (the default) keeps attention_impl and the window in flaxbert.json;
    transformers' config.json has no field for them, so format="hf" writes only the longer table
    and max_position_embeddings (load it with attention_impl="sparse"). The directory is written
    atomically; an existing `dst_dir` is refused unless overwrite=True.
    """
    from flaxbert.tokenizer import TOKENIZER_FILES  # only here: `import flaxbert` stays lean
    if format not in ("flax", "hf"):
        raise ValueError(f"unknown format {format!r}; use 'flax' or 'hf'")
    check_destination(dst_dir, overwrite)  # before the load: refuse early, not after
    src = resolve(src_dir)  # a local directory, or a hub id's snapshot
    model, params = (load_native if is_native(src) else load_hf)(src)
    config = model.config
    offset = config.max_position_embeddings - config.max_sequence_length
    if max_positions <= config.max_sequence_length:
        raise ValueError(f"{src}: max_positions={max_positions} must exceed the "
                         f"{config.max_sequence_length} tokens this checkpoint already takes")
    try:
        longer = config.replace(max_position_embeddings=max_positions + offset,
                                attention_impl="sparse", attention_window=attention_window)
    except ValueError as e:
        raise ValueError(f"{src}: {e}") from None

    flat = traverse_util.flatten_dict(nn.meta.unbox(params))
    tables = [path for path in flat if path[-2:] == POSITION_TABLE]
    if not tables:
        raise ValueError(f"{src}: {type(config).__name__} has no learned absolute position "
                         "table to extend")
    for path in tables:
        flat[path] = repeated_position_table(np.asarray(flat[path]),
                                             longer.max_position_embeddings, offset)
    params = traverse_util.unflatten_dict(flat)
    model = model.clone(config=longer)

    with tempfile.TemporaryDirectory() as scratch:
        extra = [src / name for name in TOKENIZER_FILES if (src / name).is_file()]
        if (src / "tokenizer_config.json").is_file():
            settings = read_json(src / "tokenizer_config.json")
            settings["model_max_length"] = max_positions
            rewritten = Path(scratch) / "tokenizer_config.json"
            rewritten.write_text(json.dumps(settings, indent=2, ensure_ascii=False) + "\n")
            extra = [f for f in extra if f.name != rewritten.name] + [rewritten]
        save = save_native if format == "flax" else save_hf
        return save(dst_dir, model, params, overwrite=overwrite, extra_files=extra)
