"""flaxbert.data.prepare: NSP / SOP / full-sentences sequences are what they claim to be, the
output does not depend on the worker count, the manifest is right, bad input fails clearly."""
import argparse
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest

from data_cases import (as_text, corpus_file, document_streams, english_documents, prepared,
                        read_records, trained_tokenizer)
from flaxbert.data.prepare import (Template, add_prepare_parser, prepare, read_manifest,
                                   split_sentences, tokenizer_fingerprint)
from flaxbert.tokenizer import Tokenizer


def _pairs(records, tok):
    """(A, B, label) of BERT-template records, checking the special tokens on the way."""
    out = []
    for r in records:
        ids, types = r["input_ids"], r["token_type_ids"]
        n_a = int((types == 0).sum())
        assert ids[0] == tok.cls_token_id and ids[n_a - 1] == tok.sep_token_id == ids[-1]
        assert (types[n_a:] == 1).all() and len(ids) <= 64
        out.append((ids[1:n_a - 1], ids[n_a:-1], int(r["pair_label"][0])))
    return out


def _docs_with(streams, segment):
    text = as_text(segment)
    return {d for d, s in enumerate(streams) if text in s}


def _follows(stream, first, second):
    """Whether `second` occurs in `stream` after an occurrence of `first`."""
    start = stream.find(as_text(first))
    return start >= 0 and stream.find(as_text(second), start + len(as_text(first)) - 1) >= 0


def test_nsp_isnext_continues_a_and_notnext_comes_from_another_document(minilm_dir):
    tok = Tokenizer.from_pretrained(minilm_dir)
    pairs = _pairs(read_records(prepared(minilm_dir, "nsp")), tok)
    streams = document_streams(minilm_dir)
    labels = np.array([label for _, _, label in pairs])
    # Google's recipe leans to NotNext (1): a document too short for a second segment can only
    # pair with another document's, and this corpus's documents are short (0.63 here).
    assert len(pairs) > 300 and 0.4 < labels.mean() < 0.68
    unique = 0
    for a, b, label in pairs:
        homes, b_homes = _docs_with(streams, a), _docs_with(streams, b)
        assert homes and b_homes, "A or B is not a contiguous piece of any document"
        if label == 0:
            assert any(_follows(streams[d], a, b) for d in homes)
        elif len(homes) == 1:  # A's document is known: B must come from another one
            unique += 1
            assert b_homes - homes, "NotNext B found only in A's own document"
    assert unique > 0.8 * labels.sum()


def test_sop_pairs_are_in_order_or_swapped(minilm_dir):
    tok = Tokenizer.from_pretrained(minilm_dir)
    pairs = _pairs(read_records(prepared(minilm_dir, "sop")), tok)
    streams = document_streams(minilm_dir)
    labels = np.array([label for _, _, label in pairs])
    assert len(pairs) > 200 and 0.4 < labels.mean() < 0.6
    for a, b, label in pairs:
        first, second = (a, b) if label == 0 else (b, a)
        assert any(_follows(streams[d], first, second) for d in _docs_with(streams, first))


def test_full_sentences_fill_sequences_with_whole_sentences_across_documents(minilm_dir):
    tok = Tokenizer.from_pretrained(minilm_dir)
    records = read_records(prepared(minilm_dir, "full-sentences", validation_fraction=0.0))
    sep = tok.sep_token_id
    docs = [[ids for ids in tok(split_sentences(doc), add_special_tokens=False,
                                return_tensors=None)["input_ids"]]
            for doc in english_documents()]
    stream = as_text([t for i, doc in enumerate(docs)
                      for t in ([sep] if i else []) + [t for s in doc for t in s]])
    longest_sentence = max(len(s) for doc in docs for s in doc)
    budget = 64 - 2
    contents = []
    for r in records:
        ids = r["input_ids"]
        assert ids[0] == tok.cls_token_id and ids[-1] == sep and not r["token_type_ids"].any()
        assert "pair_label" not in r and len(ids) <= 64
        contents.append(ids[1:-1])
        assert as_text(ids[1:-1]) in stream, "a sequence is not a contiguous piece of the corpus"
    # Nothing lost: every corpus token is in exactly one sequence.
    assert sum(int((c != sep).sum()) for c in contents) == sum(len(s) for d in docs for s in d)
    # Full: a sequence ends only when the next sentence does not fit (one last remainder).
    assert sum(len(c) < budget - longest_sentence - 1 for c in contents) <= 1
    assert np.mean([len(c) for c in contents]) > 0.75 * budget
    assert sum(sep in c for c in contents) > 10  # sequences run on across documents


def test_output_is_byte_identical_for_any_worker_count(minilm_dir, tmp_path):
    def run(name, workers, seed=0):
        out = tmp_path / name
        prepare([corpus_file()], out, minilm_dir, mode="nsp", max_seq_length=64, num_shards=3,
                workers=workers, seed=seed, chunk_documents=60, dupe_factor=2)
        return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}

    one, two = run("one", 1), run("two", 2)
    assert one.keys() == two.keys() and len(one) >= 8
    for name in one:
        assert one[name] == two[name], name
    other_seed = run("seed1", 1, seed=1)
    assert other_seed["train-00000-of-00003.tfrecord"] != one["train-00000-of-00003.tfrecord"]


def test_manifest_counts_and_tokenizer_copy(minilm_dir):
    out = Path(prepared(minilm_dir, "nsp", validation_fraction=0.05))
    manifest = json.loads((out / "manifest.json").read_text())
    n_docs = len(english_documents())
    splits = manifest["splits"]
    assert splits["validation"]["documents"] == math.ceil(n_docs * 0.05)
    assert splits["train"]["documents"] + splits["validation"]["documents"] == n_docs
    for split, info in splits.items():
        records = read_records(out, split)
        assert len(records) == info["sequences"] == sum(info["shard_sequences"]) > 0
        assert info["tokens"] == sum(len(r["input_ids"]) for r in records)
        assert all((out / name).is_file() for name in info["shards"])
    assert len(splits["train"]["shards"]) == 4 and len(splits["validation"]["shards"]) == 1
    original, copy = Tokenizer.from_pretrained(minilm_dir), Tokenizer.from_pretrained(out / "tokenizer")
    tokenizer = manifest["tokenizer"]
    assert tokenizer["sha256"] == tokenizer_fingerprint(original) == tokenizer_fingerprint(copy)
    assert tokenizer["kind"] == "wordpiece" and tokenizer["vocab_size"] == original.vocab_size
    assert tokenizer["special_ids"]["mask"] == original.mask_token_id
    assert set(tokenizer["all_special_ids"]) >= {original.cls_token_id, original.pad_token_id}
    assert manifest["mode"] == "nsp" and manifest["max_seq_length"] == 64
    assert manifest["format_version"] == 1 and manifest["seed"] == 0


@pytest.mark.parametrize("style,mode", [("bpe", "nsp"), ("xlnet", "full-sentences")])
def test_tokenizers_place_their_own_special_tokens(style, mode):
    tokenizer_dir = trained_tokenizer("bpe") if style == "bpe" else trained_tokenizer("sentencepiece", style)
    tok = Tokenizer.from_pretrained(tokenizer_dir)
    records = read_records(prepared(tokenizer_dir, mode))
    assert records
    template = Template.of(tok)
    for r in records:
        ids, types = r["input_ids"].tolist(), r["token_type_ids"].tolist()
        if style == "bpe":  # RoBERTa: <s> A </s></s> B </s>, all type 0
            cls, sep = tok.cls_token_id, tok.sep_token_id
            assert ids[0] == cls and ids[-1] == sep and not any(types)
            assert any(ids[i:i + 2] == [sep, sep] for i in range(1, len(ids) - 2))
        else:  # XLNet: A <sep> <cls>, the <cls> with type 2 at the end
            assert ids[-2:] == [tok.sep_token_id, tok.cls_token_id] and types[-1] == 2
            assert set(types[:-1]) == {0}
    assert template.num_special(pair=True) == (4 if style == "bpe" else 3)


def test_tfds_corpus_through_mock_data(minilm_dir, tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=12):
        texts = [t.decode() for t in tfds.builder("wikipedia/20230601.en").as_dataset(
            split="train").map(lambda x: x["text"]).as_numpy_iterator()]
        manifest = prepare(["tfds:wikipedia/20230601.en"], tmp_path / "wiki", minilm_dir,
                           mode="full-sentences", num_shards=2, workers=1, validation_fraction=0.1)
        with pytest.raises(ValueError, match="no feature 'body'.*'text'"):
            prepare(["tfds:wikipedia/20230601.en"], tmp_path / "x", minilm_dir,
                    mode="nsp", text_feature="body")
    documents = sum(s["documents"] for s in manifest["splits"].values())
    assert documents == sum(bool(split_sentences(t)) for t in texts) > 0
    assert manifest["settings"]["inputs"] == ["tfds:wikipedia/20230601.en"]
    with pytest.raises(ValueError, match="unknown TFDS dataset"):
        prepare(["tfds:no_such_dataset_xyz"], tmp_path / "y", minilm_dir, mode="nsp")


def test_directories_globs_and_document_boundaries(minilm_dir, tmp_path):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    docs = english_documents()
    (src / "a.txt").write_text("\n\n".join(docs[:5]))
    (src / "sub" / "b.txt").write_text("\n\n\n".join(docs[5:9]))
    (src / "ignored.md").write_text(docs[10])

    def documents(inputs, **kwargs):
        m = prepare(inputs, tmp_path / "out", minilm_dir, mode="full-sentences", workers=1,
                    validation_fraction=0.0, num_shards=1, overwrite=True, **kwargs)
        return m["splits"]["train"]["documents"]

    assert documents([src]) == 9
    assert documents([src], doc_per_file=True) == 2
    assert documents([str(src / "**" / "*.txt")]) == 9
    assert documents([src / "a.txt"], max_documents=3) == 3


def test_bad_inputs_fail_clearly(minilm_dir, tmp_path):
    corpus = corpus_file()
    kwargs = dict(mode="nsp", workers=1)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        prepare([tmp_path / "missing.txt"], tmp_path / "o", minilm_dir, **kwargs)
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(FileNotFoundError, match=r"no \*\.txt"):
        prepare([tmp_path / "empty_dir"], tmp_path / "o", minilm_dir, **kwargs)
    with pytest.raises(FileNotFoundError, match="no files match"):
        prepare([str(tmp_path / "*.nothing")], tmp_path / "o", minilm_dir, **kwargs)
    blank = tmp_path / "blank.txt"
    blank.write_text("\n  \n\n")
    with pytest.raises(ValueError, match="empty corpus"):
        prepare([blank], tmp_path / "o", minilm_dir, **kwargs)
    assert not (tmp_path / "o").exists() and not list(tmp_path.glob(".o.tmp-*"))
    for bad, match in ((dict(mode="mlm"), "unknown mode"),
                       (dict(mode="nsp", max_seq_length=3), "max_seq_length"),
                       (dict(mode="nsp", validation_fraction=1.0), "validation_fraction"),
                       (dict(mode="nsp", short_seq_prob=-0.1), "short_seq_prob"),
                       (dict(mode="nsp", workers=0), "workers")):
        with pytest.raises(ValueError, match=match):
            prepare([corpus], tmp_path / "o", minilm_dir, **bad)
    existing = Path(prepared(minilm_dir, "sop"))
    with pytest.raises(FileExistsError, match="overwrite"):
        prepare([corpus], existing, minilm_dir, **kwargs)
    assert json.loads((existing / "manifest.json").read_text())["mode"] == "sop"


def test_read_manifest_refuses_mixed_tokenizers_and_modes(minilm_dir, tmp_path):
    bert = prepared(minilm_dir, "nsp")
    other = prepared(trained_tokenizer("wordpiece"), "nsp")
    with pytest.raises(ValueError, match=f"{bert}.*{other}.*different tokenizers"):
        read_manifest([bert, other])
    with pytest.raises(ValueError, match="cannot be mixed"):
        read_manifest([bert, prepared(minilm_dir, "sop")])
    with pytest.raises(FileNotFoundError, match="manifest.json"):
        read_manifest([tmp_path])
    reseeded = prepared(minilm_dir, "nsp", seed=3)
    both = read_manifest([bert, reseeded])
    assert both["files"]["train"][:4] == read_manifest(bert)["files"]["train"]
    assert len(both["files"]["train"]) == 8 and both["tokenizer_dir"] == f"{bert}/tokenizer"
    assert both["sequences"]["train"] == sum(read_manifest(d)["sequences"]["train"]
                                             for d in (bert, reseeded))


def test_prepare_command(minilm_dir, tmp_path):
    parser = argparse.ArgumentParser()
    add_prepare_parser(parser.add_subparsers(dest="command"))
    out = tmp_path / "cli"
    args = parser.parse_args(["prepare", corpus_file(), "--out", str(out), "--tokenizer", str(minilm_dir),
                              "--mode", "sop", "--num-shards", "2", "--workers", "1",
                              "--max-seq-length", "96", "--seed", "5"])
    args.run(args)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["mode"] == "sop" and manifest["seed"] == 5 and manifest["max_seq_length"] == 96
    assert sorted(os.listdir(out)) == sorted(["manifest.json", "tokenizer", *manifest["splits"]["train"]["shards"],
                                              *manifest["splits"]["validation"]["shards"]])
