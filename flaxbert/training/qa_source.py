"""Extractive question answering as a Trainer data source: SQuAD-format files -> windows with a
stride -> (start, end) labelled batches; evaluation decodes each example's answer over all of
its windows and scores it with the official SQuAD metrics.

    flaxbert finetune --config configs/finetune_squad.py[:v2|:tiny] --workdir runs/squad \
        --config.model=checkpoints/bert-base-uncased \
        --config.data.train=train-v1.1.json --config.data.validation=dev-v1.1.json

Windows come from `flaxbert.tasks.qa.encode_qa` (transformers' run_qa preprocessing); a batch's
`labels` (batch, 2) hold each window's answer start and end token in the padded row (shifted by the
padding for tokenizers that pad on the left, XLNet). Decoding is
`flaxbert.tasks.qa_decode.decode_spans` (run_qa's n-best search, the null answer for v2) and the
metrics `flaxbert.tasks.squad_metrics` (exact match and F1; v2 adds HasAns / NoAns and the
best-threshold numbers).
"""
from __future__ import annotations

import numpy as np

from flaxbert.training.sources import TaskData


class QuestionAnsweringData(TaskData):
    """TaskData for `objective="question_answering"`: the same checkpoint loading, batching
    and description; its own reading, labels and metrics."""

    def __init__(self, config, description: dict | None = None):
        self._encoded = []  # (examples, windows) of each file read, in TaskData's order
        super().__init__(config, description)
        # TaskData encodes the training file first, then each evaluation set.
        evaluated = self._encoded[1:] if config.data.train else self._encoded
        self.qa_examples = [examples for examples, _ in evaluated]
        self.qa_windows = [windows for _, windows in evaluated]

    # ---- reading: no label map, windows instead of one feature per example ----------------
    def _read(self, spec, split, labelled):
        from flaxbert.tasks.qa import read_squad
        if not spec:
            raise ValueError(f"data.{split}: no file given")
        return read_squad(spec, split=split, on_mismatch=self.config.task.on_mismatch)

    def _label_map(self, train):
        return None

    def _checkpoint_label_map(self):
        return None

    def _features(self, examples):
        from flaxbert.tasks.qa import encode_qa
        t = self.config.task
        features, windows = encode_qa(
            examples, self.tokenizer, max_seq_length=self.seq_len,
            doc_stride=int(t.doc_stride), max_query_length=int(t.max_query_length),
            labelled=True, overflow=t.overflow)
        self._encoded.append((examples, windows))
        return features

    # ---- what the Trainer asks ------------------------------------------------------------
    def example_batch(self, batch_size: int = 1) -> dict:
        shape = (batch_size, self.seq_len)
        return {"input_ids": np.ones(shape, np.int32), "attention_mask": np.ones(shape, np.int32),
                "token_type_ids": np.zeros(shape, np.int32),
                "labels": np.zeros((batch_size, 2), np.int32),
                "example_weights": np.ones((batch_size,), np.float32)}

    def _batches(self, features, *, train: bool, state=None):
        return _SpanBatches(super()._batches(features, train=train, state=state), features,
                            left=self.tokenizer.padding_side == "left")

    def outputs_metrics(self, outputs: list[dict]) -> dict:
        from flaxbert.tasks.qa_decode import decode_spans
        from flaxbert.tasks.squad_metrics import squad_metrics
        s, offset = self.eval_set_of(outputs)
        examples, windows = self.qa_examples[s], self.qa_windows[s]
        starts, ends = [None] * len(windows), [None] * len(windows)
        left = self.tokenizer.padding_side == "left"
        for o in outputs:
            for logits, mask, i in zip(o["logits"], o["attention_mask"], o["example_index"]):
                n = int(mask.sum())
                row = logits[:, -n:] if left else logits[:, :n]  # the unpadded window
                starts[i - offset], ends[i - offset] = row[0], row[1]
        missing = [i for i, s in enumerate(starts) if s is None]
        if missing:  # eval_batches limited the pass: score the examples seen in full
            seen = {w.example_index for i, w in enumerate(windows) if starts[i] is not None}
            seen -= {windows[i].example_index for i in missing}
            keep = [i for i, w in enumerate(windows) if w.example_index in seen]
            if not keep:
                return {}
            renumber = {e: n for n, e in enumerate(sorted(seen))}
            examples = [examples[e] for e in sorted(seen)]
            windows = [type(windows[i])(renumber[windows[i].example_index], windows[i].offsets,
                                        windows[i].cls_index) for i in keep]
            starts, ends = [starts[i] for i in keep], [ends[i] for i in keep]
        t = self.config.task
        decoded = decode_spans(examples, windows, starts, ends, n_best_size=int(t.n_best_size),
                               max_answer_length=int(t.max_answer_length),
                               version_2=bool(t.version_2),
                               null_score_diff_threshold=float(t.null_score_diff_threshold))
        return squad_metrics(examples, decoded.predictions,
                             null_odds=decoded.null_score_diff if t.version_2 else None,
                             version_2=bool(t.version_2) or None)

    def description(self) -> dict:
        out = super().description()
        if self._description is None:
            t = self.config.task
            out.update(doc_stride=int(t.doc_stride), max_query_length=int(t.max_query_length))
        return out


def _span_labels(features, index: np.ndarray, mask: np.ndarray, left: bool) -> np.ndarray:
    """(batch, 2) start / end positions of the rows' features in their padded rows (0 for
    padding rows, whose weight is 0)."""
    labels = np.zeros((len(index), 2), np.int32)
    for b, i in enumerate(index):
        if i >= 0:
            shift = mask.shape[1] - int(mask[b].sum()) if left else 0
            labels[b] = (int(features[i]["start_positions"]) + shift,
                         int(features[i]["end_positions"]) + shift)
    return labels


class _SpanBatches:
    """Task batches (resumable through TaskBatches' `state()`) with the span labels."""

    def __init__(self, inner, features, *, left: bool):
        self.inner, self.features, self.left = inner, features, left

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        batch = dict(next(self.inner))
        batch["labels"] = _span_labels(self.features, batch["example_index"],
                                       batch["attention_mask"], self.left)
        return batch

    def __getattr__(self, name):  # state(), real_token_fraction, ... of the inner stream
        return getattr(self.inner, name)
