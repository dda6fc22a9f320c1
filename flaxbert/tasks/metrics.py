"""Task metrics computed the standard way: classification scores equal to sklearn.metrics,
correlations from scipy.stats, and entity-level scores for tagged sequences equal to seqeval's.

Every function takes `(predictions, labels)` in that order (as `compute_metrics` in a trainer
receives them; sklearn's order is the reverse), as 1-d arrays of class ids, label strings or floats.
Undefined ratios are 0.0 without a warning (sklearn's `zero_division=0`), so every metric is a
finite number that a trainer can log as JSON and compare when it keeps the best checkpoint.
"""
from __future__ import annotations

import difflib
import functools
from collections import defaultdict
from typing import Callable, Mapping, NamedTuple, Sequence

import numpy as np
import scipy.stats

AVERAGES = ("binary", "micro", "macro", "weighted")


def _paired(predictions, labels) -> tuple[np.ndarray, np.ndarray]:
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    if predictions.ndim != 1 or labels.ndim != 1:
        raise ValueError(f"predictions and labels must be 1-d, got shapes {predictions.shape} "
                         f"and {labels.shape}")
    if len(predictions) != len(labels):
        raise ValueError(f"predictions and labels differ in length: {len(predictions)} vs "
                         f"{len(labels)}")
    if not len(labels):
        raise ValueError("no examples to score: predictions and labels are empty")
    return predictions, labels


def _ratio(numerator, denominator) -> np.ndarray:
    numerator, denominator = np.asarray(numerator, float), np.asarray(denominator, float)
    return np.divide(numerator, denominator, out=np.zeros_like(numerator),
                     where=denominator != 0)


class _Scores(NamedTuple):
    precision: np.ndarray | float
    recall: np.ndarray | float
    f1: np.ndarray | float
    support: np.ndarray | int


def _scores_from_counts(true_positives, predicted, actual, average: str | None) -> _Scores:
    """Per-label (average=None) or averaged scores from per-label counts, as sklearn and seqeval
    compute them: micro sums the counts first, macro and weighted average the per-label scores."""
    true_positives, predicted, actual = (np.asarray(c, np.int64)
                                         for c in (true_positives, predicted, actual))
    if average == "micro":
        true_positives, predicted, actual = (c.sum(keepdims=True)
                                             for c in (true_positives, predicted, actual))
    precision, recall = _ratio(true_positives, predicted), _ratio(true_positives, actual)
    f1 = _ratio(2 * true_positives, predicted + actual)
    if average is None:
        return _Scores(precision, recall, f1, actual)
    weights = actual if average == "weighted" else np.ones_like(actual)
    if not weights.sum():  # nothing to average over (no labels, or no true examples of any)
        return _Scores(0.0, 0.0, 0.0, int(actual.sum()))
    return _Scores(*(float(np.average(s, weights=weights)) for s in (precision, recall, f1)),
                   int(actual.sum()))


def _confusion(predictions, labels, classes=None) -> tuple[np.ndarray, np.ndarray]:
    """(classes, confusion matrix with true labels as rows); classes default to the sorted union."""
    predictions, labels = _paired(predictions, labels)
    present = np.union1d(predictions, labels)
    classes = present if classes is None else np.asarray(classes)
    unknown = np.setdiff1d(present, classes)
    if len(unknown):
        raise ValueError(f"labels {unknown[:5].tolist()} are not among the {len(classes)} known "
                         f"labels {classes[:10].tolist()}")
    order = np.argsort(classes)
    rows = order[np.searchsorted(classes, labels, sorter=order)]
    columns = order[np.searchsorted(classes, predictions, sorter=order)]
    matrix = np.zeros((len(classes), len(classes)), np.int64)
    np.add.at(matrix, (rows, columns), 1)
    return classes, matrix


def accuracy(predictions, labels) -> float:
    predictions, labels = _paired(predictions, labels)
    return float(np.mean(predictions == labels))


def precision_recall_f1(predictions, labels, *, average: str = "binary",
                        pos_label=1) -> tuple[float, float, float]:
    """sklearn's precision_recall_fscore_support: `binary` scores `pos_label` only (two classes
    at most), `micro` / `macro` / `weighted` average over every label that occurs."""
    if average not in AVERAGES:
        raise ValueError(f"average must be one of {AVERAGES}, got {average!r}")
    classes, matrix = _confusion(predictions, labels)
    counts = np.diag(matrix), matrix.sum(axis=0), matrix.sum(axis=1)
    if average == "binary":
        if len(classes) > 2:
            raise ValueError(f"average='binary' needs at most two classes, found {len(classes)} "
                             f"({classes[:10].tolist()}); use 'macro', 'micro' or 'weighted'")
        positive = np.flatnonzero(classes == pos_label)
        if not len(positive) and len(classes) == 2:
            raise ValueError(f"pos_label={pos_label!r} is not one of the labels "
                             f"{classes.tolist()}")
        counts = tuple(c[positive] for c in counts)
        average = "micro"  # one label: its own score
    return tuple(_scores_from_counts(*counts, average)[:3])


def matthews_correlation(predictions, labels) -> float:
    """The multi-class Matthews correlation (Gorodkin's R_K, sklearn's matthews_corrcoef);
    0.0 where it is undefined (one class only in predictions or labels)."""
    _, matrix = _confusion(predictions, labels)
    matrix = matrix.astype(np.float64)  # the products below overflow int64 on large sets
    actual, predicted, total = matrix.sum(axis=1), matrix.sum(axis=0), matrix.sum()
    covariance = np.trace(matrix) * total - actual @ predicted
    spread = (total ** 2 - predicted @ predicted) * (total ** 2 - actual @ actual)
    return float(covariance / np.sqrt(spread)) if spread else 0.0


def _correlation(statistic: Callable, predictions, labels) -> float:
    predictions, labels = _paired(np.asarray(predictions, float), np.asarray(labels, float))
    if len(labels) < 2 or np.ptp(predictions) == 0 or np.ptp(labels) == 0:
        return 0.0  # undefined (scipy: nan); 0.0 keeps the metric loggable and comparable
    return float(statistic(predictions, labels).statistic)


pearson = functools.partial(_correlation, scipy.stats.pearsonr)
pearson.__doc__ = "Pearson's r (scipy.stats.pearsonr); 0.0 for constant inputs."
spearman = functools.partial(_correlation, scipy.stats.spearmanr)
spearman.__doc__ = "Spearman's rank correlation (scipy.stats.spearmanr); 0.0 for constant inputs."


def _row(scores: _Scores) -> dict:
    return {"precision": float(scores.precision), "recall": float(scores.recall),
            "f1-score": float(scores.f1), "support": int(scores.support)}


def _label_rows(names, per_label: _Scores) -> dict:
    return {str(name): _row(_Scores(*values)) for name, *values in zip(names, *per_label)}


def classification_report(predictions, labels, *,
                          label_names: Sequence[str] | Mapping[int, str] | None = None) -> dict:
    """Per-label precision, recall, F1 and support plus accuracy, macro and weighted averages,
    equal to sklearn's classification_report(output_dict=True). `label_names` (a list indexed by
    class id, or an id2label mapping) names the rows and adds labels that never occur."""
    if label_names is not None and not isinstance(label_names, Mapping):
        label_names = dict(enumerate(label_names))
    classes, matrix = _confusion(predictions, labels,
                                 None if label_names is None else sorted(label_names))
    counts = np.diag(matrix), matrix.sum(axis=0), matrix.sum(axis=1)
    names = classes.tolist() if label_names is None else [label_names[c] for c in classes.tolist()]
    return (_label_rows(names, _scores_from_counts(*counts, None))
            | {"accuracy": float(np.trace(matrix) / matrix.sum())}
            | {f"{a} avg": _row(_scores_from_counts(*counts, a)) for a in ("macro", "weighted")})


# ---- entities in tagged sequences ----------------------------------------------------------

class _Scheme(NamedTuple):
    """A tagging scheme as the patterns of seqeval.scheme: (previous prefixes, current
    prefixes, type relation) triples saying where an entity starts, continues and ends."""
    prefixes: str
    start: tuple
    inside: tuple
    end: tuple


_ANY = "IOBESLU"
SCHEMES = {
    "IOB1": _Scheme("IOB", start=(("O", "I", "any"), ("B", "I", "any"), ("I", "I", "diff"),
                                  ("IB", "B", "same")),
                    inside=(("BI", "I", "same"),),
                    end=(("BI", "I", "diff"), ("BI", "O", "any"), ("I", "B", "any"),
                         ("B", "B", "same"))),
    "IOB2": _Scheme("IOB", start=((_ANY, "B", "any"),), inside=(("BI", "I", "same"),),
                    end=(("BI", "OB", "any"), ("BI", "I", "diff"))),
    "IOE2": _Scheme("IOE", start=(("OE", "IE", "any"), ("I", "IE", "diff")),
                    inside=(("I", "IE", "same"),), end=(("E", _ANY, "any"),)),
    "IOBES": _Scheme("IOBES", start=((_ANY, "BS", "any"),), inside=(("BI", "IE", "same"),),
                     end=(("SE", _ANY, "any"),)),
    "BILOU": _Scheme("BILOU", start=((_ANY, "BU", "any"),), inside=(("BI", "IL", "same"),),
                     end=(("UL", _ANY, "any"),)),
}
SCHEMES["BIO"] = SCHEMES["IOB2"]
# The conlleval-compatible (default) decoding reads any of these prefixes.
_LENIENT_PREFIXES = "IOBES"
_OUTSIDE = ("O", None)


def _parse_tags(tags: Sequence[str], prefixes: str, where: str = "") -> list[tuple]:
    parsed = []
    for position, tag in enumerate(tags):
        if tag == "O":
            parsed.append(_OUTSIDE)
        elif isinstance(tag, str) and len(tag) > 2 and tag[1] == "-" and tag[0] in prefixes:
            parsed.append((tag[0], tag[2:]))
        else:
            raise ValueError(f"tag {tag!r} at position {position}{where} is neither 'O' nor "
                             f"'<prefix>-<type>' with a prefix in {'/'.join(prefixes)}")
    return parsed


def _lenient_spans(parsed) -> list[tuple[str, int, int]]:
    """conlleval's chunk rules (seqeval's default mode): an I- or E- after O or after another
    type opens an entity, a B- or S- always does. O has no type, so O -> I- is a type change."""
    spans, begin = [], 0
    previous, previous_type = _OUTSIDE
    for position, (prefix, type_) in enumerate(parsed + [_OUTSIDE]):
        if (previous in "ES" or (previous in "BI" and prefix in "BSO")
                or (previous != "O" and previous_type != type_)):
            spans.append((previous_type, begin, position))
        if (prefix in "BS" or (previous in "ES" and prefix in "EI")
                or (prefix != "O" and previous_type != type_)):
            begin = position
        previous, previous_type = prefix, type_
    return spans


def _matches(patterns, previous, current) -> bool:
    return any(previous[0] in before and current[0] in now and (
        relation == "any" or (previous[1] == current[1]) == (relation == "same"))
        for before, now, relation in patterns)


def _strict_spans(parsed, scheme: _Scheme) -> list[tuple[str, int, int]]:
    """seqeval's strict mode: an entity counts only when its start, every continuation and its
    end are all valid in `scheme` (B-X I-X without E-X is no IOBES entity)."""
    tokens = parsed + [_OUTSIDE]
    spans, position, previous = [], 0, _OUTSIDE
    while position < len(tokens):
        if _matches(scheme.start, previous, tokens[position]):
            end = position + 1
            while _matches(scheme.inside, tokens[end - 1], tokens[end]):
                end += 1
            if _matches(scheme.end, tokens[end - 1], tokens[end]):
                spans.append((tokens[position][1], position, end))
            position = end
        else:
            position += 1
        previous = tokens[position - 1]
    return spans


def _scheme(name: str | None) -> _Scheme | None:
    if name is None or name.upper() in SCHEMES:
        return None if name is None else SCHEMES[name.upper()]
    raise ValueError(f"unknown tagging scheme {name!r}; known: {', '.join(SCHEMES)}")


def extract_entities(tags: Sequence[str], *, mode: str = "default",
                     scheme: str | None = None) -> list[tuple[str, int, int]]:
    """(type, start, end) spans, end exclusive, of the entities in one tag sequence.
    mode='default' decodes like conlleval / seqeval's default (any of I/O/B/E/S prefixes; a
    `scheme` only restricts which prefixes are allowed); mode='strict' needs the `scheme`."""
    return _entities(tags, mode, _scheme(scheme))


def _entities(tags, mode: str, scheme: _Scheme | None, where: str = ""):
    if mode == "strict":
        if scheme is None:
            raise ValueError("mode='strict' needs a tagging scheme: " + ", ".join(SCHEMES))
        return _strict_spans(_parse_tags(tags, scheme.prefixes, where), scheme)
    if mode != "default":
        raise ValueError(f"mode must be 'default' or 'strict', got {mode!r}")
    if scheme is not None and not set(scheme.prefixes) <= set(_LENIENT_PREFIXES):
        raise ValueError(f"mode='default' reads I/O/B/E/S prefixes only; use mode='strict' for "
                         f"{scheme.prefixes}")
    return _lenient_spans(_parse_tags(tags, scheme.prefixes if scheme else _LENIENT_PREFIXES,
                                      where))


def detect_scheme(sequences: Sequence[Sequence[str]]) -> str:
    """The scheme whose prefixes `sequences` use, tried in seqeval's auto_detect order."""
    found = {tag[:1] for tags in sequences for tag in tags}
    if found <= set("IOB") and "B" in found:
        return "IOB2"
    if found <= set("IOE") and "E" in found:
        return "IOE2"
    if found <= set("IOBES") and ("S" in found or {"B", "E"} <= found):
        return "IOBES"
    if found <= set("BILOU") and found & {"L", "U"}:
        return "BILOU"
    raise ValueError(f"cannot tell the tagging scheme from the prefixes {sorted(found)}; pass "
                     f"scheme= one of {', '.join(SCHEMES)}")


def _tag_sequences(predictions, labels) -> None:
    if len(predictions) != len(labels):
        raise ValueError(f"predictions and labels differ in number of sequences: "
                         f"{len(predictions)} vs {len(labels)}")
    if not len(labels):
        raise ValueError("no sequences to score: predictions and labels are empty")
    for index, (predicted, actual) in enumerate(zip(predictions, labels)):
        if len(predicted) != len(actual):
            raise ValueError(f"sequence {index} has {len(predicted)} predicted tags but "
                             f"{len(actual)} labels")


def _entity_counts(predictions, labels, mode: str, scheme: str | None):
    _tag_sequences(predictions, labels)
    if mode == "strict" and scheme is None:
        scheme = detect_scheme(labels)
    scheme = _scheme(scheme)
    found = {"predicted": defaultdict(set), "actual": defaultdict(set)}
    for side, sequences in (("predicted", predictions), ("actual", labels)):
        for index, tags in enumerate(sequences):
            for type_, start, end in _entities(tags, mode, scheme,
                                               f" of {side} sequence {index}"):
                found[side][type_].add((index, start, end))
    types = sorted(found["predicted"].keys() | found["actual"].keys())
    predicted, actual = (found[side] for side in ("predicted", "actual"))
    counts = ([len(predicted[t] & actual[t]) for t in types], [len(predicted[t]) for t in types],
              [len(actual[t]) for t in types])
    return types, counts


def entity_report(predictions, labels, *, mode: str = "default",
                  scheme: str | None = None) -> dict:
    """Per-type precision / recall / F1 / support with micro, macro and weighted averages, equal
    to seqeval's classification_report(output_dict=True). `predictions` and `labels` are lists of
    tag sequences; mode='strict' without a scheme detects it from the labels, as seqeval does."""
    types, counts = _entity_counts(predictions, labels, mode, scheme)
    return (_label_rows(types, _scores_from_counts(*counts, None))
            | {f"{a} avg": _row(_scores_from_counts(*counts, a))
               for a in ("micro", "macro", "weighted")})


def entity_scores(predictions, labels, *, mode: str = "default",
                  scheme: str | None = None) -> dict[str, float]:
    """Micro entity precision / recall / F1 and token accuracy: the numbers transformers'
    run_ner.py reports (seqeval's), for lists of tag sequences."""
    _, counts = _entity_counts(predictions, labels, mode, scheme)
    scores = _scores_from_counts(*counts, "micro")
    flat_predictions = [tag for tags in predictions for tag in tags]
    flat_labels = [tag for tags in labels for tag in tags]
    if not flat_labels:
        raise ValueError("no tags to score: every sequence is empty")
    return {"precision": scores.precision, "recall": scores.recall, "f1": scores.f1,
            "accuracy": accuracy(np.asarray(flat_predictions, object),
                                 np.asarray(flat_labels, object))}


def tag_sequences(predictions, labels, id2label: Mapping[int, str] | Sequence[str], *,
                  ignore_index: int = -100) -> tuple[list[list[str]], list[list[str]]]:
    """Tag strings from a token-classification batch: predictions as ids (batch, length) or
    logits (batch, length, labels), positions whose label is `ignore_index` (padding, special
    tokens, later sub-words) dropped."""
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    if predictions.ndim == labels.ndim + 1:
        predictions = predictions.argmax(-1)
    if predictions.shape != labels.shape or labels.ndim != 2:
        raise ValueError(f"token predictions {predictions.shape} and labels {labels.shape} "
                         f"must both be (batch, length)")
    names = dict(id2label) if isinstance(id2label, Mapping) else dict(enumerate(id2label))
    keep = labels != ignore_index
    unknown = set(np.union1d(labels[keep], predictions[keep]).tolist()) - names.keys()
    if unknown:
        raise ValueError(f"label ids {sorted(unknown)[:5]} have no name in id2label "
                         f"({len(names)} labels)")
    return tuple([[names[i] for i in row[k].tolist()] for row, k in zip(ids, keep)]
                 for ids in (predictions, labels))


def token_classification_metrics(predictions, labels, id2label, *, ignore_index: int = -100,
                                 mode: str = "default", scheme: str | None = None) -> dict:
    """`entity_scores` of a token-classification batch of ids or logits (see `tag_sequences`)."""
    predicted_tags, true_tags = tag_sequences(predictions, labels, id2label,
                                              ignore_index=ignore_index)
    return entity_scores(predicted_tags, true_tags, mode=mode, scheme=scheme)


# ---- metrics by name -----------------------------------------------------------------------

def _f1_averaged(average: str) -> Callable[..., float]:
    return lambda predictions, labels: precision_recall_f1(predictions, labels,
                                                           average=average)[2]


METRICS: dict[str, Callable[..., float]] = {
    "accuracy": accuracy,
    "matthews_correlation": matthews_correlation,
    "pearson": pearson,
    "spearmanr": spearman,  # transformers' run_glue / evaluate call it spearmanr
    "precision": lambda p, l: precision_recall_f1(p, l)[0],
    "recall": lambda p, l: precision_recall_f1(p, l)[1],
    "f1": lambda p, l: precision_recall_f1(p, l)[2],
    **{f"f1_{average}": _f1_averaged(average) for average in ("micro", "macro", "weighted")},
}


def compute_named_metrics(names: Sequence[str], predictions, labels) -> dict[str, float]:
    """{name: value} for metric names from METRICS ('f1' is binary F1 of label 1)."""
    for name in names:
        if name not in METRICS:
            close = difflib.get_close_matches(name, METRICS, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; known: {', '.join(METRICS)}"
            raise ValueError(f"unknown metric {name!r}{hint}")
    return {name: METRICS[name](predictions, labels) for name in names}
