"""The official SQuAD scores: exact match and token F1 after the evaluation scripts' answer
normalisation, as evaluate-v1.1.py and evaluate-v2.0.py compute them (v2.0 with its no-answer
threshold and the sweep for the best one).

Both scripts only warn about a question without a prediction and score it 0 (v1.1) or leave it
out of the totals (v2.0). Here a missing prediction is an error naming the first such id: with
predictions made by `decode_spans` from every example, one missing means that examples and
windows were paired wrongly, and a score quietly lowered (or quietly raised) would hide that.
Predictions for ids that are not in the gold answers are ignored, as the scripts ignore them.
"""
from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Mapping, Sequence

_PUNCTUATION = str.maketrans("", "", string.punctuation)  # ASCII only, as in the scripts
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    """Lower-cased, without ASCII punctuation and the articles a / an / the, whitespace runs
    collapsed to single spaces: the scripts' `normalize_answer`."""
    return " ".join(_ARTICLES.sub(" ", text.lower().translate(_PUNCTUATION)).split())


def _golds(gold_answers: Sequence[str]) -> Sequence[str]:
    if isinstance(gold_answers, str) or not len(gold_answers):
        raise ValueError(f"gold answers must be a non-empty list of strings, got "
                         f"{gold_answers!r}")
    return gold_answers


def exact_match(prediction: str, gold_answers: Sequence[str]) -> float:
    """1.0 when the normalised prediction equals any normalised gold answer, else 0.0."""
    normalized = normalize_answer(prediction)
    return float(any(normalized == normalize_answer(gold) for gold in _golds(gold_answers)))


def _token_f1(prediction_tokens: list[str], gold_tokens: list[str], version_2: bool) -> float:
    if version_2 and not (prediction_tokens and gold_tokens):
        return float(prediction_tokens == gold_tokens)  # v2.0: two no-answers agree
    common = sum((Counter(prediction_tokens) & Counter(gold_tokens)).values())
    if not common:
        return 0.0
    precision, recall = common / len(prediction_tokens), common / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def f1(prediction: str, gold_answers: Sequence[str], *, version_2: bool = False) -> float:
    """The best bag-of-tokens F1 of the normalised prediction against any gold answer. The
    scripts differ only when both sides normalise to nothing: 0.0 in v1.1, 1.0 in v2.0."""
    tokens = normalize_answer(prediction).split()
    return max(_token_f1(tokens, normalize_answer(gold).split(), version_2)
               for gold in _golds(gold_answers))


def _predictions_for(gold: Mapping[str, Sequence[str]], predictions: Mapping[str, str],
                     name: str = "predictions") -> None:
    if not gold:
        raise ValueError("no questions to score: the gold answers are empty")
    missing = next((qid for qid in gold if qid not in predictions), None)
    if missing is not None:
        raise ValueError(f"{name} has no entry for question {missing!r} ({len(gold)} questions, "
                         f"{len(predictions)} entries); every question needs one")


def _check_texts(predictions: Mapping[str, str], gold) -> None:
    wrong = next((qid for qid in gold if not isinstance(predictions[qid], str)), None)
    if wrong is not None:
        raise ValueError(f"prediction for question {wrong!r} is {predictions[wrong]!r}, not a "
                         f"string")


def squad_v1(gold: Mapping[str, Sequence[str]], predictions: Mapping[str, str]) -> dict:
    """evaluate-v1.1.py's {"exact_match", "f1"}, in percent, over the questions of `gold`
    ({id: gold answer texts})."""
    _predictions_for(gold, predictions)
    _check_texts(predictions, gold)
    unanswerable = next((qid for qid, answers in gold.items() if not len(answers)), None)
    if unanswerable is not None:
        raise ValueError(f"question {unanswerable!r} has no gold answer: SQuAD v1.1 scores only "
                         f"answerable questions (use squad_v2)")
    exact = sum(exact_match(predictions[qid], answers) for qid, answers in gold.items())
    overlap = sum(f1(predictions[qid], answers) for qid, answers in gold.items())
    return {"exact_match": 100.0 * exact / len(gold), "f1": 100.0 * overlap / len(gold)}


def _best_threshold(raw: dict[str, float], predictions: Mapping[str, str],
                    null_odds: Mapping[str, float], has_answer: dict[str, bool]):
    """The script's `find_best_thresh`: start from predicting no answer everywhere, answer
    questions in increasing null odds, and keep the first threshold reaching the best score."""
    best = running = float(sum(not value for value in has_answer.values()))
    threshold = 0.0
    for qid in sorted(null_odds, key=null_odds.__getitem__):
        if qid not in raw:
            continue
        running += raw[qid] if has_answer[qid] else -float(bool(predictions[qid]))
        if running > best:
            best, threshold = running, null_odds[qid]
    return 100.0 * best / len(raw), threshold


def _totals(exact: dict[str, float], overlap: dict[str, float], qids: list[str]) -> dict:
    return {"exact": 100.0 * sum(exact[qid] for qid in qids) / len(qids),
            "f1": 100.0 * sum(overlap[qid] for qid in qids) / len(qids), "total": len(qids)}


def squad_v2(gold: Mapping[str, Sequence[str]], predictions: Mapping[str, str],
             null_odds: Mapping[str, float] | None = None, *,
             na_prob_thresh: float = 1.0) -> dict:
    """evaluate-v2.0.py's dict over the questions of `gold` ({id: gold answer texts}, empty
    for unanswerable ones): exact, f1, total, then HasAns_* and NoAns_* where there are such
    questions. With `null_odds` ({id: null score - best span score}, `decode_spans`'
    null_score_diff), a question whose odds exceed `na_prob_thresh` counts as answered with no
    answer, and best_exact / best_f1 with their thresholds come from the script's sweep."""
    _predictions_for(gold, predictions)
    _check_texts(predictions, gold)
    has_answer = {qid: bool(len(answers)) for qid, answers in gold.items()}
    exact_raw, f1_raw = {}, {}
    for qid, answers in gold.items():
        # A gold answer that normalises to nothing counts as the no-answer "".
        answers = [answer for answer in answers if normalize_answer(answer)] or [""]
        exact_raw[qid] = exact_match(predictions[qid], answers)
        f1_raw[qid] = f1(predictions[qid], answers, version_2=True)
    exact, overlap = exact_raw, f1_raw
    if null_odds is not None:
        _predictions_for(gold, null_odds, "null_odds")
        unanswered = {qid for qid in gold if null_odds[qid] > na_prob_thresh}
        exact, overlap = ({qid: float(not has_answer[qid]) if qid in unanswered else score
                           for qid, score in raw.items()} for raw in (exact_raw, f1_raw))
    result = _totals(exact, overlap, list(gold))
    for prefix, wanted in (("HasAns", True), ("NoAns", False)):
        qids = [qid for qid, value in has_answer.items() if value == wanted]
        if qids:
            result.update({f"{prefix}_{key}": value
                           for key, value in _totals(exact, overlap, qids).items()})
    if null_odds is not None:
        result["best_exact"], result["best_exact_thresh"] = _best_threshold(
            exact_raw, predictions, null_odds, has_answer)
        result["best_f1"], result["best_f1_thresh"] = _best_threshold(
            f1_raw, predictions, null_odds, has_answer)
    return result


def squad_metrics(examples: Sequence[Mapping], predictions: Mapping[str, str],
                  null_odds: Mapping[str, float] | None = None,
                  version_2: bool | None = None) -> dict:
    """SQuAD scores for SQuAD-format examples ({"id", "answers": {"text": [...]}}): v2.0 when
    `version_2` is True or, when it is None, when any example has no answer; else v1.1."""
    gold = {}
    for index, example in enumerate(examples):
        answers = example.get("answers")
        if "id" not in example or not isinstance(answers, Mapping) or "text" not in answers:
            raise ValueError(f"example {index}: needs 'id' and 'answers': {{'text': [...]}}, "
                             f"got keys {sorted(example)}")
        if example["id"] in gold:
            raise ValueError(f"example id {example['id']!r} appears more than once")
        gold[example["id"]] = list(answers["text"])
    if version_2 is None:
        version_2 = not all(gold.values())
    if version_2:
        return squad_v2(gold, predictions, null_odds)
    if null_odds is not None:
        raise ValueError("null_odds are a SQuAD v2.0 input; this is a v1.1 evaluation")
    return squad_v1(gold, predictions)
