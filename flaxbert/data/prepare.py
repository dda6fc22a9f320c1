"""Text -> tokenized TFRecord shards for pre-training: `prepare` and `flaxbert prepare`.

Documents come from text files (one per blank-line-separated block, or one per file) or from
a TensorFlow Datasets corpus (``tfds:wikipedia/20230601.en``, ``tfds:c4/en:train``). Each
document is split into sentences (its lines, long lines cut at sentence ends), tokenized in
batches, and turned into sequences following Google's create_pretraining_data recipe:

* ``nsp`` (BERT): ``[CLS] A [SEP] B [SEP]``; pair_label 0 = B follows A in its document
  (IsNext), 1 = B comes from another document (NotNext); segments a NotNext pair leaves
  unused are put back. A fraction ``short_seq_prob`` of pairs aim at a random shorter length.
* ``sop`` (ALBERT): the same pairs, B always taken from the same document right after A;
  pair_label 0 = in order, 1 = A and B swapped.
* ``full-sentences`` (RoBERTa, and the input of ELECTRA, DistilBERT, DeBERTa, XLNet): whole
  sentences packed contiguously up to max_seq_length, running on across documents with a
  separator token between them; a sentence longer than a sequence is cut.

The special tokens and their positions come from the tokenizer's own post-processor (see
`Template`), so RoBERTa gets ``<s> A </s></s> B </s>`` and XLNet ``A <sep> B <sep> <cls>``.

Documents are processed in fixed chunks of ``chunk_documents`` by index, each with its own
random stream seeded from (seed, chunk index), by a pool of processes, and written in chunk
order with sequence k of a split going to shard k mod num_shards: the output is byte-identical
for a seed whatever the number of workers. A ``validation_fraction`` of documents is held out
(chosen at random within each chunk; ceil(fraction * documents seen) in all). The directory is
written atomically with a copy of the tokenizer and a manifest.json that the input pipeline
(`flaxbert.data.pipeline`) reads.
"""
from __future__ import annotations

import argparse
import collections
import concurrent.futures
import dataclasses
import glob
import hashlib
import json
import math
import multiprocessing
import os
import re
from pathlib import Path

import numpy as np

from flaxbert import storage
from flaxbert.io import atomic_directory, read_json
from flaxbert.progress import Progress
from flaxbert.tokenizer import Tokenizer

FORMAT_VERSION = 1
MODES = ("nsp", "sop", "full-sentences")
SPLITS = ("train", "validation")
MANIFEST = "manifest.json"
TOKENIZER_SUBDIR = "tokenizer"
_SPECIAL_ROLES = ("pad", "unk", "cls", "sep", "mask", "bos", "eos")
# A sentence ends after . ! or ? followed by space and an upper-case letter, digit or opening quote.
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[\"'(\[]?[A-Z0-9])")


# ---- the tokenizer's sequence template ----------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Template:
    """Where a tokenizer puts its special tokens around one segment and around a pair.

    Each part is ("A", type_id), ("B", type_id) or (special token id, type_id), read off the
    tokenizer's post-processor by encoding a probe, so no special id is ever hard-coded.
    """
    single: tuple
    pair: tuple

    @classmethod
    def of(cls, tok: Tokenizer) -> Template:
        backend = tok.backend_tokenizer

        def parts(*texts):
            enc = backend.encode(*texts, add_special_tokens=True)
            out = []
            for token_id, type_id, seq in zip(enc.ids, enc.type_ids, enc.sequence_ids):
                if seq is None:
                    out.append((token_id, type_id))
                elif not out or out[-1][0] != "AB"[seq]:
                    out.append(("AB"[seq], type_id))
            return tuple(out)

        template = cls(parts("a"), parts("a", "b"))
        if [p for p, _ in template.pair if p in ("A", "B")] != ["A", "B"]:
            raise ValueError(f"cannot read the pair template of this tokenizer: {template.pair}")
        return template

    def num_special(self, pair: bool) -> int:
        return sum(not isinstance(p, str) for p, _ in (self.pair if pair else self.single))

    def build(self, a, b=None):
        """(input_ids, token_type_ids) of segment a, or of the pair (a, b)."""
        ids, types = [], []
        for part, type_id in (self.single if b is None else self.pair):
            segment = a if part == "A" else b if part == "B" else (part,)
            ids.extend(segment)
            types.extend([type_id] * len(segment))
        return ids, types


# ---- reading documents --------------------------------------------------------------------
def _resolve_inputs(inputs, text_feature):
    """("file", path) / ("tfds", builder, split) sources; missing paths fail here, early."""
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    sources = []
    for spec in inputs:
        spec = os.fspath(spec)
        if spec.startswith("tfds:"):
            sources.append(("tfds", *_tfds_builder(spec, text_feature)))
        else:
            sources.extend(("file", path) for path in _expand_path(spec))
    if not sources:
        raise ValueError("no inputs given")
    return sources


def _expand_path(spec):
    if os.path.isdir(spec):
        files = sorted(str(p) for p in Path(spec).rglob("*.txt") if p.is_file())
        if not files:
            raise FileNotFoundError(f"input directory {spec!r} holds no *.txt files")
        return files
    if os.path.isfile(spec):
        return [spec]
    if glob.has_magic(spec):
        files = sorted(p for p in glob.glob(spec, recursive=True) if os.path.isfile(p))
        if not files:
            raise FileNotFoundError(f"no files match the input pattern {spec!r}")
        return files
    raise FileNotFoundError(f"input {spec!r} does not exist")


def _tfds_builder(spec, text_feature):
    name, _, split = spec[len("tfds:"):].partition(":")
    if not name:
        raise ValueError(f"{spec!r} names no dataset; expected tfds:<name>[:<split>]")
    import tensorflow_datasets as tfds
    try:
        builder = tfds.builder(name)
    except Exception as e:  # DatasetNotFoundError and friends
        raise ValueError(f"unknown TFDS dataset {name!r} in {spec!r}: "
                         f"{str(e).splitlines()[0]}") from e
    features = builder.info.features
    if text_feature not in features:
        raise ValueError(f"TFDS dataset {name!r} has no feature {text_feature!r}; it has "
                         f"{sorted(features)} (choose one with text_feature= / --text-feature)")
    return builder, split or "train"


def split_sentences(text: str) -> list[str]:
    """A document's sentences: its non-blank lines, each cut at sentence ends."""
    return [s for line in text.splitlines() if line.strip()
            for s in _SENTENCE_END.split(line.strip())]


def _file_documents(path, doc_per_file):
    try:
        with open(path, encoding="utf-8") as f:
            if doc_per_file:
                yield split_sentences(f.read())
                return
            block = []
            for line in f:
                if line.strip():
                    block.append(line)
                elif block:
                    yield split_sentences("".join(block))
                    block = []
            if block:
                yield split_sentences("".join(block))
    except UnicodeDecodeError as e:
        raise ValueError(f"input file {path!r} is not UTF-8 text: {e}") from e


def _tfds_documents(builder, split, text_feature):
    try:
        ds = builder.as_dataset(split=split, shuffle_files=False)
    except AssertionError as e:  # how tfds says the data was never downloaded and prepared
        raise FileNotFoundError(f"TFDS dataset {builder.name!r} is not prepared in "
                                f"{builder.data_dir}: run `tfds build {builder.name}` first "
                                f"(or set TFDS_DATA_DIR)") from e
    for text in ds.map(lambda example: example[text_feature]).as_numpy_iterator():
        yield split_sentences(text.decode("utf-8"))


def _documents(sources, doc_per_file, text_feature, max_documents):
    count = 0
    for source in sources:
        docs = (_file_documents(source[1], doc_per_file) if source[0] == "file"
                else _tfds_documents(source[1], source[2], text_feature))
        for doc in docs:
            if max_documents is not None and count >= max_documents:
                return
            if doc:
                count += 1
                yield doc


def _chunked(documents, size):
    chunk = []
    for doc in documents:
        chunk.append(doc)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


# ---- chunk -> sequences (runs in the worker processes) ------------------------------------
@dataclasses.dataclass(frozen=True)
class _Recipe:
    mode: str
    max_seq_length: int
    short_seq_prob: float
    dupe_factor: int
    validation_fraction: float
    seed: int
    chunk_documents: int


_WORKER: dict = {}


def _init_worker(tokenizer, recipe):
    tok = tokenizer if isinstance(tokenizer, Tokenizer) else Tokenizer.from_pretrained(tokenizer)
    _WORKER.update(backend=tok.backend_tokenizer, template=Template.of(tok), recipe=recipe,
                   sep=tok.sep_token_id)


def _process_chunk(job):
    """Sequences of both splits for chunk `index` of documents, as flat numpy arrays."""
    index, docs = job
    recipe = _WORKER["recipe"]
    rng = np.random.default_rng([recipe.seed, index])
    first = index * recipe.chunk_documents
    f = recipe.validation_fraction
    n_val = math.ceil((first + len(docs)) * f) - math.ceil(first * f)
    held_out = set(rng.choice(len(docs), size=n_val, replace=False).tolist())

    sentences = [s for doc in docs for s in doc]
    ids = [e.ids for e in _WORKER["backend"].encode_batch_fast(sentences, add_special_tokens=False)]
    tokenized, start = [], 0
    for doc in docs:
        tokenized.append([s for s in ids[start:start + len(doc)] if s])
        start += len(doc)
    result = {}
    for split in SPLITS:
        keep = [i for i in range(len(docs)) if (i in held_out) == (split == "validation")]
        split_docs = [tokenized[i] for i in keep if tokenized[i]]
        dupe = recipe.dupe_factor if split == "train" else 1
        result[split] = _flatten(_sequences(split_docs, recipe, dupe, rng), len(split_docs))
    return result


def _sequences(docs, recipe, dupe, rng):
    template = _WORKER["template"]
    if recipe.mode == "full-sentences":
        budget = recipe.max_seq_length - template.num_special(pair=False)
        out = [template.build(seq) + (None,) for seq in _pack(docs, budget, _WORKER["sep"])]
    else:
        budget = recipe.max_seq_length - template.num_special(pair=True)
        out = [template.build(a, b) + (label,)
               for _ in range(dupe) for d in range(len(docs))
               for a, b, label in _pairs(docs, d, budget, recipe, rng)]
    return [out[i] for i in rng.permutation(len(out))]


def _pack(docs, budget, sep_id):
    """RoBERTa FULL-SENTENCES: whole sentences back to back, a separator between documents."""
    sequences, current = [], []
    for doc in docs:
        for s, sentence in enumerate(doc):
            piece = ([sep_id] if s == 0 and current else []) + sentence
            if current and len(current) + len(piece) > budget and len(sentence) <= budget:
                sequences.append(current)  # the sentence starts the next sequence whole
                current, piece = [], sentence
            current.extend(piece)
            while len(current) > budget:  # only a sentence longer than a sequence gets here
                sequences.append(current[:budget])
                current = current[budget:]
    if current:
        sequences.append(current)
    return sequences


def _pairs(docs, index, budget, recipe, rng):
    """Google's create_instances_from_document: (A, B, pair_label) triples of one document."""
    document = docs[index]
    target = budget
    if rng.random() < recipe.short_seq_prob:
        target = int(rng.integers(2, budget + 1))
    pairs, chunk, length, i = [], [], 0, 0
    while i < len(document):
        chunk.append(document[i])
        length += len(document[i])
        if i == len(document) - 1 or length >= target:
            a_end = int(rng.integers(1, len(chunk))) if len(chunk) >= 2 else 1
            a = [t for s in chunk[:a_end] for t in s]
            label = 0
            if recipe.mode == "nsp" and len(docs) > 1 and (len(chunk) == 1 or rng.random() < 0.5):
                label = 1
                other = int(rng.integers(0, len(docs) - 1))
                other = docs[other + (other >= index)]
                b = []
                for sentence in other[int(rng.integers(0, len(other))):]:
                    b.extend(sentence)
                    if len(b) >= target - len(a):
                        break
                i -= len(chunk) - a_end  # the segments B did not use go back
            else:
                b = [t for s in chunk[a_end:] for t in s]
                if not b and len(a) >= 2:  # one sentence: cut it in two
                    cut = int(rng.integers(1, len(a)))
                    a, b = a[:cut], a[cut:]
                if recipe.mode == "sop" and rng.random() < 0.5:
                    a, b, label = b, a, 1
            _truncate_pair(a, b, budget, rng)
            if a and b:
                pairs.append((a, b, label))
            chunk, length = [], 0
        i += 1
    return pairs


def _truncate_pair(a, b, budget, rng):
    """Trim the longer segment, from the front or the back at random, until the pair fits."""
    while len(a) + len(b) > budget:
        longer = a if len(a) > len(b) else b
        del longer[0 if rng.random() < 0.5 else -1]


def _flatten(sequences, documents):
    lengths = np.fromiter((len(ids) for ids, _, _ in sequences), np.int64, len(sequences))
    labels = [label for _, _, label in sequences]
    return dict(
        documents=documents, lengths=lengths,
        ids=np.fromiter((t for ids, _, _ in sequences for t in ids), np.int64, int(lengths.sum())),
        types=np.fromiter((t for _, types, _ in sequences for t in types), np.int64,
                          int(lengths.sum())),
        labels=None if not labels or labels[0] is None else np.asarray(labels, np.int64))


def _map_in_order(jobs, workers, tok, tokenizer_dir, recipe):
    """_process_chunk over jobs, results in job order, at most 2 * workers chunks in flight."""
    if workers <= 1:
        _init_worker(tok, recipe)
        try:
            yield from map(_process_chunk, jobs)
        finally:
            _WORKER.clear()
        return
    # spawn, not fork: the parent may hold TensorFlow and tokenizers thread pools.
    pool = concurrent.futures.ProcessPoolExecutor(
        workers, mp_context=multiprocessing.get_context("spawn"),
        initializer=_init_worker, initargs=(tokenizer_dir, recipe))
    try:
        pending = collections.deque()
        for job in jobs:
            pending.append(pool.submit(_process_chunk, job))
            if len(pending) >= 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


# ---- writing ------------------------------------------------------------------------------
def serialize_example(input_ids, token_type_ids, pair_label=None) -> bytes:
    """One sequence as a tf.train.Example: int64 lists input_ids / token_type_ids, pair_label."""
    import tensorflow as tf

    def int64s(values):
        return tf.train.Feature(int64_list=tf.train.Int64List(value=values))

    feature = {"input_ids": int64s(input_ids), "token_type_ids": int64s(token_type_ids)}
    if pair_label is not None:
        feature["pair_label"] = int64s([pair_label])
    example = tf.train.Example(features=tf.train.Features(feature=feature))
    return example.SerializeToString(deterministic=True)  # map order fixed: byte-identical runs


class _ShardWriter:
    """Round-robin writer of one split: sequence k goes to shard k mod num_shards."""

    def __init__(self, directory: Path, split: str, num_shards: int):
        import tensorflow as tf
        self.names = [f"{split}-{i:05d}-of-{num_shards:05d}.tfrecord" for i in range(num_shards)]
        self.counts = [0] * num_shards
        self.documents = self.sequences = self.tokens = 0
        self._writers = [tf.io.TFRecordWriter(str(directory / name)) for name in self.names]

    def write(self, flat):
        self.documents += flat["documents"]
        offsets = np.concatenate([[0], np.cumsum(flat["lengths"])])
        ids, types, labels = flat["ids"].tolist(), flat["types"].tolist(), flat["labels"]
        for k in range(len(flat["lengths"])):
            lo, hi = offsets[k], offsets[k + 1]
            label = None if labels is None else int(labels[k])
            shard = self.sequences % len(self._writers)
            self._writers[shard].write(serialize_example(ids[lo:hi], types[lo:hi], label))
            self.counts[shard] += 1
            self.sequences += 1
        self.tokens += int(offsets[-1])

    def close(self):
        for writer in self._writers:
            writer.close()

    def summary(self):
        return dict(documents=self.documents, sequences=self.sequences, tokens=self.tokens,
                    shards=self.names, shard_sequences=self.counts)


def tokenizer_fingerprint(tok: Tokenizer, backend=None) -> str:
    """sha256 of the tokenizer pipeline's serialization (`tokenizers` writes it in a fixed
    order: vocabulary by id, components field by field)."""
    backend = tok.backend_tokenizer if backend is None else backend
    return hashlib.sha256(backend.to_str().encode("utf-8")).hexdigest()


def tokenizer_info(tok: Tokenizer) -> dict:
    """What the manifest records about the tokenizer: kind, size, special ids and hash."""
    backend = tok.backend_tokenizer
    roles = {role: getattr(tok, f"{role}_token_id") for role in _SPECIAL_ROLES}
    roles = {role: i for role, i in roles.items() if i is not None}
    added = {i for i, t in backend.get_added_tokens_decoder().items() if t.special}
    return dict(kind=tok.kind, vocab_size=tok.vocab_size, sha256=tokenizer_fingerprint(tok, backend),
                special_ids=roles, all_special_ids=sorted(set(roles.values()) | added))


# ---- the entry point ----------------------------------------------------------------------
def check_int(name, value, low):
    """Refuse anything but an int (bools included) of at least `low`, naming the argument."""
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")


def check_fraction(name, value, *, below_one=False):
    """Refuse anything but a number in [0, 1] (or [0, 1)), naming the argument."""
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not (
            0 <= value < 1 if below_one else 0 <= value <= 1):
        raise ValueError(f"{name} must be a number in [0, 1{')' if below_one else ']'}, "
                         f"got {value!r}")


def prepare(inputs, output_dir, tokenizer_dir, *, mode, max_seq_length=128, short_seq_prob=0.1,
            dupe_factor=1, validation_fraction=0.01, num_shards=64, workers=None, seed=0,
            doc_per_file=False, text_feature="text", max_documents=None, overwrite=False,
            chunk_documents=1000) -> dict:
    """Tokenize `inputs` into `output_dir` (TFRecord shards, tokenizer/, manifest.json).

    inputs: text files, directories (every *.txt below), glob patterns, or
    ``tfds:<name>[:<split>]`` (reads `text_feature`; the dataset must be prepared already).
    mode: "nsp", "sop" or "full-sentences" (see the module docstring). num_shards: train
    shards; validation gets max(1, num_shards // 16). workers: processes (default: all CPUs);
    the output does not depend on it. chunk_documents: documents per chunk (the unit of work
    and of randomness; NSP draws its NotNext segments from the same chunk).
    Returns the manifest.

    Worker processes are spawned (not forked: the caller may hold TensorFlow or JAX threads),
    so a script that calls this with workers > 1 must do so under ``if __name__ == "__main__"``.
    """
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; expected one of {list(MODES)}")
    for name, value, low in (("max_seq_length", max_seq_length, 8), ("dupe_factor", dupe_factor, 1),
                             ("num_shards", num_shards, 1), ("seed", seed, 0),
                             ("chunk_documents", chunk_documents, 1)):
        check_int(name, value, low)
    check_fraction("short_seq_prob", short_seq_prob)
    check_fraction("validation_fraction", validation_fraction, below_one=True)
    workers = (os.cpu_count() or 1) if workers is None else workers
    check_int("workers", workers, 1)
    if max_documents is not None:
        check_int("max_documents", max_documents, 1)

    tokenizer_dir = os.path.abspath(os.fspath(tokenizer_dir))
    tok = Tokenizer.from_pretrained(tokenizer_dir)
    template = Template.of(tok)
    room = max_seq_length - template.num_special(pair=mode != "full-sentences")
    if room < 2:
        raise ValueError(f"max_seq_length={max_seq_length} leaves {room} tokens next to the "
                         f"special tokens; at least 2 are needed")
    if mode == "full-sentences" and tok.sep_token_id is None:
        raise ValueError("mode 'full-sentences' separates documents with the tokenizer's sep "
                         "token, and this tokenizer has none")
    sources = _resolve_inputs(inputs, text_feature)
    recipe = _Recipe(mode, max_seq_length, float(short_seq_prob), dupe_factor,
                     float(validation_fraction), seed, chunk_documents)
    shards = {"train": num_shards, "validation": max(1, num_shards // 16)}

    with atomic_directory(output_dir, overwrite) as tmp:
        writers = {split: _ShardWriter(tmp, split, n) for split, n in shards.items()}
        try:
            chunks = enumerate(_chunked(_documents(sources, doc_per_file, text_feature,
                                                   max_documents), chunk_documents))
            with Progress(desc="prepare", unit="doc", total=max_documents) as shown:
                for result in _map_in_order(chunks, workers, tok, tokenizer_dir, recipe):
                    for split, writer in writers.items():
                        writer.write(result[split])
                    shown.set_postfix_str(f"{writers['train'].sequences:,} training sequences")
                    shown.update(sum(result[split]["documents"] for split in SPLITS))
        finally:
            for writer in writers.values():
                writer.close()
        splits = {split: writer.summary() for split, writer in writers.items()}
        if not splits["train"]["documents"] + splits["validation"]["documents"]:
            raise ValueError(f"empty corpus: the inputs ({', '.join(map(str, _names(inputs)))}) "
                             f"hold no text")
        if not splits["train"]["sequences"]:
            raise ValueError(f"the corpus gave no training sequences ({splits['train']['documents']} "
                             f"training documents); give more text or a lower validation_fraction")
        tok.save_pretrained(tmp / TOKENIZER_SUBDIR)
        manifest = dict(
            format_version=FORMAT_VERSION, mode=mode, max_seq_length=max_seq_length, seed=seed,
            splits=splits, tokenizer=tokenizer_info(tok),
            settings=dict(inputs=_names(inputs), short_seq_prob=short_seq_prob,
                          dupe_factor=dupe_factor, validation_fraction=validation_fraction,
                          num_shards=num_shards, chunk_documents=chunk_documents,
                          doc_per_file=doc_per_file, text_feature=text_feature,
                          max_documents=max_documents))
        with open(tmp / MANIFEST, "w", encoding="utf-8") as f:
            json.dump(manifest, f, indent=2, ensure_ascii=False)
    return manifest


def _names(inputs):
    return [os.fspath(inputs)] if isinstance(inputs, (str, os.PathLike)) else [os.fspath(i) for i in inputs]


def _join(directory: str, name: str) -> str:
    """directory/name as a string, for a local directory or a gs:// one (which Path would mangle)."""
    return str(storage.as_path(directory) / name) if storage.is_remote(directory) \
        else str(Path(directory) / name)


# ---- reading back -------------------------------------------------------------------------
def read_manifest(data_dirs) -> dict:
    """The manifests of one or more prepared directories, checked to be usable together.

    Returns dict(data_dirs, manifests, mode, max_seq_length (the largest), tokenizer (info),
    tokenizer_dir, files={split: [shard paths]}, sequences={split: count}). Directories
    prepared with different tokenizers or modes are refused.
    """
    dirs = [data_dirs] if isinstance(data_dirs, (str, os.PathLike)) else list(data_dirs)
    if not dirs:
        raise ValueError("no data directories given")
    dirs = [os.fspath(d) for d in dirs]
    manifests = []
    for d in dirs:
        path = storage.as_path(d) / MANIFEST  # local or gs:// (flaxbert.storage)
        if not path.parent.is_dir():
            raise FileNotFoundError(f"data directory {d!r} does not exist")
        if not path.is_file():
            raise FileNotFoundError(f"{d!r} has no {MANIFEST}: not a directory written by "
                                    f"`flaxbert prepare`")
        manifest = read_json(path)
        if manifest.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{path} has format version {manifest.get('format_version')!r}; "
                             f"this flaxbert reads version {FORMAT_VERSION}")
        manifests.append(manifest)
    first = manifests[0]
    for d, m in zip(dirs[1:], manifests[1:]):
        a, b = first["tokenizer"]["sha256"], m["tokenizer"]["sha256"]
        if a != b:
            raise ValueError(f"{dirs[0]!r} and {d!r} were prepared with different tokenizers "
                             f"(sha256 {a[:16]} vs {b[:16]}); token ids would not agree")
        if m["mode"] != first["mode"]:
            raise ValueError(f"{dirs[0]!r} holds {first['mode']} data and {d!r} {m['mode']} data; "
                             f"they cannot be mixed")
    return dict(
        data_dirs=dirs, manifests=manifests, mode=first["mode"],
        max_seq_length=max(m["max_seq_length"] for m in manifests), tokenizer=first["tokenizer"],
        # Tokenizers load from local files: a remote directory's is copied down once.
        tokenizer_dir=str(storage.local_copy(_join(dirs[0], TOKENIZER_SUBDIR))
                          if storage.is_remote(dirs[0]) else Path(dirs[0]) / TOKENIZER_SUBDIR),
        files={s: [_join(d, n) for d, m in zip(dirs, manifests) for n in m["splits"][s]["shards"]]
               for s in SPLITS},
        sequences={s: sum(m["splits"][s]["sequences"] for m in manifests) for s in SPLITS})


# ---- command line -------------------------------------------------------------------------
def _run(args) -> None:
    manifest = prepare(
        args.inputs, args.out, args.tokenizer, mode=args.mode, max_seq_length=args.max_seq_length,
        short_seq_prob=args.short_seq_prob, dupe_factor=args.dupe_factor,
        validation_fraction=args.validation_fraction, num_shards=args.num_shards,
        workers=args.workers, seed=args.seed, doc_per_file=args.doc_per_file,
        text_feature=args.text_feature, max_documents=args.max_documents,
        overwrite=args.overwrite, chunk_documents=args.chunk_documents)
    for split, s in manifest["splits"].items():
        print(f"{split}: {s['documents']:,} documents -> {s['sequences']:,} {args.mode} sequences "
              f"({s['tokens']:,} tokens) in {len(s['shards'])} shards")
    print(f"wrote {args.out}")


def add_prepare_parser(subparsers):
    """Register `flaxbert prepare` on an argparse subparsers object."""
    p = subparsers.add_parser(
        "prepare", help="tokenize text into TFRecord shards for pre-training",
        description="Tokenize INPUTs (text files, directories of *.txt, glob patterns, or "
                    "tfds:<name>[:<split>]) into TFRecord shards of NSP / SOP pairs or packed "
                    "full sentences, with a copy of the tokenizer and a manifest. OUT is written "
                    "atomically; the result does not depend on --workers.")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="text files, directories, globs, tfds:NAME")
    p.add_argument("--out", required=True, help="output directory (must not exist unless --overwrite)")
    p.add_argument("--tokenizer", required=True, help="tokenizer directory")
    p.add_argument("--mode", required=True, choices=MODES,
                   help="nsp (BERT), sop (ALBERT) or full-sentences (RoBERTa, ELECTRA, DeBERTa, XLNet)")
    p.add_argument("--max-seq-length", type=int, default=128, help="tokens per sequence (default 128)")
    p.add_argument("--short-seq-prob", type=float, default=0.1,
                   help="nsp / sop: share of pairs aiming at a random shorter length (default 0.1)")
    p.add_argument("--dupe-factor", type=int, default=1,
                   help="nsp / sop: passes over the training documents (default 1)")
    p.add_argument("--validation-fraction", type=float, default=0.01,
                   help="share of documents held out for validation (default 0.01)")
    p.add_argument("--num-shards", type=int, default=64, help="training shards (default 64)")
    p.add_argument("--workers", type=int, default=None, help="processes (default: all CPUs)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--doc-per-file", action="store_true",
                   help="each file is one document (default: blank lines separate documents)")
    p.add_argument("--text-feature", default="text", help="tfds inputs: the text feature (default text)")
    p.add_argument("--max-documents", type=int, default=None, help="stop after this many documents")
    p.add_argument("--chunk-documents", type=int, default=1000,
                   help="documents per unit of work (default 1000)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
    p.set_defaults(run=_run)
    return p
