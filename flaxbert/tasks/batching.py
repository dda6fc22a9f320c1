"""Fine-tuning batches: length-bucketed dynamic padding, or several examples packed per row.

`TaskBatches(features, batch_size, ...)` yields dicts of numpy arrays with a fixed batch size.
Bucketed (the default): each feature goes to the shortest bucket length that holds it, and a
batch is padded to its bucket, so a jitted step sees at most len(buckets) shapes and compiles
once per bucket. Keys: input_ids, attention_mask, token_type_ids ((B, L), or (B, C, L) for
multiple choice), labels ((B,), or (B, L) per token with IGNORE_INDEX on padding),
example_weights (B,) float32 (0 for the rows that pad a bucket's last partial batch; their
labels are 0 / IGNORE_INDEX), example_index (B,) (the feature each row holds, -1 on padding).

Packed (pack=True): flaxbert.packing.pack_examples fills rows of max_length with up to
`max_per_row` examples (segment_ids, position_ids restarting per example); per-example arrays
are (B, max_per_row): example_positions (each example's first token in its row),
example_lengths, example_weights, example_index, and for sequence tasks labels. Token labels
stay (B, L).

Each epoch is shuffled by (seed, epoch) alone, so `state()` (JSON: epoch, index of the next
batch in it) is all a checkpoint needs: `TaskBatches(..., state=saved)` continues with the same
next batch. `real_token_fraction` is the share of real tokens in the batches produced so far;
`rows_per_epoch` the rows an epoch fills (the features, or the packed rows).
"""
from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

import numpy as np

from flaxbert.packing import pack_examples
from flaxbert.tasks.labels import IGNORE_INDEX

STATE_KEYS = ("epoch", "index", "next_batch", "seed", "batch_size", "examples", "pack")


def default_buckets(max_length: int, smallest: int = 32) -> tuple[int, ...]:
    """Doubling lengths from `smallest` below max_length, then max_length: few shapes,
    at most half of any row padding beyond its bucket."""
    buckets, length = [], smallest
    while length < max_length:
        buckets.append(length)
        length *= 2
    return tuple(buckets) + (max_length,)


def _length(feature: Mapping) -> int:
    ids = feature["input_ids"]
    return max(len(c) for c in ids) if isinstance(ids, tuple) else len(ids)


def _positive(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


class TaskBatches(Iterator[dict]):
    """See the module docstring. features: what flaxbert.tasks.features returns. pad_id /
    padding_side: the tokenizer's (XLNet pads on the left). position_offset / pad_position:
    flaxbert.packing.packing_conventions(model), used when packing. process_index /
    process_count: each process yields its rows of every global batch. repeat=False stops
    after one epoch (evaluation; use shuffle=False there)."""

    def __init__(self, features: Sequence[Mapping], batch_size: int, *, max_length: int,
                 pad_id: int, padding_side: str = "right", buckets: Sequence[int] | None = None,
                 shuffle: bool = True, seed: int = 0, repeat: bool = True, pack: bool = False,
                 max_per_row: int = 8, position_offset: int = 0, pad_position: int = 0,
                 process_index: int = 0, process_count: int = 1, state: Mapping | None = None):
        if not len(features):
            raise ValueError("no features to batch")
        self.features = features
        self.batch_size = _positive("batch_size", batch_size)
        self.max_length = _positive("max_length", max_length)
        if padding_side not in ("right", "left"):
            raise ValueError(f"padding_side must be 'right' or 'left', got {padding_side!r}")
        self.pad_id, self.left = int(pad_id), padding_side == "left"
        self.lengths = np.array([_length(f) for f in features])
        if self.lengths.max() > self.max_length:
            i = int(self.lengths.argmax())
            raise ValueError(f"feature {i} has {self.lengths[i]} tokens, more than max_length="
                             f"{self.max_length}; encode with the same max_length")
        self.buckets = tuple(sorted({_positive("bucket", b) for b in
                                     (buckets or default_buckets(self.max_length))
                                     if b < self.max_length} | {self.max_length}))
        self.choices = isinstance(features[0]["input_ids"], tuple)
        self.per_token_labels = "labels" in features[0] and np.ndim(features[0]["labels"]) == 1
        if pack and self.choices:
            raise ValueError("multiple-choice features cannot be packed; use pack=False")
        self.pack, self.max_per_row = bool(pack), _positive("max_per_row", max_per_row)
        self.position_offset, self.pad_position = position_offset, pad_position
        self.shuffle, self.seed, self.repeat = bool(shuffle), int(seed), bool(repeat)
        if not 0 <= process_index < process_count or self.batch_size % process_count:
            raise ValueError(f"process {process_index} of {process_count}: batch_size "
                             f"{batch_size} must split evenly over the processes")
        self.rows = slice(process_index * batch_size // process_count,
                          (process_index + 1) * batch_size // process_count)
        self.epoch, self.index, self.next_batch = 0, 0, 0
        if state is not None:
            self._restore(state)
        self._plan_epoch, self._plan = None, None
        self.real_tokens = self.computed_tokens = 0

    # ---- position -------------------------------------------------------------------------
    def state(self) -> dict:
        """JSON-able position plus what the stream depends on (checked on restore)."""
        return {"epoch": self.epoch, "index": self.index, "next_batch": self.next_batch,
                "seed": self.seed, "batch_size": self.batch_size,
                "examples": len(self.features), "pack": self.pack}

    def _restore(self, state: Mapping) -> None:
        if not isinstance(state, Mapping) or any(k not in state for k in STATE_KEYS):
            raise ValueError(f"not a TaskBatches state (needs {list(STATE_KEYS)}): "
                             f"{state!r:.200}")
        mine = self.state()
        differ = [k for k in ("seed", "batch_size", "examples", "pack") if state[k] != mine[k]]
        if differ:
            raise ValueError(f"the saved data position is for another stream: "
                             + ", ".join(f"{k} {state[k]!r} then, {mine[k]!r} now" for k in differ))
        self.epoch, self.index, self.next_batch = (int(state[k]) for k in STATE_KEYS[:3])

    @property
    def real_token_fraction(self) -> float:
        """Real tokens / computed tokens over the batches produced so far (nan before any)."""
        return self.real_tokens / self.computed_tokens if self.computed_tokens else float("nan")

    @property
    def rows_per_epoch(self) -> int:
        """Rows of all processes in an epoch: one per feature, or the packed rows (their count
        depends on the lengths alone, not on the epoch's order)."""
        if not self.pack:
            return len(self.features)
        return len(self.plan(self.epoch)[0][0]["input_ids"])

    # ---- plan -----------------------------------------------------------------------------
    def _rng(self, epoch: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, epoch])

    def plan(self, epoch: int) -> list:
        """The epoch's batches: (bucket length, feature indices) bucketed, or (packed rows,
        row indices) packed; the same for the same (seed, epoch)."""
        if self._plan_epoch != epoch:
            rng = self._rng(epoch)
            order = rng.permutation(len(self.features)) if self.shuffle else \
                np.arange(len(self.features))
            self._plan = self._packed_plan(order, rng) if self.pack else \
                self._bucketed_plan(order, rng)
            self._plan_epoch = epoch
        return self._plan

    def _bucketed_plan(self, order: np.ndarray, rng) -> list:
        bucket_of = np.searchsorted(self.buckets, self.lengths[order])
        batches = [(length, members[i:i + self.batch_size])
                   for b, length in enumerate(self.buckets)
                   for members in [order[bucket_of == b]]
                   for i in range(0, len(members), self.batch_size)]
        if self.shuffle:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        return batches

    def _packed_plan(self, order: np.ndarray, rng) -> list:
        keys = ("input_ids", "token_type_ids") + (("labels",) if self.per_token_labels else ())
        packed = pack_examples([{k: self.features[i][k] for k in keys} for i in order],
                               self.max_length, max_per_row=self.max_per_row, pad_id=self.pad_id,
                               position_offset=self.position_offset,
                               pad_position=self.pad_position, fill={"labels": IGNORE_INDEX})
        packed["example_index"] = order.astype(np.int32)  # pack_examples keeps input order
        # The examples of each row, found once: row r holds by_row[bounds[r]:bounds[r + 1]].
        packed["by_row"] = np.argsort(packed["example_row"], kind="stable")
        packed["bounds"] = np.searchsorted(packed["example_row"][packed["by_row"]],
                                           np.arange(len(packed["input_ids"]) + 1))
        rows = np.arange(len(packed["input_ids"]))
        if self.shuffle:
            rows = rng.permutation(rows)
        return [(packed, rows[i:i + self.batch_size]) for i in range(0, len(rows),
                                                                     self.batch_size)]

    # ---- batches --------------------------------------------------------------------------
    def __iter__(self):
        return self

    def __next__(self) -> dict:
        plan = self.plan(self.epoch)
        if self.index >= len(plan):
            if not self.repeat:
                raise StopIteration
            self.epoch, self.index = self.epoch + 1, 0
            plan = self.plan(self.epoch)
        what, members = plan[self.index]
        batch = self._packed_batch(what, members) if self.pack else \
            self._bucketed_batch(what, members)
        self.index += 1
        self.next_batch += 1
        batch = {k: v[self.rows] for k, v in batch.items()}
        self.real_tokens += int(batch["attention_mask"].sum())
        self.computed_tokens += batch["attention_mask"].size
        return batch

    def _pad(self, rows: Sequence[np.ndarray], shape: tuple, fill, dtype) -> np.ndarray:
        """rows, each padded on the tokenizer's side to shape[-1], then padding rows to fill
        `shape` (the leading dimensions flattened in row order)."""
        out = np.full((int(np.prod(shape[:-1])), shape[-1]), fill, dtype)
        for r, row in enumerate(rows):
            start = shape[-1] - len(row) if self.left else 0
            out[r, start:start + len(row)] = row
        return out.reshape(shape)

    def _bucketed_batch(self, length: int, members: np.ndarray) -> dict:
        features = [self.features[i] for i in members]
        shape = (self.batch_size,) + ((len(features[0]["input_ids"]),) if self.choices else ()) \
            + (length,)

        def rows(key):  # one row per text: a multiple-choice feature has one per choice
            return [c for f in features for c in f[key]] if self.choices else \
                [f[key] for f in features]

        batch = {"input_ids": self._pad(rows("input_ids"), shape, self.pad_id, np.int32),
                 "token_type_ids": self._pad(rows("token_type_ids"), shape, 0, np.int32),
                 "attention_mask": self._pad([np.ones(len(r), np.int32) for r in
                                              rows("input_ids")], shape, 0, np.int32)}
        if "labels" in features[0]:
            labels = [f["labels"] for f in features]
            if self.per_token_labels:
                batch["labels"] = self._pad(labels, shape, IGNORE_INDEX, np.int32)
            else:
                batch["labels"] = np.zeros(self.batch_size, np.asarray(labels[0]).dtype)
                batch["labels"][:len(labels)] = labels
        batch["example_weights"] = (np.arange(self.batch_size) < len(members)).astype(np.float32)
        batch["example_index"] = np.full(self.batch_size, -1, np.int32)
        batch["example_index"][:len(members)] = members
        return batch

    def _packed_batch(self, packed: dict, rows: np.ndarray) -> dict:
        shape = (self.batch_size, self.max_length)
        batch = {}
        for key in ("input_ids", "token_type_ids", "attention_mask", "segment_ids",
                    "position_ids") + (("labels",) if self.per_token_labels else ()):
            fill = {"input_ids": self.pad_id, "position_ids": self.pad_position,
                    "labels": IGNORE_INDEX}.get(key, 0)
            batch[key] = np.full(shape, fill, packed[key].dtype)
            batch[key][:len(rows)] = packed[key][rows]
        slots = (self.batch_size, self.max_per_row)
        per_example = {"example_positions": np.zeros(slots, np.int32),
                       "example_lengths": np.zeros(slots, np.int32),
                       "example_weights": np.zeros(slots, np.float32),
                       "example_index": np.full(slots, -1, np.int32)}
        with_labels = "labels" in self.features[0] and not self.per_token_labels
        if with_labels:
            per_example["labels"] = np.zeros(slots, np.asarray(self.features[0]["labels"]).dtype)
        for b, row in enumerate(rows):
            for k in packed["by_row"][packed["bounds"][row]:packed["bounds"][row + 1]]:
                start = packed["example_start"][k]
                slot = packed["segment_ids"][row, start] - 1  # segment ids count from 1
                feature = packed["example_index"][k]
                per_example["example_positions"][b, slot] = start
                per_example["example_lengths"][b, slot] = packed["example_length"][k]
                per_example["example_weights"][b, slot] = 1.0
                per_example["example_index"][b, slot] = feature
                if with_labels:
                    per_example["labels"][b, slot] = self.features[feature]["labels"]
        return {**batch, **per_example}
