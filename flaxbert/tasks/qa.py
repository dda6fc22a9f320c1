"""Extractive question answering: SQuAD examples and question + context windows with a stride.

`read_squad` reads SQuAD v1.1 / v2.0 (the official nested JSON, flat JSON / JSONL with HF
datasets' columns, `tfds:squad/...`, `hf:...`) into HF squad-format examples, checking every
answer against its context. `encode_qa` turns them into one feature per window, labelled as
transformers' run_qa.py labels them (`prepare_train_features` / `prepare_validation_features`).

`question_context_windows` is the one place a (question, context) pair becomes model windows,
for training features and the question-answering pipeline alike. It follows transformers' fast
tokenizers with `truncation="only_second", stride=doc_stride, return_overflowing_tokens=True`:
the question stays whole in every window and the context is cut into overlapping pieces that
share `stride` tokens. Tokenizers that pad on the left (XLNet) put the context first and
truncate it as the first sequence, as transformers' run_qa and QA pipeline do.
"""
from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tokenizers

from flaxbert.io import read_text
from flaxbert.tasks.readers import read_records

log = logging.getLogger(__name__)
ON_MISMATCH = ("skip", "keep", "error")
OVERFLOW = ("truncate", "error")
SQUAD_FIELDS = ("id", "question", "context", "answers")
_SHOWN_IDS = 5  # how many example ids a summary warning names


@dataclass(frozen=True)
class QAWindow:
    """What decoding needs of one window besides its logits: the example it came from, each
    token's character span in that example's context ((-1, -1) for tokens outside the
    context: the question, special tokens), and where its CLS token is (the null answer;
    last for XLNet). Positions are those of the unpadded window."""

    example_index: int
    offsets: np.ndarray  # (window length, 2) int32
    cls_index: int


def plain_backend(tokenizer) -> tokenizers.Tokenizer:
    """A private copy of the tokenizer's `tokenizers` pipeline with no padding or truncation:
    flaxbert's Tokenizer hands out copies, but a transformers tokenizer's backend_tokenizer is
    its live object, and a tokenizer.json may pad every encoding to a fixed length."""
    backend = tokenizers.Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    backend.no_padding()
    backend.no_truncation()
    return backend


def question_first(tokenizer) -> bool:
    """Whether the question is the first sequence (every tokenizer but left-padding XLNet's)."""
    return tokenizer.padding_side == "right"


def question_context_windows(tokenizer, questions: Sequence[str], contexts: Sequence[str], *,
                             max_length: int, stride: int) -> list[list[tokenizers.Encoding]]:
    """Per (question, context): its windows, each a `tokenizers.Encoding` with ids, type_ids,
    offsets (character spans into the question or the context), `sequence_ids` and the
    special-tokens mask. The context is the sequence with id 1 when the question comes first
    (`question_first`), else 0."""
    if len(questions) != len(contexts):
        raise ValueError(f"{len(questions)} questions but {len(contexts)} contexts")
    first = question_first(tokenizer)
    backend = plain_backend(tokenizer)
    backend.enable_truncation(max_length, stride=stride,
                              strategy="only_second" if first else "only_first",
                              direction="right")
    pairs = list(zip(questions, contexts)) if first else list(zip(contexts, questions))
    return [[encoding, *encoding.overflowing] for encoding in backend.encode_batch(pairs)]


# ---- reading ----------------------------------------------------------------------------

def read_squad(spec: str | os.PathLike, *, split: str = "train", on_mismatch: str = "skip",
               require_answers: bool = True) -> list[dict]:
    """SQuAD examples {"id", "question", "context", "answers": {"text", "answer_start"},
    "origin": "<source>:<id>"}; unanswerable (v2) questions have empty answer lists.

    An answer whose text is not context[answer_start:answer_start + len(text)] is dropped
    (on_mismatch="skip"; an example left with no answer is dropped too, never made
    unanswerable), kept ("keep") or refused ("error"); skip and keep say how many in one
    warning. Empty questions or contexts, missing fields and duplicate ids are refused;
    with require_answers=False (questions to answer) a missing `answers` means none.
    """
    if on_mismatch not in ON_MISMATCH:
        raise ValueError(f"on_mismatch={on_mismatch!r}; choose one of {ON_MISMATCH}")
    source = os.fspath(spec)
    nested = None if source.startswith(("tfds:", "hf:")) else \
        _nested_squad(Path(source), require_answers)
    if nested is not None:
        records = nested
    else:
        # Flat rows: origins are "file:line", "file#row" or "tfds:name:split#row".
        records = [(where, record, _source_of(where)) for where, record in
                   read_records(source, split)]
    examples, seen, mismatched = [], {}, []
    for where, record, name in records:
        if not require_answers and "answers" not in record:
            record = {**record, "answers": {"text": [], "answer_start": []}}
        example, bad = _squad_example(where, record, name, on_mismatch)
        if example["id"] in seen:
            raise ValueError(f"{example['origin']}: duplicate id {example['id']!r} (first at "
                             f"{seen[example['id']]})")
        seen[example["id"]] = where
        mismatched += [(example["id"], name)] * bad
        if example["answers"]["text"] or not bad:
            examples.append(example)
    if mismatched:
        ids = list(dict.fromkeys(i for i, _ in mismatched))
        fate = ("were skipped (examples left with no answer dropped)" if on_mismatch == "skip"
                else "were kept")
        log.warning("%d answers in %s do not match their context at answer_start and %s; "
                    "the first ids: %s", len(mismatched), mismatched[0][1], fate,
                    ", ".join(ids[:_SHOWN_IDS]))
    return examples


def _source_of(where: str) -> str:
    """The file (or tfds / hf source) part of a record origin."""
    if "#" in where:
        return where.rpartition("#")[0]
    head, _, line = where.rpartition(":")
    return head if line.isdigit() else where


def _nested_squad(path: Path, require_answers: bool = True) -> list | None:
    """The official SQuAD layout (data -> paragraphs -> qas) as flat records
    (where, record, source), or None when the file is not in that layout."""
    if path.suffix.lower() != ".json" or not path.is_file():
        return None
    text = read_text(path)
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        if e.msg == "Extra data":  # JSON lines in a .json file: the table reader's case
            return None
        raise ValueError(f"{path}:{e.lineno}:{e.colno}: not valid JSON ({e.msg})") from None
    articles = value.get("data") if isinstance(value, dict) else None
    if not isinstance(articles, list) or not any(
            isinstance(a, dict) and "paragraphs" in a for a in articles):
        return None
    records = []
    for a, article in enumerate(articles):
        where = f"{path}:data[{a}]"
        paragraphs = _field(article, "paragraphs", where, list)
        for p, paragraph in enumerate(paragraphs):
            where = f"{path}:data[{a}].paragraphs[{p}]"
            context = _field(paragraph, "context", where, str)
            for q, qa in enumerate(_field(paragraph, "qas", where, list)):
                if not isinstance(qa, dict):
                    raise ValueError(f"{where}.qas[{q}]: expected an object, got "
                                     f"{type(qa).__name__}")
                answers = [] if not require_answers and "answers" not in qa else _field(
                    qa, "answers", f"{path}:{qa.get('id', f'{where}.qas[{q}]')}", list)
                for answer in answers:
                    if not isinstance(answer, dict):
                        raise ValueError(f"{path}:{qa.get('id')}: an answer must be an object "
                                         f"with text and answer_start, got {answer!r:.60}")
                if qa.get("is_impossible"):
                    answers = []  # v2 keeps the would-be answers in plausible_answers
                record = {**qa, "context": context,
                          "answers": {"text": [x.get("text") for x in answers],
                                      "answer_start": [x.get("answer_start") for x in answers]}}
                records.append((f"{where}.qas[{q}]", record, str(path)))
    return records


def _field(record, name: str, where: str, kind: type):
    if not isinstance(record, dict):
        raise ValueError(f"{where}: expected an object, got {type(record).__name__}")
    if name not in record:
        raise ValueError(f"{where}: no field {name!r}; the fields are {sorted(record)}")
    value = record[name]
    if not isinstance(value, kind):
        raise ValueError(f"{where}: field {name!r} must be a {kind.__name__}, got "
                         f"{type(value).__name__} {value!r:.40}")
    return value


def _plain(value):
    """tfds hands back bytes and numpy arrays; everything else is JSON-like already."""
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _squad_example(where: str, record: Mapping, source: str, on_mismatch: str) -> tuple[dict, int]:
    """(example, number of answers that did not match the context)."""
    for name in SQUAD_FIELDS:
        if name not in record:
            named = f"{source}:{record['id']}" if "id" in record else where
            raise ValueError(f"{named}: no field {name!r}; the fields are {sorted(record)}")
    example_id = _plain(record["id"])
    if isinstance(example_id, bool) or not isinstance(example_id, (str, int)) or \
            not str(example_id).strip():
        raise ValueError(f"{where}: field 'id' must be a non-empty string, got {example_id!r:.40}")
    example_id = str(example_id)
    origin = f"{source}:{example_id}"
    texts = {}
    for name in ("question", "context"):
        value = _plain(record[name])
        if not isinstance(value, str):
            raise ValueError(f"{origin}: field {name!r} must hold text, got "
                             f"{type(value).__name__} {value!r:.40}")
        if not value.strip():
            raise ValueError(f"{origin}: empty {name}")
        texts[name] = value
    context = texts["context"]
    answers = _plain(record["answers"])
    if isinstance(answers, list):  # rows of {"text", "answer_start"}, as some exports write them
        if not all(isinstance(a, Mapping) for a in answers):
            raise ValueError(f"{origin}: field 'answers' must be an object of text and "
                             f"answer_start lists, or a list of such objects")
        answers = {"text": [a.get("text") for a in answers],
                   "answer_start": [a.get("answer_start") for a in answers]}
    if not isinstance(answers, Mapping) or not all(
            isinstance(answers.get(k), list) for k in ("text", "answer_start")):
        raise ValueError(f"{origin}: field 'answers' must hold lists 'text' and "
                         f"'answer_start', got {answers!r:.60}")
    if len(answers["text"]) != len(answers["answer_start"]):
        raise ValueError(f"{origin}: {len(answers['text'])} answer texts but "
                         f"{len(answers['answer_start'])} answer_start values")
    kept, bad = {"text": [], "answer_start": []}, 0
    for text, start in zip(answers["text"], answers["answer_start"]):
        if not isinstance(text, str) or isinstance(start, bool) or not isinstance(start, int):
            raise ValueError(f"{origin}: an answer needs a text string and an integer "
                             f"answer_start, got {text!r:.40} at {start!r}")
        if not 0 <= start <= len(context) - len(text) or \
                context[start:start + len(text)] != text or not text:
            if on_mismatch == "error":
                raise ValueError(f"{origin}: answer {text!r:.40} does not match the context at "
                                 f"answer_start={start} (there: "
                                 f"{context[max(start, 0):max(start, 0) + len(text)]!r:.40})")
            bad += 1
            if on_mismatch == "skip":
                continue
        kept["text"].append(text)
        kept["answer_start"].append(start)
    example = {"id": example_id, "question": texts["question"], "context": context,
               "answers": kept, "origin": origin}
    return example, bad


# ---- features ---------------------------------------------------------------------------

def _cut_questions(backend: tokenizers.Tokenizer, questions: list[str],
                   examples: Sequence[Mapping], max_query_length: int, overflow: str) -> list[str]:
    """Questions of more than max_query_length tokens, cut where their first token past
    max_query_length starts (a character split over several byte-level tokens goes whole;
    re-encoded, a cut question never has more)."""
    cut_count, first, longest = 0, None, 0
    for i, (question, encoding) in enumerate(zip(
            questions, backend.encode_batch(questions, add_special_tokens=False))):
        if len(encoding.ids) <= max_query_length:
            continue
        origin = examples[i].get("origin", f"example {i}")
        if overflow == "error":
            raise ValueError(f"{origin}: the question has {len(encoding.ids)} tokens, more than "
                             f"max_query_length={max_query_length}")
        cut_count, first = cut_count + 1, first or origin
        longest = max(longest, len(encoding.ids))
        while len(encoding.ids) > max_query_length and question:
            # Each pass drops at least one character, so it ends.
            question = question[:min(encoding.offsets[max_query_length][0], len(question) - 1)]
            encoding = backend.encode(question, add_special_tokens=False)
        questions[i] = question
    if cut_count:
        log.warning("%d of %d questions had more than max_query_length=%d tokens (up to %d) and "
                    "were cut to it; the first: %s", cut_count, len(questions), max_query_length,
                    longest, first)
    return questions


def _answer_span(offsets: np.ndarray, in_context: np.ndarray, start_char: int,
                 end_char: int) -> tuple[int, int] | None:
    """The first and last token of [start_char, end_char) when the window's context holds
    it whole (run_qa's test on the window's first and last context token), else None."""
    context_tokens = np.flatnonzero(in_context)
    if not context_tokens.size or offsets[context_tokens[0], 0] > start_char or \
            offsets[context_tokens[-1], 1] < end_char:
        return None
    starts, ends = offsets[context_tokens, 0], offsets[context_tokens, 1]
    # The last token starting at or before the answer; the first ending at or after it.
    start = context_tokens[np.flatnonzero(starts <= start_char)[-1]]
    end = context_tokens[np.flatnonzero(ends >= end_char)[0]]
    return int(start), int(end)


def encode_qa(examples: Sequence[Mapping], tokenizer, *, max_seq_length: int = 384,
              doc_stride: int = 128, max_query_length: int = 64, labelled: bool = True,
              overflow: str = "truncate") -> tuple[list[dict], list[QAWindow]]:
    """One feature and one QAWindow per window of each example's context.

    Features are {"input_ids", "token_type_ids"} int32 (L,) and, when labelled,
    "start_positions" / "end_positions" int32 scalars: the tokens of the first answer when the
    window's context holds it whole, else the window's CLS index (also for unanswerable
    questions). Questions are left-stripped and cut to max_query_length tokens (one warning;
    overflow="error" refuses them instead).
    """
    if overflow not in OVERFLOW:
        raise ValueError(f"overflow={overflow!r}; choose one of {OVERFLOW}")
    for name, value in (("max_seq_length", max_seq_length), ("doc_stride", doc_stride),
                        ("max_query_length", max_query_length)):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if not len(examples):
        raise ValueError("no examples to encode")
    needed = ("question", "context") + (("answers",) if labelled else ())
    for i, example in enumerate(examples):
        missing = [k for k in needed if k not in example]
        if missing:
            raise ValueError(f"{example.get('origin', f'example {i}')}: the example has no "
                             f"{missing[0]!r} (keys: {sorted(example)})")
    backend = plain_backend(tokenizer)
    specials = backend.post_processor.num_special_tokens_to_add(True) \
        if backend.post_processor else 0
    room = max_seq_length - max_query_length - specials
    if room <= doc_stride:
        raise ValueError(f"max_seq_length={max_seq_length} leaves {room} context tokens per "
                         f"window after a {max_query_length}-token question (max_query_length) "
                         f"and {specials} special tokens, not more than doc_stride={doc_stride}: "
                         f"lower doc_stride or max_query_length, or raise max_seq_length")
    cls_token_id = tokenizer.cls_token_id
    if cls_token_id is None:
        raise ValueError("the tokenizer has no CLS token, which marks the null answer")
    # Leading whitespace would only take room from the context (run_qa strips it too).
    questions = _cut_questions(backend, [e["question"].lstrip() for e in examples], examples,
                               max_query_length, overflow)
    contexts = [e["context"] for e in examples]
    context_sequence = 1 if question_first(tokenizer) else 0
    features, windows = [], []
    for index, (example, encodings) in enumerate(zip(examples, question_context_windows(
            tokenizer, questions, contexts, max_length=max_seq_length, stride=doc_stride))):
        answers = example["answers"] if labelled else None
        answer = None
        if answers and answers["text"]:
            start_char = answers["answer_start"][0]
            answer = (start_char, start_char + len(answers["text"][0]))
        for encoding in encodings:
            in_context = np.array([s == context_sequence for s in encoding.sequence_ids])
            offsets = np.asarray(encoding.offsets, np.int32).reshape(-1, 2)
            offsets[~in_context] = -1
            cls_index = encoding.ids.index(cls_token_id)
            feature = {"input_ids": np.asarray(encoding.ids, np.int32),
                       "token_type_ids": np.asarray(encoding.type_ids, np.int32)}
            if labelled:
                span = _answer_span(offsets, in_context, *answer) if answer else None
                start, end = span or (cls_index, cls_index)
                feature["start_positions"] = np.int32(start)
                feature["end_positions"] = np.int32(end)
            features.append(feature)
            windows.append(QAWindow(example_index=index, offsets=offsets, cls_index=cls_index))
    return features, windows
