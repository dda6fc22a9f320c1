"""Extractive question answering: from the start / end logits of each window to an answer text
per example, its n best spans and (SQuAD v2) how strongly the model prefers no answer.

The algorithm is the one transformers' run_qa evaluates with (`postprocess_qa_predictions` in
examples/pytorch/question-answering/utils_qa.py), vectorised per window with numpy: in each
window, every pair of the `n_best_size` highest start and end logits is a candidate unless
either token lies outside the context, the end comes before the start or the span has more
than `max_answer_length` tokens; a candidate scores start + end logit, and the candidates of
all of an example's windows are ranked together. The null answer scores start + end logit at
the CLS token, and an example's null score is the lowest over its windows (every window must
agree that there is no answer). With `version_2`, the null answer is ranked with the spans and
is predicted when null score - best span score > `null_score_diff_threshold`.

One deliberate difference: an example without a single allowed span predicts "" (utils_qa
puts a placeholder answer, the literal text "empty" with score 0, in its n-best instead), and
its null score difference is +inf, so that every threshold keeps it unanswered.
"""
from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from flaxbert.tasks.qa import QAWindow


@dataclass(frozen=True)
class QAPredictions:
    """Per example id: the answer text; the n best answers, best first, each
    {"text", "start", "end" (character positions in the context), "score" (start + end logit),
    "probability" (softmax over the n best)}; with version_2, null score - best span score
    (the `null_odds` that the SQuAD v2 evaluation sweeps a threshold over)."""

    predictions: dict[str, str]
    nbest: dict[str, list[dict]]
    null_score_diff: dict[str, float]


def _as_logits(values, window_index: int, name: str, length: int) -> np.ndarray:
    logits = np.asarray(values, np.float64)
    if logits.shape != (length,):
        raise ValueError(f"window {window_index}: {name} has shape {logits.shape}, expected "
                         f"({length},), the window's unpadded length")
    if np.isnan(logits).any():
        raise ValueError(f"window {window_index}: {name} contains NaN")
    return logits


def _check_window(window: QAWindow, window_index: int, examples) -> None:
    if not 0 <= window.example_index < len(examples):
        raise ValueError(f"window {window_index}: example_index {window.example_index} is not "
                         f"one of the {len(examples)} examples")
    offsets = np.asarray(window.offsets)
    if offsets.ndim != 2 or offsets.shape[1:] != (2,):
        raise ValueError(f"window {window_index}: offsets have shape {offsets.shape}, expected "
                         f"(window length, 2)")
    if not 0 <= window.cls_index < len(offsets):
        raise ValueError(f"window {window_index}: cls_index {window.cls_index} is outside its "
                         f"{len(offsets)} tokens")
    example = examples[window.example_index]
    if offsets.size and offsets.max() > len(example["context"]):
        # A window paired with the wrong example would otherwise decode to a wrong substring.
        raise ValueError(f"window {window_index}: offsets reach character {offsets.max()} but "
                         f"example {example['id']!r} has a {len(example['context'])}-character "
                         f"context")


def _window_spans(offsets: np.ndarray, start: np.ndarray, end: np.ndarray, n_best_size: int,
                  max_answer_length: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(scores, first characters, end characters) of one window's allowed spans, ordered as
    utils_qa enumerates them (start rank outer, end rank inner), so that a stable sort breaks
    ties the way it does."""
    in_context = offsets[:, 0] >= 0
    starts = np.argsort(-start, kind="stable")[:n_best_size, None]
    ends = np.argsort(-end, kind="stable")[None, :n_best_size]
    allowed = (in_context[starts] & in_context[ends] & (ends >= starts)
               & (ends - starts < max_answer_length))
    starts, ends = (index[allowed] for index in np.broadcast_arrays(starts, ends))
    return start[starts] + end[ends], offsets[starts, 0], offsets[ends, 1]


def _with_probabilities(nbest: list[dict]) -> list[dict]:
    if nbest:
        scores = np.array([answer["score"] for answer in nbest])
        weights = np.exp(scores - scores.max())
        for answer, probability in zip(nbest, weights / weights.sum()):
            answer["probability"] = float(probability)
    return nbest


def decode_spans(examples: Sequence[Mapping], windows: Sequence[QAWindow],
                 start_logits: Sequence, end_logits: Sequence, *, n_best_size: int = 20,
                 max_answer_length: int = 30, version_2: bool = False,
                 null_score_diff_threshold: float = 0.0) -> QAPredictions:
    """Answers for `examples` (SQuAD-format dicts with "id" and "context") from the logits of
    their `windows`: `start_logits[i]` and `end_logits[i]` are 1-d arrays over the unpadded
    tokens of `windows[i]`. Null score differences are filled only with `version_2`."""
    if not len(windows) == len(start_logits) == len(end_logits):
        raise ValueError(f"{len(windows)} windows but {len(start_logits)} start_logits and "
                         f"{len(end_logits)} end_logits")
    if n_best_size < 1 or max_answer_length < 1:
        raise ValueError(f"n_best_size ({n_best_size}) and max_answer_length "
                         f"({max_answer_length}) must be at least 1")
    for index, example in enumerate(examples):
        if "id" not in example or "context" not in example:
            raise ValueError(f"example {index}: needs 'id' and 'context', got keys "
                             f"{sorted(example)}")
    ids = [example["id"] for example in examples]
    duplicate = next((i for i, count in Counter(ids).items() if count > 1), None)
    if duplicate is not None:
        raise ValueError(f"example id {duplicate!r} appears more than once")

    spans_of, null_of = defaultdict(list), {}
    for window_index, window in enumerate(windows):
        _check_window(window, window_index, examples)
        offsets = np.asarray(window.offsets)
        start = _as_logits(start_logits[window_index], window_index, "start_logits", len(offsets))
        end = _as_logits(end_logits[window_index], window_index, "end_logits", len(offsets))
        spans_of[window.example_index].append(
            _window_spans(offsets, start, end, n_best_size, max_answer_length))
        null = start[window.cls_index] + end[window.cls_index]
        null_of[window.example_index] = min(null, null_of.get(window.example_index, np.inf))

    predictions, nbest_of, null_score_diff = {}, {}, {}
    for example_index, example in enumerate(examples):
        if example_index not in null_of:
            raise ValueError(f"example {example['id']!r} has no windows")
        scores, first, last = (np.concatenate(part) for part in zip(*spans_of[example_index]))
        best = np.argsort(-scores, kind="stable")[:n_best_size]
        context = example["context"]
        nbest = [{"text": context[first[i]:last[i]], "start": int(first[i]), "end": int(last[i]),
                  "score": float(scores[i])} for i in best]
        if version_2:
            null_score = float(null_of[example_index])
            # Ranked after spans of equal score, and kept even when it falls out of the n best,
            # as utils_qa does: the n-best then holds n_best_size + 1 answers.
            rank = int(np.sum(scores[best] >= null_score))
            nbest.insert(rank, {"text": "", "start": 0, "end": 0, "score": null_score})
            del nbest[max(n_best_size, rank + 1):]
            best_span = next((answer for answer in nbest if answer["text"]), None)
            difference = null_score - best_span["score"] if best_span else np.inf
            null_score_diff[example["id"]] = float(difference)
            answered = best_span is not None and difference <= null_score_diff_threshold
            predictions[example["id"]] = best_span["text"] if answered else ""
        else:
            predictions[example["id"]] = nbest[0]["text"] if nbest else ""
        nbest_of[example["id"]] = _with_probabilities(nbest)
    return QAPredictions(predictions, nbest_of, null_score_diff)
