"""How long a resumed input pipeline takes to deliver its first batch at a deep position.

    python benchmarks/resume_seek.py                  # 1,000 shards x 500 records of 128 tokens
    python benchmarks/resume_seek.py --shards 100     # smaller

Writes a synthetic prepared directory (TFRecord shards and a manifest.json, written directly;
no tokenizer is needed for unmasked batches) into a temporary directory, then times
`BatchIterator(..., start_batch=N)` up to its first batch (construction included) for N at
90% of epoch 0 and 90% of epoch 3 (and at 0, for reference), and prints one line per position.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import numpy as np


def write_synthetic(directory, shards, records, length=128, vocab=30_000, seed=0):
    """A prepared-looking directory of `shards` train shards of `records` records each."""
    from flaxbert.data.prepare import FORMAT_VERSION, MANIFEST, serialize_example
    import tensorflow as tf
    rng = np.random.default_rng(seed)
    # A pool of distinct records, cycled: writing 500k fresh examples from Python is the slow part.
    pool = [serialize_example(rng.integers(5, vocab, length).tolist(), [0] * length)
            for _ in range(997)]
    names = [f"train-{i:05d}-of-{shards:05d}.tfrecord" for i in range(shards)]
    k = 0
    for name in names:
        with tf.io.TFRecordWriter(os.path.join(directory, name)) as writer:
            for _ in range(records):
                writer.write(pool[k % len(pool)])
                k += 1
    split = lambda n, counts: dict(documents=0, sequences=sum(counts), tokens=sum(counts) * length,
                                   shards=n, shard_sequences=counts)
    manifest = dict(format_version=FORMAT_VERSION, mode="full-sentences", max_seq_length=length,
                    seed=seed, splits=dict(train=split(names, [records] * shards),
                                           validation=split([], [])),
                    tokenizer=dict(kind="wordpiece", vocab_size=vocab, sha256="0" * 64,
                                   special_ids={"pad": 0}, all_special_ids=[0]))
    with open(os.path.join(directory, MANIFEST), "w", encoding="utf-8") as f:
        json.dump(manifest, f)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shards", type=int, default=1000)
    parser.add_argument("--records", type=int, default=500, help="records per shard")
    parser.add_argument("--batch-size", type=int, default=256)
    args = parser.parse_args(argv)

    from flaxbert.data.pipeline import BatchIterator
    with tempfile.TemporaryDirectory(prefix="flaxbert-resume-") as tmp:
        t0 = time.perf_counter()
        write_synthetic(tmp, args.shards, args.records)
        epoch = args.shards * args.records // args.batch_size
        print(f"wrote {args.shards} shards x {args.records} records "
              f"({epoch:,} batches of {args.batch_size} an epoch) in {time.perf_counter() - t0:.1f} s")
        # TensorFlow's one-time start-up (tracing, thread pools) is not resuming: pay it first.
        next(BatchIterator(tmp, global_batch_size=args.batch_size, masking=None,
                           process_index=0, process_count=1))
        for label, start in (("start", 0), ("90% of epoch 0", int(0.9 * epoch)),
                             ("90% of epoch 3", 3 * epoch + int(0.9 * epoch))):
            t0 = time.perf_counter()
            it = BatchIterator(tmp, global_batch_size=args.batch_size, masking=None,
                               process_index=0, process_count=1, start_batch=start)
            next(it)
            print(f"resume at batch {start:>7,} ({label}): first batch after "
                  f"{time.perf_counter() - t0:.2f} s")


if __name__ == "__main__":
    main()
