"""`token-classification` (NER): a label per token, or entities grouped with transformers'
aggregation strategies, with character offsets into the input text.

The post-processing is plain functions over numpy arrays (`pre_entities`, `aggregate`), which
follow transformers' TokenClassificationPipeline step for step so the entities, words and
offsets come out the same. With `stride=`, a text longer than max_length is read in windows
sharing `stride` tokens and each token's scores come from the window where it is most central
(flaxbert.tasks.windows), rather than the text being truncated.
"""
from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import jax.numpy as jnp
import numpy as np

from flaxbert.pipelines.base import Pipeline, as_inputs, softmax
from flaxbert.pipelines.text_classification import label_names, run_windows
from flaxbert.tasks.windows import document_token_logits

STRATEGIES = ("none", "simple", "first", "average", "max")
WORD_STRATEGIES = ("first", "average", "max")


def pre_entities(text: str, encoding, scores: np.ndarray, *, id_to_token: Callable,
                 unk_id: int | None, has_subword_prefix: bool, strategy: str) -> list[dict]:
    """One dict per non-special token: word (the vocabulary token), scores, start, end,
    index, is_subword."""
    out = []
    for index, (token_id, special, (start, end)) in enumerate(
            zip(encoding.ids, encoding.special_tokens_mask, encoding.offsets)):
        if special:
            continue
        word, reference = id_to_token(token_id), text[start:end]
        if has_subword_prefix:  # "##ing" is longer than the "ing" it covers
            is_subword = len(word) != len(reference)
        else:
            if strategy in WORD_STRATEGIES:
                warnings.warn("Tokenizer does not support real words, using fallback heuristic",
                              UserWarning, stacklevel=4)
            is_subword = start > 0 and " " not in text[start - 1:start + 1]
        if token_id == unk_id:
            word, is_subword = reference, False
        out.append({"word": word, "scores": scores[index], "start": start, "end": end,
                    "index": index, "is_subword": is_subword})
    return out


def aggregate(entities: list[dict], strategy: str, labels: Sequence[str],
              tokens_to_string: Callable) -> list[dict]:
    """Entities (strategy "none") or entity groups, as transformers builds them."""
    if strategy in ("none", "simple"):
        tagged = [{"entity": labels[int(e["scores"].argmax())], "score": e["scores"].max(),
                   "index": e["index"], "word": e["word"], "start": e["start"], "end": e["end"]}
                  for e in entities]
    else:
        tagged = [_word_entity(group, strategy, labels, tokens_to_string)
                  for group in _words(entities)]
    return tagged if strategy == "none" else group_entities(tagged, tokens_to_string)


def _words(entities: list[dict]) -> list[list[dict]]:
    words = []
    for e in entities:
        if words and e["is_subword"]:
            words[-1].append(e)
        else:
            words.append([e])
    return words


def _word_entity(tokens: list[dict], strategy: str, labels, tokens_to_string) -> dict:
    if strategy == "first":
        scores = tokens[0]["scores"]
    elif strategy == "max":
        scores = max(tokens, key=lambda e: e["scores"].max())["scores"]
    else:
        scores = np.nanmean(np.stack([e["scores"] for e in tokens]), axis=0)
    best = int(scores.argmax())
    return {"entity": labels[best], "score": scores[best],
            "word": tokens_to_string([e["word"] for e in tokens]),
            "start": tokens[0]["start"], "end": tokens[-1]["end"]}


def _tag(label: str) -> tuple[str, str]:
    """(B or I, entity type); a label without a B-/I- prefix counts as inside its type."""
    if label.startswith(("B-", "I-")):
        return label[0], label[2:]
    return "I", label


def group_entities(entities: list[dict], tokens_to_string: Callable) -> list[dict]:
    """Adjacent entities of one type merge unless the next one begins with B-."""
    groups: list[list[dict]] = []
    for e in entities:
        bi, tag = _tag(e["entity"])
        if groups and bi != "B" and tag == _tag(groups[-1][-1]["entity"])[1]:
            groups[-1].append(e)
        else:
            groups.append([e])
    return [{"entity_group": g[0]["entity"].split("-", 1)[-1],
             "score": np.mean(np.nanmean([e["score"] for e in g])),
             "word": tokens_to_string([e["word"] for e in g]),
             "start": g[0]["start"], "end": g[-1]["end"]} for g in groups]


class TokenClassificationPipeline(Pipeline):
    """pipe(text or texts, aggregation_strategy="none"|"simple"|"first"|"average"|"max",
    ignore_labels=["O"], stride=None): per text, a list of {entity, score, index, word, start,
    end} (none) or {entity_group, score, word, start, end}. stride=k reads long texts in
    windows sharing k tokens instead of truncating them."""

    task = "token-classification"
    heads = ("token-classification",)
    defaults = {"aggregation_strategy": "none", "ignore_labels": ("O",), "stride": None}

    def forward(self, params, ids, mask, types):
        return self.model.apply({"params": params}, ids, mask, types).logits.astype(jnp.float32)

    def token_logits(self, texts: list[str], stride: int | None) -> tuple[list, list]:
        """(encodings, per-token logits of each): truncated, or assembled from windows."""
        if stride is None:
            encodings = self.encode(texts)
            return encodings, [logits[mask.astype(bool)] for logits, mask in self.run(encodings)]
        encodings, layout, rows = run_windows(self, texts, stride)
        return encodings, document_token_logits(
            [logits[mask.astype(bool)] for logits, mask in rows], layout)

    def tokens_to_string(self, tokens: list[str]) -> str:
        decoder = self._encoder.decoder
        return decoder.decode(tokens) if decoder is not None else " ".join(tokens)

    def __call__(self, inputs, **call_options):
        texts, single = as_inputs(inputs, str, "a text")
        opts = self.options(call_options)
        strategy = str(opts["aggregation_strategy"]).lower()
        if strategy not in STRATEGIES:
            raise ValueError(f"aggregation_strategy={opts['aggregation_strategy']!r}; choose one "
                             f"of {STRATEGIES}")
        ignore = set(opts["ignore_labels"])
        labels = label_names(self.config)
        encodings, token_logits = self.token_logits(texts, opts["stride"])
        prefix = bool(getattr(self._encoder.model, "continuing_subword_prefix", None))
        results = []
        for text, encoding, logits in zip(texts, encodings, token_logits):
            scores = softmax(logits)
            tokens = pre_entities(text, encoding, scores, id_to_token=self._encoder.id_to_token,
                                  unk_id=self.tokenizer.unk_token_id, has_subword_prefix=prefix,
                                  strategy=strategy)
            results.append([e for e in aggregate(tokens, strategy, labels, self.tokens_to_string)
                            if e.get("entity", e.get("entity_group")) not in ignore])
        return results[0] if single else results
