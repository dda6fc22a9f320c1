"""flaxbert.tasks.qa_decode against a plain-loop re-implementation of transformers'
`postprocess_qa_predictions` (utils_qa.py) on random logits over overlapping windows (v1, v2,
small n-best, max_answer_length, thresholds, CLS not first), and the character-span round trip
on real windows of a tiny WordPiece tokenizer."""
import unicodedata

import numpy as np
import pytest

import flaxbert
from flaxbert.tasks.qa import QAWindow, question_context_windows, question_first
from flaxbert.tasks.qa_decode import decode_spans


def reference_decode(examples, windows, all_start, all_end, n_best_size, max_answer_length,
                     version_2, threshold):
    """utils_qa's loops, with the null answer at each window's CLS token instead of token 0
    and "" (null odds +inf) where it would insert its "empty" placeholder."""
    predictions, nbest_json, diffs = {}, {}, {}
    for example_index, example in enumerate(examples):
        min_null, prelim = None, []
        for w, window in enumerate(windows):
            if window.example_index != example_index:
                continue
            start_logits, end_logits, offsets = all_start[w], all_end[w], window.offsets
            null = start_logits[window.cls_index] + end_logits[window.cls_index]
            if min_null is None or null < min_null:
                min_null = null
            for s in np.argsort(start_logits)[-1:-n_best_size - 1:-1]:
                for e in np.argsort(end_logits)[-1:-n_best_size - 1:-1]:
                    if offsets[s][0] == -1 or offsets[e][0] == -1:
                        continue
                    if e < s or e - s + 1 > max_answer_length:
                        continue
                    prelim.append({"offsets": (offsets[s][0], offsets[e][1]),
                                   "score": start_logits[s] + end_logits[e]})
        null_prediction = {"offsets": None, "score": min_null}
        if version_2:
            prelim.append(null_prediction)
        best = sorted(prelim, key=lambda p: p["score"], reverse=True)[:n_best_size]
        if version_2 and not any(p["offsets"] is None for p in best):
            best.append(null_prediction)
        for p in best:
            a, b = p["offsets"] or (0, 0)
            p.update(text=example["context"][a:b], start=a, end=b)
        if best:
            scores = np.array([p["score"] for p in best])
            probabilities = np.exp(scores - scores.max()) / np.exp(scores - scores.max()).sum()
            for p, probability in zip(best, probabilities):
                p["probability"] = probability
        if not version_2:
            predictions[example["id"]] = best[0]["text"] if best else ""
        else:
            spans = [p for p in best if p["text"] != ""]
            diff = min_null - spans[0]["score"] if spans else np.inf
            diffs[example["id"]] = diff
            predictions[example["id"]] = spans[0]["text"] if spans and diff <= threshold else ""
        nbest_json[example["id"]] = best
    return predictions, nbest_json, diffs


WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi pi".split()


def synthetic_case(seed=0, examples_count=24):
    """Examples of 6-40 words, each cut into windows of 3-9 context words that overlap by 0-3
    (some examples have a single window, one has no context token at all), a 2-token question,
    CLS first except for every fifth example (XLNet style, CLS last); random logits, with high
    CLS logits in every third example."""
    rng = np.random.default_rng(seed)
    examples, windows, starts, ends = [], [], [], []
    for index in range(examples_count):
        words = list(rng.choice(WORDS, rng.integers(6, 40)))
        context = " ".join(words)
        bounds = np.cumsum([0] + [len(word) + 1 for word in words])
        spans = np.stack([bounds[:-1], bounds[:-1] + [len(w) for w in words]], 1)
        examples.append({"id": f"ex{index}", "question": "q q", "context": context,
                         "answers": {"text": [], "answer_start": []}})
        size, first = int(rng.integers(3, 10)), 0
        while True:
            context_spans = spans[first:first + size] if index != 3 else spans[:0]
            outside = np.full((3, 2), -1)  # CLS, two question tokens; then SEP
            offsets = np.concatenate([outside, context_spans, outside[:1]]).astype(np.int32)
            cls_index = 0
            if index % 5 == 4:
                offsets = np.roll(offsets, -1, axis=0)
                cls_index = len(offsets) - 1
            windows.append(QAWindow(index, offsets, cls_index))
            start, end = rng.normal(size=(2, len(offsets))) * 3
            if index % 3 == 0:  # a null score that can compete with the best span
                start[cls_index], end[cls_index] = start.max() + 1, end.max() + 1
            starts.append(start)
            ends.append(end)
            if first + size >= len(words) or index == 3:
                break
            first += size - int(rng.integers(0, min(4, size)))
    order = rng.permutation(len(windows))  # windows need not come grouped by example
    return (examples, [windows[i] for i in order], [starts[i] for i in order],
            [ends[i] for i in order])


@pytest.fixture(scope="module")
def case():
    return synthetic_case()


SETTINGS = [  # version_2, n_best_size, max_answer_length, null_score_diff_threshold
    (False, 20, 30, 0.0), (True, 20, 30, 0.0), (True, 3, 2, 0.0), (False, 5, 1, 0.0),
    (True, 20, 4, 1.5), (True, 2, 30, -1.0), (True, 1, 3, 0.0)]


@pytest.mark.parametrize("version_2,n_best_size,max_answer_length,threshold", SETTINGS)
def test_decoding_equals_utils_qa(case, version_2, n_best_size, max_answer_length, threshold):
    examples, windows, starts, ends = case
    ours = decode_spans(examples, windows, starts, ends, n_best_size=n_best_size,
                        max_answer_length=max_answer_length, version_2=version_2,
                        null_score_diff_threshold=threshold)
    predictions, nbest, diffs = reference_decode(examples, windows, starts, ends, n_best_size,
                                                 max_answer_length, version_2, threshold)
    assert ours.predictions == predictions
    assert ours.null_score_diff == pytest.approx(diffs, rel=1e-12)
    assert ours.nbest.keys() == nbest.keys()
    for qid, answers in nbest.items():
        assert [(a["text"], a["start"], a["end"]) for a in ours.nbest[qid]] == \
            [(a["text"], a["start"], a["end"]) for a in answers], qid
        for key in ("score", "probability"):
            assert [a[key] for a in ours.nbest[qid]] == pytest.approx(
                [a[key] for a in answers], rel=1e-12), (qid, key)
        assert all(isinstance(a["score"], float) and isinstance(a["start"], int)
                   for a in ours.nbest[qid])
    # ex3 has no context token: no span, only the null answer in v2.
    assert ours.predictions["ex3"] == "" and len(ours.nbest["ex3"]) == int(version_2)
    answered = [qid for qid, text in ours.predictions.items() if text]
    assert len(answered) >= len(examples) // 4  # the comparison covers real spans
    if version_2:
        assert ours.null_score_diff["ex3"] == np.inf
        assert len(answered) < len(examples) - 1  # and null answers beyond ex3
        if n_best_size <= 3:  # the null answer kept after the n best, as utils_qa does
            assert any(len(a) == n_best_size + 1 and a[-1]["text"] == "" and
                       a[-1]["start"] == 0 for a in ours.nbest.values())


def test_nbest_order_probabilities_and_lengths(case):
    examples, windows, starts, ends = case
    ours = decode_spans(examples, windows, starts, ends, n_best_size=7, max_answer_length=3)
    for qid, answers in ours.nbest.items():
        scores = [a["score"] for a in answers]
        assert scores == sorted(scores, reverse=True)
        if answers:
            assert sum(a["probability"] for a in answers) == pytest.approx(1.0)
            weights = np.exp(np.array(scores) - max(scores))
            assert [a["probability"] for a in answers] == pytest.approx(weights / weights.sum())
        for a in answers:  # at most three words, each span taken from the context
            assert a["text"] == examples[int(qid[2:])]["context"][a["start"]:a["end"]]
            assert 1 <= len(a["text"].split()) <= 3


def one_window_example():
    context = "w0 w1 w2 w3 w4 w5"
    offsets = np.array([(-1, -1)] + [(3 * i, 3 * i + 2) for i in range(6)] + [(-1, -1)],
                       np.int32)
    return [{"id": "x", "context": context}], [QAWindow(0, offsets, 0)]


def test_max_answer_length_edge():
    examples, windows = one_window_example()
    start, end = np.zeros(8), np.zeros(8)
    start[[2, 3]], end[[5, 4]] = [5.0, 2.0], [5.0, 3.0]  # best w1..w4 (four tokens), 10.0
    for max_answer_length, text, score in ((4, "w1 w2 w3 w4", 10.0), (3, "w1 w2 w3", 8.0)):
        decoded = decode_spans(examples, windows, [start], [end],
                               max_answer_length=max_answer_length)
        assert decoded.predictions == {"x": text}
        assert decoded.nbest["x"][0]["score"] == score


def test_null_threshold_and_cls_from_the_window():
    examples, windows = one_window_example()
    start, end = np.zeros(8), np.zeros(8)
    start[[0, 1]], end[[0, 1]] = 4.0, [4.0, 3.0]  # null 8.0; best span w0 (tokens 1..1) 7.0
    for threshold, text in ((0.0, ""), (1.0, "w0"), (0.999, "")):
        decoded = decode_spans(examples, windows, [start], [end], version_2=True,
                               null_score_diff_threshold=threshold)
        assert decoded.predictions == {"x": text}
        assert decoded.null_score_diff == {"x": 1.0}
    v1 = decode_spans(examples, windows, [start], [end])
    assert v1.predictions == {"x": "w0"} and v1.null_score_diff == {}
    # Seen from a window whose CLS is last, the null score is 0 + 0 and the span wins.
    moved = [QAWindow(0, windows[0].offsets, 7)]
    assert decode_spans(examples, moved, [start], [end],
                        version_2=True).null_score_diff == {"x": -7.0}


def test_bad_input():
    examples, windows = one_window_example()
    logits = [np.zeros(8)]
    with pytest.raises(ValueError, match="1 windows but 2 start_logits"):
        decode_spans(examples, windows, logits * 2, logits)
    with pytest.raises(ValueError, match=r"window 0: end_logits has shape \(9,\), expected \(8,\)"):
        decode_spans(examples, windows, logits, [np.zeros(9)])
    with pytest.raises(ValueError, match="window 0: start_logits contains NaN"):
        decode_spans(examples, windows, [np.full(8, np.nan)], logits)
    with pytest.raises(ValueError, match="window 0: example_index 1 is not one of the 1"):
        decode_spans(examples, [QAWindow(1, windows[0].offsets, 0)], logits, logits)
    with pytest.raises(ValueError, match="example 'y' has no windows"):
        decode_spans(examples + [{"id": "y", "context": "c"}], windows, logits, logits)
    with pytest.raises(ValueError, match="example id 'x' appears more than once"):
        decode_spans(examples * 2, windows, logits, logits)
    with pytest.raises(ValueError, match="offsets reach character 17 but example 'x' has a 5-"):
        decode_spans([{"id": "x", "context": "short"}], windows, logits, logits)
    with pytest.raises(ValueError, match="window 0: cls_index 8 is outside its 8 tokens"):
        decode_spans(examples, [QAWindow(0, windows[0].offsets, 8)], logits, logits)
    with pytest.raises(ValueError, match="example 0: needs 'id' and 'context'"):
        decode_spans([{"id": "x", "text": "w0"}], windows, logits, logits)
    with pytest.raises(ValueError, match="n_best_size"):
        decode_spans(examples, windows, logits, logits, n_best_size=0)


# ---- real windows ------------------------------------------------------------------------------

VOCAB = (["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ",", "?"]
         + "the a cat sat on mat went to and is in of john smith paris new york where who did "
           "go cafe muller works at acme bank river lives".split()
         + list("abcdefghijklmnopqrstuvwxyz") + ["##" + c for c in "abcdefghijklmnopqrstuvwxyz"])
CONTEXTS = [
    "John Smith went to Paris. The Café Müller ☃ is in New York, and Johnson works at "
    "Acme Bank by the river.",
    "The cat sat on the mat.",
]
ANSWERS = [[("Paris", "where did john go?"), ("Café Müller", "who is in new york?"),
            ("Acme Bank", "where is acme bank?"), ("New York", "where is the cafe?")],
           [("the mat", "where did the cat sit?")]]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    directory = tmp_path_factory.mktemp("wordpiece")
    (directory / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    (directory / "tokenizer_config.json").write_text('{"do_lower_case": true}')
    return flaxbert.Tokenizer.from_pretrained(directory)


def as_window(encoding, example_index, tokenizer):
    context_sequence = 1 if question_first(tokenizer) else 0
    offsets = np.asarray(encoding.offsets, np.int32).reshape(-1, 2)
    offsets[[s != context_sequence for s in encoding.sequence_ids]] = -1
    return QAWindow(example_index, offsets, encoding.ids.index(tokenizer.cls_token_id))


@pytest.fixture(scope="module")
def real_case(tokenizer):
    examples, windows, encodings = [], [], []
    for context, answers in zip(CONTEXTS, ANSWERS):
        for text, question in answers:
            index = len(examples)
            examples.append({"id": f"q{index}", "question": question, "context": context,
                             "answers": {"text": [text], "answer_start": [context.index(text)]}})
    for index, per_example in enumerate(question_context_windows(
            tokenizer, [e["question"] for e in examples], [e["context"] for e in examples],
            max_length=24, stride=4)):
        encodings += per_example
        windows += [as_window(encoding, index, tokenizer) for encoding in per_example]
    return examples, windows, encodings


def strip_accents(text):
    return "".join(c for c in unicodedata.normalize("NFD", text.lower())
                   if unicodedata.category(c) != "Mn")


def test_offsets_point_into_the_original_context(real_case):
    examples, windows, encodings = real_case
    assert len(windows) > len(examples)  # long contexts were cut into several windows
    for window, encoding in zip(windows, encodings):
        context = examples[window.example_index]["context"]
        for (a, b), token in zip(window.offsets, encoding.tokens):
            if a >= 0 and token != "[UNK]":
                assert strip_accents(context[a:b]) == token.removeprefix("##")
        assert encoding.tokens[window.cls_index] == "[CLS]"


def test_gold_spans_decode_to_the_gold_text(real_case):
    """Logits that point at the tokens holding each gold answer decode to exactly its
    characters, in the context's own case and accents, from whichever windows hold it."""
    examples, windows, _ = real_case
    rng = np.random.default_rng(0)
    starts, ends, holders = [], [], {}
    for w, window in enumerate(windows):
        example = examples[window.example_index]
        first = example["answers"]["answer_start"][0]
        last = first + len(example["answers"]["text"][0])
        start, end = rng.normal(size=(2, len(window.offsets))) * 0.1
        s, e = (np.flatnonzero(window.offsets[:, 0] == first),
                np.flatnonzero(window.offsets[:, 1] == last))
        if s.size and e.size:
            start[s], end[e] = 8.0, 8.0
            holders[example["id"]] = holders.get(example["id"], 0) + 1
        starts.append(start)
        ends.append(end)
    assert holders.keys() == {e["id"] for e in examples}
    assert max(holders.values()) >= 2  # some answer sits in the overlap of two windows
    decoded = decode_spans(examples, windows, starts, ends, version_2=True)
    for example in examples:
        gold, first = example["answers"]["text"][0], example["answers"]["answer_start"][0]
        assert decoded.predictions[example["id"]] == gold
        best = decoded.nbest[example["id"]][0]
        assert (best["text"], best["start"], best["end"]) == (gold, first, first + len(gold))
        assert decoded.null_score_diff[example["id"]] < -10
