"""`flaxbert bench`: train-step and inference throughput of the real code path, with MFU, against
transformers' PyTorch model at the same settings in the same process.

Train: the pre-training Trainer's own jitted, sharded step (objective loss -> grads -> AdamW),
fed synthetic full-length batches with 15% masked positions. Inference: the jitted encoder
forward. `--compare-torch` builds transformers' model from the same config (random weights,
same dropout, SDPA attention, bf16 autocast on GPU, fused AdamW on CUDA) and times the same
batch; `--torch-compile` adds a torch.compile row.

MFU = model FLOPs per second / (peak FLOP/s x devices), with model FLOPs from flaxbert.flops'
formula, printed with the results. Timings exclude the first (compiling) call; compile time is
reported separately.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

TRAIN_OBJECTIVE = {"xlnet": "plm"}  # everything else: MLM on masked positions (like *ForMaskedLM)


def _synthetic_batch(rng: np.random.Generator, batch: int, seq: int, vocab: int,
                     masked: int | None) -> dict:
    ids = rng.integers(5, vocab, (batch, seq), dtype=np.int32)
    out = {"input_ids": ids, "attention_mask": np.ones_like(ids),
           "token_type_ids": np.zeros_like(ids)}
    if masked:
        pos = np.sort(np.stack([rng.choice(np.arange(1, seq), masked, replace=False)
                                for _ in range(batch)]), axis=1).astype(np.int32)
        out.update(masked_positions=pos, masked_ids=np.take_along_axis(ids, pos, 1),
                   masked_weights=np.ones(pos.shape, np.float32))
    return out


def _time(fn, steps: int, warmup: int) -> tuple[float, float]:
    """(compile-and-first-call seconds, mean seconds per later call)."""
    t0 = time.perf_counter()
    fn()
    first = time.perf_counter() - t0
    for _ in range(warmup):
        fn()
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    return first, (time.perf_counter() - t0) / steps


def _peak_memory_gb():
    import jax
    stats = jax.devices()[0].memory_stats() or {}
    peak = stats.get("peak_bytes_in_use")
    return None if peak is None else peak / 2**30


def bench_jax(args, config) -> list[dict]:
    import jax
    import ml_collections

    from flaxbert import flops
    from flaxbert.models import registry
    from flaxbert.training.config import default_config
    from flaxbert.training.trainer import Trainer

    family = registry.family_of(config).name
    objective = TRAIN_OBJECTIVE.get(family, "mlm")
    masked = None if objective == "plm" else max(1, round(0.15 * args.seq_len))
    rng = np.random.default_rng(0)
    batch = _synthetic_batch(rng, args.batch_size, args.seq_len, config.vocab_size, masked)
    peak = flops.peak_flops(jax.devices()[0])
    rows = []
    if args.mode in ("train", "both"):
        c = default_config()
        c.model = args.model
        c.model_overrides = ml_collections.ConfigDict(_overrides(args))
        c.vocab_from_data = False
        c.objective = objective
        c.data.train = "<synthetic>"
        c.data.masking = masked is not None
        c.data.max_predictions_per_seq = masked or 1
        c.train.global_batch_size = args.batch_size
        c.train.num_steps = args.steps + args.warmup + 1
        trainer = Trainer(c, "/tmp/flaxbert-bench", manifest={
            "max_seq_length": args.seq_len, "mode": "bench",
            "tokenizer": {"vocab_size": config.vocab_size, "special_ids": {}}})
        state = trainer.init_state()
        holder = {"state": state}

        def step():
            holder["state"], metrics = trainer.train_step(holder["state"], batch)
            jax.block_until_ready(metrics["loss"])
        first, per_step = _time(step, args.steps, args.warmup)
        f = flops.training_flops_per_sequence(trainer.model_config, args.seq_len,
                                              masked_positions=masked)
        rows.append(_row("flaxbert", "train", args, per_step, first, f, peak))
    if args.mode in ("inference", "both"):
        model = registry.create_model(args.model, "base", **_overrides(args))
        params = jax.jit(model.init)(jax.random.PRNGKey(0), batch["input_ids"][:1])["params"]
        forward = jax.jit(lambda p, ids, mask: model.apply(
            {"params": p}, ids, mask).last_hidden_state)

        def infer():
            jax.block_until_ready(forward(params, batch["input_ids"], batch["attention_mask"]))
        first, per_step = _time(infer, args.steps, args.warmup)
        f = flops.inference_flops_per_sequence(model.config, args.seq_len)
        rows.append(_row("flaxbert", "inference", args, per_step, first, f, peak))
    return rows


def _overrides(args) -> dict:
    out = {"dtype": args.dtype, "attention_impl": args.attention, "remat_policy": args.remat,
           "scan_layers": args.scan}
    if args.dropout is not None:
        out.update(hidden_dropout_prob=args.dropout, attention_probs_dropout_prob=args.dropout)
    return out


def _row(impl, mode, args, per_step, first, flops_per_seq, peak) -> dict:
    import jax
    seq_per_s = args.batch_size / per_step
    return {"impl": impl, "mode": mode, "model": args.model, "seq_len": args.seq_len,
            "batch": args.batch_size, "dtype": args.dtype, "step_ms": per_step * 1e3,
            "seq_per_s": seq_per_s, "tokens_per_s": seq_per_s * args.seq_len,
            "tflops_per_s": flops_per_seq * seq_per_s / 1e12,
            "mfu": flops_per_seq * seq_per_s / (peak * jax.device_count()) if peak else None,
            "compile_s": first, "peak_mem_gb": _peak_memory_gb() if impl == "flaxbert" else None}


def bench_torch(args, config, compiled: bool) -> list[dict]:
    import torch
    import transformers

    from flaxbert import flops
    from flaxbert.convert.hf import config_to_hf
    from flaxbert.models import registry

    import jax
    family = registry.family_of(config)
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    hf = config_to_hf(family, config, "masked-lm")
    hf_config = transformers.AutoConfig.for_model(**hf)
    dropout = config.hidden_dropout_prob if args.dropout is None else args.dropout
    hf_config.hidden_dropout_prob = hf_config.attention_probs_dropout_prob = dropout
    masked = max(1, round(0.15 * args.seq_len))
    batch = _synthetic_batch(np.random.default_rng(0), args.batch_size, args.seq_len,
                             config.vocab_size, masked)
    ids = torch.as_tensor(batch["input_ids"], dtype=torch.long, device=device)
    mask = torch.ones_like(ids)
    labels = torch.full_like(ids, -100)
    labels.scatter_(1, torch.as_tensor(batch["masked_positions"], dtype=torch.long, device=device),
                    torch.as_tensor(batch["masked_ids"], dtype=torch.long, device=device))
    autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=cuda and args.dtype == "bfloat16")
    peak = flops.peak_flops(jax.devices()[0])
    name = "torch.compile" if compiled else "torch eager"
    rows = []
    if args.mode in ("train", "both"):
        model = transformers.AutoModelForMaskedLM.from_config(
            hf_config, attn_implementation="sdpa").to(device).train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01, fused=cuda)
        run = torch.compile(model) if compiled else model

        def step():
            with autocast:
                loss = run(input_ids=ids, attention_mask=mask, labels=labels).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            if cuda:
                torch.cuda.synchronize()
        first, per_step = _time(step, args.steps, args.warmup)
        f = flops.training_flops_per_sequence(config, args.seq_len, masked_positions=None)
        rows.append(_row(name, "train", args, per_step, first, f, peak))
        del model, opt, run
    if args.mode in ("inference", "both"):
        model = transformers.AutoModel.from_config(
            hf_config, attn_implementation="sdpa").to(device).eval()
        run = torch.compile(model) if compiled else model

        @torch.no_grad()
        def infer():
            with autocast:
                run(input_ids=ids, attention_mask=mask)
            if cuda:
                torch.cuda.synchronize()
        first, per_step = _time(infer, args.steps, args.warmup)
        f = flops.inference_flops_per_sequence(config, args.seq_len)
        rows.append(_row(name, "inference", args, per_step, first, f, peak))
    return rows


def format_table(rows: list[dict]) -> str:
    head = (f"{'impl':<14} {'mode':<9} {'model':<26} {'S':>4} {'B':>4} {'seq/s':>9} "
            f"{'tokens/s':>10} {'TFLOP/s':>8} {'MFU':>6} {'step ms':>8} {'compile s':>9} "
            f"{'peak GB':>7} {'vs torch':>8}")
    lines = [head]
    for r in rows:
        ref = [o for o in rows if o["impl"] == "torch eager"
               and all(o[k] == r[k] for k in ("mode", "model", "seq_len", "batch"))]
        ratio = f"{r['seq_per_s'] / ref[0]['seq_per_s']:.2f}x" if ref else "-"
        mfu = f"{r['mfu']:.3f}" if r["mfu"] is not None else "-"
        # The device's peak since the process started (jax keeps no per-phase peak); "-" where
        # the backend reports none (CPU) and for torch rows.
        peak_gb = f"{r['peak_mem_gb']:.2f}" if r.get("peak_mem_gb") is not None else "-"
        lines.append(f"{r['impl']:<14} {r['mode']:<9} {r['model']:<26} {r['seq_len']:>4} "
                     f"{r['batch']:>4} {r['seq_per_s']:>9.1f} {r['tokens_per_s']:>10.0f} "
                     f"{r['tflops_per_s']:>8.3f} {mfu:>6} {r['step_ms']:>8.2f} "
                     f"{r['compile_s']:>9.1f} {peak_gb:>7} {ratio:>8}")
    return "\n".join(lines)


def run(args) -> list[dict]:
    import jax

    from flaxbert import flops
    from flaxbert.models import registry

    config = registry.get_config(args.model, **_overrides(args))
    if args.seq_len > config.max_sequence_length:
        raise ValueError(f"--seq-len {args.seq_len} exceeds {args.model}'s "
                         f"{config.max_sequence_length} positions")
    rows = bench_jax(args, config)
    if args.compare_torch:
        rows += bench_torch(args, config, compiled=False)
        if args.torch_compile:
            rows += bench_torch(args, config, compiled=True)
    device = jax.devices()[0]
    print(f"device: {device.device_kind} x{jax.device_count()} ({jax.default_backend()}); "
          f"peak {flops.peak_flops(device) or 'unknown'} FLOP/s per device")
    print(format_table(rows))
    print("FLOPs formula: " + flops.describe_formula())
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return rows


# `--table`: every family at base size, both modes, the two shapes of the HF reference numbers.
TABLE_MODELS = ("bert-base-uncased", "roberta-base", "distilbert-base-uncased", "albert-base-v2",
                "electra-base-discriminator", "deberta-v3-base", "xlnet-base-cased")
TABLE_SHAPES = ((128, 256), (512, 32))
NO_TORCH_TWIN = {"xlnet-base-cased": "transformers has no masked-LM XLNet to time against our PLM step"}


def run_table(args) -> list[dict]:
    """The whole results table (benchmarks/README.md) in one command; rows that fail (e.g. out of
    memory) are reported and skipped."""
    import datetime

    import jax
    rows, notes = [], []
    for model in TABLE_MODELS:
        for seq_len, batch in TABLE_SHAPES:
            one = argparse.Namespace(**{**vars(args), "model": model, "seq_len": seq_len,
                                        "batch_size": batch, "json": None,
                                        "compare_torch": model not in NO_TORCH_TWIN,
                                        "torch_compile": model not in NO_TORCH_TWIN})
            try:
                rows += run(one)
            except Exception as e:  # noqa: BLE001 - one failed row must not lose the table
                notes.append(f"{model} S{seq_len} B{batch}: {type(e).__name__}: "
                             f"{str(e).splitlines()[0][:200]}")
                print(f"FAILED {notes[-1]}")
    device = jax.devices()[0]
    header = (f"{device.device_kind} x{jax.device_count()}, {datetime.date.today()}, "
              f"dtype {args.dtype}, attention {args.attention}, dropout "
              f"{'config default' if args.dropout is None else args.dropout}")
    text = "\n".join([header, "", "```", format_table(rows), "```"]
                     + [f"- {m}: {why}" for m, why in NO_TORCH_TWIN.items()]
                     + [f"- failed: {n}" for n in notes])
    print(text)
    if args.markdown:
        Path(args.markdown).write_text(text + "\n")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return rows


def _run_command(args):
    return run_table(args) if args.table else run(args)


def add_bench_parser(commands) -> None:
    from flaxbert.cli_help import RawDescriptionDefaultsFormatter
    p = commands.add_parser("bench", help="train/inference throughput and MFU, optionally vs "
                                          "transformers' PyTorch model", description=__doc__,
                            formatter_class=RawDescriptionDefaultsFormatter)
    p.add_argument("--model", default="bert-base-uncased", help="registered model name")
    p.add_argument("--mode", choices=("train", "inference", "both"), default="both")
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="bfloat16")
    p.add_argument("--attention", choices=("xla", "cudnn"), default="xla")
    p.add_argument("--remat", default="none", help="remat policy (see flaxbert.layers.config)")
    p.add_argument("--scan", action="store_true", help="nn.scan over layers instead of unrolled")
    p.add_argument("--dropout", type=float, default=None,
                   help="dropout for both sides (default: the config's, 0.1 for BERT)")
    p.add_argument("--steps", type=int, default=20, help="timed steps")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps after compiling")
    p.add_argument("--compare-torch", action="store_true",
                   help="also time transformers' PyTorch model (eager) in this process")
    p.add_argument("--torch-compile", action="store_true", help="with --compare-torch: add "
                                                               "torch.compile")
    p.add_argument("--json", default=None, help="also write the rows to this JSON file")
    p.add_argument("--table", action="store_true",
                   help="the whole results table: every family at base size, train and "
                        "inference, S128 B256 and S512 B32, vs torch eager and torch.compile")
    p.add_argument("--markdown", default=None, help="with --table: write it to this file")
    p.set_defaults(run=_run_command)
