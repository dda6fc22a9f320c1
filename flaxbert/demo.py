"""`make demo`: pre-train a tiny BERT on the CPU from text every machine has, end to end, offline.

1. Corpus: the docstrings of Python's standard library plus the language reference topics that
   `pydoc` ships (pydoc_data/topics.py) — real English, read with `ast` from the installed
   stdlib sources; nothing is imported or downloaded.
2. Tokenizer: a WordPiece vocabulary trained on that corpus (`flaxbert train-tokenizer`).
3. Data: `flaxbert prepare --mode nsp`: sentence pairs with IsNext/NotNext labels, TFRecord shards.
4. Pre-training: `flaxbert pretrain --config configs/demo.py` (MLM + NSP, whole-word dynamic
   masking). Part way through, the run is sent SIGTERM — what a TPU preemption looks like — saves a
   checkpoint and exits; the same command then resumes it to the end.
5. Export to a transformers directory; PyTorch loads it and fills in masked words.
"""
from __future__ import annotations

import argparse
import ast
import json
import os
import re
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO = Path(__file__).resolve().parent.parent
SENTENCES = [
    "Return a new [MASK] with the same elements.",
    "Raise a [MASK] if the file does not exist.",
    "The default value is [MASK].",
    "This function returns the number of [MASK] in the list.",
]


def _paragraphs(doc: str) -> str | None:
    """A document as one line per prose paragraph; doctest and code blocks dropped."""
    paragraphs = []
    for block in re.split(r"\n\s*\n", doc):
        lines = [ln.strip() for ln in block.splitlines()]
        if any(ln.startswith((">>>", "...", "$", "%")) for ln in lines):
            continue
        text = " ".join(ln for ln in lines if ln)
        if len(text) > 20 and sum(c.isalpha() for c in text) > 0.6 * len(text):
            paragraphs.append(text)
    return "\n".join(paragraphs) or None


def stdlib_docstrings(limit: int | None = None) -> list[str]:
    """Module, class and function docstrings of the stdlib and pydoc's reference topics."""
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = ("test", "tests", "idlelib", "site-packages", "lib2to3", "turtledemo")
    docs = []
    topics = root / "pydoc_data" / "topics.py"
    if topics.is_file():
        tree = ast.parse(topics.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Dict):
                for value in node.values:
                    if isinstance(value, ast.Constant) and isinstance(value.value, str):
                        # Topics are long; every heading-separated section is a document.
                        for section in re.split(r"\n(?=\S[^\n]*\n[*=-]{3,})", value.value):
                            doc = _paragraphs(section)
                            if doc:
                                docs.append(doc)
    for path in sorted(root.rglob("*.py")):
        if any(part in skip for part in path.relative_to(root).parts):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                doc = _paragraphs(doc) if doc and len(doc) > 80 else None
                if doc:
                    docs.append(doc)
        if limit and len(docs) >= limit:
            break
    return docs[:limit] if limit else docs


def _demo_config():
    import importlib.util
    spec = importlib.util.spec_from_file_location("demo_config", REPO / "configs" / "demo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def _flaxbert(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flaxbert.cli", *args], cwd=REPO, check=check)


def _wait_for_step(metrics: Path, step: int, process: subprocess.Popen) -> None:
    while process.poll() is None:
        if metrics.is_file():
            rows = [json.loads(ln) for ln in metrics.read_text().splitlines() if ln.strip()]
            if rows and rows[-1]["step"] >= step:
                return
        time.sleep(0.5)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default=None, help="where everything goes (default: a temp dir)")
    parser.add_argument("--steps", type=int, default=None, help="override the config's steps")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="flaxbert-demo-"))
    work.mkdir(parents=True, exist_ok=True)

    print(f"== 1. corpus: Python {sys.version.split()[0]} standard-library docstrings and "
          "pydoc reference topics")
    docs = stdlib_docstrings()
    corpus = work / "stdlib_docstrings.txt"
    corpus.write_text("\n\n".join(docs) + "\n", encoding="utf-8")
    words = sum(len(d.split()) for d in docs)
    print(f"   {len(docs):,} documents, {words:,} words -> {corpus}")

    print("== 2. tokenizer: WordPiece, 8,000 tokens, trained on the corpus")
    tok_dir = work / "tokenizer"
    _flaxbert("train-tokenizer", str(corpus), "--out", str(tok_dir), "--kind", "wordpiece",
              "--vocab-size", "8000", "--overwrite")

    print("== 3. data: sentence pairs for MLM + NSP, 64 tokens, TFRecord shards")
    data = work / "data"
    _flaxbert("prepare", str(corpus), "--tokenizer", str(tok_dir), "--mode", "nsp",
              "--max-seq-length", "64", "--out", str(data), "--validation-fraction", "0.02",
              "--overwrite")
    manifest = json.loads((data / "manifest.json").read_text())
    for split, counts in manifest["splits"].items():
        print(f"   {split}: {counts['documents']:,} documents -> {counts['sequences']:,} pairs, "
              f"{counts['tokens']:,} tokens")

    print("== 4. pre-training bert-tiny (configs/demo.py) on the CPU")
    run = work / "run"
    overrides = [f"--config.data.train={data}"]
    if args.steps:  # a shorter run (smoke tests): warm up and save within it
        overrides += [f"--config.train.num_steps={args.steps}",
                      f"--config.optimizer.warmup_steps={args.steps // 10}",
                      f"--config.checkpoint.save_every={max(1, args.steps // 4)}",
                      f"--config.train.log_every={max(1, args.steps // 8)}",
                      f"--config.train.eval_every={args.steps}"]
    command = [sys.executable, "-m", "flaxbert.cli", "pretrain", "--config",
               str(REPO / "configs" / "demo.py"), "--workdir", str(run), *overrides]
    first = subprocess.Popen(command, cwd=REPO)
    stop_at = (args.steps or _demo_config().train.num_steps) // 2
    _wait_for_step(run / "metrics.jsonl", stop_at, first)
    if first.poll() is None:
        print(f"   -- sending SIGTERM at step ~{stop_at}, as a TPU preemption would --")
        first.send_signal(signal.SIGTERM)
    if first.wait() != 0:
        print("pre-training failed", file=sys.stderr)
        return 1
    print("   -- rerunning the same command: it resumes from the checkpoint --")
    if subprocess.run(command, cwd=REPO).returncode != 0:
        print("pre-training failed on resume", file=sys.stderr)
        return 1

    rows = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if "loss" in r and "eval_loss" not in r]
    evals = [r for r in rows if "eval_loss" in r]
    print("   loss curve (train, mean over each log interval):")
    for r in train:
        bar = "#" * int(round(r["loss"] * 4))
        print(f"   step {r['step']:>5}  loss {r['loss']:6.3f}  mlm_acc "
              f"{r.get('mlm_accuracy', float('nan')):.3f}  {bar}")
    for r in evals:
        print(f"   eval at step {r['step']}: loss {r['eval_loss']:.3f}, "
              f"mlm accuracy {r.get('eval_mlm_accuracy', float('nan')):.3f}")

    print("== 5. export -> transformers -> PyTorch fill-mask")
    exports = sorted((run / "export").iterdir())
    export = exports[-1]
    import torch  # noqa: F401  (transformers' PyTorch classes need it)
    import transformers
    transformers.logging.set_verbosity_error()  # the pre-training export also holds NSP weights
    model = transformers.AutoModelForMaskedLM.from_pretrained(export)
    tokenizer = transformers.AutoTokenizer.from_pretrained(export)
    fill = transformers.pipeline("fill-mask", model=model, tokenizer=tokenizer, device="cpu")
    print(f"   loaded {export} as {type(model).__name__} "
          f"({sum(p.numel() for p in model.parameters()):,} parameters)")
    for sentence in SENTENCES:
        guesses = fill(sentence.replace("[MASK]", tokenizer.mask_token), top_k=5)
        print(f"   {sentence}\n      -> " + ", ".join(f"{g['token_str']} ({g['score']:.2f})"
                                                    for g in guesses))
    print("   (a 1.5M-parameter model after a few CPU minutes mostly guesses frequent words; the "
          "point is the path: the same commands pre-train bert-base on a TPU or GPU)")
    print(f"demo finished in {time.perf_counter() - start:.0f} s; everything is in {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
