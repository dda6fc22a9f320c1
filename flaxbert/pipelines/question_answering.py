"""`question-answering`: extractive answers (text, score, character span) found in a context, with
the algorithm of transformers v4's QuestionAnsweringPipeline (v4.57, its last release; v5 has
no such pipeline).

A context longer than `max_seq_len` tokens is cut into windows that share `doc_stride` tokens
(`flaxbert.tasks.qa.question_context_windows`); every window runs through the bucketed engine.
Per window the start and end logits of tokens outside the context are set to -10000 (the CLS
token keeps its logit: it stands for "no answer"), each is softmaxed, and the best spans of at
most `max_answer_len` tokens are ranked by start probability x end probability. Spans are
mapped to characters (widened to whole words with `align_to_words`), answers of the same text
(ignoring case) from any window are merged by adding their scores, and with
`handle_impossible_answer` the null answer, scored by the smallest CLS probability over the
windows, is ranked with them.

Where tokenizers put the context first (XLNet, which pads on the left), v4 masks nothing and
reads the null answer at position 0, the first context token; here the question is masked and
the null answer is read at XLNet's CLS (its last token), as for every other tokenizer.
Spans v4 could return with a score of exactly 0 (only when a window has fewer candidate spans
than it asks for) are left out.

The post-processing is plain numpy functions (`span_probabilities`, `best_spans`,
`window_spans`, `answer_chars`, `decode_answers`) that tests call directly.
"""
from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np

from flaxbert.inference import DEFAULT_BUCKETS
from flaxbert.pipelines.base import Pipeline, softmax
from flaxbert.tasks.qa import question_context_windows, question_first

DEFAULT_MAX_SEQ_LEN = 384
MAX_DEFAULT_STRIDE = 128
MASKED_LOGIT = -10000.0  # v4's value, so the probabilities of the context come out the same
NO_NULL_SCORE = 1_000_000.0  # v4's starting minimum before any window is seen


def spans_per_window(top_k: int, align_to_words: bool) -> int:
    """v4's margin: spans widened to words can turn out to be the same answer."""
    return 2 * top_k + 10 if align_to_words else top_k


def span_probabilities(start_logits: np.ndarray, end_logits: np.ndarray,
                       allowed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start and end probabilities of one window: a softmax over the tokens, with the logits
    of tokens that are not `allowed` set to -10000 first."""
    return (softmax(np.where(allowed, start_logits, MASKED_LOGIT)),
            softmax(np.where(allowed, end_logits, MASKED_LOGIT)))


def best_spans(start_probs: np.ndarray, end_probs: np.ndarray, span_tokens: np.ndarray, *,
               top_k: int, max_answer_len: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(starts, ends, scores) of the top_k spans start <= end < start + max_answer_len whose
    both ends are `span_tokens`, best first; a span scores start_prob[start] * end_prob[end]."""
    length = len(start_probs)
    width = min(max_answer_len, length)
    ends = np.arange(length)[:, None] + np.arange(width)[None, :]  # ends[s, d] = s + d
    inside = ends < length
    ends = np.minimum(ends, length - 1)
    allowed = inside & span_tokens[:, None] & span_tokens[ends]
    scores = np.where(allowed, start_probs[:, None] * end_probs[ends], -np.inf).ravel()
    k = min(top_k, int(allowed.sum()))
    if k == 0:
        empty = np.zeros(0, np.int64)
        return empty, empty, np.zeros(0)
    best = np.argpartition(-scores, k - 1)[:k]
    best = best[np.argsort(-scores[best], kind="stable")]
    starts, offsets = np.unravel_index(best, (length, width))
    return starts, starts + offsets, scores[best]


def window_spans(encoding, start_logits: np.ndarray, end_logits: np.ndarray, *,
                 context_sequence: int, cls_token_id: int | None, top_k: int,
                 max_answer_len: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """(starts, ends, scores, null score) of one window (a `tokenizers.Encoding` and its
    unpadded logits). The null score is the CLS token's start x end probability."""
    ids = np.asarray(encoding.ids)
    sequence = np.array([-1 if s is None else s for s in encoding.sequence_ids])
    is_cls = ids == cls_token_id
    start_probs, end_probs = span_probabilities(start_logits, end_logits,
                                                (sequence == context_sequence) | is_cls)
    # The null answer is the CLS the post-processor adds (first for BERT, last for XLNet).
    added_cls = np.flatnonzero(is_cls & (sequence == -1))
    null_index = int(added_cls[0]) if added_cls.size else 0
    null_score = float(start_probs[null_index] * end_probs[null_index])
    span_tokens = sequence == context_sequence
    span_tokens[null_index] = False
    return (*best_spans(start_probs, end_probs, span_tokens, top_k=top_k,
                        max_answer_len=max_answer_len), null_score)


def answer_chars(encoding, start: int, end: int, *, context_sequence: int,
                 align_to_words: bool) -> tuple[int, int]:
    """The character span in the context of tokens start..end: their own offsets, or with
    `align_to_words` the whole words they fall in (offsets where a token has no word)."""
    if align_to_words:
        words = encoding.token_to_word(start), encoding.token_to_word(end)
        if None not in words:
            first = encoding.word_to_chars(words[0], context_sequence)
            last = encoding.word_to_chars(words[1], context_sequence)
            if first is not None and last is not None:
                return first[0], last[1]
    return encoding.offsets[start][0], encoding.offsets[end][1]


def decode_answers(context: str, windows: Sequence, logits: Sequence[np.ndarray], *,
                   context_sequence: int, cls_token_id: int | None, top_k: int = 1,
                   handle_impossible_answer: bool = False, max_answer_len: int = 15,
                   align_to_words: bool = True) -> list[dict]:
    """The top_k answers {score, start, end, answer} of one question over its windows, best
    first; `logits[i]` is window i's unpadded (length, 2) start and end logits."""
    per_window = spans_per_window(top_k, align_to_words)
    by_text: dict[str, dict] = {}
    null_score = NO_NULL_SCORE
    for encoding, window_logits in zip(windows, logits):
        starts, ends, scores, window_null = window_spans(
            encoding, window_logits[:, 0], window_logits[:, 1], context_sequence=context_sequence,
            cls_token_id=cls_token_id, top_k=per_window, max_answer_len=max_answer_len)
        null_score = min(null_score, window_null)
        for start, end, score in zip(starts, ends, scores):
            first, last = answer_chars(encoding, int(start), int(end),
                                       context_sequence=context_sequence,
                                       align_to_words=align_to_words)
            text = context[first:last]
            # Overlapping windows and word alignment find the same answer more than once.
            if text.lower() in by_text:
                by_text[text.lower()]["score"] += float(score)
            else:
                by_text[text.lower()] = {"score": float(score), "start": int(first),
                                         "end": int(last), "answer": text}
    answers = list(by_text.values())
    if handle_impossible_answer:
        answers.append({"score": null_score, "start": 0, "end": 0, "answer": ""})
    return sorted(answers, key=lambda a: a["score"], reverse=True)[:top_k]


def _checked_examples(items: Sequence) -> list[dict]:
    for i, item in enumerate(items):
        if not isinstance(item, dict) or set(item) != {"question", "context"}:
            raise ValueError(f"inputs[{i}] must be {{'question': str, 'context': str}}, got "
                             f"{item!r:.80}")
        for key in ("question", "context"):
            if not isinstance(item[key], str):
                raise TypeError(f"inputs[{i}][{key!r}] is {type(item[key]).__name__}, "
                                f"expected str")
            if not item[key].strip():
                raise ValueError(f"inputs[{i}][{key!r}] is empty")
    return list(items)


def _positive_int(name, value, minimum=1):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


class QuestionAnsweringPipeline(Pipeline):
    """pipe(question=..., context=...), pipe({"question": ..., "context": ...}), a list of such
    dicts, pipe(question=[...], context=[...]) (or one context for every question), or
    pipe(question, context).

    Each input gives {score, start, end, answer} (start and end are character offsets into the
    context), or a list of the top_k best when top_k > 1; several inputs give a list of those.
    Options, as transformers v4's: top_k (1), handle_impossible_answer (False), max_seq_len
    (tokens a window, default min(384, the engine's max_length)), doc_stride (tokens windows
    share, default min(max_seq_len // 2, 128)), max_answer_len (15), align_to_words (True).
    """

    task = "question-answering"
    heads = ("question-answering",)
    defaults = {"top_k": 1, "handle_impossible_answer": False, "max_seq_len": None,
                "doc_stride": None, "max_answer_len": 15, "align_to_words": True}

    def __init__(self, model_dir, *, buckets: Sequence[int] = (*DEFAULT_BUCKETS,
                                                               DEFAULT_MAX_SEQ_LEN), **kwargs):
        # Full windows of the default max_seq_len get their own bucket rather than 512.
        super().__init__(model_dir, buckets=buckets, **kwargs)
        self.context_sequence = 1 if question_first(self.tokenizer) else 0

    def forward(self, params, ids, mask, types):
        out = self.model.apply({"params": params}, ids, mask, types)
        return jnp.stack([out.start_logits, out.end_logits], axis=-1).astype(jnp.float32)

    def __call__(self, *args, question=None, context=None, **call_options):
        examples, single = self.as_examples(args, question, context)
        opts = self.checked_values(self.options(call_options))
        questions, contexts = [e["question"] for e in examples], [e["context"] for e in examples]
        self.check_room(questions, contexts, opts["max_seq_len"], opts["doc_stride"])
        windows = question_context_windows(self.tokenizer, questions, contexts,
                                           max_length=opts["max_seq_len"],
                                           stride=opts["doc_stride"])
        flat = [w for example_windows in windows for w in example_windows]
        outputs = iter(self.run(flat))
        results = []
        for example, example_windows in zip(examples, windows):
            logits = [out[mask.astype(bool)] for out, mask in
                      (next(outputs) for _ in example_windows)]
            answers = decode_answers(
                example["context"], example_windows, logits,
                context_sequence=self.context_sequence, cls_token_id=self.tokenizer.cls_token_id,
                top_k=opts["top_k"], handle_impossible_answer=opts["handle_impossible_answer"],
                max_answer_len=opts["max_answer_len"], align_to_words=opts["align_to_words"])
            results.append(answers[0] if opts["top_k"] == 1 and answers else answers)
        return results[0] if single else results

    @staticmethod
    def as_examples(args: tuple, question, context) -> tuple[list[dict], bool]:
        """[{question, context}, ...] and whether one input was given, from any of the call
        forms; one clear error for anything else."""
        if args and (question is not None or context is not None):
            raise TypeError("give inputs either positionally or as question=/context=, not both")
        if len(args) == 1:
            inputs = args[0]
            single = isinstance(inputs, dict)
            items = [inputs] if single else inputs
            if not isinstance(items, (list, tuple)) or not items:
                raise TypeError(f"inputs must be a {{'question', 'context'}} dict or a non-empty "
                                f"list of them, got {type(inputs).__name__} {inputs!r:.60}")
            return _checked_examples(items), single
        if len(args) == 2:  # v4's pipe(question, context)
            question, context = args
        elif args:
            raise TypeError(f"expected one input (a dict or a list of dicts) or a question and "
                            f"a context, got {len(args)} positional arguments")
        if question is None or context is None:
            raise TypeError("give question= and context= (or a {'question', 'context'} dict)")
        if not isinstance(question, (list, tuple)):
            return _checked_examples([{"question": question, "context": context}]), True
        contexts = context if isinstance(context, (list, tuple)) else [context] * len(question)
        if len(contexts) != len(question) or not question:
            raise ValueError(f"{len(question)} questions but {len(contexts)} contexts; give one "
                             f"context per question, or one for all")
        return _checked_examples([{"question": q, "context": c}
                                  for q, c in zip(question, contexts)]), False

    def checked_values(self, opts: dict) -> dict:
        """The options with max_seq_len and doc_stride resolved, each value checked."""
        opts = dict(opts)
        for name in ("top_k", "max_answer_len"):
            opts[name] = _positive_int(name, opts[name])
        for name in ("handle_impossible_answer", "align_to_words"):
            if not isinstance(opts[name], (bool, np.bool_)):
                raise ValueError(f"{name} must be True or False, got {opts[name]!r}")
        limit = self.engine.max_length
        if opts["max_seq_len"] is None:
            opts["max_seq_len"] = min(DEFAULT_MAX_SEQ_LEN, limit)
        opts["max_seq_len"] = _positive_int("max_seq_len", opts["max_seq_len"])
        if opts["max_seq_len"] > limit:
            raise ValueError(f"max_seq_len={opts['max_seq_len']} exceeds the pipeline's "
                             f"max_length={limit} (the model's positions, its tokenizer's "
                             f"limit, or max_length= when the pipeline was built)")
        if opts["doc_stride"] is None:
            opts["doc_stride"] = min(opts["max_seq_len"] // 2, MAX_DEFAULT_STRIDE)
        opts["doc_stride"] = _positive_int("doc_stride", opts["doc_stride"], minimum=0)
        if opts["doc_stride"] > opts["max_seq_len"]:
            raise ValueError(f"doc_stride={opts['doc_stride']} is larger than "
                             f"max_seq_len={opts['max_seq_len']}")
        return opts

    def check_room(self, questions: list[str], contexts: list[str], max_seq_len: int,
                   doc_stride: int) -> None:
        """A context that must be cut needs more than doc_stride tokens of room beside the
        question; the tokenizer panics with a Rust backtrace otherwise."""
        encoder = self.tokenizer.backend_tokenizer
        encoder.no_truncation()
        specials = encoder.num_special_tokens_to_add(True)
        question_lengths = [len(e) for e in
                            encoder.encode_batch(questions, add_special_tokens=False)]
        tight = [i for i, n in enumerate(question_lengths)
                 if max_seq_len - specials - n <= doc_stride]
        if not tight:
            return
        context_lengths = [len(e) for e in encoder.encode_batch(
            [contexts[i] for i in tight], add_special_tokens=False)]
        for i, n_context in zip(tight, context_lengths):
            n = question_lengths[i]
            if n + n_context + specials > max_seq_len:
                raise ValueError(
                    f"inputs[{i}]: the question takes {n} tokens, which leaves "
                    f"{max_seq_len - specials - n} of max_seq_len={max_seq_len} for each piece of "
                    f"the context; that must be more than doc_stride={doc_stride} (shorten the "
                    f"question, raise max_seq_len or lower doc_stride)")
