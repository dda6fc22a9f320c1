"""flaxbert.tasks readers, labels, features and batching: files written here, tiny trained
tokenizers checked against transformers' fast tokenizers, and one clear line for bad input."""
import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import csv
import json
import logging
import re

import numpy as np
import pytest
from transformers import AutoTokenizer

from flaxbert.tasks.batching import TaskBatches, default_buckets
from flaxbert.tasks.features import align_labels, encode_choices, encode_sequences, encode_words
from flaxbert.tasks.labels import (IGNORE_INDEX, LabelMap, is_regression, label_map_for,
                                   read_label_names)
from flaxbert.tasks.readers import (read_choice_examples, read_conll, read_records,
                                    read_sequence_examples, read_token_examples)
from flaxbert.tokenizer import Tokenizer
from flaxbert.tokenizer_training import train_tokenizer
from tokenizer_cases import corpus_lines

# (kind, style) of flaxbert.tokenizer_training -> vocabulary size; one per convention.
KINDS = {"wordpiece": ("wordpiece", None, 500), "bpe": ("bpe", None, 600),
         "albert": ("sentencepiece", "albert", 500), "xlnet": ("sentencepiece", "xlnet", 500)}
PAIRS = [("A man eats food.", "Someone is eating."), ("The cat sleeps.", "A dog barks loudly."),
         ("Stocks fell sharply today", "Markets dropped"), ("Hello", "World")]


@pytest.fixture(scope="module")
def tokenizers_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("tok")
    corpus = root / "corpus.txt"
    corpus.write_text("\n".join(corpus_lines(300)) + "\n", encoding="utf-8")
    for name, (kind, style, size) in KINDS.items():
        train_tokenizer([str(corpus)], root / name, kind, size, style=style)
    return root


@pytest.fixture(scope="module")
def wordpiece(tokenizers_dir):
    return Tokenizer.from_pretrained(tokenizers_dir / "wordpiece")


def write_table(path, rows):
    """rows (dicts) in the format path's extension names."""
    columns = list(rows[0])
    if path.suffix in (".csv", ".tsv"):
        with open(path, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f, delimiter="\t" if path.suffix == ".tsv" else ",",
                                **({"quoting": csv.QUOTE_NONE} if path.suffix == ".tsv" else {}))
            writer.writerow(columns)
            writer.writerows([r[c] for c in columns] for r in rows)
    elif path.name.endswith("list.json"):
        path.write_text(json.dumps(rows), encoding="utf-8")
    else:  # .jsonl, or JSON lines in a .json file, as datasets' json loader accepts
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


# ---- readers ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["t.csv", "t.tsv", "t.jsonl", "t.json", "t.list.json"])
def test_table_readers_give_the_same_examples(tmp_path, name):
    rows = [{"idx": i, "sentence1": a, "sentence2": b, "label": ["yes", "no"][i % 2]}
            for i, (a, b) in enumerate(PAIRS)]
    examples = read_sequence_examples(write_table(tmp_path / name, rows))
    assert [(e["text"], e["text_pair"], e["label"]) for e in examples] == \
        [(r["sentence1"], r["sentence2"], r["label"]) for r in rows]
    if not name.endswith("list.json"):  # a JSON list has record numbers, not lines
        line = 4 if name.endswith(("csv", "tsv")) else 3  # a header line comes first
        assert examples[2]["origin"] == f"{tmp_path / name}:{line}"


def test_columns_follow_run_glue_and_can_be_named(tmp_path):
    qnli = write_table(tmp_path / "qnli.csv", [{"question": "Who?", "sentence": "Me.",
                                                 "label": "entailment"}])
    assert read_sequence_examples(qnli)[0]["text_pair"] == "Me."
    single = write_table(tmp_path / "s.jsonl", [{"id": 3, "text": "fine", "label": 1},
                                                {"id": 4, "text": "bad", "label": 0}])
    assert [(e["text"], e["label"]) for e in read_sequence_examples(single)] == \
        [("fine", "1"), ("bad", "0")]
    odd = write_table(tmp_path / "o.csv", [{"review_body": "great", "title": "t", "stars": "5",
                                            "x": "y"}])
    got = read_sequence_examples(odd, text_column="review_body", label_column="stars",
                                 text_pair_column="")
    assert got[0]["text"] == "great" and got[0]["label"] == "5" and "text_pair" not in got[0]
    with pytest.raises(ValueError, match="cannot tell which columns hold the text"):
        read_sequence_examples(odd, label_column="stars")
    unlabelled = write_table(tmp_path / "p.csv", [{"sentence": "no label here"}])
    assert read_sequence_examples(unlabelled, require_labels=False) == \
        [{"text": "no label here", "origin": f"{unlabelled}:2"}]


CONLL = """-DOCSTART- -X- -X- O

EU NNP B-NP B-ORG
rejects VBZ B-VP O
German JJ B-NP B-MISC

Peter NNP B-NP B-PER
Blackburn NNP I-NP I-PER

-DOCSTART- -X- -X- O
BRUSSELS NNP B-NP B-LOC
"""


def test_conll_reader(tmp_path):
    path = tmp_path / "train.conll"
    path.write_text(CONLL, encoding="utf-8")
    sentences = read_conll(path)
    assert [s["words"] for s in sentences] == [["EU", "rejects", "German"],
                                               ["Peter", "Blackburn"], ["BRUSSELS"]]
    assert sentences[1]["tags"] == ["B-PER", "I-PER"]
    assert [s["origin"] for s in sentences] == [f"{path}:{n}" for n in (3, 7, 11)]
    assert read_conll(path, tag_column=2)[0]["tags"] == ["B-NP", "B-VP", "B-NP"]
    assert read_token_examples(path) == sentences
    tokens_only = tmp_path / "test.txt"
    tokens_only.write_text("EU\nrejects\n\nPeter\n", encoding="utf-8")
    assert read_token_examples(tokens_only, require_labels=False) == [
        {"words": ["EU", "rejects"], "origin": f"{tokens_only}:1"},
        {"words": ["Peter"], "origin": f"{tokens_only}:4"}]
    table = write_table(tmp_path / "ner.jsonl", [{"tokens": ["EU", "rejects"],
                                                  "ner_tags": ["B-ORG", "O"]}])
    assert read_token_examples(table)[0]["tags"] == ["B-ORG", "O"]


def test_swag_reader(tmp_path):
    rows = [{"video-id": "v", "sent1": "She opens the door.", "sent2": "She",
             **{f"ending{i}": e for i, e in enumerate(["walks in.", "flies.", "sings.", "melts."])},
             "label": "0"}]
    (example,) = read_choice_examples(write_table(tmp_path / "swag.csv", rows))
    assert example["text"] == "She opens the door."
    assert example["choices"] == ["She walks in.", "She flies.", "She sings.", "She melts."]
    assert example["label"] == "0"


def test_tfds_source_through_mock_data():
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=6):
        examples = read_sequence_examples("tfds:glue/sst2:train")
        names = tfds.builder("glue/sst2").info.features["label"].names
    assert len(examples) == 6 and examples[0]["origin"] == "tfds:glue/sst2:train#0"
    assert all(isinstance(e["text"], str) and e["label"] in names for e in examples)
    with pytest.raises(ValueError, match="unknown TFDS dataset 'no_such_dataset_xyz'"):
        read_records("tfds:no_such_dataset_xyz")


def test_hf_datasets_sources(tmp_path):
    try:
        import datasets
    except ImportError:
        with pytest.raises(ImportError, match="pip install datasets"):
            read_records("hf:glue:sst2")
        saved = tmp_path / "saved"
        saved.mkdir()
        (saved / "dataset_dict.json").write_text('{"splits": ["train"]}')
        with pytest.raises(ImportError, match="pip install datasets"):
            read_records(saved)
        return
    features = datasets.Features({"sentence": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["neg", "pos"])})
    data = datasets.Dataset.from_dict({"sentence": ["bad", "good"], "label": [0, 1]}, features)
    datasets.DatasetDict({"train": data}).save_to_disk(str(tmp_path / "saved"))
    got = read_sequence_examples(tmp_path / "saved")
    assert [(e["text"], e["label"]) for e in got] == [("bad", "neg"), ("good", "pos")]


# ---- labels ----------------------------------------------------------------------------

def test_label_maps():
    examples = [{"label": x, "origin": f"f:{i}"} for i, x in enumerate(["10", "2", "0", "2"])]
    label_map = label_map_for(examples)
    assert label_map.names == ("0", "2", "10")  # numeric order, as a CSV integer column sorts
    assert label_map.config_fields() == {"num_labels": 3, "id2label": ("0", "2", "10")}
    assert label_map_for([{"label": "b"}, {"label": "a"}]).label2id == {"a": 0, "b": 1}
    # A fine-tuned head keeps its own order; placeholder LABEL_i names do not count.
    assert label_map_for([{"label": "pos"}], checkpoint_names=("pos", "neg")).names == \
        ("pos", "neg")
    assert label_map_for([{"label": "b"}, {"label": "a"}],
                         checkpoint_names=("LABEL_0", "LABEL_1")).names == ("a", "b")
    with pytest.raises(ValueError, match=r"ckpt \(labels x, y, z\) has num_labels=3, but the "
                                         r"task has 2 labels \(a, b\)"):
        label_map_for([{"label": "b"}, {"label": "a"}], checkpoint_names=("x", "y", "z"),
                      checkpoint="ckpt")
    assert label_map_for([{"label": "b"}], names=("a", "b"), checkpoint_names=("x", "y", "z"),
                         replace_checkpoint_labels=True).names == ("a", "b")
    stsb = label_map_for([{"label": "3.8"}, {"label": "5"}])
    assert stsb.regression and stsb.num_labels == 1 and stsb.encode("5", "f:1") == 5.0
    assert is_regression(["1", "0.5"]) and not is_regression(["1", "0"])
    tags = label_map_for([{"tags": ["B-PER", "I-PER", "O", "B-LOC"]}])
    # B-LOC has no I-LOC partner here, so it continues as itself (run_ner's b_to_i_label).
    assert tags.decode(tags.inside_ids()) == ["B-LOC", "I-PER", "I-PER", "O"]


def test_read_label_names(tmp_path):
    (tmp_path / "labels.txt").write_text("neg\n\npos\n")
    assert read_label_names(tmp_path / "labels.txt") == ("neg", "pos")
    (tmp_path / "config.json").write_text(json.dumps({"id2label": {"1": "b", "0": "a"}}))
    assert read_label_names(tmp_path / "config.json") == ("a", "b")
    label_map = LabelMap(read_label_names(tmp_path / "labels.txt"))
    with pytest.raises(ValueError, match=r"ckpt has num_labels=3, but the task has 2 labels"):
        label_map.check_num_labels(3, "ckpt")


# ---- features --------------------------------------------------------------------------

def test_sequences_tokenize_as_the_tokenizer_and_truncate_with_one_warning(wordpiece, caplog):
    examples = [{"text": a, "text_pair": b, "label": str(i % 2), "origin": f"d.csv:{i + 2}"}
                for i, (a, b) in enumerate(PAIRS)]
    label_map = label_map_for(examples)
    with caplog.at_level(logging.WARNING):
        features = encode_sequences(examples, wordpiece, label_map, max_length=9)
    want = wordpiece([a for a, _ in PAIRS], [b for _, b in PAIRS], truncation=True, max_length=9,
                     return_tensors=None)
    assert [f["input_ids"].tolist() for f in features] == want["input_ids"]
    assert [f["token_type_ids"].tolist() for f in features] == want["token_type_ids"]
    assert [int(f["labels"]) for f in features] == [0, 1, 0, 1]
    full = wordpiece([a for a, _ in PAIRS], [b for _, b in PAIRS], return_tensors=None)
    cut = sum(len(ids) > 9 for ids in full["input_ids"])
    warned = [r.getMessage() for r in caplog.records if "truncated" in r.getMessage()]
    assert len(warned) == 1 and warned[0].startswith(f"{cut} of 4 examples (from d.csv)")
    with pytest.raises(ValueError, match=r"^d.csv:\d+: \d+ tokens, more than max_length=9"):
        encode_sequences(examples, wordpiece, max_length=9, overflow="error")


@pytest.mark.parametrize("name", list(KINDS))
def test_word_alignment_matches_transformers_word_ids(tokenizers_dir, name):
    ours = Tokenizer.from_pretrained(tokenizers_dir / name)
    # run_ner loads byte-level BPE with add_prefix_space=True for pre-split words.
    hf = AutoTokenizer.from_pretrained(tokenizers_dir / name,
                                       **({"add_prefix_space": True} if name == "bpe" else {}))
    lines = corpus_lines(40, seed=3)
    examples = [{"words": line.split(), "origin": f"x:{i}"} for i, line in enumerate(lines)]
    tag_names = ("B-X", "I-X", "O")
    for e in examples:
        e["tags"] = [tag_names[len(w) % 3] for w in e["words"]]
    label_map = LabelMap(tag_names)
    for label_all in (False, True):
        features = encode_words(examples, ours, label_map, max_length=24,
                                label_all_subwords=label_all)
        for example, feature in zip(examples, features):
            want = hf(example["words"], is_split_into_words=True, truncation=True, max_length=24)
            word_ids = want.word_ids()
            assert feature["input_ids"].tolist() == want["input_ids"]
            assert feature["word_ids"].tolist() == [-1 if w is None else w for w in word_ids]
            ids = [label_map.encode(t, "") for t in example["tags"]]
            firsts = [t for t, w in enumerate(word_ids)
                      if w is not None and (t == 0 or word_ids[t - 1] != w)]
            assert [feature["labels"][t] for t in firsts] == [ids[word_ids[t]] for t in firsts]
            rest = [t for t in range(len(word_ids)) if t not in firsts]
            for t in rest:
                expect = IGNORE_INDEX if word_ids[t] is None or not label_all else \
                    label_map.inside_ids()[ids[word_ids[t]]]
                assert feature["labels"][t] == expect


def test_align_labels_on_a_hand_example():
    # [CLS] New York ##er [SEP], words New(B-LOC) Yorker(I-LOC); ids B=0, I=1.
    word_ids = [None, 0, 1, 1, None]
    assert align_labels(word_ids, [0, 1]).tolist() == [-100, 0, 1, -100, -100]
    assert align_labels([None, 0, 0], [0], True, np.array([1, 1])).tolist() == [-100, 0, 1]


def test_choices(wordpiece):
    examples = [{"text": "She opens the door.", "choices": ["She walks in.", "She flies."],
                 "label": "1", "origin": "s.csv:2"}]
    (feature,) = encode_choices(examples, wordpiece, max_length=32)
    want = wordpiece(["She opens the door."] * 2, ["She walks in.", "She flies."],
                     return_tensors=None)
    assert [c.tolist() for c in feature["input_ids"]] == want["input_ids"]
    assert int(feature["labels"]) == 1
    with pytest.raises(ValueError, match=r"s.csv:2: label '2' is not a choice index 0..1"):
        encode_choices([{**examples[0], "label": "2"}], wordpiece, max_length=32)


# ---- batching --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def mixed_features(wordpiece):
    rs = np.random.RandomState(0)
    words = corpus_lines(200, seed=5)
    examples = [{"text": " ".join(words[i].split()[:rs.randint(1, 30)]), "label": str(i % 3)}
                for i in range(200)]
    return encode_sequences(examples, wordpiece, label_map_for(examples), max_length=64)


def test_buckets_bound_the_shapes_a_jitted_step_sees(mixed_features, wordpiece):
    import jax
    traces = []

    @jax.jit
    def step(batch):
        traces.append(batch["input_ids"].shape)
        return (batch["input_ids"] * batch["attention_mask"]).sum()

    batches = TaskBatches(mixed_features, 16, max_length=64, pad_id=wordpiece.pad_token_id,
                          buckets=(16, 32), seed=1, repeat=False)
    assert batches.buckets == (16, 32, 64) == default_buckets(64, smallest=16)
    seen = []
    for batch in batches:
        step(batch)
        real = batch["example_index"][batch["example_weights"] > 0]
        seen += real.tolist()
        length = batch["input_ids"].shape[1]
        for row, i in enumerate(real):
            n = len(mixed_features[i]["input_ids"])
            assert length == min(b for b in batches.buckets if b >= n)
            assert batch["input_ids"][row, :n].tolist() == mixed_features[i]["input_ids"].tolist()
            assert batch["labels"][row] == mixed_features[i]["labels"]
        assert batch["input_ids"].shape[0] == 16
    assert sorted(seen) == list(range(len(mixed_features)))  # each once per epoch
    assert len(traces) <= len(batches.buckets)
    assert 0 < batches.real_token_fraction < 1


def test_shuffling_is_seeded_and_resumable(mixed_features):
    def take(it, n):
        return [next(it)["example_index"].tolist() for _ in range(n)]

    def make(**kwargs):
        return TaskBatches(mixed_features, 8, max_length=64, pad_id=0, seed=3, **kwargs)

    first = make()
    per_epoch = len(first.plan(0))
    run = take(first, per_epoch + 5)
    assert run == take(make(), per_epoch + 5)  # deterministic
    assert run[per_epoch:] != run[:5]  # the next epoch is shuffled anew
    lengths = [length for length, _ in first.plan(0)]
    assert len(set(lengths)) > 1 and lengths != sorted(lengths)  # buckets interleaved
    stopped = make()
    take(stopped, per_epoch - 2)
    state = json.loads(json.dumps(stopped.state()))
    assert state["epoch"] == 0 and state["index"] == per_epoch - 2
    assert take(make(state=state), 7) == run[per_epoch - 2:per_epoch + 5]
    with pytest.raises(ValueError, match="seed 3 then, 4 now"):
        TaskBatches(mixed_features, 8, max_length=64, pad_id=0, seed=4, state=state)
    halves = [make(process_index=p, process_count=2) for p in (0, 1)]
    assert [x for h in halves for x in next(h)["example_index"].tolist()] == run[0]


def test_left_padding_token_labels_and_choices(tokenizers_dir):
    xlnet = Tokenizer.from_pretrained(tokenizers_dir / "xlnet")
    examples = [{"words": ["the", "quick", "fox"], "tags": ["O", "B-X", "O"]},
                {"words": ["a"], "tags": ["B-X"]}]
    features = encode_words(examples, xlnet, label_map_for(examples), max_length=16)
    batch = next(TaskBatches(features, 4, max_length=16, pad_id=xlnet.pad_token_id,
                             padding_side=xlnet.padding_side, shuffle=False))
    want = xlnet([" ".join(e["words"]) for e in examples], padding="max_length", max_length=16)
    assert batch["input_ids"][:2].tolist() == want["input_ids"].tolist()
    assert batch["attention_mask"][:2].tolist() == want["attention_mask"].tolist()
    assert (batch["labels"][:, :16 - len(features[0]["input_ids"])] == IGNORE_INDEX).all()
    assert batch["example_weights"].tolist() == [1, 1, 0, 0]
    choices = encode_choices([{"text": "x y", "choices": ["a", "b c", "d"], "label": "2"}] * 3,
                             xlnet, max_length=16)
    longest = max(len(c) for c in choices[0]["input_ids"])
    batch = next(TaskBatches(choices, 4, max_length=32, pad_id=0, buckets=(longest, 16)))
    assert batch["input_ids"].shape == batch["attention_mask"].shape == (4, 3, longest)
    assert batch["attention_mask"][0].sum(-1).tolist() == [len(c) for c in choices[0]["input_ids"]]
    assert batch["labels"].tolist() == [2, 2, 2, 0]


def test_packing_beats_padding_on_short_examples(wordpiece):
    examples = [{"text": t, "label": str(len(t) % 2)} for t in
                ["a cat", "the dog runs", "hello", "quick brown fox jumps", "ok"] * 20]
    features = encode_sequences(examples, wordpiece, label_map_for(examples), max_length=64)
    padded = TaskBatches(features, 8, max_length=64, pad_id=0, buckets=(64,), repeat=False)
    packed = TaskBatches(features, 8, max_length=64, pad_id=0, pack=True, max_per_row=12,
                         repeat=False)
    list(padded)
    seen = []
    for batch in packed:
        assert batch["input_ids"].shape == (8, 64) and batch["example_index"].shape == (8, 12)
        for row, slot in zip(*np.nonzero(batch["example_weights"])):
            i, start = batch["example_index"][row, slot], batch["example_positions"][row, slot]
            n = batch["example_lengths"][row, slot]
            assert batch["input_ids"][row, start:start + n].tolist() == \
                features[i]["input_ids"].tolist()
            assert (batch["segment_ids"][row, start:start + n] == slot + 1).all()
            assert batch["labels"][row, slot] == features[i]["labels"]
            seen.append(int(i))
    assert sorted(seen) == list(range(len(features)))
    assert packed.real_token_fraction > 2 * padded.real_token_fraction


# ---- bad input: one line naming the file and the problem --------------------------------

def bad_input_cases(tmp_path):
    def file(name, content):
        path = tmp_path / name
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        return path

    seen = label_map_for([{"label": "pos"}, {"label": "neg"}])
    return {
        "missing column": (lambda: read_sequence_examples(file("a.csv", "sentence\nhello\n")),
                           r"a.csv:2: no column 'label'; the columns are \['sentence'\]"),
        "missing column later": (
            lambda: read_sequence_examples(file("b.jsonl", '{"text": "x", "label": 1}\n'
                                                           '{"text": "y"}\n')),
            r"b.jsonl:2: no column 'label'; the columns are \['text'\]"),
        "empty csv": (lambda: read_records(file("c.csv", "")), r"c.csv is empty"),
        "empty jsonl": (lambda: read_records(file("d.jsonl", "\n")), r"d.jsonl is empty"),
        "header only": (lambda: read_records(file("e.tsv", "sentence\tlabel\n")),
                        r"e.tsv holds no examples"),
        "empty conll": (lambda: read_conll(file("f.conll", "-DOCSTART- O\n\n")),
                        r"f.conll holds no tokens"),
        "conll columns": (lambda: read_conll(file("g.conll", "EU B-ORG\nrejects\n")),
                          r"g.conll:2: expected 2 columns, got 1"),
        "csv columns": (lambda: read_records(file("h.csv", "text,label\nx,1,2\n")),
                        r"h.csv:2: expected 2 columns \(text, label\), got 3"),
        "not utf-8": (lambda: read_records(file("i.csv", b"text,label\n\xff\xfe,1\n")),
                      r"i.csv is not UTF-8 text"),
        "bad json": (lambda: read_records(file("j.jsonl", '{"text": "x"}\n{"text": \n')),
                     r"j.jsonl:2: not valid JSON"),
        "unseen label": (lambda: seen.encode("neutral", "dev.tsv:7"),
                         r"dev.tsv:7: label 'neutral' was not seen in training; known labels: "
                         r"neg, pos"),
        "unseen label in a file": (
            lambda: encode_sequences(read_sequence_examples(file("k.csv", "text,label\na,pos\n"
                                                                          "b,meh\n")),
                                     Tokenizer.from_pretrained(tmp_path / "wp"), seen,
                                     max_length=8),
            r"k.csv:3: label 'meh' was not seen in training"),
        "regression label": (lambda: LabelMap(regression=True).encode("high", "s.tsv:3"),
                             r"s.tsv:3: label 'high' is not a finite number"),
        "unknown format": (lambda: read_records(file("l.xml", "<a/>")),
                           r"l.xml: unknown table format '.xml'"),
        "repeated label name": (lambda: read_label_names(file("m.txt", "a\nb\na\n")),
                                r"m.txt:3: label 'a' repeats line 1"),
        "token tags": (lambda: read_token_examples(file("n.jsonl", '{"tokens": ["a", "b"], '
                                                                   '"ner_tags": ["O"]}\n')),
                       r"n.jsonl:1: column 'ner_tags' must hold one tag per word \(2\)"),
        "too few endings": (lambda: read_choice_examples(file("o.csv", "sent1,sent2,ending0,label"
                                                                       "\na,b,c,0\n")),
                            r"o.csv:2: multiple choice needs columns ending0, ending1"),
    }


def test_bad_input_gives_one_clear_line(tmp_path, tokenizers_dir):
    os.symlink(tokenizers_dir / "wordpiece", tmp_path / "wp")
    for name, (call, message) in bad_input_cases(tmp_path).items():
        with pytest.raises(ValueError) as info:
            call()
        text = str(info.value)
        assert "\n" not in text and re.search(message, text), f"{name}: {text}"
