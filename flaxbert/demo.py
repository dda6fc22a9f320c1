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
6. Fine-tuning (`flaxbert finetune --config configs/demo_finetune.py`): a labelled task made
   from the same source, which standard-library package a docstring comes from among the six
   with the most. The same recipe, steps and architecture run twice: from the pre-trained
   export and from random initialisation. The validation docstrings are held out of the
   pre-training corpus, so neither run has seen them.
7. A few validation docstrings through `flaxbert.pipeline("text-classification", export)`, and
   both runs' curves drawn by `flaxbert.plot` to demo_runs.png.

Every run shares a JAX compilation cache in <workdir>/jax_cache (flaxbert.compile_cache), so
the resumed pre-training and the second fine-tune reuse the compiled steps of the first.
"""
from __future__ import annotations

import argparse
import ast
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

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


TOPICS = "pydoc_data"  # the source name of pydoc's reference topics


def stdlib_docstrings(limit: int | None = None) -> list[str]:
    """Module, class and function docstrings of the stdlib and pydoc's reference topics."""
    return [doc for _, doc in stdlib_documents(limit)]


def stdlib_documents(limit: int | None = None) -> list[tuple[str, str]]:
    """(source, document) pairs: pydoc's reference topics (source "pydoc_data"), then module,
    class and function docstrings of the stdlib, each with its top-level module or package
    ("asyncio" for asyncio/events.py, "typing" for typing.py)."""
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
                                docs.append((TOPICS, doc))
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root).parts
        if any(part in skip for part in parts):
            continue
        source = parts[0].removesuffix(".py")
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                doc = _paragraphs(doc) if doc and len(doc) > 80 else None
                if doc:
                    docs.append((source, doc))
        if limit and len(docs) >= limit:
            break
    return docs[:limit] if limit else docs


def module_task(documents: list[tuple[str, str]], *, modules: int = 6, per_module: int = 150,
                validation_fraction: float = 0.2, seed: int = 0
                ) -> tuple[list[str], list[dict], list[dict]]:
    """The labelled demo task: which package a docstring comes from, among the `modules` public
    ones with the most docstrings. (names, train, validation): up to `per_module` docstrings of
    each (balanced, so chance is 1 / modules), split per package; rows are {"text", "label"}.
    A text found under two packages is dropped: its label would be a coin toss."""
    by_source: dict[str, set[str]] = {}
    for source, doc in documents:
        if source != TOPICS and not source.startswith("_"):
            by_source.setdefault(source, set()).add(" ".join(doc.split("\n")))
    seen: dict[str, int] = {}
    for texts in by_source.values():
        for text in texts:
            seen[text] = seen.get(text, 0) + 1
    by_source = {m: sorted(t for t in texts if seen[t] == 1) for m, texts in by_source.items()}
    names = sorted(sorted(by_source, key=lambda m: (-len(by_source[m]), m))[:modules])
    if len(names) < 2:
        raise ValueError(f"module_task: the documents come from {len(names)} package(s); "
                         "a classification task needs at least 2")
    rng = random.Random(seed)
    train, validation = [], []
    for name in names:
        texts = by_source[name]
        rng.shuffle(texts)
        texts = texts[:per_module]
        held_out = max(1, round(len(texts) * validation_fraction))
        validation += [{"text": t, "label": name} for t in texts[:held_out]]
        train += [{"text": t, "label": name} for t in texts[held_out:]]
    rng.shuffle(train)
    return names, train, validation


def corpus_without(documents: list[tuple[str, str]], rows: list[dict]) -> list[str]:
    """The documents' texts, less those the task rows hold (the validation docstrings, kept
    out of pre-training so that neither fine-tuned model has read them)."""
    held_out = {row["text"] for row in rows}
    return [doc for _, doc in documents if " ".join(doc.split("\n")) not in held_out]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def random_init_like(export: Path, destination: Path, seed: int = 0) -> Path:
    """`export`'s architecture and tokenizer with freshly initialised weights: the baseline a
    pre-trained model is measured against starts from the same shapes, ids and code."""
    import flaxbert
    from flaxbert.tokenizer import TOKENIZER_FILES
    model, _ = flaxbert.from_pretrained(export)
    tokenizer_files = [export / n for n in TOKENIZER_FILES if (export / n).is_file()]
    flaxbert.save_pretrained(destination, model, flaxbert.init_params(model, seed),
                             extra_files=tokenizer_files)
    return destination


def last_evaluation(workdir: Path) -> dict:
    """The last evaluation row of a run's metrics.jsonl (eval_accuracy, eval_loss, ...)."""
    from flaxbert.plot import read_metrics
    rows = [r for r in read_metrics(workdir) if any(k.startswith("eval_") for k in r)]
    if not rows:
        raise ValueError(f"{workdir / 'metrics.jsonl'} holds no evaluation")
    return rows[-1]


def compare_finetuning(pretrained: Path, train_file: Path, validation_file: Path, work: Path, *,
                       config_arg: str = "", steps: int | None = None) -> dict:
    """`flaxbert finetune --config configs/demo_finetune.py[:config_arg]` from `pretrained` (a
    transformers directory with its tokenizer) and from a randomly initialised copy of it, on
    the same files, one after the other. Returns {"pretrained" | "random init": {"workdir",
    "export", "metrics"}}: the last evaluation's metrics and the exported model."""
    starts = {"pretrained": Path(pretrained),
              "random init": random_init_like(Path(pretrained), work / "random_init")}
    config = "flaxbert:demo_finetune" + (f":{config_arg}" if config_arg else "")
    overrides = [f"--config.data.train={train_file}",
                 f"--config.data.validation={validation_file}"]
    if steps:
        overrides += [f"--config.train.num_steps={steps}",
                      f"--config.optimizer.warmup_steps={steps // 10}",
                      f"--config.train.log_every={max(1, steps // 10)}",
                      f"--config.train.eval_every={max(1, steps // 5)}"]
    results = {}
    for name, start in starts.items():
        workdir = work / ("finetune_" + name.replace(" ", "_"))
        print(f"   -- fine-tuning from {name}: {start}", flush=True)
        subprocess.run([sys.executable, "-m", "flaxbert.cli", "finetune", "--config", config,
                        "--workdir", str(workdir), f"--config.model={start}", *overrides],
                       check=True)
        exports = sorted((workdir / "export").glob("step_*"), key=lambda p: int(p.name[5:]))
        results[name] = {"workdir": workdir, "export": exports[-1],
                         "metrics": last_evaluation(workdir)}
    return results


def show_predictions(export: Path, examples: list[dict], count: int = 6) -> list[dict]:
    """Classify `count` of the examples, evenly spaced, with the exported model through the
    pipeline; print each with its true package and return the pipeline's answers."""
    import flaxbert
    classify = flaxbert.pipeline("text-classification", export)
    chosen = examples[:: max(1, len(examples) // count)][:count]
    answers = [a[0] if isinstance(a, list) else a for a in classify([e["text"] for e in chosen])]
    for example, answer in zip(chosen, answers):
        text = example["text"] if len(example["text"]) <= 70 else example["text"][:67] + "..."
        mark = "ok" if answer["label"] == example["label"] else "--"
        print(f"   {mark} {answer['label']:<14} ({answer['score']:.2f})  true {example['label']:<14}"
              f" \"{text}\"")
    return answers


CORPUS_FILE = "stdlib_docstrings.txt"  # what marks a directory as an earlier demo's workdir


def prepare_workdir(workdir: str | None, *, overwrite: bool = False) -> Path:
    """The demo's working directory: a new temporary one by default. A given directory must be
    new or empty; an earlier demo's (it holds the corpus file) is replaced only with
    `overwrite`, and anything else that is not empty is refused, `overwrite` or not: the demo
    never deletes files it did not write."""
    if not workdir:
        return Path(tempfile.mkdtemp(prefix="flaxbert-demo-"))
    work = Path(workdir)
    if work.exists() and not work.is_dir():
        raise ValueError(f"--workdir {work}: exists and is not a directory")
    if work.is_dir() and any(work.iterdir()):
        if not (work / CORPUS_FILE).is_file():
            raise ValueError(f"--workdir {work}: not empty and not an earlier demo's workdir "
                             f"(no {CORPUS_FILE}); give a new or empty directory")
        if not overwrite:
            raise ValueError(f"--workdir {work}: holds an earlier demo's run; pass --overwrite "
                             "to replace it")
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    return work


def _demo_config():
    from flaxbert.training.cli import _load_config
    return _load_config("flaxbert:demo")[1]


def _flaxbert(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flaxbert.cli", *args], check=check)


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
    parser.add_argument("--finetune-steps", type=int, default=None,
                        help="override configs/demo_finetune.py's steps")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an earlier demo's --workdir instead of refusing it")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        work = prepare_workdir(args.workdir, overwrite=args.overwrite)
    except ValueError as e:
        print(f"flaxbert demo: {e}", file=sys.stderr)
        return 2
    # A cache of the demo's own, so that its time is a first run's: the resumed pre-training and
    # the second fine-tune (which differs only in its weights) still reuse compiled steps.
    from flaxbert.compile_cache import enable_compilation_cache
    from flaxbert.quiet import skip_absent_tpu
    skip_absent_tpu()  # before JAX: no libtpu probe (and its stderr lines) without a TPU
    enable_compilation_cache(work / "jax_cache")  # JAX is not imported yet: every run inherits it

    print(f"== 1. corpus: Python {sys.version.split()[0]} standard-library docstrings and "
          "pydoc reference topics")
    documents = stdlib_documents()
    modules, task_train, task_validation = module_task(documents)
    docs = corpus_without(documents, task_validation)
    corpus = work / CORPUS_FILE
    corpus.write_text("\n\n".join(docs) + "\n", encoding="utf-8")
    words = sum(len(d.split()) for d in docs)
    print(f"   {len(docs):,} documents, {words:,} words -> {corpus} ({len(documents) - len(docs)}"
          " held out: step 6's validation docstrings)")

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
    command = [sys.executable, "-m", "flaxbert.cli", "pretrain", "--config", "flaxbert:demo",
               "--workdir", str(run), *overrides]
    first = subprocess.Popen(command)
    stop_at = (args.steps or _demo_config().train.num_steps) // 2
    _wait_for_step(run / "metrics.jsonl", stop_at, first)
    if first.poll() is None:
        print(f"   -- sending SIGTERM at step ~{stop_at}, as a TPU preemption would --")
        first.send_signal(signal.SIGTERM)
    if first.wait() != 0:
        print("pre-training failed", file=sys.stderr)
        return 1
    print("   -- rerunning the same command: it resumes from the checkpoint --")
    if subprocess.run(command).returncode != 0:
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

    print(f"== 6. fine-tuning: which package is a docstring from? {', '.join(modules)} "
          f"(chance {1 / len(modules):.2f})")
    task_dir = work / "module_task"
    train_file = write_jsonl(task_dir / "train.jsonl", task_train)
    validation_file = write_jsonl(task_dir / "validation.jsonl", task_validation)
    print(f"   {len(task_train)} training and {len(task_validation)} validation docstrings -> "
          f"{task_dir}; configs/demo_finetune.py, the same for both starts")
    results = compare_finetuning(export, train_file, validation_file, work,
                                 steps=args.finetune_steps)
    accuracy = {name: r["metrics"]["eval_accuracy"] for name, r in results.items()}

    print("== 7. predictions of the fine-tuned pre-trained model, through "
          "flaxbert.pipeline(\"text-classification\", ...)")
    show_predictions(results["pretrained"]["export"], task_validation)
    from flaxbert.plot import plot_runs
    png = work / "demo_runs.png"
    plot_runs([r["workdir"] for r in results.values()], png, labels=list(results))

    seconds = time.perf_counter() - start
    print(f"== validation accuracy on {len(task_validation)} held-out docstrings "
          f"({len(modules)} packages, chance {1 / len(modules):.2f}):")
    for name, value in accuracy.items():
        print(f"   fine-tuned from {name:<12} {value:.3f}")
    print(f"   pre-trained minus random init: {accuracy['pretrained'] - accuracy['random init']:+.3f}"
          " accuracy, same recipe and steps")
    print(f"   curves of both runs: {png}")
    print(f"demo finished in {seconds:.0f} s ({seconds / 60:.1f} min); everything is in {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
