"""flaxbert.tasks.squad_metrics against the official SQuAD evaluation scripts, re-written below
from their published text (evaluate-v1.1.py, evaluate-v2.0.py) as plain loops, on hand-made
predictions: unicode, punctuation, articles, several gold answers, unanswerable questions and
the no-answer threshold sweep; plus values computed by hand."""
import collections
import random
import re
import string

import pytest

from flaxbert.tasks.squad_metrics import (exact_match, f1, normalize_answer, squad_metrics,
                                          squad_v1, squad_v2)


# ---- the official scripts, as published -------------------------------------------------------

def official_normalize(s):
    def remove_articles(text):
        return re.sub(r"\b(a|an|the)\b", " ", text)

    def white_space_fix(text):
        return " ".join(text.split())

    def remove_punc(text):
        exclude = set(string.punctuation)
        return "".join(ch for ch in text if ch not in exclude)

    return white_space_fix(remove_articles(remove_punc(s.lower())))


def v1_f1_score(prediction, ground_truth):
    prediction_tokens = official_normalize(prediction).split()
    ground_truth_tokens = official_normalize(ground_truth).split()
    common = collections.Counter(prediction_tokens) & collections.Counter(ground_truth_tokens)
    num_same = sum(common.values())
    if num_same == 0:
        return 0
    precision = 1.0 * num_same / len(prediction_tokens)
    recall = 1.0 * num_same / len(ground_truth_tokens)
    return (2 * precision * recall) / (precision + recall)


def v1_exact_match_score(prediction, ground_truth):
    return official_normalize(prediction) == official_normalize(ground_truth)


def v1_evaluate(gold, predictions):
    f1_total = exact_total = total = 0
    for qid, ground_truths in gold.items():
        total += 1
        prediction = predictions[qid]
        exact_total += max(v1_exact_match_score(prediction, gt) for gt in ground_truths)
        f1_total += max(v1_f1_score(prediction, gt) for gt in ground_truths)
    return {"exact_match": 100.0 * exact_total / total, "f1": 100.0 * f1_total / total}


def get_tokens(s):
    if not s:
        return []
    return official_normalize(s).split()


def compute_exact(a_gold, a_pred):
    return int(official_normalize(a_gold) == official_normalize(a_pred))


def compute_f1(a_gold, a_pred):
    gold_toks, pred_toks = get_tokens(a_gold), get_tokens(a_pred)
    common = collections.Counter(gold_toks) & collections.Counter(pred_toks)
    num_same = sum(common.values())
    if len(gold_toks) == 0 or len(pred_toks) == 0:
        return int(gold_toks == pred_toks)
    if num_same == 0:
        return 0
    precision = 1.0 * num_same / len(pred_toks)
    recall = 1.0 * num_same / len(gold_toks)
    return (2 * precision * recall) / (precision + recall)


def v2_evaluate(gold, preds, na_probs=None, na_prob_thresh=1.0):
    has_na_file = na_probs is not None
    if na_probs is None:
        na_probs = {k: 0.0 for k in preds}
    qid_to_has_ans = {qid: bool(answers) for qid, answers in gold.items()}
    has_ans_qids = [k for k, v in qid_to_has_ans.items() if v]
    no_ans_qids = [k for k, v in qid_to_has_ans.items() if not v]
    exact_raw, f1_raw = {}, {}
    for qid, answers in gold.items():
        gold_answers = [a for a in answers if official_normalize(a)]
        if not gold_answers:
            gold_answers = [""]
        a_pred = preds[qid]
        exact_raw[qid] = max(compute_exact(a, a_pred) for a in gold_answers)
        f1_raw[qid] = max(compute_f1(a, a_pred) for a in gold_answers)

    def apply_no_ans_threshold(scores):
        new_scores = {}
        for qid, s in scores.items():
            pred_na = na_probs[qid] > na_prob_thresh
            new_scores[qid] = float(not qid_to_has_ans[qid]) if pred_na else s
        return new_scores

    def make_eval_dict(exact_scores, f1_scores, qid_list=None):
        if not qid_list:
            total = len(exact_scores)
            return {"exact": 100.0 * sum(exact_scores.values()) / total,
                    "f1": 100.0 * sum(f1_scores.values()) / total, "total": total}
        total = len(qid_list)
        return {"exact": 100.0 * sum(exact_scores[k] for k in qid_list) / total,
                "f1": 100.0 * sum(f1_scores[k] for k in qid_list) / total, "total": total}

    def find_best_thresh(scores):
        num_no_ans = sum(1 for k in qid_to_has_ans if not qid_to_has_ans[k])
        cur_score = num_no_ans
        best_score = cur_score
        best_thresh = 0.0
        qid_list = sorted(na_probs, key=lambda k: na_probs[k])
        for qid in qid_list:
            if qid not in scores:
                continue
            if qid_to_has_ans[qid]:
                diff = scores[qid]
            else:
                diff = -1 if preds[qid] else 0
            cur_score += diff
            if cur_score > best_score:
                best_score = cur_score
                best_thresh = na_probs[qid]
        return 100.0 * best_score / len(scores), best_thresh

    exact_thresh = apply_no_ans_threshold(exact_raw)
    f1_thresh = apply_no_ans_threshold(f1_raw)
    out_eval = make_eval_dict(exact_thresh, f1_thresh)
    if has_ans_qids:
        for k, v in make_eval_dict(exact_thresh, f1_thresh, has_ans_qids).items():
            out_eval["HasAns_" + k] = v
    if no_ans_qids:
        for k, v in make_eval_dict(exact_thresh, f1_thresh, no_ans_qids).items():
            out_eval["NoAns_" + k] = v
    if has_na_file:
        out_eval["best_exact"], out_eval["best_exact_thresh"] = find_best_thresh(exact_raw)
        out_eval["best_f1"], out_eval["best_f1_thresh"] = find_best_thresh(f1_raw)
    return out_eval


# ---- hand-made cases ---------------------------------------------------------------------------

# (gold answers, prediction): unicode, punctuation, articles, several golds, near misses.
CASES = {
    "cat": (["the cat sat"], "cat sat down"),
    "articles": (["The Eiffel Tower"], "eiffel tower"),
    "article_inside": (["an apple a day"], "apple day"),
    "punct": (["Paris, France."], "paris france"),
    "punct_only_pred": (["1,000"], "1000"),
    "accents": (["Café Müller"], "café müller!"),
    "accent_mismatch": (["Café"], "Cafe"),
    "cjk": (["東京 大学"], "東京大学"),
    "cjk_same": (["北京。"], "北京。"),
    "snowman": (["☃ snow"], "snow ☃"),
    "several": (["Denver Broncos", "The Broncos", "Broncos team"], "broncos"),
    "repeat": (["the the cat cat"], "cat cat cat"),
    "no_overlap": (["Newton"], "Leibniz"),
    "spaces": (["  New\tYork \n City "], "new york city"),
    "upper": (["NASA"], "nasa's"),
    "empty_pred": (["something"], ""),
    "article_gold": (["The"], "an"),
    "thé": (["théâtre the"], "théâtre"),
}
NO_ANSWER = {"imp_empty": ([], ""), "imp_guess": ([], "a guess"), "imp_article": ([], "the")}


def split(cases):
    return ({qid: golds for qid, (golds, _) in cases.items()},
            {qid: prediction for qid, (_, prediction) in cases.items()})


def test_normalize_matches_the_script():
    texts = [text for golds, prediction in {**CASES, **NO_ANSWER}.values()
             for text in (*golds, prediction)]
    texts += ["A  Tale of\u00a0Two Cities!", "«the» “an” — a", "theatre anthem", "İstanbul"]
    assert [normalize_answer(t) for t in texts] == [official_normalize(t) for t in texts]


def test_hand_computed_values():
    assert f1("cat sat down", ["the cat sat"]) == pytest.approx(
        2 * (2 / 3 * 2 / 2) / (2 / 3 + 2 / 2))
    assert exact_match("The  Eiffel tower.", ["eiffel tower"]) == 1.0
    assert exact_match("eiffel", ["eiffel tower"]) == 0.0
    # Counter intersection: "cat" twice in common, "the" removed; precision 2/3, recall 2/2.
    assert f1("cat cat cat", ["the the cat cat"]) == pytest.approx(0.8)
    # The best of several gold answers: "broncos" vs "broncos team" is 2*(1*0.5)/1.5.
    assert f1("broncos", ["Denver Broncos", "Broncos team"]) == pytest.approx(2 / 3)
    assert f1("the", ["a"]) == 0.0 and f1("the", ["a"], version_2=True) == 1.0
    scores = squad_v1({"x": ["the cat sat"], "y": ["dog"]}, {"x": "cat sat down", "y": "dog"})
    assert scores["exact_match"] == 50.0
    assert scores["f1"] == pytest.approx((0.8 + 1.0) / 2 * 100)


def test_v1_equals_the_script():
    gold, predictions = split(CASES)
    ours, theirs = squad_v1(gold, predictions), v1_evaluate(gold, predictions)
    assert ours == pytest.approx(theirs, rel=1e-12)
    assert 0 < ours["exact_match"] < ours["f1"] < 100
    for qid in gold:  # per question too, so that one error cannot hide behind the average
        single = ({qid: gold[qid]}, {qid: predictions[qid]})
        assert squad_v1(*single) == pytest.approx(v1_evaluate(*single), rel=1e-12), qid


@pytest.mark.parametrize("with_odds", [False, True])
def test_v2_equals_the_script(with_odds):
    gold, predictions = split({**CASES, **NO_ANSWER})
    rng = random.Random(0)
    null_odds = {qid: rng.uniform(-3, 3) for qid in gold} if with_odds else None
    ours = squad_v2(gold, predictions, null_odds)
    theirs = v2_evaluate(gold, predictions, null_odds)
    assert ours.keys() == theirs.keys()
    assert ours == pytest.approx(theirs, rel=1e-12)
    assert ours["NoAns_total"] == 3 and ours["HasAns_total"] == len(CASES)
    if with_odds:
        assert ours["exact"] != squad_v2(gold, predictions)["exact"]  # the threshold acts


def test_threshold_sweep_equals_the_script():
    rng = random.Random(1)
    words = "the cat sat on a mat dog ran é ☃ 東京".split()
    for trial in range(40):
        gold, predictions, null_odds = {}, {}, {}
        for n in range(rng.randint(1, 12)):
            qid = f"q{trial}-{n}"
            gold[qid] = ([] if rng.random() < 0.4 else
                         [" ".join(rng.sample(words, rng.randint(1, 3)))
                          for _ in range(rng.randint(1, 3))])
            predictions[qid] = ("" if rng.random() < 0.3
                                else " ".join(rng.sample(words, rng.randint(1, 3))))
            # Coarse values, so that ties in the sweep happen and are broken the script's way.
            null_odds[qid] = rng.choice([-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 3.0])
        thresh = rng.choice([0.0, 1.0, -1.0])
        ours = squad_v2(gold, predictions, null_odds, na_prob_thresh=thresh)
        theirs = v2_evaluate(gold, predictions, null_odds, na_prob_thresh=thresh)
        assert ours == pytest.approx(theirs, rel=1e-12), trial


def test_best_threshold_by_hand():
    gold = {"a": ["x"], "b": [], "c": ["y"]}
    predictions = {"a": "x", "b": "z", "c": "w"}
    odds = {"a": -1.0, "b": 0.5, "c": 2.0}
    scores = squad_v2(gold, predictions, odds)
    # All unanswered: 1 of 3 (b). Answer a: 2 of 3 at threshold -1.0; then b, c only lose.
    assert scores["best_exact"] == pytest.approx(200 / 3)
    assert scores["best_exact_thresh"] == -1.0
    # With na_prob_thresh 1.0, c counts as no-answer (0 for a has-answer question), b answered.
    assert scores["exact"] == pytest.approx(100 / 3)
    assert scores["NoAns_exact"] == 0.0 and scores["HasAns_exact"] == 50.0


def test_squad_metrics_picks_the_version():
    def example(qid, answers):
        return {"id": qid, "question": "q?", "context": "ctx",
                "answers": {"text": answers, "answer_start": [0] * len(answers)}}

    answerable = [example("a", ["the cat"]), example("b", ["dog", "a dog"])]
    predictions = {"a": "cat", "b": "dogs", "c": ""}
    assert squad_metrics(answerable, predictions) == squad_v1(
        {"a": ["the cat"], "b": ["dog", "a dog"]}, predictions)
    assert "HasAns_exact" in squad_metrics(answerable, predictions, version_2=True)
    mixed = answerable + [example("c", [])]
    assert squad_metrics(mixed, predictions)["NoAns_exact"] == 100.0
    with pytest.raises(ValueError, match="question 'c' has no gold answer"):
        squad_metrics(mixed, predictions, version_2=False)
    with pytest.raises(ValueError, match="null_odds are a SQuAD v2.0 input"):
        squad_metrics(answerable, predictions, {"a": 0.0, "b": 0.0})


def test_refusals_name_the_question():
    with pytest.raises(ValueError, match="predictions has no entry for question 'b'"):
        squad_v1({"a": ["x"], "b": ["y"], "c": ["z"]}, {"a": "x", "c": "z"})
    with pytest.raises(ValueError, match="null_odds has no entry for question 'b'"):
        squad_v2({"a": ["x"], "b": []}, {"a": "x", "b": ""}, {"a": 0.0})
    with pytest.raises(ValueError, match="prediction for question 'a' is None"):
        squad_v2({"a": ["x"]}, {"a": None})
    with pytest.raises(ValueError, match="no questions to score"):
        squad_v1({}, {})
    with pytest.raises(ValueError, match="example id 'a' appears more than once"):
        squad_metrics([{"id": "a", "answers": {"text": ["x"]}}] * 2, {"a": "x"})
    with pytest.raises(ValueError, match="example 0: needs 'id' and 'answers'"):
        squad_metrics([{"id": "a", "answers": ["x"]}], {"a": "x"})
    with pytest.raises(ValueError, match="non-empty list of strings"):
        f1("x", "x")
