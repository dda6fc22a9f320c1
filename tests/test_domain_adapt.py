"""configs/domain_adapt.py: SciBERT's route (train-tokenizer -> prepare -> pretrain from scratch,
with the 128 -> 512 length schedule) through the real CLI on a tiny corpus, and BioBERT's
(continued pre-training from a checkpoint, its own tokenizer preparing the data, optionally
after extend-vocab) starting from exactly the checkpoint's weights."""
import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
RECIPE = REPO / "configs" / "domain_adapt.py"


def _recipe(arg):
    spec = importlib.util.spec_from_file_location("domain_adapt", RECIPE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


@pytest.mark.parametrize("family", ["bert", "roberta", "deberta", "albert", "electra", "scibert"])
def test_every_family_gives_a_valid_config(family):
    from flaxbert.training.config import check_config
    from flaxbert.training.objectives import OBJECTIVES
    for arg in (family, family + ",tiny"):
        c = _recipe(arg)
        c.data.train = "data"
        check_config(c, "domain_adapt.py")
        assert c.objective in OBJECTIVES and c.init_from == ""
        if family == "scibert":
            assert c.data.seq_length_schedule
        else:  # BioBERT's hyperparameters (the tiny run keeps the lower rate)
            assert c.optimizer.learning_rate == (1e-4 if arg.endswith("tiny") else 1e-5)
            assert (c.train.global_batch_size, c.train.num_steps) == \
                ((32, 300) if arg.endswith("tiny") else (192, 200_000))
    with pytest.raises(ValueError, match="argument 'gpt'; use FAMILY or FAMILY,tiny"):
        _recipe("gpt")
    with pytest.raises(ValueError, match="argument 'bert,huge'"):
        _recipe("bert,huge")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from flaxbert.demo import stdlib_docstrings
    root = tmp_path_factory.mktemp("scibert")
    (root / "papers.txt").write_text("\n\n".join(stdlib_docstrings(limit=150)) + "\n",
                                     encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def scibert(corpus):
    """SciBERT's commands on a tiny corpus: a vocabulary of its own, data, pre-training."""
    from flaxbert.cli import main
    root, corpus = corpus, corpus / "papers.txt"
    assert main(["train-tokenizer", str(corpus), "--out", str(root / "scivocab"), "--kind",
                 "wordpiece", "--vocab-size", "600", "--no-lowercase"]) == 0
    assert main(["prepare", str(corpus), "--tokenizer", str(root / "scivocab"), "--mode", "nsp",
                 "--max-seq-length", "64", "--out", str(root / "data"), "--num-shards", "2",
                 "--workers", "1", "--validation-fraction", "0.05"]) == 0
    assert main(["pretrain", "--config", f"{RECIPE}:scibert,tiny", "--workdir", str(root / "run"),
                 f"--config.data.train={root / 'data'}", "--config.train.num_steps=4",
                 "--config.train.global_batch_size=8", "--config.train.log_every=1",
                 "--config.optimizer.warmup_steps=1", "--config.train.progress_bar=False", "--config.checkpoint.async_save=False",
                 "--config.train.eval_batches=1"]) == 0
    return root


@pytest.mark.slow  # about 30 s of CPU: two train-step compiles, an eval and an export
def test_scibert_route_trains_on_its_own_vocabulary(scibert):
    import flaxbert
    rows = [json.loads(ln) for ln in (scibert / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = {r["step"]: r["loss"] for r in rows if "loss" in r and "eval_loss" not in r}
    assert sorted(losses) == [1, 2, 3, 4] and all(math.isfinite(v) for v in losses.values())
    # The length schedule "32:0.5,64:0.5": steps 1-2 on rows of 32 tokens (at most 5 predictions
    # each), steps 3-4 on 64 (up to 10): the masked-token counts show where it switched.
    tokens = {r["step"]: r["mlm_tokens"] for r in rows if "mlm_tokens" in r}
    assert max(tokens[1], tokens[2]) <= 8 * 5 < min(tokens[3], tokens[4])
    assert any("eval_loss" in r for r in rows)
    export = scibert / "run" / "export" / "step_4"
    model, _ = flaxbert.from_pretrained(export)
    vocab = flaxbert.Tokenizer.from_pretrained(scibert / "scivocab")
    assert model.config.vocab_size == vocab.vocab_size  # the new vocabulary, not BERT's
    assert flaxbert.Tokenizer.from_pretrained(export).tokenize("returns the") == \
        vocab.tokenize("returns the")


def _trainer(arg, checkpoint, data, workdir):
    from flaxbert.training.trainer import Trainer
    c = _recipe(arg)
    c.init_from, c.data.train = str(checkpoint), str(data)
    c.train.progress_bar, c.export.at_end = False, False
    return Trainer(c, workdir)


def _same_params(a, b):
    import jax
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    return len(la) == len(lb) and all(np.array_equal(np.asarray(x), np.asarray(y))
                                      for x, y in zip(la, lb))


@pytest.fixture(scope="module")
def released(corpus):
    """A 'released' BERT checkpoint (random tiny weights) with its own WordPiece tokenizer."""
    import flaxbert
    from flaxbert.tokenizer import TOKENIZER_FILES
    from flaxbert.tokenizer_training import train_tokenizer
    train_tokenizer([corpus / "papers.txt"], corpus / "bertvocab", "wordpiece", 500)
    tok = flaxbert.Tokenizer.from_pretrained(corpus / "bertvocab")
    model = flaxbert.create_model("bert-tiny", "pretraining", vocab_size=tok.vocab_size)
    extra = [corpus / "bertvocab" / n for n in TOKENIZER_FILES
             if (corpus / "bertvocab" / n).is_file()]
    flaxbert.save_pretrained(corpus / "bert", model, flaxbert.init_params(model, 1),
                             extra_files=extra)
    return corpus / "bert"


def test_biobert_route_continues_from_the_checkpoint(released, tmp_path):
    """The checkpoint's tokenizer prepares the in-domain data, and continued pre-training starts
    from its weights bit for bit, also after extend-vocab grew its vocabulary."""
    import flaxbert
    from flaxbert.data.prepare import prepare
    from flaxbert.vocab_extension import extend_vocabulary
    (tmp_path / "bio.txt").write_text(
        "The cytokines of immunohistochemistry stained the cell.\nA second line.\n\n"
        "Cytokines and immunohistochemistry again, in another document.\nWith more text.\n" * 20)
    summary = extend_vocabulary(released, tmp_path / "ext", corpus=tmp_path / "bio.txt", top=3)
    assert "immunohistochemistry" in summary["words"]
    for start in (released, tmp_path / "ext"):
        data = tmp_path / f"data-{start.name}"
        prepare([tmp_path / "bio.txt"], data, start, mode="nsp", max_seq_length=64,
                num_shards=1, validation_fraction=0.0, workers=1)
        trainer = _trainer("bert,tiny", start, data, tmp_path / f"run-{start.name}")
        assert trainer.model_config.vocab_size == flaxbert.Tokenizer.from_pretrained(
            start).vocab_size
        state = trainer.init_state()
        _, want = flaxbert.from_pretrained(start, task="pretraining")
        assert _same_params(state.params, want)
