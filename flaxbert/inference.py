"""Batch inference over streams of texts: sentence embeddings and per-token hidden states.

Texts are tokenized, grouped by length into buckets (each padded to its bucket's length), and run
in batches of a fixed size (the last partial batch of a bucket is padded with dummy rows), so the
jitted forward compiles once per bucket and never again, whatever the mix of lengths. Within a
window of texts the grouping also sorts by length, which keeps padding low.

    engine = InferenceEngine.from_pretrained("path/to/all-MiniLM-L6-v2")
    vectors = engine.embed(["A man is eating food.", "A monkey is playing drums."])

`flaxbert embed MODEL_DIR --input texts.txt --output emb.npy` does the same from the shell.
"""
from __future__ import annotations

import argparse
import collections
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import ClassVar

import numpy as np

# JAX and the layers are imported where the engine is built, not here: building the
# `flaxbert embed` parser (every `flaxbert --help`) must not wait for JAX to load.
DEFAULT_BUCKETS = (32, 64, 128, 256, 512)
# Tasks whose output carries last_hidden_state.
HIDDEN_STATE_TASKS = ("base", "embedding")


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


class InferenceEngine:
    """One jitted forward per (bucket length, batch size); see the module docstring.

    model: a task model whose output has last_hidden_state ("base" or "embedding");
    tokenizer: a `flaxbert.Tokenizer`. max_length (default: the largest bucket, capped by the
    model's positions and the tokenizer's model_max_length) truncates texts; buckets above it
    are dropped and it becomes the last bucket. pooling / normalize default to the model
    config's `pooling` / `normalize_embeddings`. window: texts tokenized and sorted together.
    `compilations` counts traces of each jitted function ("embed", "encode").
    `progress_label`: set it (the `embed` and `predict` commands do) to show a
    `flaxbert.progress` bar with that label over the inputs, moved as each batch comes back.
    """

    tasks: ClassVar[tuple[str, ...]] = HIDDEN_STATE_TASKS  # heads a subclass can run

    def __init__(self, model, params, tokenizer, *, buckets: Sequence[int] = DEFAULT_BUCKETS,
                 batch_size: int = 64, max_length: int | None = None, pooling: str | None = None,
                 normalize: bool | None = None, window: int = 8192):
        if getattr(model, "task", None) not in self.tasks:
            raise ValueError(f"{type(self).__name__} needs a model whose output has "
                             f"last_hidden_state (task in {self.tasks}), got task "
                             f"{getattr(model, 'task', None)!r}; load with task='embedding'")
        import jax

        from flaxbert.compile_cache import enable_compilation_cache
        from flaxbert.layers.config import POOLING
        enable_compilation_cache()  # before the first compile: later engines read it from disk
        config = model.config
        self.batch_size = _positive_int("batch_size", batch_size)
        self.window = _positive_int("window", window)
        buckets = sorted({_positive_int("bucket", b) for b in buckets})
        if not buckets:
            raise ValueError("buckets must name at least one length")
        if max_length is None:
            limits = [buckets[-1], config.max_sequence_length, tokenizer.model_max_length]
            max_length = min(x for x in limits if x)
        self.max_length = _positive_int("max_length", max_length)
        if self.max_length > config.max_sequence_length:
            raise ValueError(f"max_length={max_length} exceeds the model's "
                             f"{config.max_sequence_length} positions")
        self.buckets = tuple(b for b in buckets if b < self.max_length) + (self.max_length,)
        self.pooling = config.pooling if pooling is None else pooling
        if self.pooling not in POOLING:
            raise ValueError(f"pooling={self.pooling!r}; choose one of {POOLING}")
        self.normalize = config.normalize_embeddings if normalize is None else bool(normalize)
        self.model, self.tokenizer = model, tokenizer
        self.params = jax.device_put(params)
        self.compilations: collections.Counter = collections.Counter()
        self.progress_label: str | None = None
        self._embed = jax.jit(self._embed_batch)
        self._encode = jax.jit(self._encode_batch)

    @classmethod
    def from_pretrained(cls, path, **kwargs) -> "InferenceEngine":
        """Model (as an embedding model: a sentence-transformers layout sets pooling and
        normalisation) and tokenizer from one checkpoint directory. A sentence-transformers
        `max_seq_length` becomes the default max_length, as sentence-transformers truncates."""
        import json

        from flaxbert.convert import from_pretrained
        from flaxbert.hub import resolve
        from flaxbert.tokenizer import Tokenizer
        path = resolve(path)  # once, for the model, the tokenizer and sentence_bert_config.json
        model, params = from_pretrained(path, task="embedding")
        st_config = Path(path) / "sentence_bert_config.json"
        if "max_length" not in kwargs and st_config.is_file():
            kwargs["max_length"] = json.loads(st_config.read_text()).get("max_seq_length")
        return cls(model, params, Tokenizer.from_pretrained(path), **kwargs)

    # ---- the jitted forwards (their Python bodies run once per compilation) ----------------
    def _hidden(self, params, ids, mask, types):
        out = self.model.apply({"params": params}, ids, mask, types)
        return out.last_hidden_state.astype(np.float32)

    def _embed_batch(self, params, ids, mask, types):
        from flaxbert.layers.heads import l2_normalize, pool
        self.compilations["embed"] += 1
        emb = pool(self._hidden(params, ids, mask, types), mask, self.pooling)
        return l2_normalize(emb) if self.normalize else emb

    def _encode_batch(self, params, ids, mask, types):
        self.compilations["encode"] += 1
        return self._hidden(params, ids, mask, types)

    # ---- batching -----------------------------------------------------------------------
    def bucket_for(self, length: int) -> int:
        """The shortest bucket that holds `length` tokens (texts are truncated to max_length)."""
        return next(b for b in self.buckets if b >= min(length, self.max_length))

    def _tokenize(self, texts: Sequence[str]) -> dict:
        """{"input_ids": [...], "token_type_ids": [...]} lists per text; subclasses that encode
        their own inputs (pairs, offsets) return their rows here."""
        return self.tokenizer(list(texts), truncation=True, max_length=self.max_length,
                              return_tensors=None)

    def _check_inputs(self, texts: list) -> None:
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"texts[{i}] is {type(text).__name__}, not str")

    def _batches(self, texts: Sequence) -> Iterator[tuple[np.ndarray, dict]]:
        """(indices into texts, padded arrays) per batch, each batch one bucket."""
        enc = self._tokenize(texts)
        lengths = np.array([len(ids) for ids in enc["input_ids"]])
        buckets = np.array([self.bucket_for(n) for n in lengths])
        order = np.lexsort((lengths, buckets))  # by bucket, then by length
        pad_id = self.tokenizer.pad_token_id or 0
        left = self.tokenizer.padding_side == "left"
        for bucket in self.buckets:
            members = order[buckets[order] == bucket]
            for start in range(0, len(members), self.batch_size):
                rows = members[start:start + self.batch_size]
                shape = (self.batch_size, bucket)
                arrays = {"ids": np.full(shape, pad_id, np.int32),
                          "types": np.zeros(shape, np.int32), "mask": np.zeros(shape, np.int32)}
                arrays["mask"][len(rows):, 0] = 1  # dummy rows: one token, so nothing is empty
                for r, i in enumerate(rows):
                    n = lengths[i]
                    span = slice(bucket - n, bucket) if left else slice(0, n)
                    arrays["ids"][r, span] = enc["input_ids"][i]
                    arrays["types"][r, span] = enc["token_type_ids"][i]
                    arrays["mask"][r, span] = 1
                yield rows, arrays

    def _run(self, texts: Iterable[str], forward) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """(text index, output row, mask row) for every text, in input order, a window at a time.
        All batches of a window are dispatched before any result is read back."""
        if isinstance(texts, str):
            raise TypeError("texts must be a sequence of strings, not one string")
        from flaxbert.progress import Progress
        texts = list(texts)
        self._check_inputs(texts)
        with Progress(total=len(texts), desc=self.progress_label or "", unit="input",
                      enabled=self.progress_label is not None) as shown:
            for offset in range(0, len(texts), self.window):
                window = texts[offset:offset + self.window]
                pending = [(rows, arrays["mask"], forward(self.params, arrays["ids"],
                                                          arrays["mask"], arrays["types"]))
                           for rows, arrays in self._batches(window)]
                results = {}
                for rows, mask, out in pending:
                    out = np.asarray(out)
                    for r, i in enumerate(rows):
                        results[int(i)] = (out[r], mask[r])
                    shown.update(len(rows))
                for i in range(len(window)):
                    yield (offset + i, *results[i])

    def embed(self, texts: Iterable[str]) -> np.ndarray:
        """Sentence embeddings (len(texts), hidden) as float32, in input order."""
        rows = [out for _, out, _ in self._run(texts, self._embed)]
        if not rows:
            return np.zeros((0, self.model.config.hidden_size), np.float32)
        return np.stack(rows)

    def encode(self, texts: Iterable[str]) -> list[np.ndarray]:
        """Last hidden states per text, (tokens_i, hidden) without padding, in input order."""
        return [out[mask.astype(bool)] for _, out, mask in self._run(texts, self._encode)]


# ---- the `flaxbert embed` command -----------------------------------------------------------

def _embed_command(args) -> None:
    from flaxbert.io import atomic_file, read_text
    path = Path(args.input)
    if not path.is_file():
        raise FileNotFoundError(f"--input {path} is not a file")
    texts = read_text(path).splitlines()
    kwargs = dict(batch_size=args.batch_size, normalize=args.normalize, pooling=args.pooling)
    if args.max_length is not None:
        kwargs["max_length"] = args.max_length
    if args.buckets:
        try:
            kwargs["buckets"] = tuple(int(b) for b in args.buckets.split(","))
        except ValueError:
            raise ValueError(f"--buckets must be comma-separated ints, got {args.buckets!r}") \
                from None
    # Entered first, so an existing --output is refused before the model is even loaded.
    with atomic_file(args.output, args.overwrite) as tmp:
        engine = InferenceEngine.from_pretrained(args.model_dir, **kwargs)
        engine.progress_label = "embed"
        start = time.perf_counter()
        vectors = engine.embed(texts)
        seconds = time.perf_counter() - start
        with open(tmp, "wb") as f:  # a file object: np.save would add ".npy" to the name
            np.save(f, vectors)
    print(f"wrote {vectors.shape[0]} embeddings of size {vectors.shape[1]} to {args.output} "
          f"({seconds:.1f} s, {len(texts) / max(seconds, 1e-9):.1f} texts/s, "
          f"{engine.compilations['embed']} compilation(s) for buckets {engine.buckets})")


def add_embed_parser(subparsers) -> argparse.ArgumentParser:
    """Register `flaxbert embed MODEL_DIR --input texts.txt --output emb.npy`."""
    parser = subparsers.add_parser(
        "embed", help="sentence embeddings of a text file, one text a line",
        description="Embed each line of --input with the model in MODEL_DIR (a transformers or "
                    "sentence-transformers directory with its tokenizer, or a flaxbert one) "
                    "and save a float32 (lines, hidden) array to --output (.npy).")
    parser.add_argument("model_dir", help="checkpoint directory with tokenizer files, or a "
                                          "Hugging Face Hub id (org/name)")
    parser.add_argument("--input", required=True, help="UTF-8 text file, one text a line")
    parser.add_argument("--output", required=True,
                        help="where to write the .npy array (must not exist unless --overwrite)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing OUTPUT")
    parser.add_argument("--batch-size", type=int, default=64, help="texts a batch (default 64)")
    parser.add_argument("--max-length", type=int, default=None,
                        help="truncate to this many tokens (default: the model's limit, or "
                             "sentence-transformers' max_seq_length)")
    parser.add_argument("--buckets", default=None,
                        help=f"comma-separated padded lengths (default "
                             f"{','.join(map(str, DEFAULT_BUCKETS))})")
    # Not choices=POOLING: that constant's module loads JAX; the engine refuses other values.
    parser.add_argument("--pooling", default=None,
                        help="mean, cls or max: how token vectors become one (default: as the "
                             "checkpoint says, its sentence-transformers Pooling config, else "
                             "mean)")
    parser.add_argument("--normalize", action=argparse.BooleanOptionalAction, default=None,
                        help="L2-normalise (default: as the checkpoint says)")
    parser.set_defaults(run=_embed_command)
    return parser
