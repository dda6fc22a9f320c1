"""Prepared shards -> padded, masked pre-training batches: `make_dataset` and `BatchIterator`.

The stream is deterministic for a seed and resumable: shard files and records are shuffled
with fixed seeds, batched, numbered, skipped to `start_batch`, and only then parsed (batched
`tf.io.parse_example`, much faster than per record) and masked with stateless random ops
seeded by (seed, process index, batch index). Batch k is therefore the same batch with the
same masks however the iterator got there, and `BatchIterator.state()` (JSON) is all a
checkpoint needs to continue the same stream.

Each host reads its own part: shard files are dealt out by process index, or, with fewer
files than hosts, every host reads all files in the same order and keeps every
process_count-th record. A host's batch is global_batch_size / process_count rows.

Batch keys: input_ids, attention_mask, token_type_ids (int32 [b, S]); with masking also
masked_positions, masked_ids (int32 [b, P]) and masked_weights (float32 [b, P]); for NSP / SOP
data pair_label (int32 [b]). Rows are padded on the right to the manifest's max_seq_length.

For evaluation use `make_eval_dataset` (validation split, one pass, no shuffle, fixed masks).
The shuffles use tf.data's op seeds, so a program that sets TensorFlow's global seed
(tf.random.set_seed) gets a different, but still reproducible, order.
"""
from __future__ import annotations

import dataclasses
import functools
import os

import tensorflow as tf

from flaxbert.data.masking import MaskingConfig, MaskingTables, mask_batch
from flaxbert.data.prepare import SPLITS, check_int, read_manifest
from flaxbert.tokenizer import Tokenizer

STATE_VERSION = 1
_CYCLE_LENGTH = 16  # shards read at once

try:  # the input pipeline must never take accelerator memory from JAX
    tf.config.set_visible_devices([], "GPU")
except RuntimeError:  # TF already initialised its devices; nothing to do then
    pass


def _hosts(process_index, process_count):
    if process_index is None or process_count is None:
        import jax
        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    check_int("process_count", process_count, 1)
    check_int("process_index", process_index, 0)
    if process_index >= process_count:
        raise ValueError(f"process_index={process_index} is not below process_count={process_count}")
    return process_index, process_count


def make_dataset(data_dirs, split="train", *, global_batch_size, masking: MaskingConfig | None,
                 seed=0, shuffle_buffer=10_000, repeat=True, process_index=None,
                 process_count=None, start_batch=0, drop_remainder=True) -> tf.data.Dataset:
    """A tf.data.Dataset of this host's batches (dicts of tensors; see the module docstring).

    data_dirs: one or more directories written by `flaxbert prepare` with the same tokenizer.
    masking: a MaskingConfig, or None for unmasked batches (XLNet's permutation LM).
    shuffle_buffer: records in the shuffle buffer; 0 reads files and records in order.
    process_index / process_count: default jax.process_index() / jax.process_count().
    start_batch: the number of batches to skip (resuming).
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {list(SPLITS)}")
    if masking is not None and not isinstance(masking, MaskingConfig):
        raise TypeError(f"masking must be a MaskingConfig or None, got {type(masking).__name__}")
    for name, value, low in (("global_batch_size", global_batch_size, 1), ("seed", seed, 0),
                             ("shuffle_buffer", shuffle_buffer, 0), ("start_batch", start_batch, 0)):
        check_int(name, value, low)
    index, count = _hosts(process_index, process_count)
    if global_batch_size % count:
        raise ValueError(f"global_batch_size={global_batch_size} is not divisible by the "
                         f"{count} processes")
    info = read_manifest(data_dirs)
    files = info["files"][split]
    if not info["sequences"][split]:
        raise ValueError(f"no {split} sequences in {', '.join(info['data_dirs'])}")
    length = info["max_seq_length"]
    pad_id = info["tokenizer"]["special_ids"].get("pad", 0)
    has_label = info["mode"] in ("nsp", "sop")
    finish = _finisher(info, masking, seed, index, length, pad_id, has_label)

    by_file = len(files) >= count
    if by_file:
        files = files[index::count]
    ds = tf.data.Dataset.from_tensor_slices(files)
    if shuffle_buffer:
        ds = ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    ds = ds.interleave(tf.data.TFRecordDataset, cycle_length=min(len(files), _CYCLE_LENGTH),
                       num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if not by_file:
        ds = ds.shard(count, index)
    if shuffle_buffer:
        ds = ds.shuffle(shuffle_buffer, seed=seed + 1, reshuffle_each_iteration=True)
    ds = ds.batch(global_batch_size // count, drop_remainder=drop_remainder)
    ds = ds.enumerate().skip(start_batch)
    ds = ds.map(finish, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.prefetch(tf.data.AUTOTUNE)
    options = tf.data.Options()
    options.deterministic = True
    options.experimental_optimization.map_parallelization = True
    options.threading.max_intra_op_parallelism = 1
    return ds.with_options(options)


@functools.lru_cache(maxsize=4)  # a resumed or second iterator on the same data reuses them
def _tables(tokenizer_dir, special_ids):
    return MaskingTables.from_tokenizer(Tokenizer.from_pretrained(tokenizer_dir), special_ids)


def _finisher(info, masking, seed, process_index, length, pad_id, has_label):
    """The per-batch function: parse, pad, and mask (batch_index, serialized) -> dict."""
    features = {"input_ids": tf.io.RaggedFeature(tf.int64),
                "token_type_ids": tf.io.RaggedFeature(tf.int64)}
    if has_label:
        features["pair_label"] = tf.io.FixedLenFeature([], tf.int64)
    if masking is not None:
        tables = _tables(info["tokenizer_dir"], tuple(info["tokenizer"]["all_special_ids"]))
        if masking.uses_words and not tables.knows_words:
            raise ValueError(f"whole-word / n-gram masking needs to know word boundaries, and "
                             f"tokenizer kind {info['tokenizer']['kind']!r} does not mark them")
        predictions = masking.predictions(length)
        if predictions > length:
            raise ValueError(f"max_predictions_per_seq={predictions} exceeds max_seq_length={length}")

    def finish(batch_index, serialized):
        parsed = tf.io.parse_example(serialized, features)
        ids = parsed["input_ids"]
        out = dict(
            input_ids=tf.cast(ids.to_tensor(pad_id, shape=[None, length]), tf.int32),
            attention_mask=tf.sequence_mask(ids.row_lengths(), length, dtype=tf.int32),
            token_type_ids=tf.cast(parsed["token_type_ids"].to_tensor(0, shape=[None, length]),
                                   tf.int32))
        if has_label:
            out["pair_label"] = tf.cast(parsed["pair_label"], tf.int32)
        if masking is not None:
            key = tf.random.experimental.stateless_fold_in(
                tf.constant([seed, process_index], tf.int64), batch_index)
            out.update(mask_batch(out["input_ids"], out["attention_mask"], key, masking, tables,
                                  predictions))
        return out

    return tf.autograph.experimental.do_not_convert(finish)


def make_eval_dataset(data_dirs, *, global_batch_size, masking: MaskingConfig | None, seed=0,
                      process_index=None, process_count=None, drop_remainder=False):
    """The validation split once through, in file order, with masks fixed by `seed`.

    With several hosts each reads its own shards, so hosts may get different numbers of
    batches; a multi-host evaluation loop has to agree on when to stop.
    """
    return make_dataset(data_dirs, "validation", global_batch_size=global_batch_size,
                        masking=masking, seed=seed, shuffle_buffer=0, repeat=False,
                        process_index=process_index, process_count=process_count,
                        drop_remainder=drop_remainder)


class BatchIterator:
    """Numpy batches of `make_dataset`, counted, with a JSON state to resume from.

        it = BatchIterator(dirs, global_batch_size=256, masking=MaskingConfig())
        batch = next(it)
        saved = it.state()                        # store with the checkpoint
        it = BatchIterator.from_state(saved)      # continues with the same next batch
    """

    def __init__(self, data_dirs, split="train", *, global_batch_size,
                 masking: MaskingConfig | None, seed=0, shuffle_buffer=10_000, repeat=True,
                 process_index=None, process_count=None, start_batch=0, drop_remainder=True):
        self._index, self._count = _hosts(process_index, process_count)
        self._dirs = ([os.fspath(data_dirs)] if isinstance(data_dirs, (str, os.PathLike))
                      else [os.fspath(d) for d in data_dirs])
        self._kwargs = dict(split=split, global_batch_size=global_batch_size, masking=masking,
                            seed=seed, shuffle_buffer=shuffle_buffer, repeat=repeat,
                            drop_remainder=drop_remainder)
        self._batch = start_batch
        self._dataset = make_dataset(self._dirs, **self._kwargs, process_index=self._index,
                                     process_count=self._count, start_batch=start_batch)
        self._iterator = None

    @property
    def dataset(self) -> tf.data.Dataset:
        return self._dataset

    @property
    def batch_index(self) -> int:
        """The index of the next batch."""
        return self._batch

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        if self._iterator is None:
            self._iterator = self._dataset.as_numpy_iterator()
        batch = next(self._iterator)
        self._batch += 1
        return batch

    def state(self) -> dict:
        """JSON-able: where the stream stands and everything that defines it."""
        kwargs = dict(self._kwargs)
        masking = kwargs.pop("masking")
        return dict(version=STATE_VERSION, data_dirs=self._dirs, **kwargs,
                    masking=None if masking is None else dataclasses.asdict(masking),
                    process_count=self._count, next_batch=self._batch)

    @classmethod
    def from_state(cls, state: dict, *, process_index=None) -> BatchIterator:
        """The iterator `state()` was taken from, positioned at the same next batch."""
        if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
            raise ValueError(f"not a BatchIterator state of version {STATE_VERSION}: {state!r:.200}")
        index, count = _hosts(process_index, None if process_index is None else state["process_count"])
        if count != state["process_count"]:
            raise ValueError(f"the state was saved with {state['process_count']} processes and "
                             f"this run has {count}: the batches would not be the same")
        masking = state["masking"]
        return cls(state["data_dirs"], state["split"], global_batch_size=state["global_batch_size"],
                   masking=None if masking is None else MaskingConfig(**masking),
                   seed=state["seed"], shuffle_buffer=state["shuffle_buffer"], repeat=state["repeat"],
                   process_index=index, process_count=count, start_batch=state["next_batch"],
                   drop_remainder=state["drop_remainder"])
