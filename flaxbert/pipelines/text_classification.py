"""`text-classification`: labels and scores for texts or text pairs, with transformers' rules for
which function turns logits into scores and for the shape of what comes back. With `stride=`,
a text longer than max_length is read in windows (flaxbert.tasks.windows) whose logits are
pooled, rather than truncated.

On a hierarchical chunk model's directory (flaxbert.models.hierarchical: a fine-tuning run with
task.long_inputs="chunks" exports one) every text is cut into chunks as training cut it (its
chunk_length and stride), the encoder runs on each chunk through the bucketed engine, and the
saved pooling head classifies each document from its chunks' CLS embeddings."""
from __future__ import annotations

import logging
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from flaxbert.models.hierarchical import (HierarchicalClassifier, chunk_cls, is_chunk_directory,
                                          load_chunk_head, read_chunk_config)
from flaxbert.pipelines.base import Pipeline, as_inputs, sigmoid, softmax
from flaxbert.tasks.windows import (WindowLayout, pool_window_logits, special_layout,
                                   split_into_windows)

log = logging.getLogger(__name__)

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


def group_chunks(embeddings: np.ndarray, document: np.ndarray, num_documents: int,
                 max_chunks: int) -> tuple[np.ndarray, np.ndarray]:
    """(windows, hidden) chunk embeddings, each document's in order -> (documents, max_chunks,
    hidden) and the (documents, max_chunks) presence mask the chunk head reads; a document's
    chunks past max_chunks are dropped, as fine-tuning drops them."""
    document = np.asarray(document)
    place = np.arange(len(document)) - np.searchsorted(document, document)  # rank in its document
    keep = place < max_chunks
    grouped = np.zeros((num_documents, max_chunks) + embeddings.shape[1:], embeddings.dtype)
    present = np.zeros((num_documents, max_chunks), bool)
    grouped[document[keep], place[keep]] = embeddings[keep]
    present[document[keep], place[keep]] = True
    return grouped, present


class TextClassificationPipeline(Pipeline):
    """pipe("a text"), pipe({"text": ..., "text_pair": ...}) or a list of either.

    Without top_k each input gives its best {label, score} (one text: a one-element list, as
    transformers returns); with top_k=k (None: every label) a list sorted by score.
    function_to_apply: "softmax", "sigmoid", "none" or None (transformers' default rule).
    stride: None truncates long texts; an int reads each text in windows of max_length tokens
    sharing `stride` tokens, whose logits window_pooling ("mean", "max", "first") pools before
    the scores are taken (single texts only).

    A chunk model's directory reads single texts in chunks: max_length defaults to its
    chunk_length and stride (None) to its stride; window_pooling does not apply. A text of more
    than max_chunks chunks keeps its first max_chunks with a warning (truncation=True, as
    training kept them) or is refused (truncation=False).
    """

    task = "text-classification"
    heads = ("sequence-classification",)
    # top_k "" means not given, which selects transformers' legacy output shape.
    defaults = {"top_k": "", "function_to_apply": None, "stride": None, "window_pooling": "mean"}

    def __init__(self, model_dir, **kwargs):
        self.chunk_model = None
        settings = read_chunk_config(model_dir) if is_chunk_directory(model_dir) else None
        if settings is not None:
            self.heads = ("base",)  # the directory's model.safetensors is the per-chunk encoder
            if settings["chunk_length"] is not None:
                kwargs.setdefault("max_length", settings["chunk_length"])
        super().__init__(model_dir, **kwargs)
        if settings is not None:
            self.chunk_model = HierarchicalClassifier(self.config, **settings)
            self.chunk_head = jax.device_put(load_chunk_head(model_dir, self.chunk_model))
            self._pool_chunks = jax.jit(self._counted_head)

    def forward(self, params, ids, mask, types):
        out = self.model.apply({"params": params}, ids, mask, types)
        if self.chunk_model is not None:  # each chunk's CLS embedding; the head runs apart
            return chunk_cls(out.last_hidden_state, self.chunk_model.cls_position
                             ).astype(jnp.float32)
        return out.logits.astype(jnp.float32)

    def _counted_head(self, head_params, embeddings, present):
        self.compilations["chunk-head"] += 1
        embeddings = embeddings.astype(self.config.compute_dtype)  # what the encoder gave it
        return self.chunk_model.head_model().apply({"params": head_params}, embeddings,
                                                   present).astype(jnp.float32)

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
        """One logits row per input: truncated, pooled over its windows (stride=), or a chunk
        model's over its chunks."""
        if opts["stride"] is None and self.chunk_model is None:
            return [logits for logits, _ in self.run(self.encode(inputs))]
        pair = next((i for i, x in enumerate(inputs) if isinstance(x, tuple)), None)
        if pair is not None:
            what = "chunk models read" if self.chunk_model is not None else "stride= windows take"
            raise ValueError(f"inputs[{pair}] is a text pair; {what} single texts")
        if self.chunk_model is not None:
            return self.chunk_logits(inputs, opts)
        _, layout, rows = run_windows(self, inputs, opts["stride"])
        return pool_window_logits(np.stack([logits for logits, _ in rows]), layout.document,
                                  layout.num_documents, opts["window_pooling"])

    def chunk_logits(self, texts: list[str], opts: dict) -> np.ndarray:
        """(texts, num_labels): each text's chunks encoded, then the saved head over them."""
        model = self.chunk_model
        stride = model.stride if opts["stride"] is None else opts["stride"]
        _, layout, rows = run_windows(self, texts, stride)
        counts = np.bincount(layout.document, minlength=layout.num_documents)
        long = np.flatnonzero(counts > model.max_chunks)
        if len(long):
            first = int(long[0])
            message = (f"inputs[{first}] is {counts[first]} chunks of {self.engine.max_length} "
                       f"tokens, more than the model's max_chunks={model.max_chunks}")
            if not self.truncation:
                raise ValueError(f"{message}; build the pipeline with truncation=True to keep "
                                 "the first max_chunks, as fine-tuning did")
            log.warning("%s (%d input(s) are); their first %d chunks are read", message,
                        len(long), model.max_chunks)
        embeddings, present = group_chunks(np.stack([row for row, _ in rows]), layout.document,
                                           layout.num_documents, model.max_chunks)
        # Whole batches of documents: the head compiles once per batch size, not per call.
        size = self.engine.batch_size
        padding = -len(texts) % size
        embeddings = np.pad(embeddings, ((0, padding), (0, 0), (0, 0)))
        present = np.pad(present, ((0, padding), (0, 0)))
        present[len(texts):, 0] = True  # padding documents: one (zero) chunk, nothing empty
        return np.concatenate([np.asarray(self._pool_chunks(
            self.chunk_head, embeddings[i:i + size], present[i:i + size]))
            for i in range(0, len(embeddings), size)])[:len(texts)]

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
