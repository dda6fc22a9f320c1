"""CLI habits people expect: `embed --pooling`, `convert --num-labels`, the peak-memory column
of `bench`, and `models --task` refusing a task that does not exist. Tiny models throughout."""
import json
import logging

import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file

from conftest import tiny_bert_checkpoint
from flaxbert.bench import format_table
from flaxbert.cli import main

TEXTS = ["the cat sat on the mat", "a dog ran in the park today", "green"]


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    """A tiny random BertModel (no head) with its WordPiece tokenizer."""
    return tiny_bert_checkpoint(tmp_path_factory.mktemp("habits"), TEXTS * 3, vocab_size=60)


def _torch_hidden(model_dir):
    """transformers' last hidden states and mask for TEXTS: the pooling reference."""
    tok = transformers.AutoTokenizer.from_pretrained(model_dir)
    enc = tok(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = transformers.AutoModel.from_pretrained(model_dir)(**enc).last_hidden_state
    return hidden.numpy(), enc["attention_mask"].numpy().astype(bool)


def test_embed_pooling_flag_pools_as_asked(base_dir, tmp_path, capsys):
    hidden, mask = _torch_hidden(base_dir)
    want = {"cls": hidden[:, 0],
            "mean": (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdims=True),
            "max": np.where(mask[..., None], hidden, -np.inf).max(1)}
    (tmp_path / "texts.txt").write_text("\n".join(TEXTS) + "\n")
    got = {}
    for pooling in (None, "cls", "max"):
        out = tmp_path / f"{pooling}.npy"
        flags = ["--pooling", pooling] if pooling else []
        assert main(["embed", str(base_dir), "--input", str(tmp_path / "texts.txt"),
                     "--output", str(out), "--buckets", "16", *flags]) == 0
        got[pooling] = np.load(out)
    np.testing.assert_allclose(got[None], want["mean"], atol=2e-5)  # the default stays mean
    np.testing.assert_allclose(got["cls"], want["cls"], atol=2e-5)
    np.testing.assert_allclose(got["max"], want["max"], atol=2e-5)
    capsys.readouterr()
    assert main(["embed", str(base_dir), "--input", str(tmp_path / "texts.txt"),
                 "--output", str(tmp_path / "bad.npy"), "--pooling", "median"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("flaxbert embed: error: pooling='median'") and "mean" in err
    assert not (tmp_path / "bad.npy").exists()


def _backbone(tensors):
    return {k: v for k, v in tensors.items() if not k.startswith("classifier.")}


def test_convert_num_labels_gives_a_fresh_head_and_keeps_the_backbone(base_dir, tmp_path,
                                                                      caplog, capsys):
    source = load_file(base_dir / "model.safetensors")
    with caplog.at_level(logging.WARNING, logger="flaxbert"):
        assert main(["convert", str(base_dir), str(tmp_path / "cls3"), "--to", "hf",
                     "--num-labels", "3"]) == 0
    warned = [r.getMessage() for r in caplog.records if "newly initialised" in r.getMessage()]
    assert warned and "classifier.weight" in warned[0] and "classifier.bias" in warned[0]
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "cls3")
    assert hf.config.num_labels == 3 and hf.classifier.weight.shape == (3, 32)
    assert (tmp_path / "cls3" / "vocab.txt").exists()
    written = load_file(tmp_path / "cls3" / "model.safetensors")
    for key, value in source.items():  # every backbone tensor unchanged ("bert." prefixed now)
        np.testing.assert_array_equal(written["bert." + key], value, err_msg=key)

    # Same count: converted as it is. Another count: refused, naming the way to replace it.
    assert main(["convert", str(tmp_path / "cls3"), str(tmp_path / "same"), "--to", "hf",
                 "--num-labels", "3"]) == 0
    again = load_file(tmp_path / "same" / "model.safetensors")
    np.testing.assert_array_equal(again["classifier.weight"], written["classifier.weight"])
    capsys.readouterr()
    assert main(["convert", str(tmp_path / "cls3"), str(tmp_path / "cls5"), "--to", "hf",
                 "--num-labels", "5"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert "has 3 labels, not 5" in err and "--ignore-mismatched-sizes" in err
    assert not (tmp_path / "cls5").exists()
    assert main(["convert", str(tmp_path / "cls3"), str(tmp_path / "cls5"), "--to", "hf",
                 "--num-labels", "5", "--ignore-mismatched-sizes"]) == 0
    five = load_file(tmp_path / "cls5" / "model.safetensors")
    assert five["classifier.weight"].shape == (5, 32)
    assert _backbone(five).keys() == _backbone(written).keys()
    for key in _backbone(written):  # the pooler too: only the mis-sized tensors are new
        np.testing.assert_array_equal(five[key], written[key], err_msg=key)
    config = json.loads((tmp_path / "cls5" / "config.json").read_text())
    assert config["id2label"] == {str(i): f"LABEL_{i}" for i in range(5)}


def test_convert_num_labels_keeps_a_token_head_and_refuses_bad_counts(base_dir, tmp_path, capsys):
    torch.manual_seed(0)
    config = transformers.AutoConfig.from_pretrained(base_dir, num_labels=4)
    transformers.BertForTokenClassification(config).save_pretrained(tmp_path / "tok")
    # Its own head has labels, so it is the task --num-labels sizes by default.
    assert main(["convert", str(tmp_path / "tok"), str(tmp_path / "tok4"), "--to", "flax",
                 "--num-labels", "4"]) == 0
    meta = json.loads((tmp_path / "tok4" / "flaxbert.json").read_text())
    assert meta["task"] == "token-classification" and meta["config"]["num_labels"] == 4
    capsys.readouterr()
    assert main(["convert", str(base_dir), str(tmp_path / "zero"), "--to", "hf",
                 "--num-labels", "0"]) == 2
    assert "--num-labels 0" in capsys.readouterr().err
    assert main(["convert", str(base_dir), str(tmp_path / "qa"), "--to", "hf",
                 "--task", "question-answering", "--num-labels", "3"]) == 2
    assert "not 'question-answering'" in capsys.readouterr().err
    assert not (tmp_path / "zero").exists() and not (tmp_path / "qa").exists()


def test_bench_prints_the_peak_memory_it_computes(tmp_path, capsys):
    rows_file = tmp_path / "rows.json"
    assert main(["bench", "--model", "bert-tiny", "--seq-len", "16", "--batch-size", "2",
                 "--dtype", "float32", "--steps", "1", "--warmup", "0", "--mode", "inference",
                 "--json", str(rows_file)]) == 0
    header, row = capsys.readouterr().out.splitlines()[1:3]
    end = header.index("peak GB") + len("peak GB")  # the column is right-aligned under it

    def column(line):
        return line[end - len("peak GB"):end].strip()
    peak = json.loads(rows_file.read_text())[0]["peak_mem_gb"]
    # CPU reports no memory stats; an accelerator reports its peak in GB.
    assert column(row) == ("-" if peak is None else f"{peak:.2f}")
    common = dict(model="m", seq_len=8, batch=2, tokens_per_s=0, tflops_per_s=0, mfu=None,
                  step_ms=1, compile_s=0, mode="train", seq_per_s=1.0)
    lines = format_table([dict(common, impl="flaxbert", peak_mem_gb=1.2345),
                          dict(common, impl="torch eager", peak_mem_gb=None)]).splitlines()
    assert column(lines[1]) == "1.23" and column(lines[2]) == "-"


def test_models_refuses_an_unknown_task(capsys):
    assert main(["models", "--task", "foo"]) == 2
    out = capsys.readouterr()
    assert out.out == ""
    assert out.err.startswith("flaxbert models: error: --task 'foo' is not a task")
    for task in ("base", "masked-lm", "sequence-classification", "embedding"):
        assert task in out.err
