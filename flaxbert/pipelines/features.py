"""`feature-extraction` (per-token last hidden states, as transformers' pipeline returns them)
and `sentence-embedding` (pooled vectors, as sentence-transformers computes them), both run by
the bucketed `InferenceEngine` itself."""
from __future__ import annotations

from typing import ClassVar

import numpy as np

from flaxbert.convert import from_pretrained
from flaxbert.inference import InferenceEngine
from flaxbert.pipelines.base import as_inputs
from flaxbert.tokenizer import Tokenizer


class FeatureExtractionPipeline:
    """pipe(text or texts): per text, nested lists (1, tokens, hidden) like transformers'
    (return_tensors=True: a float32 numpy array of that shape). Any head's directory works:
    the head is dropped. Engine options (batch_size, buckets, max_length) as InferenceEngine."""

    task: ClassVar[str] = "feature-extraction"

    def __init__(self, model_dir, *, return_tensors: bool = False, **engine_options):
        model, params = from_pretrained(model_dir, task="embedding")
        self.engine = InferenceEngine(model, params, Tokenizer.from_pretrained(model_dir),
                                      **engine_options)
        self.return_tensors = return_tensors
        self.compilations = self.engine.compilations

    def __call__(self, inputs, *, return_tensors: bool | None = None):
        texts, single = as_inputs(inputs, str, "a text")
        as_array = self.return_tensors if return_tensors is None else return_tensors
        states = [s[None] if as_array else s[None].tolist() for s in self.engine.encode(texts)]
        return states[0] if single else states


class SentenceEmbeddingPipeline:
    """pipe(text) -> (hidden,) float32; pipe(texts) -> (n, hidden). Pooling, normalisation and
    sentence-transformers' max_seq_length follow the directory (InferenceEngine.from_pretrained);
    keyword arguments are the engine's."""

    task: ClassVar[str] = "sentence-embedding"

    def __init__(self, model_dir, **engine_options):
        self.engine = InferenceEngine.from_pretrained(model_dir, **engine_options)
        self.compilations = self.engine.compilations

    def __call__(self, inputs) -> np.ndarray:
        texts, single = as_inputs(inputs, str, "a text")
        vectors = self.engine.embed(texts)
        return vectors[0] if single else vectors
