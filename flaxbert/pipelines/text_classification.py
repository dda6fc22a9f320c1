"""`text-classification`: labels and scores for texts or text pairs, with transformers' rules for
which function turns logits into scores and for the shape of what comes back."""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from flaxbert.pipelines.base import Pipeline, as_inputs, sigmoid, softmax

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


class TextClassificationPipeline(Pipeline):
    """pipe("a text"), pipe({"text": ..., "text_pair": ...}) or a list of either.

    Without top_k each input gives its best {label, score} (one text: a one-element list, as
    transformers returns); with top_k=k (None: every label) a list sorted by score.
    function_to_apply: "softmax", "sigmoid", "none" or None (transformers' default rule).
    """

    task = "text-classification"
    heads = ("sequence-classification",)
    # top_k "" means not given, which selects transformers' legacy output shape.
    defaults = {"top_k": "", "function_to_apply": None}

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
        for logits, _ in self.run(self.encode(self.as_pairs(items))):
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
