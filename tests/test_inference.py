"""InferenceEngine: bucketed batches compile once per bucket; embeddings equal
sentence-transformers' on the real all-MiniLM-L6-v2; the `embed` sub-command."""
import argparse

import numpy as np
import pytest

import flaxbert
from flaxbert.inference import InferenceEngine, add_embed_parser
from test_packing import random_params

WORDS = ("the quick brown fox jumps over lazy dogs while jax compiles numerical programs "
         "with xla and flax builds neural networks tokenization splits words into pieces").split()


def random_texts(n, seed, max_words=300):
    rs = np.random.RandomState(seed)
    return [" ".join(rs.choice(WORDS, rs.randint(1, max_words))) for _ in range(n)]


MIXED = ["A man is eating food.", "", "Short.", "東京は日本の首都です。",
         "Someone in a gorilla costume is playing a set of drums.",
         " ".join(["long input"] * 200)] + random_texts(12, seed=3, max_words=90)


@pytest.fixture(scope="module")
def tokenizer(minilm_dir):
    return flaxbert.Tokenizer.from_pretrained(minilm_dir)


@pytest.fixture(scope="module")
def minilm_engine(minilm_dir):
    # Truncating at 64 tokens (not sentence-transformers' 256) keeps the test quick.
    return InferenceEngine.from_pretrained(minilm_dir, buckets=(16, 32, 64), batch_size=8,
                                           max_length=64)


def test_minilm_embeddings_match_sentence_transformers(minilm_dir, minilm_engine):
    st = pytest.importorskip("sentence_transformers")
    reference = st.SentenceTransformer(str(minilm_dir), device="cpu")
    reference.max_seq_length = 64
    engine = minilm_engine
    expected = reference.encode(MIXED, convert_to_numpy=True)
    ours = engine.embed(MIXED)
    assert ours.shape == expected.shape and ours.dtype == np.float32
    cos = (ours * expected).sum(-1) / (np.linalg.norm(ours, axis=-1)
                                       * np.linalg.norm(expected, axis=-1))
    assert cos.min() >= 1 - 1e-5, cos
    np.testing.assert_allclose(ours, expected, atol=1e-5)
    # Texts fell in every bucket, and each bucket compiled once.
    lengths = [len(ids) for ids in engine.tokenizer(MIXED, truncation=True, max_length=64,
                                                    return_tensors=None)["input_ids"]]
    assert {engine.bucket_for(n) for n in lengths} == {16, 32, 64}
    assert engine.compilations["embed"] == 3


def test_a_stream_of_mixed_lengths_compiles_once_per_bucket(tokenizer):
    model = flaxbert.create_model("bert-tiny", "embedding")  # MiniLM's uncased vocabulary size
    params = random_params(model)
    engine = InferenceEngine(model, params, tokenizer, buckets=(32, 64, 128), batch_size=16,
                             window=64)
    texts = random_texts(200, seed=0, max_words=150)
    vectors = engine.embed(texts)
    assert vectors.shape == (200, 128)
    assert engine.compilations["embed"] <= len(engine.buckets)
    before = engine.compilations["embed"]
    engine.embed(random_texts(37, seed=1))
    assert engine.compilations["embed"] == before  # no new shapes, no new compilations
    # Order is kept and results do not depend on batch company: one text alone agrees.
    np.testing.assert_allclose(engine.embed([texts[17]])[0], vectors[17], atol=1e-5)

    short = random_texts(5, seed=2, max_words=20)
    hidden = engine.encode(short)
    assert engine.compilations["encode"] == 1  # all in the 32 bucket
    batch = tokenizer(short, padding=True)
    expected = model.apply({"params": params}, batch["input_ids"], batch["attention_mask"],
                           batch["token_type_ids"]).last_hidden_state
    for states, row, mask in zip(hidden, np.asarray(expected), batch["attention_mask"]):
        assert states.shape == (mask.sum(), 128)
        np.testing.assert_allclose(states, row[:mask.sum()], atol=1e-5)


def test_engine_errors(tokenizer):
    mlm = flaxbert.create_model("bert-tiny", "masked-lm")
    with pytest.raises(ValueError, match="last_hidden_state"):
        InferenceEngine(mlm, {}, tokenizer)
    model = flaxbert.create_model("bert-tiny", "embedding")
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        InferenceEngine(model, {}, tokenizer, batch_size=0)
    with pytest.raises(ValueError, match="exceeds the model's 512 positions"):
        InferenceEngine(model, {}, tokenizer, max_length=1024)
    with pytest.raises(ValueError, match="pooling"):
        InferenceEngine(model, {}, tokenizer, pooling="sum")
    engine = InferenceEngine(model, {}, tokenizer, buckets=(8, 100, 1000), max_length=64)
    assert engine.buckets == (8, 64)
    with pytest.raises(TypeError, match="not one string"):
        engine.embed("a single string")
    with pytest.raises(TypeError, match=r"texts\[1\] is int"):
        engine.embed(["fine", 3])


def test_embed_command(minilm_dir, minilm_engine, tmp_path, capsys):
    parser = argparse.ArgumentParser()
    add_embed_parser(parser.add_subparsers(dest="command"))
    texts = ["A man is eating food.", "A monkey is playing drums.", "Short."]
    (tmp_path / "texts.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
    args = parser.parse_args(["embed", str(minilm_dir), "--input", str(tmp_path / "texts.txt"),
                              "--output", str(tmp_path / "emb.npy"), "--batch-size", "4",
                              "--buckets", "16,1024", "--no-normalize"])
    args.run(args)
    # max_length defaults to sentence_bert_config.json's max_seq_length, the last bucket.
    assert "1 compilation(s) for buckets (16, 256)" in capsys.readouterr().out
    saved = np.load(tmp_path / "emb.npy")
    assert saved.shape == (3, 384)
    norms = np.linalg.norm(saved, axis=-1, keepdims=True)
    assert not np.allclose(norms, 1.0)  # --no-normalize overrides the checkpoint's Normalize
    np.testing.assert_allclose(saved / norms, minilm_engine.embed(texts), atol=1e-6)
    bad = parser.parse_args(["embed", str(minilm_dir), "--input", str(tmp_path / "missing.txt"),
                             "--output", str(tmp_path / "x.npy")])
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        bad.run(bad)
