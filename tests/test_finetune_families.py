"""Every family fine-tunes through `flaxbert.finetune`: a tiny random transformers checkpoint of
the family with a tokenizer of its kind trained here (WordPiece, byte-level BPE, SentencePiece
in the ALBERT / DeBERTa / XLNet conventions) runs a few classification steps on text pairs, and
the exported best model loads in transformers' AutoModelForSequenceClassification with the label
names and the same logits as ours (XLNet's left padding and token types included)."""
import json
import math
import shutil

import numpy as np
import pytest
import torch
import transformers

import flaxbert
from flaxbert.tokenizer_training import train_tokenizer
from flaxbert.training.finetune import finetune, finetune_config

WORDS = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india",
         "juliet", "kilo", "lima", "mike", "november", "oscar", "papa", "quebec", "romeo",
         "sierra", "tango", "uniform", "victor", "whiskey", "xray", "yankee", "zebra"]
# The checkpoint's own label order (not sorted): the run must keep it, and three labels catch a
# head left at the default two.
LABELS = ("many", "few", "some")
SEQ_LEN = 32
# (kind, style, vocab size) per tokenizer; several families share one.
TOKENIZERS = {"wordpiece": ("wordpiece", None, 120), "bpe": ("bpe", None, 320),
              "albert": ("sentencepiece", "albert", 120),
              "deberta": ("sentencepiece", "deberta", 120),
              "xlnet": ("sentencepiece", "xlnet", 120)}
_BERTLIKE = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64,
                 max_position_embeddings=64)
# family -> (tokenizer, transformers config class, its kwargs); the ids of the special tokens
# come from the trained tokenizer. One layer: compiling the step is most of a family's time.
FAMILIES = {
    "bert": ("wordpiece", transformers.BertConfig, _BERTLIKE),
    "roberta": ("bpe", transformers.RobertaConfig,
                dict(_BERTLIKE, type_vocab_size=1)),
    "distilbert": ("wordpiece", transformers.DistilBertConfig,
                   dict(dim=32, n_layers=1, n_heads=4, hidden_dim=64,
                        max_position_embeddings=64)),
    "albert": ("albert", transformers.AlbertConfig,
               dict(_BERTLIKE, embedding_size=16)),
    "electra": ("wordpiece", transformers.ElectraConfig,
                dict(_BERTLIKE, embedding_size=16)),
    # v3's layout: relative attention over log buckets, shared keys, no absolute positions.
    "deberta-v3": ("deberta", transformers.DebertaV2Config,
                   dict(_BERTLIKE, type_vocab_size=0, relative_attention=True,
                        position_buckets=8, norm_rel_ebd="layer_norm", share_att_key=True,
                        pos_att_type="p2c|c2p", position_biased_input=False)),
    "xlnet": ("xlnet", transformers.XLNetConfig,
              dict(d_model=32, n_layer=1, n_head=4, d_inner=64)),
}


def _sentence(rs):
    return " ".join(rs.choice(WORDS, rs.randint(3, 9)))


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    """Kind -> a tokenizer directory trained on the task's words (shared by the families)."""
    root = tmp_path_factory.mktemp("family-tokenizers")
    rs = np.random.RandomState(0)
    corpus = root / "corpus.txt"
    corpus.write_text("\n".join([_sentence(rs) for _ in range(400)] + [" ".join(WORDS)]) + "\n")
    for name, (kind, style, size) in TOKENIZERS.items():
        train_tokenizer([corpus], root / name, kind, size, style=style, min_frequency=1)
    return root


@pytest.fixture(scope="module")
def task_files(tmp_path_factory):
    """Sentence pairs labelled by how often "zebra" occurs in both (token types matter)."""
    root = tmp_path_factory.mktemp("family-task")
    rs = np.random.RandomState(1)
    for split, n in (("train", 64), ("dev", 24)):
        rows = []
        for _ in range(n):
            a, b = _sentence(rs), _sentence(rs)
            count = (a + " " + b).split().count("zebra")
            rows.append({"sentence1": a, "sentence2": b, "label": LABELS[min(count, 2)]})
        (root / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def _checkpoint(family, tokenizer_dir, root):
    """A random transformers classifier of `family` (its head and label names included: a
    fresh head would cost another compile of the model's init) saved with the tokenizer."""
    _, config_cls, kwargs = FAMILIES[family]
    tok = transformers.AutoTokenizer.from_pretrained(tokenizer_dir)
    specials = dict(pad_token_id=tok.pad_token_id)
    if family in ("roberta", "xlnet"):
        specials.update(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    model = transformers.AutoModelForSequenceClassification.from_config(config_cls(
        vocab_size=len(tok), **specials, **kwargs, id2label=dict(enumerate(LABELS)))).eval()
    with torch.no_grad():  # transformers zero-inits biases; randomise so the comparison sees them
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    model.save_pretrained(root)
    for f in tokenizer_dir.iterdir():
        shutil.copy(f, root / f.name)
    return root, model


@pytest.mark.slow  # ~90 s a family on 2 CPU cores, nearly all compiling: `make test-slow`
@pytest.mark.parametrize("family", list(FAMILIES))
def test_family_finetunes_and_exports_for_transformers(family, tokenizers, task_files, tmp_path):
    checkpoint, initial = _checkpoint(family, tokenizers / FAMILIES[family][0], tmp_path / "checkpoint")
    c = finetune_config(model=str(checkpoint))
    c.data.train, c.data.validation = (str(task_files / f"{s}.jsonl") for s in ("train", "dev"))
    c.task.max_seq_length = SEQ_LEN
    c.train.num_steps, c.train.global_batch_size, c.train.log_every = 4, 8, 4
    c.train.best_metric, c.train.progress_bar = "eval_accuracy", False
    c.optimizer.learning_rate = 1e-3
    c.checkpoint.async_save, c.export.at_end = False, False
    workdir = tmp_path / "run"
    last = finetune(c, workdir)

    assert last["eval_sequences"] == 24 and 0 <= last["eval_accuracy"] <= 1, last
    assert all(math.isfinite(last[k]) for k in ("loss", "grad_norm", "eval_loss")), last
    assert last["grad_norm"] > 0, last  # the head and the encoder were really trained

    export = workdir / "export" / "best"
    config = json.loads((export / "config.json").read_text())
    assert config["id2label"] == {str(i): name for i, name in enumerate(LABELS)}
    torch_model = transformers.AutoModelForSequenceClassification.from_pretrained(export).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(export)
    enc = tokenizer(["alpha zebra bravo", "charlie delta echo golf hotel india juliet"],
                    ["zebra kilo", "lima"], padding=True, return_tensors="np")
    assert tokenizer.padding_side == ("left" if family == "xlnet" else "right")
    model, params = flaxbert.from_pretrained(export)
    assert model.config.id2label == LABELS
    ours = np.asarray(model.apply({"params": params}, **enc).logits)
    with torch.no_grad():
        theirs = torch_model(**{k: torch.as_tensor(v) for k, v in enc.items()}).logits.numpy()
    assert ours.shape == (2, 3)
    np.testing.assert_allclose(ours, theirs, atol=1e-4)
    with torch.no_grad():  # the export is the trained model, not the checkpoint
        before = initial(**{k: torch.as_tensor(v) for k, v in enc.items()}).logits.numpy()
    assert np.abs(ours - before).max() > 1e-3
