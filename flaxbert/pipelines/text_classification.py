"""`text-classification`: labels and scores for texts or text pairs, with transformers' rules for
which function turns logits into scores and for the shape of what comes back. With `stride=`,
a text longer than max_length is read in windows (flaxbert.tasks.windows) whose logits are
pooled, rather than truncated."""
from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
import numpy as np

from flaxbert.pipelines.base import Pipeline, as_inputs, sigmoid, softmax
from flaxbert.tasks.windows import (WindowLayout, pool_window_logits, special_layout,
                                   split_into_windows)

FUNCTIONS = {"softmax": softmax, "sigmoid": sigmoid, "none": lambda x: x}


def default_function(problem_type: str | None, num_labels: int) -> str:
    """transformers' rule: regression -> none, multi-label or one label -> sigmoid, else softmax."""
    if problem_type == "regression":
        return "none"
    if problem_type == "multi_label_classification" or num_labels == 1:
        return "sigmoid"
    return "softmax"


def label_names(config) -> tuple[str, ...]:
    return config.id2label or tuple(f"LABEL_{i}" for i in range(config.num_labels))


class EncodedWindow(NamedTuple):
    """What the engine reads of an encoding, for one window of it."""

    ids: list
    type_ids: list


def run_windows(pipeline: Pipeline, texts: list[str], stride: int
                ) -> tuple[list, WindowLayout, list[tuple[np.ndarray, np.ndarray]]]:
    """(whole encodings, window layout, (output row, mask row) per window): each text encoded
    without truncation and cut into windows of the engine's max_length sharing `stride`
    tokens, as fine-tuning with task.long_inputs="windows" cuts them."""
    encoder = getattr(pipeline, "_untruncated", None)
    if encoder is None:
        encoder = pipeline._untruncated = pipeline.tokenizer.backend_tokenizer  # a private copy
        encoder.no_truncation()
    whole = encoder.encode_batch(texts)
    prefix, suffix = special_layout(encoder)
    cut = split_into_windows([{"input_ids": np.asarray(e.ids, np.int32),
                               "token_type_ids": np.asarray(e.type_ids, np.int32)}
                              for e in whole], max_length=pipeline.engine.max_length,
                             stride=stride, prefix=prefix, suffix=suffix)
    rows = pipeline.run([EncodedWindow(w["input_ids"].tolist(), w["token_type_ids"].tolist())
                         for w in cut])
    return whole, cut.layout, rows


class TextClassificationPipeline(Pipeline):
    """pipe("a text"), pipe({"text": ..., "text_pair": ...}) or a list of either.

    Without top_k each input gives its best {label, score} (one text: a one-element list, as
    transformers returns); with top_k=k (None: every label) a list sorted by score.
    function_to_apply: "softmax", "sigmoid", "none" or None (transformers' default rule).
    stride: None truncates long texts; an int reads each text in windows of max_length tokens
    sharing `stride` tokens, whose logits window_pooling ("mean", "max", "first") pools before
    the scores are taken (single texts only).
    """

    task = "text-classification"
    heads = ("sequence-classification",)
    # top_k "" means not given, which selects transformers' legacy output shape.
    defaults = {"top_k": "", "function_to_apply": None, "stride": None, "window_pooling": "mean"}

    def forward(self, params, ids, mask, types):
        return self.model.apply({"params": params}, ids, mask, types).logits.astype(jnp.float32)

    def __call__(self, inputs, **call_options):
        items, single = as_inputs(inputs, (str, dict), "a text or a {'text', 'text_pair'} dict")
        opts = self.options(call_options)
        function = opts["function_to_apply"] or default_function(
            getattr(self.config, "problem_type", None), self.config.num_labels)
        if function not in FUNCTIONS:
            raise ValueError(f"function_to_apply={function!r}; choose one of {sorted(FUNCTIONS)}")
        labels = label_names(self.config)
        results = []
        for logits in self.logits(self.as_pairs(items), opts):
            scores = FUNCTIONS[function](logits)
            if opts["top_k"] == "":
                best = int(scores.argmax())
                results.append({"label": labels[best], "score": float(scores[best])})
                continue
            order = np.argsort(-scores, kind="stable")[:opts["top_k"]]
            results.append([{"label": labels[i], "score": float(scores[i])} for i in order])
        if single and isinstance(inputs, str) and opts["top_k"] == "":
            return results
        return results[0] if single else results

    def logits(self, inputs: list, opts: dict):
        """One logits row per input: truncated, or pooled over its windows (stride=)."""
        if opts["stride"] is None:
            return [logits for logits, _ in self.run(self.encode(inputs))]
        pair = next((i for i, x in enumerate(inputs) if isinstance(x, tuple)), None)
        if pair is not None:
            raise ValueError(f"inputs[{pair}] is a text pair; stride= windows take single texts")
        _, layout, rows = run_windows(self, inputs, opts["stride"])
        return pool_window_logits(np.stack([logits for logits, _ in rows]), layout.document,
                                  layout.num_documents, opts["window_pooling"])

    @staticmethod
    def as_pairs(items) -> list[str | tuple[str, str]]:
        for i, item in enumerate(items):
            if isinstance(item, dict) and ("text" not in item or set(item) - {"text", "text_pair"}
                                           or not all(isinstance(v, str) for v in item.values())):
                raise ValueError(f"inputs[{i}] must be {{'text': str, 'text_pair': str}} "
                                 f"(text_pair optional), got {item!r:.80}")
        return [item if isinstance(item, str) else
                (item["text"], item["text_pair"]) if "text_pair" in item else item["text"]
                for item in items]
