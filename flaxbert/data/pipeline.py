"""Prepared shards -> padded, masked pre-training batches: `make_dataset` and `BatchIterator`.

The stream is deterministic for a seed and seekable. Each epoch reads this host's shards one
after another, in an order drawn with numpy from (seed, epoch), each shard's records shuffled
in windows of `shuffle_buffer` records by stateless ops keyed by (seed, host, epoch, place);
records are then batched, numbered, parsed (batched `tf.io.parse_example`, much faster than
per record) and masked with stateless random ops seeded by (seed, process index, batch index).
Since the manifest records every shard's size, batch N maps arithmetically to (epoch, shard,
record offset): a resume skips whole shards without opening them and re-reads at most the
part of one shard before the position. Batch k is the same batch with the same masks however
the iterator got there, and `BatchIterator.state()` (JSON) is all a checkpoint needs.

Mixing, and what it trades: a batch comes from one shard (two at a shard's end), not from 16
interleaved ones as before. `prepare` deals sequence k to shard k mod num_shards after
shuffling each chunk's sequences, so every shard already samples the whole corpus evenly, and
16 interleaved shards at the same offset covered the same corpus region as one shard does now;
what is lost is mixing across data directories within a batch (they alternate by shard).
Interleaving G shards would make a resume re-read up to G shards.

Each host reads its own part: shard files are dealt out by process index, or, with fewer
files than hosts, every host reads all files in the same order and keeps every
process_count-th record of each epoch. A host's batch is global_batch_size / process_count rows.

Batch keys: input_ids, attention_mask, token_type_ids (int32 [b, S]); with masking also
masked_positions, masked_ids (int32 [b, P]) and masked_weights (float32 [b, P]); for NSP / SOP
data pair_label (int32 [b]). Rows are padded on the right to the manifest's max_seq_length.

Evaluation (`make_eval_dataset`, or `evaluation=True`) reads the split once, in order, every
record exactly once, with fixed masks keyed by (seed, process index, record index), so the
same whatever the batch size; the last batch is filled with padding rows (the pad
token, attended at position 0, pair_label 0) and every host gets as many batches as the host
with the most records, since each evaluation step is a collective. Its batches add
example_weights (float32 [b]: 1 for records, 0 for padding; padding's masked_weights are 0).
"""
from __future__ import annotations

import dataclasses
import functools
import os

import numpy as np
import tensorflow as tf

from flaxbert import storage
from flaxbert.data.masking import MaskingConfig, MaskingTables, mask_batch
from flaxbert.data.prepare import MANIFEST, SPLITS, check_int, read_manifest, serialize_example
from flaxbert.tokenizer import Tokenizer

STATE_VERSION = 2  # 1: tf.data shuffles over interleaved shards, resumed by reading up to N

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


@dataclasses.dataclass(frozen=True)
class _Records:
    """One host's record stream over a split, as arithmetic on the manifest's shard counts.

    Epoch e reads the host's shards in an order drawn from (seed, e), each shard whole before
    the next; in record mode a shard's records are kept from `first`, every `step`-th, so
    that the hosts deal out the epoch's concatenated records in turn.
    """
    files: tuple
    counts: tuple
    step: int  # 1 by file; process_count by record
    phase: int  # the host's place in the deal (0 by file)
    seed: int
    index: int
    shuffle: bool

    @property
    def per_epoch(self) -> int:
        return len(range(self.phase, sum(self.counts), self.step))

    def segments(self, epoch, skip):
        """Paths, firsts, steps, shuffle keys [n, 2] and records to skip of the shards epoch
        `epoch` reads after its first `skip` records; shards before those are never opened."""
        order = (np.random.default_rng([self.seed, epoch]).permutation(len(self.files))
                 if self.shuffle else range(len(self.files)))
        paths, firsts, keys, skips, offset = [], [], [], [], 0
        for place, f in enumerate(order):
            first = (self.phase - offset) % self.step
            kept = len(range(first, self.counts[f], self.step))
            offset += self.counts[f]
            if skip >= kept:
                skip -= kept
                continue
            paths.append(self.files[f])
            firsts.append(first)
            keys.append(np.random.SeedSequence([self.seed, self.index, epoch, place]).generate_state(2))
            skips.append(skip)
            skip = 0
        return (np.array(paths, dtype=object), np.array(firsts, np.int64),
                np.full(len(paths), self.step, np.int64), np.array(keys, np.int64).reshape(-1, 2),
                np.array(skips, np.int64))


_SEGMENT_TYPES = (tf.string, tf.int64, tf.int64, tf.int64, tf.int64)
_SEGMENT_SHAPES = ([None], [None], [None], [None, 2], [None])


def _records(info, split, index, count, seed, shuffle):
    counts = []
    for d, m in zip(info["data_dirs"], info["manifests"]):
        shard_counts = m["splits"][split].get("shard_sequences")
        if not isinstance(shard_counts, list) or len(shard_counts) != len(m["splits"][split]["shards"]):
            raise ValueError(f"{os.path.join(d, MANIFEST)}: splits.{split}.shard_sequences must "
                             f"list the record count of each shard")
        counts.extend(shard_counts)
    files = info["files"][split]
    if len(files) >= count:  # by file
        return _Records(tuple(files[index::count]), tuple(counts[index::count]), 1, 0, seed,
                        index, shuffle)
    return _Records(tuple(files), tuple(counts), count, index, seed, index, shuffle)


def _read(window, reader=tf.data.TFRecordDataset):
    """(path, first, step, key, skip) -> the shard's records, shuffled in windows of `window`.
    `reader`: path -> records (flaxbert.storage.tfrecord_reader: gs:// under an emulator)."""
    def read(path, first, step, key, skip):
        records = reader(path).skip(first).shard(step, 0)
        if not window:
            return records.skip(skip)
        done = skip // window  # whole windows are skipped unshuffled
        records = records.skip(done * window).batch(window).enumerate(done)
        records = records.map(lambda i, w: tf.gather(w, tf.argsort(tf.random.stateless_uniform(
            tf.shape(w), tf.random.experimental.stateless_fold_in(key, i)))))
        return records.unbatch().skip(skip % window)
    return read


def make_dataset(data_dirs, split="train", *, global_batch_size, masking: MaskingConfig | None,
                 seed=0, shuffle_buffer=10_000, repeat=True, process_index=None,
                 process_count=None, start_batch=0, drop_remainder=True,
                 evaluation=False, length_schedule=()) -> tf.data.Dataset:
    """A tf.data.Dataset of this host's batches (dicts of tensors; see the module docstring).

    data_dirs: one or more directories written by `flaxbert prepare` with the same tokenizer.
    masking: a MaskingConfig, or None for unmasked batches (XLNet's permutation LM).
    shuffle_buffer: the shuffle window in records (within a shard); 0 reads files and records
    in order. process_index / process_count: default jax.process_index() / jax.process_count().
    start_batch: the index of the first batch (resuming); costs at most one shard's reading.
    evaluation: one pass in order, the last batches padded with zero-weight rows, the same
    number of batches on every host, an `example_weights` key (shuffle_buffer, repeat and
    drop_remainder do not apply). A finite dataset knows its length (`len(dataset)`).
    length_schedule: ((first_batch, length), ...) from
    `flaxbert.data.length_schedule.parse_length_schedule`: batches from first_batch on have rows
    cut to length (keeping each row's last token); evaluation always reads the full length.
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
    if not info["sequences"][split]:
        raise ValueError(f"{', '.join(info['data_dirs'])} has no {split} sequences")
    if evaluation:
        shuffle_buffer, repeat, drop_remainder = 0, False, False
    length = info["max_seq_length"]
    pad_id = info["tokenizer"]["special_ids"].get("pad", 0)
    has_label = info["mode"] in ("nsp", "sop")
    schedule = () if evaluation else tuple((int(f), int(n)) for f, n in length_schedule)
    if any(n > length or n < 2 for _, n in schedule):
        raise ValueError(f"length_schedule {schedule} has a length outside [2, the data's "
                         f"max_seq_length={length}]")
    finish = _finisher(info, masking, seed, index, length, pad_id, has_label, schedule)
    size = global_batch_size // count
    stream = _records(info, split, index, count, seed, shuffle_buffer > 0)
    if repeat and not stream.per_epoch:
        raise ValueError(f"process {index} of {count} gets no {split} records from "
                         f"{', '.join(info['data_dirs'])}: its shards are empty")
    start = start_batch * size

    first_epoch, skip = divmod(start, max(stream.per_epoch, 1))
    plan = lambda epoch: stream.segments(int(epoch), skip if int(epoch) == first_epoch else 0)
    epochs = (tf.data.Dataset.counter(first_epoch) if repeat
              else tf.data.Dataset.range(first_epoch, 1))
    segments = epochs.map(lambda epoch: tuple(
        tf.ensure_shape(t, s) for t, s in zip(tf.py_function(plan, [epoch], _SEGMENT_TYPES),
                                              _SEGMENT_SHAPES))).unbatch()
    ds = segments.flat_map(_read(shuffle_buffer, storage.tfrecord_reader(stream.files)))
    if evaluation:  # every host pads up to the batches of the host with the most records
        batches = max(-(-_records(info, split, i, count, seed, False).per_epoch // size)
                      for i in range(count))
        pad = tf.constant(serialize_example([pad_id], [0], 0 if has_label else None))
        ds = ds.map(lambda record: (record, 1.0)).concatenate(
            tf.data.Dataset.from_tensors((pad, 0.0)).repeat(
                max(batches * size - max(start, stream.per_epoch), 0)))
        total = batches - start_batch
    else:
        total = (stream.per_epoch - start) // size if drop_remainder else \
            -(-(stream.per_epoch - start) // size)
    if evaluation:
        # Masked record by record, keyed by the record's place in the split, so that an
        # evaluation's masks (and so its metrics) do not depend on the batch size.
        ds = ds.enumerate(start).map(
            lambda i, row: finish(i, row[0][None], row[1][None]),
            num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).unbatch()
        ds = ds.batch(size, drop_remainder=drop_remainder)
    else:
        ds = ds.batch(size, drop_remainder=drop_remainder).enumerate(start_batch)
        ds = ds.map(finish, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if not repeat:
        ds = ds.apply(tf.data.experimental.assert_cardinality(max(total, 0)))
    ds = ds.prefetch(tf.data.AUTOTUNE)
    options = tf.data.Options()
    options.deterministic = True
    options.experimental_optimization.map_parallelization = True
    options.threading.max_intra_op_parallelism = 1
    return ds.with_options(options)


@functools.lru_cache(maxsize=4)  # a resumed or second iterator on the same data reuses them
def _tables(tokenizer_dir, special_ids):
    return MaskingTables.from_tokenizer(Tokenizer.from_pretrained(tokenizer_dir), special_ids)


def _finisher(info, masking, seed, process_index, length, pad_id, has_label, schedule=()):
    """The per-batch function: parse, pad, and mask (index, serialized[, weights]) -> dict,
    the masks keyed by the batch's index (the record's, when evaluation masks one at a time).
    With a length `schedule`, the batch's index also picks the length its rows are cut to."""
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
        for _, stage_length in schedule:
            if masking.predictions(stage_length) > stage_length:
                raise ValueError(f"max_predictions_per_seq={masking.predictions(stage_length)} "
                                 f"exceeds the length_schedule's stage length {stage_length}")

    def finish(batch_index, serialized, weights=None):
        parsed = tf.io.parse_example(serialized, features)
        ids = parsed["input_ids"]
        out = dict(
            input_ids=tf.cast(ids.to_tensor(pad_id, shape=[None, length]), tf.int32),
            attention_mask=tf.sequence_mask(ids.row_lengths(), length, dtype=tf.int32),
            token_type_ids=tf.cast(parsed["token_type_ids"].to_tensor(0, shape=[None, length]),
                                   tf.int32))
        batch_predictions = predictions if masking is not None else None
        if schedule:
            out, batch_predictions = _cut_to_stage(out, parsed, batch_index, schedule, masking)
        if has_label:
            out["pair_label"] = tf.cast(parsed["pair_label"], tf.int32)
        if masking is not None:
            key = tf.random.experimental.stateless_fold_in(
                tf.constant([seed, process_index], tf.int64), batch_index)
            out.update(mask_batch(out["input_ids"], out["attention_mask"], key, masking, tables,
                                  batch_predictions))
        if weights is not None:
            out["example_weights"] = weights
            if masking is not None:
                out["masked_weights"] *= weights[:, None]
        return out

    return tf.autograph.experimental.do_not_convert(finish)


def _cut_to_stage(out, parsed, batch_index, schedule, masking):
    """The batch's rows cut to its stage's length, a row's last token kept as its last (the
    closing separator), and the masked-LM predictions of that length."""
    firsts = tf.constant([f for f, _ in schedule], tf.int64)
    stage = tf.maximum(tf.reduce_sum(tf.cast(tf.cast(batch_index, tf.int64) >= firsts,
                                             tf.int32)) - 1, 0)
    cut = tf.gather(tf.constant([n for _, n in schedule], tf.int32), stage)
    ids, types = parsed["input_ids"], parsed["token_type_ids"]
    lengths = tf.cast(ids.row_lengths(), tf.int32)
    last = tf.logical_and((lengths > cut)[:, None],
                          (tf.range(tf.shape(out["input_ids"])[1]) == cut - 1)[None, :])
    ends = ids.row_limits() - 1
    out = dict(out)
    for key, ragged in (("input_ids", ids), ("token_type_ids", types)):
        closing = tf.cast(tf.gather(ragged.values, ends), tf.int32)[:, None]
        out[key] = tf.where(last, closing, out[key])[:, :cut]
    out["attention_mask"] = out["attention_mask"][:, :cut]
    predictions = None
    if masking is not None:
        predictions = tf.gather(tf.constant([masking.predictions(n) for _, n in schedule],
                                            tf.int32), stage)
    return out, predictions


def make_eval_dataset(data_dirs, *, global_batch_size, masking: MaskingConfig | None, seed=0,
                      process_index=None, process_count=None):
    """The validation split once through, in file order, with masks fixed by `seed`: every
    record exactly once, the last batch padded with rows of `example_weights` 0, and as many
    batches on every host (`len(dataset)`), since each evaluation step is a collective."""
    return make_dataset(data_dirs, "validation", global_batch_size=global_batch_size,
                        masking=masking, seed=seed, process_index=process_index,
                        process_count=process_count, evaluation=True)


class BatchIterator:
    """Numpy batches of `make_dataset`, counted, with a JSON state to resume from.

        it = BatchIterator(dirs, global_batch_size=256, masking=MaskingConfig())
        batch = next(it)
        saved = it.state()                        # store with the checkpoint
        it = BatchIterator.from_state(saved)      # continues with the same next batch
        for batch in BatchIterator(dirs, "validation", global_batch_size=256,
                                   masking=MaskingConfig(), evaluation=True): ...
    """

    def __init__(self, data_dirs, split="train", *, global_batch_size,
                 masking: MaskingConfig | None, seed=0, shuffle_buffer=10_000, repeat=True,
                 process_index=None, process_count=None, start_batch=0, drop_remainder=True,
                 evaluation=False, length_schedule=()):
        self._index, self._count = _hosts(process_index, process_count)
        self._dirs = ([os.fspath(data_dirs)] if isinstance(data_dirs, (str, os.PathLike))
                      else [os.fspath(d) for d in data_dirs])
        self._kwargs = dict(split=split, global_batch_size=global_batch_size, masking=masking,
                            seed=seed, shuffle_buffer=shuffle_buffer, repeat=repeat,
                            drop_remainder=drop_remainder, evaluation=evaluation,
                            length_schedule=tuple(tuple(s) for s in length_schedule))
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
                   drop_remainder=state["drop_remainder"], evaluation=state["evaluation"],
                   length_schedule=state.get("length_schedule", ()))
