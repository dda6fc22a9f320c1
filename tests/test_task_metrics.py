"""Task metrics against their references: sklearn.metrics, scipy.stats and seqeval on many seeded
random inputs (degenerate ones included), and the GLUE task table."""
import warnings

import numpy as np
import pytest
import scipy.stats

from flaxbert.tasks import glue
from flaxbert.tasks import metrics

sklearn_metrics = pytest.importorskip("sklearn.metrics")
seqeval_metrics = pytest.importorskip("seqeval.metrics")
seqeval_scheme = pytest.importorskip("seqeval.scheme")
from seqeval.metrics.sequence_labeling import get_entities  # noqa: E402


def random_classification(rs, num_classes, size):
    labels = rs.randint(0, num_classes, size)
    noise = rs.rand(size) < rs.rand()  # from nearly perfect to nearly random predictions
    return np.where(noise, rs.randint(0, num_classes, size), labels), labels


def random_classification_cases(count=80, seed=0):
    rs = np.random.RandomState(seed)
    for _ in range(count):
        yield random_classification(rs, rs.randint(1, 6), rs.randint(1, 40))


def assert_report_equal(ours, expected):
    assert list(ours) == list(expected)
    for key, row in expected.items():
        row = float(row) if key == "accuracy" else {k: float(v) for k, v in row.items()}
        assert ours[key] == pytest.approx(row, abs=1e-12), key


def test_classification_scores_equal_sklearn():
    for predictions, labels in random_classification_cases():
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # degenerate cases must not warn
            ours = {"accuracy": metrics.accuracy(predictions, labels),
                    "mcc": metrics.matthews_correlation(predictions, labels),
                    "report": metrics.classification_report(predictions, labels)}
            for average in ("micro", "macro", "weighted"):
                ours[average] = metrics.precision_recall_f1(predictions, labels, average=average)
            binary = np.union1d(predictions, labels).max() <= 1
            if binary:
                ours["binary"] = metrics.precision_recall_f1(predictions, labels)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # sklearn's own degenerate-case warnings
            assert ours["accuracy"] == sklearn_metrics.accuracy_score(labels, predictions)
            np.testing.assert_allclose(ours["mcc"],
                                       sklearn_metrics.matthews_corrcoef(labels, predictions),
                                       atol=1e-12)
            for average in ("micro", "macro", "weighted") + (("binary",) if binary else ()):
                expected = sklearn_metrics.precision_recall_fscore_support(
                    labels, predictions, average=average, zero_division=0)[:3]
                np.testing.assert_allclose(ours[average], expected, atol=1e-12, err_msg=average)
            expected = sklearn_metrics.classification_report(labels, predictions, output_dict=True,
                                                             zero_division=0)
        assert_report_equal(ours["report"], expected)


def test_classification_with_label_names_and_strings():
    rs = np.random.RandomState(1)
    names = ["neg", "neutral", "pos", "never"]
    for _ in range(20):
        predictions, labels = random_classification(rs, 3, 30)
        ours = metrics.classification_report(predictions, labels, label_names=names)
        expected = sklearn_metrics.classification_report(
            labels, predictions, labels=range(4), target_names=names, output_dict=True,
            zero_division=0)
        assert_report_equal(ours, expected)
        assert ours["never"]["support"] == 0
        words = np.array(names)
        assert metrics.precision_recall_f1(words[predictions], words[labels], average="macro") \
            == pytest.approx(metrics.precision_recall_f1(predictions, labels, average="macro"))
        assert metrics.precision_recall_f1(words[predictions] == "pos", words[labels] == "pos",
                                           pos_label=True) == pytest.approx(
            sklearn_metrics.precision_recall_fscore_support(
                labels, predictions, labels=[2], average="micro", zero_division=0)[:3])


@pytest.mark.parametrize("predictions,labels", [
    ([1, 1, 1], [1, 1, 1]),          # one class everywhere
    ([0, 0, 0, 0], [1, 1, 0, 0]),    # constant predictions: MCC undefined
    ([0, 0], [1, 1]),                # never right, positive never predicted
    ([2, 2, 2], [0, 0, 0]),
    ([0], [0]),
])
def test_degenerate_classification_follows_sklearn_without_warnings(predictions, labels):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mcc = metrics.matthews_correlation(predictions, labels)
        scores = {a: metrics.precision_recall_f1(predictions, labels, average=a)
                  for a in ("micro", "macro", "weighted")}
        if max(predictions + labels) <= 1:
            scores["binary"] = metrics.precision_recall_f1(predictions, labels)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert mcc == sklearn_metrics.matthews_corrcoef(labels, predictions)
        for average, values in scores.items():
            assert values == pytest.approx(sklearn_metrics.precision_recall_fscore_support(
                labels, predictions, average=average, zero_division=0)[:3])


def test_correlations_equal_scipy():
    rs = np.random.RandomState(2)
    for trial in range(100):
        size = rs.randint(2, 50)
        labels = rs.rand(size) * 5
        predictions = labels + rs.randn(size) * rs.rand() * 3
        if trial % 3 == 0:  # ties, as in STS-B's half-point labels
            labels, predictions = np.round(labels * 2) / 2, np.round(predictions)
        if np.ptp(labels) == 0 or np.ptp(predictions) == 0:
            continue
        assert metrics.pearson(predictions, labels) == pytest.approx(
            scipy.stats.pearsonr(predictions, labels)[0], abs=1e-12)
        assert metrics.spearman(predictions, labels) == pytest.approx(
            scipy.stats.spearmanr(predictions, labels)[0], abs=1e-12)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # scipy warns and returns nan here
        assert metrics.pearson([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]) == 0.0
        assert metrics.spearman([1.0, 2.0, 3.0], [2.0, 2.0, 2.0]) == 0.0


@pytest.mark.parametrize("call,message", [
    (lambda: metrics.accuracy([], []), "no examples"),
    (lambda: metrics.pearson([], []), "no examples"),
    (lambda: metrics.accuracy([1, 0], [1]), "differ in length: 2 vs 1"),
    (lambda: metrics.accuracy([[1, 0]], [[1, 0]]), "must be 1-d"),
    (lambda: metrics.precision_recall_f1([0, 1, 2], [0, 1, 1]), "average='binary' needs"),
    (lambda: metrics.precision_recall_f1([0, 2], [2, 0]), "pos_label=1 is not one of"),
    (lambda: metrics.precision_recall_f1([0], [0], average="samples"), "average must be"),
    (lambda: metrics.classification_report([0, 5], [0, 1], label_names=["a", "b"]),
     r"labels \[5\] are not among"),
    (lambda: metrics.compute_named_metrics(["acuracy"], [1], [1]), "did you mean 'accuracy'"),
])
def test_bad_classification_input_is_one_clear_line(call, message):
    with pytest.raises(ValueError, match=message) as error:
        call()
    assert "\n" not in str(error.value)


# ---- entities ------------------------------------------------------------------------------

TYPES = ("PER", "LOC", "MISC-X")  # a type may contain the delimiter


def random_tags(rs, prefixes, size):
    tags = [p if p == "O" else f"{p}-{TYPES[rs.randint(len(TYPES))]}"
            for p in rs.choice(list(prefixes), size)]
    return tags


def random_tag_corpus(rs, prefixes):
    labels = [random_tags(rs, prefixes, rs.randint(0, 12)) for _ in range(rs.randint(1, 6))]
    labels[0] = labels[0] or random_tags(rs, prefixes, 3)  # empty sentences, not empty corpora
    predictions = [[tag if rs.rand() < 0.7 else random_tags(rs, prefixes, 1)[0] for tag in tags]
                   for tags in labels]
    return predictions, labels


def test_entity_extraction_equals_seqeval_get_entities():
    rs = np.random.RandomState(3)
    for _ in range(300):
        tags = random_tags(rs, "BIESO", rs.randint(0, 15))
        expected = [(kind, start, end + 1) for kind, start, end in get_entities(tags)]
        assert metrics.extract_entities(tags) == expected, tags


def test_entity_scores_equal_seqeval_default_mode():
    rs = np.random.RandomState(4)
    for trial in range(150):
        predictions, labels = random_tag_corpus(rs, ("BIO", "BIESO", "IO")[trial % 3])
        ours = metrics.entity_scores(predictions, labels)
        for name in ("precision", "recall", "f1"):
            reference = getattr(seqeval_metrics, f"{name}_score")(labels, predictions,
                                                                  zero_division=0)
            assert ours[name] == pytest.approx(reference, abs=1e-12), name
        assert ours["accuracy"] == pytest.approx(seqeval_metrics.accuracy_score(labels,
                                                                                predictions))
        if get_entities(labels) or get_entities(predictions):  # seqeval's macro of none is nan
            assert_report_equal(metrics.entity_report(predictions, labels),
                                seqeval_metrics.classification_report(
                                    labels, predictions, output_dict=True, zero_division=0))


@pytest.mark.parametrize("scheme", ["IOB1", "IOB2", "IOE2", "IOBES", "BILOU"])
def test_entity_scores_equal_seqeval_strict_mode(scheme):
    reference_scheme = getattr(seqeval_scheme, scheme)
    prefixes = metrics.SCHEMES[scheme].prefixes
    rs = np.random.RandomState(5)
    compared = 0
    for _ in range(80):
        predictions, labels = random_tag_corpus(rs, prefixes)
        options = dict(mode="strict", scheme=reference_scheme, zero_division=0)
        ours = metrics.entity_scores(predictions, labels, mode="strict", scheme=scheme)
        for name in ("precision", "recall", "f1"):
            reference = getattr(seqeval_metrics, f"{name}_score")(labels, predictions, **options)
            assert ours[name] == pytest.approx(reference, abs=1e-12), (name, labels, predictions)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # seqeval's nan macro average when nothing is found
            expected = seqeval_metrics.classification_report(labels, predictions,
                                                             output_dict=True, **options)
        if len(expected) > 3:
            compared += 1
            assert_report_equal(metrics.entity_report(predictions, labels, mode="strict",
                                                      scheme=scheme), expected)
    assert compared > 40


def test_strict_mode_detects_the_scheme_like_seqeval():
    rs = np.random.RandomState(6)
    for prefixes in ("BIO", "IOE", "BIOES", "BILOU"):
        for _ in range(20):
            predictions, labels = random_tag_corpus(rs, prefixes)
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    expected = seqeval_metrics.classification_report(
                        labels, predictions, mode="strict", output_dict=True, zero_division=0)
            except ValueError:  # seqeval could not tell either (e.g. no B- in the labels)
                continue
            if len(expected) > 3:
                assert_report_equal(metrics.entity_report(predictions, labels, mode="strict"),
                                    expected)


def test_default_and_strict_modes_differ_as_documented():
    labels = [["B-PER", "I-PER", "O", "B-LOC"]]
    predictions = [["I-PER", "I-PER", "O", "B-LOC"]]  # IOB2-invalid start of the PER entity
    assert metrics.entity_scores(predictions, labels)["f1"] == 1.0
    strict = metrics.entity_scores(predictions, labels, mode="strict", scheme="IOB2")
    assert strict["precision"] == 1.0 and strict["recall"] == 0.5
    assert metrics.extract_entities(["B-PER", "I-PER", "O", "S-LOC"], mode="strict",
                                    scheme="IOBES") == [("LOC", 3, 4)]


def test_token_classification_metrics_drop_ignored_positions():
    id2label = {0: "O", 1: "B-PER", 2: "I-PER", 3: "B-LOC", 4: "I-LOC"}
    rs = np.random.RandomState(7)
    labels = rs.randint(0, 5, (4, 9))
    labels[:, 0] = labels[1:, -3:] = labels[2, 4] = -100  # specials, padding, a later sub-word
    logits = rs.randn(4, 9, 5) + 4 * np.eye(5)[np.where(labels < 0, 0, labels)]
    predicted_tags, true_tags = metrics.tag_sequences(logits, labels, id2label)
    assert [len(t) for t in true_tags] == [8, 5, 4, 5]
    kept = labels != -100
    assert true_tags[2] == [id2label[i] for i in labels[2][kept[2]]]
    assert predicted_tags[3] == [id2label[i] for i in logits[3].argmax(-1)[kept[3]]]
    ours = metrics.token_classification_metrics(logits, labels, id2label)
    assert ours["f1"] == pytest.approx(seqeval_metrics.f1_score(true_tags, predicted_tags))
    assert ours == metrics.token_classification_metrics(logits.argmax(-1), labels,
                                                        list(id2label.values()))


@pytest.mark.parametrize("call,message", [
    (lambda: metrics.entity_scores([], []), "no sequences"),
    (lambda: metrics.entity_scores([["O"]], [["O"], ["O"]]), "differ in number of sequences"),
    (lambda: metrics.entity_scores([["O"]], [["O", "B-X"]]), "sequence 0 has 1 predicted tags"),
    (lambda: metrics.entity_scores([[]], [[]]), "every sequence is empty"),
    (lambda: metrics.entity_scores([["O", "PER"]], [["O", "O"]]),
     "tag 'PER' at position 1 of predicted sequence 0"),
    (lambda: metrics.entity_scores([["O"]], [["E-X"]], mode="strict", scheme="IOB2"),
     "tag 'E-X' at position 0 of actual sequence 0 .* prefix in I/O/B"),
    (lambda: metrics.entity_scores([["O"]], [["O"]], mode="strict"), "cannot tell the tagging"),
    (lambda: metrics.extract_entities(["B-X"], mode="strict"), "needs a tagging scheme"),
    (lambda: metrics.extract_entities(["B-X"], scheme="BIOUL"), "unknown tagging scheme"),
    (lambda: metrics.extract_entities(["U-X"], scheme="BILOU"), "use mode='strict'"),
    (lambda: metrics.tag_sequences([[7]], [[1]], ["O", "B-X"]), r"ids \[7\] have no name"),
])
def test_bad_tag_input_is_one_clear_line(call, message):
    with pytest.raises(ValueError, match=message) as error:
        call()
    assert "\n" not in str(error.value)


# ---- GLUE ----------------------------------------------------------------------------------

def test_every_glue_task_scores_random_predictions():
    rs = np.random.RandomState(8)
    known_columns = {"sentence", "sentence1", "sentence2", "question", "question1", "question2",
                     "premise", "hypothesis"}
    for name, task in glue.GLUE_TASKS.items():
        assert set(task.text_columns) <= known_columns and len(task.text_columns) in (1, 2)
        assert task.num_labels == (1 if task.is_regression else len(task.label_names))
        assert task.label2id == {v: k for k, v in task.id2label.items()}
        if task.is_regression:
            labels, outputs = rs.rand(50) * 5, rs.randn(50, 1)
            scores = outputs[:, 0]
        else:
            labels, outputs = rs.randint(0, task.num_labels, 50), rs.randn(50, task.num_labels)
            scores = outputs.argmax(-1)
        results = glue.compute_metrics(name, outputs, labels)
        assert list(results) == list(task.metrics) + (["combined_score"]
                                                      if len(task.metrics) > 1 else [])
        assert all(np.isfinite(v) and -1 <= v <= 1 for v in results.values())
        assert results == glue.compute_metrics(task, scores, labels)
        references = {"accuracy": lambda: sklearn_metrics.accuracy_score(labels, scores),
                      "f1": lambda: sklearn_metrics.f1_score(labels, scores),
                      "matthews_correlation": lambda: sklearn_metrics.matthews_corrcoef(labels,
                                                                                        scores),
                      "pearson": lambda: scipy.stats.pearsonr(scores, labels)[0],
                      "spearmanr": lambda: scipy.stats.spearmanr(scores, labels)[0]}
        for metric in task.metrics:
            assert results[metric] == pytest.approx(references[metric](), abs=1e-12), name
    assert glue.GLUE_TASKS["stsb"].num_labels == 1 and glue.GLUE_TASKS["mnli"].num_labels == 3
    assert glue.GLUE_TASKS["mnli"].evaluation_splits == ("validation_matched",
                                                         "validation_mismatched")


def test_glue_task_names():
    assert glue.glue_task("SST-2") is glue.glue_task("sst2")
    assert glue.glue_task("sts_b").name == "stsb"
    with pytest.raises(ValueError, match="unknown GLUE task 'mrcp'; did you mean 'mrpc'"):
        glue.glue_task("mrcp")
    with pytest.raises(ValueError, match=r"mnli labels must be 0..2 .*found -1"):
        glue.compute_metrics("mnli", [0, 1], [0, -1])
    with pytest.raises(ValueError, match="stsb is a regression"):
        glue.compute_metrics("stsb", np.zeros((3, 2)), np.zeros(3))
