"""`flaxbert extend-vocab`: domain words become single tokens of a WordPiece tokenizer, the
embedding table and tied MLM decoder (and bias) grow, new rows are the means of the old
sub-word rows, and transformers loads the result as the resized model."""
import contextlib
import io
import json

import numpy as np
import pytest

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
PIECES = ["the", "cell", "of", "a", "tumor", "immuno", "his", "to", "chem", "is", "try",
          "cyto", "kine", "stain", "gene", "##his", "##to", "##chem", "##is", "##try", "##kine",
          "##s", "##ed", "##ing", ".", ","]
LETTERS = list("abcdefghijklmnopqrstuvwxyz") + ["##" + c for c in "abcdefghijklmnopqrstuvwxyz"]
VOCAB = SPECIALS + PIECES + [t for t in LETTERS if t not in PIECES]
WORDS = ["Immunohistochemistry", "cytokines", "cytokine"]
CORPUS = ("the cytokines of a tumor . immunohistochemistry is the stain . cytokines and "
          "cytokine genes . the cell of the tumor is stained .\n") * 5


@pytest.fixture(scope="module")
def extended(tmp_path_factory):
    from flaxbert.cli import main
    import flaxbert
    from flaxbert.tokenizer import TOKENIZER_FILES, Tokenizer
    root = tmp_path_factory.mktemp("extend")
    (root / "vocab").mkdir()
    (root / "vocab" / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    (root / "vocab" / "tokenizer_config.json").write_text('{"do_lower_case": true}')
    Tokenizer.from_pretrained(root / "vocab").save_pretrained(root / "tok")
    model = flaxbert.create_model("bert-tiny", "masked-lm", vocab_size=len(VOCAB),
                                  max_position_embeddings=64)
    params = flaxbert.init_params(model, 3)
    extra = [root / "tok" / n for n in TOKENIZER_FILES if (root / "tok" / n).is_file()]
    flaxbert.save_pretrained(root / "base", model, params, extra_files=extra)
    (root / "words.txt").write_text("# domain words\n" + "\n".join(WORDS) + "\n\nthe\n")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):  # the CLI in-process: no second JAX start-up
        assert main(["extend-vocab", str(root / "base"), "--words", str(root / "words.txt"),
                     "--out", str(root / "ext")]) == 0
    return root, printed.getvalue()


def test_transformers_loads_the_resized_model(extended):
    import torch
    import transformers
    root, stdout = extended
    assert "3 words added" in stdout
    old_tok = transformers.AutoTokenizer.from_pretrained(root / "base")
    new_tok = transformers.AutoTokenizer.from_pretrained(root / "ext")
    old = transformers.AutoModelForMaskedLM.from_pretrained(root / "base")
    new = transformers.AutoModelForMaskedLM.from_pretrained(root / "ext")
    n = len(VOCAB)
    assert len(new_tok) == n + 3 and new.config.vocab_size == n + 3
    for word, new_id in zip(["immunohistochemistry", "cytokines", "cytokine"], range(n, n + 3)):
        assert new_tok.tokenize(f"the {word.upper()} stain") == ["the", word, "stain"]
        assert new_tok.convert_tokens_to_ids(word) == new_id
    # Old ids unchanged: every old token maps to the same id and text without new words
    # tokenizes the same.
    assert {t: new_tok.convert_tokens_to_ids(t) for t in VOCAB} == old_tok.get_vocab()
    text = "the tumor cell is stained , the genes ."
    assert new_tok(text)["input_ids"] == old_tok(text)["input_ids"]

    old_emb = old.get_input_embeddings().weight.detach().numpy()
    new_emb = new.get_input_embeddings().weight.detach().numpy()
    np.testing.assert_array_equal(new_emb[:n], old_emb)  # bit-identical
    old_bias = old.cls.predictions.decoder.bias.detach().numpy()
    new_bias = new.cls.predictions.decoder.bias.detach().numpy()
    np.testing.assert_array_equal(new_bias[:n], old_bias)
    for k, word in enumerate(["immunohistochemistry", "cytokines", "cytokine"]):
        pieces = old_tok(word, add_special_tokens=False)["input_ids"]
        assert len(pieces) > 1
        np.testing.assert_allclose(new_emb[n + k], old_emb[pieces].mean(0), rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(new_bias[n + k], old_bias[pieces].mean(), rtol=1e-6, atol=1e-7)
    # The decoder is tied: transformers' output layer reads the grown table.
    np.testing.assert_array_equal(new.get_output_embeddings().weight.detach().numpy(), new_emb)
    ids = torch.tensor([new_tok("the immunohistochemistry stain")["input_ids"]])
    assert new(input_ids=ids).logits.shape == (1, 5, n + 3)


def test_flaxbert_loads_it_too(extended):
    import flaxbert
    root, _ = extended
    tok = flaxbert.Tokenizer.from_pretrained(root / "ext")
    model, params = flaxbert.from_pretrained(root / "ext")
    assert model.config.vocab_size == tok.vocab_size == len(VOCAB) + 3
    assert tok.tokenize("cytokines") == ["cytokines"]


def test_corpus_picks_the_words_split_most(tmp_path, extended):
    from flaxbert.vocab_extension import extend_vocabulary
    root, _ = extended
    (tmp_path / "corpus.txt").write_text(CORPUS)
    summary = extend_vocabulary(root / "base", tmp_path / "ext", corpus=tmp_path / "corpus.txt",
                                top=2)
    # Ranked by count x extra pieces: immunohistochemistry 5 x 5 (immuno ##his ##to ##chem ##is
    # ##try), cytokines 10 x 2 (cyto ##kine ##s), "and" 5 x 2, cytokine / stained / genes 5 x 1.
    assert CORPUS.split().count("cytokines") == 10
    assert summary["words"] == ["immunohistochemistry", "cytokines"]
    assert summary["new_rows"] == len(VOCAB) + 2
    # The destination exists now: refused without overwrite, replaced with it.
    with pytest.raises(FileExistsError):
        extend_vocabulary(root / "base", tmp_path / "ext", words=["genes"])
    again = extend_vocabulary(root / "base", tmp_path / "ext", words=["genes"], overwrite=True)
    assert again["words"] == ["genes"]
    assert json.loads((tmp_path / "ext" / "config.json").read_text())["vocab_size"] == \
        len(VOCAB) + 1


def test_bad_input_is_one_clear_line(tmp_path, extended, capsys):
    root, _ = extended
    (tmp_path / "words.txt").write_text("cytokine\nanti-TNF\n")
    from flaxbert.cli import main
    assert main(["extend-vocab", str(root / "base"), "--words", str(tmp_path / "words.txt"),
                 "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"flaxbert extend-vocab: error: {tmp_path / 'words.txt'}:2: 'anti-TNF' is 3 words to "
        "this tokenizer (anti - tnf); a vocabulary entry must be one word")
    assert not (tmp_path / "o").exists()


def test_bpe_and_sentencepiece_tokenizers_are_refused(tmp_path):
    from flaxbert.tokenizer_training import train_tokenizer
    from flaxbert.vocab_extension import extend_vocabulary
    (tmp_path / "text.txt").write_text(CORPUS)
    train_tokenizer([tmp_path / "text.txt"], tmp_path / "bpe", "bpe", 300)
    with pytest.raises(ValueError, match=r"bpe: extend-vocab adds whole-word entries to a "
                                         r"WordPiece vocabulary .* this tokenizer is bpe"):
        extend_vocabulary(tmp_path / "bpe", tmp_path / "out", words=["cytokines"])
    assert not (tmp_path / "out").exists()
