"""`multiple-choice`: a probability per candidate ending (SWAG-style), from a multiple-choice head.

transformers has no pipeline for it; the scores are AutoModelForMultipleChoice's logits,
softmaxed over each question's choices. Each (prompt, choice) pair is one engine row (the head
scores rows independently), so questions with any number of choices share the same buckets.
"""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from flaxbert.pipelines.base import Pipeline, as_inputs, softmax


class MultipleChoicePipeline(Pipeline):
    """pipe({"text": prompt, "choices": [ending, ...]}) or a list of them: per input, a list of
    {index, choice, score} sorted by score (scores sum to 1 over the choices)."""

    task = "multiple-choice"
    heads = ("multiple-choice",)

    def forward(self, params, ids, mask, types):
        # (rows, 1 choice, length): the head's logit for each (prompt, choice) row.
        logits = self.model.apply({"params": params}, ids[:, None], mask[:, None],
                                  types[:, None]).logits
        return logits[:, 0].astype(jnp.float32)

    def __call__(self, inputs, **call_options):
        questions, single = as_inputs(inputs, dict, "a {'text': str, 'choices': [str, ...]} dict")
        self.options(call_options)
        for i, q in enumerate(questions):
            choices = q.get("choices")
            if (set(q) != {"text", "choices"} or not isinstance(q["text"], str)
                    or not isinstance(choices, (list, tuple)) or not choices
                    or not all(isinstance(c, str) for c in choices)):
                raise ValueError(f"inputs[{i}] must be {{'text': str, 'choices': [str, ...]}} with "
                                 f"at least one choice, got {q!r:.80}")
        pairs = [(q["text"], c) for q in questions for c in q["choices"]]
        logits = np.array([out for out, _ in self.run(self.encode(pairs))])
        results, start = [], 0
        for q in questions:
            scores = softmax(logits[start:start + len(q["choices"])])
            start += len(q["choices"])
            results.append([{"index": int(i), "choice": q["choices"][i], "score": float(scores[i])}
                            for i in np.argsort(-scores, kind="stable")])
        return results[0] if single else results
