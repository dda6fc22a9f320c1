"""Task data readers: local CSV / TSV / JSON / JSONL, CoNLL and SWAG files, `tfds:` and HF
`datasets` sources, read into plain example dicts that flaxbert.tasks.features tokenizes.

Every example carries `origin` ("file:line", or "tfds:sst2:train#12"), which every later
error message names. The three shapes:

* sequence (`read_sequence_examples`): {"text", "text_pair"?, "label"?, "origin"}, text columns
  chosen as transformers' run_glue chooses them (`sentence1`/`sentence2`, `question`/`sentence`,
  ..., `sentence`, `text`), or named.
* token (`read_token_examples`): {"words": [...], "tags": [...]?, "origin"} from CoNLL columns
  (token + tag, `-DOCSTART-` skipped, a blank line ends a sentence) or JSON `tokens`/`ner_tags`.
* multiple choice (`read_choice_examples`): {"text", "choices": [...], "label"?, "origin"}
  from HF swag's columns (sent1, sent2, ending0..N-1, label); choice i is "sent2 ending_i".

Labels stay strings here (a JSON 1 and a CSV "1" are the same label); flaxbert.tasks.labels
maps them to ids. Sources: a path (by extension; a directory saved by `datasets`' save_to_disk),
`tfds:<name>[:<split>]` (tensorflow-datasets, prepared data only), `hf:<name>[:<config>[:<split>]]`
(the optional `datasets` library).
"""
from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

from flaxbert.io import read_text

TABLE_FORMATS = {".csv": "csv", ".tsv": "tsv", ".json": "json", ".jsonl": "jsonl"}
# run_glue's column pairs (GLUE, then the usual names elsewhere), tried in order.
PAIR_COLUMNS = (("sentence1", "sentence2"), ("question", "sentence"), ("question1", "question2"),
                ("premise", "hypothesis"), ("question", "context"), ("query", "passage"))
SINGLE_COLUMNS = ("sentence", "text", "content", "review", "document")
# Columns that are never text: dataset bookkeeping.
ID_COLUMNS = ("idx", "id", "guid", "index")
DOCSTART = "-DOCSTART-"
DATASETS_HINT = "pip install datasets"

Record = tuple[str, dict]  # (origin, column -> value)


# ---- sources -> records ------------------------------------------------------------------

def read_records(source: str | os.PathLike, split: str = "train") -> list[Record]:
    """Every record of a table-like source as (origin, {column: value}).

    `split` chooses a split where the source has several (a `datasets` DatasetDict, a tfds
    builder when the spec names none); a file is its own split.
    """
    spec = os.fspath(source)
    if spec.startswith("tfds:"):
        return _tfds_records(spec, split)
    if spec.startswith("hf:"):
        return _hf_records(spec, split)
    path = Path(spec)
    if path.is_dir():
        if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
            return _saved_dataset_records(path, split)
        raise ValueError(f"{path} is a directory but not one saved by datasets' save_to_disk "
                         f"(no dataset_dict.json or state.json)")
    kind = TABLE_FORMATS.get(path.suffix.lower())
    if kind is None:
        raise ValueError(f"{path}: unknown table format {path.suffix!r}; expected one of "
                         f"{sorted(TABLE_FORMATS)}, tfds:<name> or hf:<name>")
    text = read_text(path)
    records = (_csv_records(path, text, kind) if kind in ("csv", "tsv")
               else _json_records(path, text))
    if not records:
        raise ValueError(f"{path} holds no examples")
    return records


def _csv_records(path: Path, text: str, kind: str) -> list[Record]:
    # GLUE's TSVs are unquoted (a sentence may start with '"'), as its own readers assume.
    options = dict(delimiter="\t", quoting=csv.QUOTE_NONE) if kind == "tsv" else {}
    reader = csv.reader(io.StringIO(text, newline=""), **options)
    header = next(reader, None)
    if not header or not any(h.strip() for h in header):
        raise ValueError(f"{path} is empty; expected a header line naming the columns")
    header = [h.strip() for h in header]
    records = []
    for row in reader:
        if not row or (len(row) == 1 and not row[0].strip()):
            continue
        where = f"{path}:{reader.line_num}"
        if len(row) != len(header):
            raise ValueError(f"{where}: expected {len(header)} columns ({', '.join(header)}), "
                             f"got {len(row)}")
        records.append((where, dict(zip(header, row))))
    return records


def _json_records(path: Path, text: str) -> list[Record]:
    if not text.strip():
        raise ValueError(f"{path} is empty")
    if path.suffix.lower() == ".json":
        try:
            value = json.loads(text)
        except json.JSONDecodeError as e:
            if e.msg != "Extra data":  # anything else is broken JSON; extra data = JSON lines
                raise ValueError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
        else:
            if isinstance(value, dict):  # {"data": [...]}, as datasets' json loader's field=
                lists = [v for v in value.values() if isinstance(v, list)]
                if len(lists) != 1:
                    raise ValueError(f"{path}: a JSON object must hold exactly one list of "
                                     f"examples, found {len(lists)}")
                value = lists[0]
            if not isinstance(value, list):
                raise ValueError(f"{path}: expected a JSON list of objects or JSON lines, got "
                                 f"{type(value).__name__}")
            return [_json_object(f"{path}#{i}", item) for i, item in enumerate(value)]
    records = []
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                item = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{number}: not valid JSON ({e.msg})") from None
            records.append(_json_object(f"{path}:{number}", item))
    return records


def _json_object(where: str, item) -> Record:
    if not isinstance(item, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(item).__name__}")
    return where, item


def _feature_decoder(features: dict):
    """A record converter for a tfds / datasets feature dict: bytes -> str, class ids -> names
    (-1, an unlabelled test split's id, -> None)."""
    def names_of(feature):
        names = getattr(feature, "names", None)
        return list(names) if names and hasattr(feature, "int2str") else None

    class_names = {k: names_of(f) for k, f in features.items()}

    def convert(value, names):
        if isinstance(value, bytes):
            return value.decode("utf-8")
        if names is not None and not isinstance(value, (list, tuple)) and hasattr(value, "__int__"):
            return None if int(value) < 0 else names[int(value)]
        if hasattr(value, "tolist"):  # numpy scalars and arrays
            return convert(value.tolist(), names)
        if isinstance(value, (list, tuple)):
            return [convert(v, names) for v in value]
        return value

    def decode(record):
        return {k: convert(v, class_names.get(k)) for k, v in record.items()}
    return decode


def _sequence_feature_names(features: dict) -> dict:
    """Class names inside Sequence(ClassLabel) features (CoNLL's ner_tags)."""
    out = {}
    for key, feature in features.items():
        inner = getattr(feature, "feature", None)
        if inner is not None and getattr(inner, "names", None):
            out[key] = inner
    return out


def _tfds_records(spec: str, split: str) -> list[Record]:
    name, _, named_split = spec[len("tfds:"):].partition(":")
    if not name:
        raise ValueError(f"{spec!r} names no dataset; expected tfds:<name>[:<split>]")
    split = named_split or split
    try:
        import tensorflow_datasets as tfds
    except ImportError:
        raise ImportError(f"{spec} needs tensorflow-datasets (pip install tensorflow-datasets)") \
            from None
    try:
        builder = tfds.builder(name)
    except Exception as e:  # DatasetNotFoundError and friends
        raise ValueError(f"unknown TFDS dataset {name!r} in {spec!r}: "
                         f"{str(e).splitlines()[0]}") from None
    try:
        dataset = builder.as_dataset(split=split, shuffle_files=False)
    except AssertionError:  # how tfds says the data was never downloaded and prepared
        raise FileNotFoundError(f"TFDS dataset {name!r} is not prepared in {builder.data_dir}: "
                                f"run `tfds build {name}` first (or set TFDS_DATA_DIR)") from None
    except ValueError as e:
        raise ValueError(f"{spec}: {str(e).splitlines()[0]}") from None
    features = dict(builder.info.features)
    decode = _feature_decoder({**features, **_sequence_feature_names(features)})
    records = [(f"tfds:{name}:{split}#{i}", decode(r))
               for i, r in enumerate(tfds.as_numpy(dataset))]
    if not records:
        raise ValueError(f"{spec} split {split!r} holds no examples")
    return records


def _import_datasets(what: str):
    try:
        import datasets
    except ImportError:
        raise ImportError(f"{what} needs the optional `datasets` library: {DATASETS_HINT}") \
            from None
    return datasets


def _dataset_split(dataset, split: str, what: str):
    if hasattr(dataset, "keys"):  # a DatasetDict
        if split not in dataset:
            raise ValueError(f"{what} has no split {split!r}; it has {sorted(dataset)}")
        dataset = dataset[split]
    return dataset


def _dataset_records(dataset, what: str) -> list[Record]:
    features = dict(dataset.features)
    decode = _feature_decoder({**features, **_sequence_feature_names(features)})
    records = [(f"{what}#{i}", decode(r)) for i, r in enumerate(dataset)]
    if not records:
        raise ValueError(f"{what} holds no examples")
    return records


def _saved_dataset_records(path: Path, split: str) -> list[Record]:
    datasets = _import_datasets(f"reading the saved dataset {path}")
    dataset = _dataset_split(datasets.load_from_disk(str(path)), split, str(path))
    return _dataset_records(dataset, f"{path}[{split}]")


def _hf_records(spec: str, split: str) -> list[Record]:
    name, config, named_split = (spec[len("hf:"):].split(":") + [None, None])[:3]
    if not name:
        raise ValueError(f"{spec!r} names no dataset; expected hf:<name>[:<config>[:<split>]]")
    datasets = _import_datasets(spec)
    split = named_split or split
    dataset = datasets.load_dataset(name, config or None, split=split)
    return _dataset_records(dataset, f"{spec}[{split}]" if not named_split else spec)


# ---- records -> examples -----------------------------------------------------------------

def _require(records: Sequence[Record], columns: Sequence[str]) -> None:
    """Every record has every column; else one line naming the source, record, column and
    the columns it does have."""
    for where, record in records:
        missing = [c for c in columns if c not in record]
        if missing:
            raise ValueError(f"{where}: no column {missing[0]!r}; the columns are "
                             f"{sorted(record)}")


def text_columns(columns: Sequence[str], label_column: str = "label") -> tuple[str, str | None]:
    """(text column, pair column or None) as run_glue picks them from a file's columns:
    a known pair, else a known single name, else the one or two columns that are not the
    label or an id."""
    present = set(columns)
    for first, second in PAIR_COLUMNS:
        if first in present and second in present:
            return first, second
    for name in SINGLE_COLUMNS:
        if name in present:
            return name, None
    rest = [c for c in columns if c != label_column and c not in ID_COLUMNS]
    if 1 <= len(rest) <= 2:
        return rest[0], rest[1] if len(rest) == 2 else None
    raise ValueError(f"cannot tell which columns hold the text among {sorted(columns)}; name "
                     f"them (text_column=, text_pair_column=)")


def _label(value, where: str, column: str, require: bool):
    if value is None or (isinstance(value, str) and not value.strip()):
        if require:
            raise ValueError(f"{where}: column {column!r} is empty")
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ValueError(f"{where}: label {value!r} in column {column!r} must be a string or "
                         f"a number")
    return value.strip() if isinstance(value, str) else str(value)


def _text(value, where: str, column: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{where}: column {column!r} must hold text, got "
                         f"{type(value).__name__} {value!r:.40}")
    return value


def read_sequence_examples(source, *, split: str = "train", text_column: str | None = None,
                           text_pair_column: str | None = None, label_column: str = "label",
                           require_labels: bool = True) -> list[dict]:
    """Single-text or text-pair examples: {"text", "text_pair"?, "label"?, "origin"}.

    Columns default as run_glue's (see `text_columns`); `text_pair_column=""` forces single
    texts. With require_labels=False (prediction files) the label column may be absent.
    """
    records = read_records(source, split)
    columns = list(records[0][1])
    if text_column is None:
        text_column, guessed_pair = text_columns(columns, label_column)
        text_pair_column = guessed_pair if text_pair_column is None else text_pair_column
    text_pair_column = text_pair_column or None
    needed = [text_column] + ([text_pair_column] if text_pair_column else [])
    has_labels = require_labels or label_column in records[0][1]
    _require(records, needed + ([label_column] if has_labels else []))
    examples = []
    for where, record in records:
        example = {"text": _text(record[text_column], where, text_column), "origin": where}
        if text_pair_column:
            example["text_pair"] = _text(record[text_pair_column], where, text_pair_column)
        if has_labels:
            label = _label(record[label_column], where, label_column, require_labels)
            if label is not None:
                example["label"] = label
        examples.append(example)
    return examples


def read_choice_examples(source, *, split: str = "train", context_column: str = "sent1",
                         header_column: str | None = "sent2", ending_prefix: str = "ending",
                         label_column: str = "label", require_labels: bool = True) -> list[dict]:
    """SWAG-style multiple choice: {"text": context, "choices": [header + " " + ending_i],
    "label"?, "origin"}; the endings are the columns ending0, ending1, ... (as many as the
    first record has, at least two)."""
    records = read_records(source, split)
    first = records[0][1]
    endings = []
    while f"{ending_prefix}{len(endings)}" in first:
        endings.append(f"{ending_prefix}{len(endings)}")
    if len(endings) < 2:
        raise ValueError(f"{records[0][0]}: multiple choice needs columns {ending_prefix}0, "
                         f"{ending_prefix}1, ...; the columns are {sorted(first)}")
    has_labels = require_labels or label_column in first
    _require(records, [context_column] + ([header_column] if header_column else []) + endings
             + ([label_column] if has_labels else []))
    examples = []
    for where, record in records:
        header = _text(record[header_column], where, header_column) if header_column else ""
        choices = [f"{header} {_text(record[e], where, e)}" if header else record[e]
                   for e in endings]
        example = {"text": _text(record[context_column], where, context_column),
                   "choices": choices, "origin": where}
        label = _label(record[label_column], where, label_column, require_labels) \
            if has_labels else None
        if label is not None:
            example["label"] = label
        examples.append(example)
    return examples


# ---- token classification ----------------------------------------------------------------

def _conll_sentences(path: Path, text: str, token_column: int, tag_column: int | None,
                     num_columns: int | None) -> Iterator[dict]:
    words, tags, start = [], [], None
    for number, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if not fields or fields[0] == DOCSTART:
            if words:
                yield {"words": words, "origin": f"{path}:{start}",
                       **({"tags": tags} if tag_column is not None else {})}
            words, tags, start = [], [], None
            continue
        if num_columns is None:
            num_columns = len(fields)
            for name, column in (("token", token_column), ("tag", tag_column)):
                if column is not None and not -num_columns <= column < num_columns:
                    raise ValueError(f"{path}:{number}: {name} column {column} does not exist "
                                     f"in a line of {num_columns} columns")
        if len(fields) != num_columns:
            raise ValueError(f"{path}:{number}: expected {num_columns} columns, got "
                             f"{len(fields)}")
        start = start or number
        words.append(fields[token_column])
        if tag_column is not None:
            tags.append(fields[tag_column])
    if words:
        yield {"words": words, "origin": f"{path}:{start}",
               **({"tags": tags} if tag_column is not None else {})}


def read_conll(path, *, token_column: int = 0, tag_column: int | None = -1,
               num_columns: int | None = None) -> list[dict]:
    """CoNLL sentences: {"words", "tags"?, "origin": "file:first line"}. Columns are split on
    whitespace; every line must have `num_columns` of them (default: as many as the first
    token line). tag_column=None reads tokens only (prediction input); a single-column file
    is read that way too."""
    path = Path(path)
    text = read_text(path)
    first = next((line.split() for line in text.splitlines()
                  if line.split() and line.split()[0] != DOCSTART), None)
    if first is None:
        raise ValueError(f"{path} holds no tokens")
    if len(first) == 1 and num_columns in (None, 1):
        tag_column = None
    return list(_conll_sentences(path, text, token_column, tag_column, num_columns))


def read_token_examples(source, *, split: str = "train", tokens_column: str = "tokens",
                        tags_column: str | None = None, token_column: int = 0,
                        tag_column: int | None = -1, require_labels: bool = True) -> list[dict]:
    """Token-classification examples {"words", "tags"?, "origin"} from a CoNLL file or from
    a table whose rows hold word lists (run_ner's `tokens` and `ner_tags` / `*_tags` columns)."""
    spec = os.fspath(source)
    path = Path(spec)
    table = spec.startswith(("tfds:", "hf:")) or path.is_dir() or \
        path.suffix.lower() in (".json", ".jsonl")
    if not table:
        examples = read_conll(path, token_column=token_column, tag_column=tag_column)
        if require_labels and "tags" not in examples[0]:
            raise ValueError(f"{path}: one column only; training and evaluation need a tag "
                             f"column")
        return examples
    records = read_records(spec, split)
    columns = list(records[0][1])
    if tags_column is None:
        tagged = [c for c in columns if c == "ner_tags"] + \
                 [c for c in columns if c.endswith("_tags") and c != "ner_tags"]
        tags_column = tagged[0] if tagged else "ner_tags"
    has_tags = require_labels or tags_column in records[0][1]
    _require(records, [tokens_column] + ([tags_column] if has_tags else []))
    examples = []
    for where, record in records:
        words = record[tokens_column]
        if not isinstance(words, list) or not all(isinstance(w, str) for w in words):
            raise ValueError(f"{where}: column {tokens_column!r} must hold a list of words")
        example = {"words": words, "origin": where}
        if has_tags:
            tags = record[tags_column]
            if not isinstance(tags, list) or len(tags) != len(words):
                raise ValueError(f"{where}: column {tags_column!r} must hold one tag per word "
                                 f"({len(words)}), got {tags!r:.60}")
            example["tags"] = [_label(t, where, tags_column, True) for t in tags]
        examples.append(example)
    return examples
