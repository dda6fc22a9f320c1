"""What every pipeline shares: loading a directory, checking inputs, and running task heads
through the length-bucketed `InferenceEngine` (one compilation per bucket, whatever the stream).

Pipelines tokenize with the backend `tokenizers` pipeline of `flaxbert.Tokenizer` (so character
offsets and special-token masks are at hand), then hand the encoded rows to the engine.
"""
from __future__ import annotations

import collections
import logging
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import jax
import numpy as np

from flaxbert.convert import from_pretrained
from flaxbert.hub import resolve
from flaxbert.inference import DEFAULT_BUCKETS, InferenceEngine
from flaxbert.models.base import TASKS
from flaxbert.tokenizer import Tokenizer

log = logging.getLogger(__name__)


class TaskEngine(InferenceEngine):
    """InferenceEngine for any head: `run(encodings, forward)` pads `tokenizers.Encoding`s into
    the engine's buckets and fixed batch size and returns (output row, attention-mask row) per
    encoding, in order. `forward(params, ids, mask, types)` is jitted by the caller and returns
    one array."""

    tasks = TASKS

    def _tokenize(self, encodings):
        return {"input_ids": [e.ids for e in encodings],
                "token_type_ids": [e.type_ids for e in encodings]}

    def _check_inputs(self, encodings):
        pass  # pipelines check their inputs before they encode them

    def run(self, encodings: Sequence, forward: Callable) -> list[tuple[np.ndarray, np.ndarray]]:
        return [(out, mask) for _, out, mask in self._run(encodings, forward)]


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def sigmoid(logits: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-logits))


def as_inputs(inputs, allowed: tuple[type, ...], what: str) -> tuple[list, bool]:
    """(list of inputs, whether one input was given); one clear error for anything else."""
    single = isinstance(inputs, allowed)
    items = [inputs] if single else inputs
    if not isinstance(items, (list, tuple)):
        raise TypeError(f"inputs must be {what} or a list of them, got {type(inputs).__name__}")
    if not items:
        raise ValueError(f"inputs is an empty list; give at least one {what}")
    for i, item in enumerate(items):
        if not isinstance(item, allowed):
            raise TypeError(f"inputs[{i}] is {type(item).__name__}, expected {what}")
    return list(items), single


class Pipeline:
    """Loads `model_dir` (a transformers or flaxbert directory with tokenizer files), checks that
    its head is one of `heads`, and runs inputs in batches through a `TaskEngine`.

    batch_size, buckets, max_length: the engine's (max_length defaults to the model's and the
    tokenizer's limit). truncation: texts longer than max_length are cut with a warning (True)
    or refused (False). Other keyword arguments are call defaults (top_k=..., ...), which each
    call may override.
    """

    task: ClassVar[str]
    heads: ClassVar[tuple[str, ...]]
    defaults: ClassVar[dict[str, Any]] = {}
    # A checkpoint whose head holds one of `heads` (as transformers' pipelines accept it) is
    # loaded as that head: {checkpoint task: the task to load it as}.
    reads_heads_of: ClassVar[dict[str, str]] = {}

    def __init__(self, model_dir, *, batch_size: int = 32, buckets: Sequence[int] = DEFAULT_BUCKETS,
                 max_length: int | None = None, truncation: bool = True, **call_defaults):
        self.call_defaults = self.checked_options(call_defaults)
        self.model_dir = model_dir
        model_dir = resolve(model_dir)  # a hub id once, for the model and the tokenizer
        model, params = from_pretrained(model_dir)
        if model.task in self.reads_heads_of:  # e.g. BertForPreTraining's MLM half for fill-mask
            model, params = from_pretrained(model_dir, task=self.reads_heads_of[model.task])
        if model.task not in self.heads:
            raise ValueError(f"{model_dir}: the checkpoint's head is {model.task!r} "
                             f"({type(model).__name__}); the {self.task!r} pipeline needs "
                             f"{' or '.join(map(repr, self.heads))}")
        self.model, self.config = model, model.config
        self.tokenizer = Tokenizer.from_pretrained(model_dir)
        self.engine = TaskEngine(model, params, self.tokenizer, batch_size=batch_size,
                                 buckets=buckets, max_length=max_length)
        self.truncation = bool(truncation)
        self._encoder = self.tokenizer.backend_tokenizer  # a private copy: safe to configure
        self._encoder.enable_truncation(self.engine.max_length,
                                        direction=self.tokenizer.truncation_side)
        self._forward = jax.jit(self._counted_forward, static_argnames=("options",))
        self.compilations: collections.Counter = self.engine.compilations

    def checked_options(self, options: dict) -> dict:
        unknown = sorted(set(options) - set(self.defaults))
        if unknown:
            raise TypeError(f"the {self.task!r} pipeline has no option {unknown[0]!r}; it takes "
                            f"{', '.join(sorted(self.defaults)) or 'none'}")
        return options

    def options(self, call_options: dict) -> dict:
        return {**self.defaults, **self.call_defaults, **self.checked_options(call_options)}

    def encode(self, inputs: Sequence[str | tuple[str, str]]) -> list:
        """`tokenizers.Encoding`s (ids, type_ids, offsets, special_tokens_mask) of texts or
        (text, text_pair) tuples, truncated to the engine's max_length, with a warning or an
        error as `truncation` says."""
        encodings = self._encoder.encode_batch(list(inputs))
        cut = [i for i, e in enumerate(encodings) if e.overflowing]
        if cut and not self.truncation:
            raise ValueError(f"inputs[{cut[0]}] is longer than max_length={self.engine.max_length} "
                             f"tokens ({len(cut)} input(s) are); build the pipeline with truncation=True to cut them")
        if cut:
            log.warning("%d input(s) longer than %d tokens were truncated (first: inputs[%d])",
                        len(cut), self.engine.max_length, cut[0])
        return encodings

    def _counted_forward(self, params, ids, mask, types, options=()):
        self.compilations[self.task] += 1
        return self.forward(params, ids, mask, types, **dict(options))

    def run(self, encodings, **options) -> list[tuple[np.ndarray, np.ndarray]]:
        """(output row, mask row) per encoding; `options` are static arguments of `forward`."""
        frozen = tuple(sorted(options.items()))
        return self.engine.run(encodings,
                               lambda p, i, m, t: self._forward(p, i, m, t, options=frozen))

    def forward(self, params, ids, mask, types, **options):
        """The jitted head: one float32 array with a leading batch axis."""
        raise NotImplementedError
