"""SQuAD data: read_squad's sources and refusals, and encode_qa's windowed features against
transformers' run_qa preprocessing (done here with AutoTokenizer on the same directories) for
WordPiece, byte-level BPE (trimmed and untrimmed offsets) and the SentencePiece conventions."""
import os

# Before transformers / huggingface_hub are imported: never touch the network.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import json
import logging
import re
import shutil
import sys
import types

import numpy as np
import pytest
from transformers import AutoTokenizer

from flaxbert.tasks import encode_qa, read_squad
from flaxbert.tokenizer import Tokenizer
from flaxbert.tokenizer_training import train_tokenizer
from tokenizer_cases import corpus_lines

MAX_SEQ, STRIDE, MAX_QUERY = 48, 12, 16
CONTEXT = ("The café (in Zürich) served ☃ snowmen, 東京 sushi and naïve crème brûlée to "
           "visitors. In 1998, the owner—Ana—opened a second shop in São Paulo; it sold "
           "“hot” chocolate, 中文 books and ½ price tea! Later, snow fell on the roof of the "
           "café, and the snowman ☃ melted by March 3rd.")
# (question, answer, which occurrence): answers next to punctuation, accents, ☃ and CJK, at
# the context's first and last characters; "" asks an unanswerable question.
CASES = [("  Where is the café?", "Zürich", 0), ("What was served?", "☃ snowmen", 0),
         ("Which city?", "東京", 0), ("Dessert?", "crème brûlée", 0), ("When?", "1998", 0),
         ("Who opened it?", "Ana", 0), ("Where was the second shop?", "São Paulo", 0),
         ("What was hot?", "“hot” chocolate", 0), ("Which books?", "中文", 0),
         ("How much was tea?", "½ price tea!", 0), ("What fell?", "snow", 1),
         ("First word?", "The", 0), ("Last words?", "March 3rd.", 0),
         ("What melted?", "the snowman ☃", 0), ("Is it open on the moon?", "", 0),
         ("a question that goes on and on with many words about the café in Zürich and the "
          "snowman who melted in March", "café", 1)]
KINDS = ["wordpiece", "bpe", "bpe-untrimmed", "albert", "deberta", "xlnet"]


def occurrence(text, part, n):
    start = -1
    for _ in range(n + 1):
        start = text.index(part, start + 1)
    return start


def squad_examples():
    examples = []
    for i, (question, answer, n) in enumerate(CASES):
        answers = {"text": [answer], "answer_start": [occurrence(CONTEXT, answer, n)]} \
            if answer else {"text": [], "answer_start": []}
        examples.append({"id": f"q{i}", "question": question, "context": CONTEXT,
                         "answers": answers, "origin": f"cases.json:q{i}"})
    return examples


# ---- tokenizers -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tokenizer_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("qa_tokenizers")
    corpus = root / "corpus.txt"
    corpus.write_text("\n".join(corpus_lines(300) + [CONTEXT] * 3), encoding="utf-8")
    dirs = {}
    for name, kind, style in [("wordpiece", "wordpiece", None), ("bpe", "bpe", None),
                              ("albert", "sentencepiece", "albert"),
                              ("deberta", "sentencepiece", "deberta"),
                              ("xlnet", "sentencepiece", "xlnet")]:
        train_tokenizer([corpus], root / name, kind, 500, style=style)
        dirs[name] = root / name
    # RoBERTa from its vocabulary files with offsets that keep the leading space ("Ġword").
    untrimmed = root / "bpe-untrimmed"
    untrimmed.mkdir()
    for f in ("vocab.json", "merges.txt"):
        shutil.copy(dirs["bpe"] / f, untrimmed)
    (untrimmed / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "RobertaTokenizer", "add_prefix_space": True, "trim_offsets": False}))
    dirs["bpe-untrimmed"] = untrimmed
    return dirs


def cut_question(hf, question):
    """The question cut where its token MAX_QUERY + 1 starts, as encode_qa documents it."""
    while True:
        tokens = hf(question, add_special_tokens=False, return_offsets_mapping=True)
        if len(tokens["input_ids"]) <= MAX_QUERY:
            return question
        question = question[:min(tokens["offset_mapping"][MAX_QUERY][0], len(question) - 1)]


def run_qa_features(hf, examples):
    """transformers' run_qa prepare_train_features + prepare_validation_features on unpadded
    windows; its start / end loops stay inside the window's context (run_qa's own can walk on
    into the padding or, context first, into the question when the answer starts at the
    window's last context token)."""
    pad_on_right = hf.padding_side == "right"
    questions = [cut_question(hf, e["question"].lstrip()) for e in examples]
    contexts = [e["context"] for e in examples]
    tokenized = hf(questions if pad_on_right else contexts, contexts if pad_on_right else questions,
                   truncation="only_second" if pad_on_right else "only_first",
                   max_length=MAX_SEQ, stride=STRIDE, return_overflowing_tokens=True,
                   return_offsets_mapping=True, return_token_type_ids=True, padding=False)
    context_index = 1 if pad_on_right else 0
    out = []
    for i, offsets in enumerate(tokenized["offset_mapping"]):
        input_ids = tokenized["input_ids"][i]
        cls_index = input_ids.index(hf.cls_token_id)
        sequence_ids = tokenized.sequence_ids(i)
        answers = examples[tokenized["overflow_to_sample_mapping"][i]]["answers"]
        start = end = cls_index
        if answers["answer_start"]:
            start_char = answers["answer_start"][0]
            end_char = start_char + len(answers["text"][0])
            token_start = 0
            while sequence_ids[token_start] != context_index:
                token_start += 1
            token_end = len(input_ids) - 1
            while sequence_ids[token_end] != context_index:
                token_end -= 1
            if offsets[token_start][0] <= start_char and offsets[token_end][1] >= end_char:
                first, last = token_start, token_end
                while token_start <= last and offsets[token_start][0] <= start_char:
                    token_start += 1
                start = token_start - 1
                while token_end >= first and offsets[token_end][1] >= end_char:
                    token_end -= 1
                end = token_end + 1
        masked = [o if sequence_ids[k] == context_index else (-1, -1)
                  for k, o in enumerate(offsets)]
        out.append(dict(sample=tokenized["overflow_to_sample_mapping"][i], input_ids=input_ids,
                        token_type_ids=tokenized["token_type_ids"][i], start=start, end=end,
                        offsets=masked, cls_index=cls_index))
    return out


@pytest.fixture(scope="module", params=KINDS)
def encoded(request, tokenizer_dirs):
    directory = tokenizer_dirs[request.param]
    ours, hf = Tokenizer.from_pretrained(directory), AutoTokenizer.from_pretrained(directory)
    examples = squad_examples()
    features, windows = encode_qa(examples, ours, max_seq_length=MAX_SEQ, doc_stride=STRIDE,
                                  max_query_length=MAX_QUERY)
    return request.param, examples, features, windows, run_qa_features(hf, examples)


def test_features_equal_run_qa(encoded):
    kind, examples, features, windows, expected = encoded
    assert len(features) == len(windows) == len(expected) > 2 * len(examples)  # several windows
    for feature, window, want in zip(features, windows, expected):
        where = f"{kind} example {window.example_index}"
        assert window.example_index == want["sample"], where
        np.testing.assert_array_equal(feature["input_ids"], want["input_ids"], err_msg=where)
        np.testing.assert_array_equal(feature["token_type_ids"], want["token_type_ids"],
                                      err_msg=where)
        assert feature["input_ids"].dtype == feature["token_type_ids"].dtype == np.int32
        assert (int(feature["start_positions"]), int(feature["end_positions"])) == \
            (want["start"], want["end"]), where
        assert feature["start_positions"].dtype == np.int32
        np.testing.assert_array_equal(window.offsets, np.asarray(want["offsets"]), err_msg=where)
        assert window.offsets.shape == (len(feature["input_ids"]), 2)
        assert window.cls_index == want["cls_index"], where
    cls_last = kind == "xlnet"
    assert all((w.cls_index == len(f["input_ids"]) - 1) == cls_last
               for f, w in zip(features, windows))


def test_answer_windows_spell_the_answer(encoded):
    kind, examples, features, windows, _ = encoded
    found = set()
    for feature, window in zip(features, windows):
        start, end = int(feature["start_positions"]), int(feature["end_positions"])
        example = examples[window.example_index]
        if start == window.cls_index:
            assert end == start
            continue
        span = example["context"][window.offsets[start][0]:window.offsets[end][1]]
        # Offsets that keep a word's leading space (SentencePiece "▁", untrimmed "Ġ") make
        # the span start with it; run_qa's answers are compared with whitespace normalised.
        assert span.strip() == example["answers"]["text"][0], (kind, example["id"], span)
        assert start <= end
        found.add(example["id"])
    answerable = {e["id"] for e in examples if e["answers"]["text"]}
    assert found == answerable  # every answer, shorter than the stride, is in some window


def test_question_cut_and_windows(encoded, tokenizer_dirs, caplog):
    kind, examples, features, windows, _ = encoded
    ours = Tokenizer.from_pretrained(tokenizer_dirs[kind])
    hf = AutoTokenizer.from_pretrained(tokenizer_dirs[kind])
    long = [e["id"] for e in examples
            if len(hf(e["question"].lstrip(), add_special_tokens=False)["input_ids"]) > MAX_QUERY]
    assert f"q{len(CASES) - 1}" in long
    with caplog.at_level(logging.WARNING, logger="flaxbert.tasks.qa"):
        encode_qa(examples, ours, max_seq_length=MAX_SEQ, doc_stride=STRIDE,
                  max_query_length=MAX_QUERY)
    cut = [r for r in caplog.records if "max_query_length" in r.getMessage()]
    assert len(cut) == 1 and f"{len(long)} of {len(CASES)} questions" in cut[0].getMessage()
    assert cut[0].getMessage().endswith(f"the first: cases.json:{long[0]}")
    assert max(len(f["input_ids"]) for f in features) == MAX_SEQ
    with pytest.raises(ValueError, match=rf"cases.json:{long[0]}: the question has \d+ "
                                         rf"tokens, more than max_query_length=16"):
        encode_qa(examples, ours, max_seq_length=MAX_SEQ, doc_stride=STRIDE,
                  max_query_length=MAX_QUERY, overflow="error")
    unlabelled, same = encode_qa([{k: v for k, v in e.items() if k != "answers"}
                                  for e in examples], ours, max_seq_length=MAX_SEQ,
                                 doc_stride=STRIDE, max_query_length=MAX_QUERY, labelled=False)
    assert "start_positions" not in unlabelled[0]
    assert [w.example_index for w in same] == [w.example_index for w in windows]


def test_doc_stride_must_leave_room(tokenizer_dirs):
    ours = Tokenizer.from_pretrained(tokenizer_dirs["wordpiece"])
    with pytest.raises(ValueError, match="max_seq_length=48 leaves 13 context tokens .* not "
                                         "more than doc_stride=13"):
        encode_qa(squad_examples(), ours, max_seq_length=48, doc_stride=13, max_query_length=32)
    with pytest.raises(ValueError, match="cases.json:q0: the example has no 'answers'"):
        encode_qa([{"question": "q", "context": "c", "origin": "cases.json:q0"}], ours)


# ---- reading ----------------------------------------------------------------------------
def nested_squad(version="v1.1"):
    paragraphs = [{"context": CONTEXT, "qas": [
        {"id": "a1", "question": "Where is the café?",
         "answers": [{"text": "Zürich", "answer_start": CONTEXT.index("Zürich")},
                     {"text": "in Zürich", "answer_start": CONTEXT.index("in Zürich")}]},
        {"id": "a2", "question": "Which city?",
         "answers": [{"text": "東京", "answer_start": CONTEXT.index("東京")}]}]}]
    if version == "v2.0":
        paragraphs[0]["qas"].append(
            {"id": "a3", "question": "On the moon?", "answers": [], "is_impossible": True,
             "plausible_answers": [{"text": "roof", "answer_start": CONTEXT.index("roof")}]})
    return {"version": version, "data": [{"title": "Café", "paragraphs": paragraphs}]}


def write_json(path, value):
    path.write_text(json.dumps(value, ensure_ascii=False), encoding="utf-8")
    return path


class HubRows(list):
    """What datasets.load_dataset(..., split=) returns, as far as the readers look."""
    features = {k: object() for k in ("title", "id", "question", "context", "answers")}


def flat_rows():
    return [{k: e[k] for k in ("id", "question", "context", "answers")} for e in squad_examples()]


def test_read_nested_squad(tmp_path):
    v1 = read_squad(write_json(tmp_path / "train-v1.1.json", nested_squad()))
    assert [e["id"] for e in v1] == ["a1", "a2"]
    assert v1[0]["answers"] == {"text": ["Zürich", "in Zürich"],
                                "answer_start": [CONTEXT.index("Zürich"), CONTEXT.index("in Zürich")]}
    assert v1[1]["origin"] == f"{tmp_path / 'train-v1.1.json'}:a2"
    assert v1[0]["context"] == CONTEXT and v1[0]["question"] == "Where is the café?"
    v2 = read_squad(write_json(tmp_path / "dev-v2.0.json", nested_squad("v2.0")))
    assert v2[2]["id"] == "a3" and v2[2]["answers"] == {"text": [], "answer_start": []}


def test_read_flat_json_jsonl_tfds_and_hub(tmp_path, monkeypatch):
    rows = flat_rows()
    jsonl = tmp_path / "train.jsonl"
    jsonl.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows), encoding="utf-8")
    from_jsonl = read_squad(jsonl)
    from_json = read_squad(write_json(tmp_path / "train.json", {"data": rows}))
    expected = [{**r, "origin": f"{jsonl}:{r['id']}"} for r in rows]
    assert from_jsonl == expected
    assert [e["answers"] for e in from_json] == [r["answers"] for r in rows]
    # tfds hands back bytes and numpy arrays, answers as a dict of arrays.
    fake = types.ModuleType("tensorflow_datasets")
    records = [{"id": r["id"].encode(), "title": b"Caf\xc3\xa9", "question": r["question"].encode(),
                "context": r["context"].encode(),
                "answers": {"text": np.array([t.encode() for t in r["answers"]["text"]], object),
                            "answer_start": np.array(r["answers"]["answer_start"], np.int32)}}
               for r in rows]
    builder = types.SimpleNamespace(
        info=types.SimpleNamespace(features={k: object() for k in records[0]}),
        as_dataset=lambda split, shuffle_files: records if split == "validation" else [],
        data_dir=str(tmp_path))
    fake.builder = lambda name: builder
    fake.as_numpy = lambda dataset: iter(dataset)
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", fake)
    from_tfds = read_squad("tfds:squad/v1.1:validation")
    assert [{k: e[k] for k in rows[0]} for e in from_tfds] == rows
    assert from_tfds[0]["origin"] == "tfds:squad/v1.1:validation:q0"
    # datasets' squad rows: answers a dict of lists, a title column besides.
    fake = types.ModuleType("datasets")
    loaded = []

    def load_dataset(name, config, split):
        loaded.append((name, config, split))
        return HubRows([{"title": "Café", **r} for r in rows])
    fake.load_dataset = load_dataset
    monkeypatch.setitem(sys.modules, "datasets", fake)
    from_hf = read_squad("hf:squad", split="validation")
    assert loaded == [("squad", None, "validation")]
    assert [{k: e[k] for k in rows[0]} for e in from_hf] == rows
    assert from_hf[-1]["origin"] == f"hf:squad[validation]:q{len(rows) - 1}"


def test_read_saved_dataset(tmp_path):
    datasets = pytest.importorskip("datasets")
    datasets.Dataset.from_list(flat_rows()).save_to_disk(str(tmp_path / "squad"))
    examples = read_squad(f"{tmp_path / 'squad'}")
    assert [{k: e[k] for k in flat_rows()[0]} for e in examples] == flat_rows()


def test_mismatched_answers(tmp_path, caplog):
    squad = nested_squad("v2.0")
    qas = squad["data"][0]["paragraphs"][0]["qas"]
    qas[0]["answers"][1]["answer_start"] += 1          # a1 keeps its other answer
    qas[1]["answers"][0]["text"] = "京都"                # a2 has none left: dropped
    qas.append({"id": "a4", "question": "Past the end?",
                "answers": [{"text": "roof", "answer_start": len(CONTEXT)}]})
    path = write_json(tmp_path / "dev.json", squad)
    with caplog.at_level(logging.WARNING, logger="flaxbert.tasks.qa"):
        skipped = read_squad(path)
    assert [e["id"] for e in skipped] == ["a1", "a3"]
    assert skipped[0]["answers"]["text"] == ["Zürich"]
    assert skipped[1]["answers"]["text"] == []  # unanswerable as written, not by skipping
    assert len(caplog.records) == 1
    message = caplog.records[0].getMessage()
    assert message.startswith(f"3 answers in {path} do not match") and "a1, a2, a4" in message
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="flaxbert.tasks.qa"):
        kept = read_squad(path, on_mismatch="keep")
    assert [len(e["answers"]["text"]) for e in kept] == [2, 1, 0, 1]
    assert len(caplog.records) == 1 and "were kept" in caplog.records[0].getMessage()
    with pytest.raises(ValueError, match=rf"^{path}:a1: answer 'in Zürich' does not match"):
        read_squad(path, on_mismatch="error")


def test_bad_squad_files(tmp_path):
    def refused(name, value, match):
        path = tmp_path / name
        path.write_text(value if isinstance(value, str) else json.dumps(value), encoding="utf-8")
        with pytest.raises(ValueError, match=match.format(path=re.escape(str(path)))):
            read_squad(path)

    squad = nested_squad()
    squad["data"][0]["paragraphs"][0]["qas"][1]["question"] = "   "
    refused("empty_question.json", squad, "^{path}:a2: empty question$")
    squad = nested_squad()
    squad["data"][0]["paragraphs"][0]["context"] = ""
    refused("empty_context.json", squad, "^{path}:a1: empty context$")
    squad = nested_squad()
    squad["data"][0]["paragraphs"][0]["qas"][1]["id"] = "a1"
    refused("duplicate.json", squad, r"^{path}:a1: duplicate id 'a1' \(first at ")
    squad = nested_squad()
    del squad["data"][0]["paragraphs"][0]["qas"][1]["question"]
    refused("no_question.json", squad, "^{path}:a2: no field 'question'")
    refused("broken.json", '{"data": [\n  {"paragraphs": [}\n]}',
            r"^{path}:2:19: not valid JSON \(Expecting value\)$")
    rows = flat_rows()
    del rows[3]["answers"]
    refused("no_answers.json", rows, "^{path}:q3: no field 'answers'")
    rows = flat_rows()
    rows[1]["context"] = "\n"
    refused("rows.jsonl", "\n".join(json.dumps(r) for r in rows), "^{path}:q1: empty context$")
    with pytest.raises(ValueError, match="on_mismatch='drop'"):
        read_squad(tmp_path / "rows.jsonl", on_mismatch="drop")


def test_a_transformers_tokenizer_that_pads_is_neither_changed_nor_hangs(minilm_dir):
    """MiniLM's tokenizer.json pads every encoding to 128: encode_qa must read the unpadded
    pipeline (a question cut to max_query_length used to loop forever) and leave the caller's
    tokenizer as it was."""
    import transformers

    from flaxbert.tasks.qa import encode_qa
    hf = transformers.AutoTokenizer.from_pretrained(minilm_dir)
    before = hf.backend_tokenizer.to_str()
    context = "the river runs past the old mill and on to the sea. " * 12
    examples = [{"id": "q", "question": "where does the river run " * 8, "context": context,
                 "answers": {"text": ["the sea"], "answer_start": [context.index("the sea")]},
                 "origin": "t:q"}]
    features, windows = encode_qa(examples, hf, max_seq_length=64, doc_stride=16,
                                  max_query_length=8)
    assert len(features) > 1 and all(len(f["input_ids"]) <= 64 for f in features)
    assert hf.backend_tokenizer.to_str() == before
