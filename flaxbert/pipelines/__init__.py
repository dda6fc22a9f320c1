"""Task inference in JAX with transformers' `pipeline()` interface and outputs.

    fill = flaxbert.pipelines.pipeline("fill-mask", "path/to/bert")
    fill("Paris is the [MASK] of France.", top_k=3)

Tasks: fill-mask, text-classification, token-classification, question-answering,
multiple-choice, feature-extraction, sentence-embedding. Every pipeline takes one input or a
list and runs them through the length-bucketed engine, so a stream compiles once per bucket.
"""
from __future__ import annotations

import difflib

from flaxbert.pipelines.base import Pipeline, TaskEngine
from flaxbert.pipelines.features import FeatureExtractionPipeline, SentenceEmbeddingPipeline
from flaxbert.pipelines.fill_mask import FillMaskPipeline
from flaxbert.pipelines.multiple_choice import MultipleChoicePipeline
from flaxbert.pipelines.question_answering import QuestionAnsweringPipeline
from flaxbert.pipelines.text_classification import TextClassificationPipeline
from flaxbert.pipelines.token_classification import TokenClassificationPipeline

PIPELINES = {cls.task: cls for cls in (
    FillMaskPipeline, TextClassificationPipeline, TokenClassificationPipeline,
    QuestionAnsweringPipeline, MultipleChoicePipeline, FeatureExtractionPipeline,
    SentenceEmbeddingPipeline)}
ALIASES = {"sentiment-analysis": "text-classification", "ner": "token-classification",
           "embeddings": "sentence-embedding", "sentence-embeddings": "sentence-embedding"}

__all__ = ["pipeline", "PIPELINES", "Pipeline", "TaskEngine",
           *(c.__name__ for c in PIPELINES.values())]


def pipeline(task: str, model_dir, **kwargs):
    """The pipeline for `task` (or one of transformers' aliases: sentiment-analysis, ner) on a
    local transformers or flaxbert directory or a Hub id ("org/name", see flaxbert.hub); keyword
    arguments go to the pipeline's class."""
    name = ALIASES.get(task, task)
    if name not in PIPELINES:
        known = sorted(PIPELINES) + sorted(ALIASES)
        close = difflib.get_close_matches(str(task), known, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown pipeline task {task!r}.{hint} "
                         f"Known: {', '.join(sorted(PIPELINES))}")
    return PIPELINES[name](model_dir, **kwargs)
