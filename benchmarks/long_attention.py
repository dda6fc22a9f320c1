"""Dense (`xla`) against sparse (sliding-window + global) attention on long inputs: XLA's
compiled memory and the wall time of one jitted forward + backward.

    .venv/bin/python benchmarks/long_attention.py                # the table in LONG_ATTENTION.md
    .venv/bin/python benchmarks/long_attention.py --small        # a quick look (256, 512 tokens)

The model is bert-mini's shape (4 layers, hidden 256, 4 heads, intermediate 1024, vocabulary
30522) with 4,096 positions, batch 1, no dropout. The step is `jax.grad` of the sum of the last
hidden state with respect to every parameter. Memory is `compiled.memory_analysis()`: temporaries
(activations kept for the backward pass, scores, workspace) plus arguments (parameters and
inputs), as XLA plans them, so it does not depend on what else runs on the machine. Time is the
median of `--runs` calls after one untimed call (compilation is not timed).
"""
from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

import flaxbert

MIB = 2 ** 20


def measure(config, params, length: int, runs: int) -> dict:
    model = flaxbert.create_model(config)
    ids = jnp.asarray(np.random.default_rng(0).integers(1000, 30000, size=(1, length)), jnp.int32)
    mask = jnp.ones_like(ids)

    def loss(p):
        return jnp.sum(model.apply({"params": p}, ids, mask).last_hidden_state)

    step = jax.jit(jax.grad(loss))
    started = time.perf_counter()
    compiled = step.lower(params).compile()
    compile_s = time.perf_counter() - started
    memory = compiled.memory_analysis()
    jax.block_until_ready(compiled(params))
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        jax.block_until_ready(compiled(params))
        times.append(time.perf_counter() - started)
    return {"temp": memory.temp_size_in_bytes / MIB, "args": memory.argument_size_in_bytes / MIB,
            "compile_s": compile_s, "median_s": statistics.median(times),
            "min_s": min(times), "max_s": max(times)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[512, 1024, 2048, 4096])
    parser.add_argument("--windows", type=int, nargs="+", default=[128, 256],
                        help="sparse attention_window values (keys on either side)")
    parser.add_argument("--global-tokens", type=int, default=1)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--small", action="store_true", help="lengths 256 and 512, 2 runs")
    args = parser.parse_args()
    if args.small:
        args.lengths, args.runs = [256, 512], 2

    base = flaxbert.get_config("bert-mini", max_position_embeddings=max(args.lengths),
                               hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    params = jax.jit(flaxbert.create_model(base).init)(
        jax.random.key(0), jnp.ones((1, 8), jnp.int32))["params"]
    settings = [("xla", "dense", {})] + [
        ("sparse", f"sparse w={w} g={args.global_tokens}",
         {"attention_window": w, "global_attention_tokens": args.global_tokens})
        for w in args.windows]
    print(f"jax {jax.__version__}, backend {jax.default_backend()}, "
          f"{flaxbert.count_params(params):,} parameters")
    print("| tokens | attention | temp MiB | args MiB | temp + args MiB | median s | "
          "min-max s | compile s |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|")
    for length in args.lengths:
        for impl, name, fields in settings:
            r = measure(base.replace(attention_impl=impl, **fields), params, length, args.runs)
            print(f"| {length} | {name} | {r['temp']:.1f} | {r['args']:.1f} | "
                  f"{r['temp'] + r['args']:.1f} | {r['median_s']:.3f} | "
                  f"{r['min_s']:.3f}-{r['max_s']:.3f} | {r['compile_s']:.1f} |", flush=True)


if __name__ == "__main__":
    main()
