"""Fuzzing what users hand us: mutated checkpoints through `flaxbert convert`, and kill -9 at random
points of the writers.

Every mutated checkpoint must either convert into a finite, loadable model (exit 0) or be refused
with exit 2 and exactly one line `flaxbert convert: error: ...` that names the file at fault.
Anything else (a traceback, a second line, an unnamed file, exit 0 with NaN) fails the case.
Cases are drawn from a fixed seed, so a failure names a case that reproduces.

A writer killed at any moment leaves its destination absent or complete and loadable, and the next
run of the same command leaves no temporary behind.
"""
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file, save_file

from conftest import TINY_HF

SEED = 20261202
# config.json fields and the bad values tried on them (sizes large enough to be absurd but small
# enough not to allocate: 10**5 vocabulary rows of width 32 would be fine, so none is tried).
CONFIG_FIELDS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                 "intermediate_size", "max_position_embeddings", "type_vocab_size",
                 "hidden_dropout_prob", "attention_probs_dropout_prob", "layer_norm_eps",
                 "initializer_range", "pad_token_id", "hidden_act")
BAD_VALUES = (0, -1, -0.5, 7.5, "12", "", True, None, [], {}, float("nan"))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("fuzz")
    transformers.BertForMaskedLM(transformers.BertConfig(**TINY_HF)).save_pretrained(root / "good")
    return root / "good"


def _cases(checkpoint: Path):
    """(name, function that mutates a fresh copy of the checkpoint in place)."""
    rs = np.random.RandomState(SEED)
    weights = (checkpoint / "model.safetensors").read_bytes()
    header_len = struct.unpack("<Q", weights[:8])[0]
    tensors = load_file(checkpoint / "model.safetensors")
    names = sorted(tensors)
    config = json.loads((checkpoint / "config.json").read_text())

    def write_bytes(data):
        return lambda d: (d / "model.safetensors").write_bytes(data)

    cases = []
    for cut in sorted(rs.choice(len(weights), 12, replace=False)):
        cases.append((f"truncated at byte {cut}", write_bytes(weights[:cut])))
    for _ in range(12):  # bytes of the JSON header: its syntax, names, dtypes and offsets
        at, value = 8 + rs.randint(header_len), rs.randint(256)
        data = bytearray(weights)
        data[at] = value
        cases.append((f"header byte {at} set to {value}", write_bytes(bytes(data))))
    for _ in range(6):  # tensor bytes: any float is a legal value, NaN/inf are not
        at = 8 + header_len + rs.randint(len(weights) - 8 - header_len)
        data = bytearray(weights)
        data[at] ^= 0xFF
        cases.append((f"data byte {at} inverted", write_bytes(bytes(data))))

    def retensor(name, change):
        def mutate(d):
            t = dict(tensors)
            t[name] = change(t[name])
            save_file(t, d / "model.safetensors", metadata={"format": "pt"})
        return mutate

    for dtype in ("int8", "int64", "bool", "uint8", "float16", "float64"):
        name = names[rs.randint(len(names))]
        cases.append((f"{name} as {dtype}", retensor(name, lambda a, t=dtype: a.astype(t))))
    for bad in (np.nan, np.inf, -np.inf):
        name = names[rs.randint(len(names))]
        cases.append((f"{name} holds {bad}", retensor(
            name, lambda a, b=bad: np.where(np.arange(a.size).reshape(a.shape) == 0, b, a)
            .astype(a.dtype))))
    name = names[rs.randint(len(names))]
    cases.append((f"{name} dropped", lambda d, n=name: save_file(
        {k: v for k, v in tensors.items() if k != n}, d / "model.safetensors")))
    cases.append((f"{name} reshaped", retensor(name, lambda a: a.reshape(-1)[:-1])))

    def reconfig(change):
        def mutate(d):
            c = dict(config)
            change(c)
            (d / "config.json").write_text(json.dumps(c))
        return mutate

    for field in CONFIG_FIELDS:
        for value in rs.choice(len(BAD_VALUES), 4, replace=False):
            bad = BAD_VALUES[value]
            cases.append((f"config {field}={bad!r}",
                          reconfig(lambda c, f=field, v=bad: c.__setitem__(f, v))))
    cases += [
        ("config.json is a list", lambda d: (d / "config.json").write_text("[1, 2]")),
        ("config.json cut short", lambda d: (d / "config.json").write_text(
            json.dumps(config)[:40])),
        ("config.json not UTF-8", lambda d: (d / "config.json").write_bytes(
            b'{"model_type": "\xff\xfe"}')),
        ("config.json missing", lambda d: (d / "config.json").unlink()),
        ("config id2label with a gap", reconfig(lambda c: c.update(
            id2label={"0": "a", "2": "b"}, label2id={"a": 0, "b": 2}))),
        ("config model_type unknown", reconfig(lambda c: c.update(model_type="gpt2"))),
        ("model.safetensors is a directory", lambda d: ((d / "model.safetensors").unlink(),
                                                         (d / "model.safetensors").mkdir())),
        ("model.safetensors empty", write_bytes(b"")),
    ]
    shard = {"weight_map": dict.fromkeys(names, "model.safetensors")}
    for label, index in (
            ("index without weight_map", {"metadata": {}}),
            ("index weight_map a list", {"weight_map": names}),
            ("index points outside", {"weight_map": dict.fromkeys(names, "../outside.safetensors")}),
            ("index absolute path", {"weight_map": dict.fromkeys(
                names, str(checkpoint / "model.safetensors"))}),
            ("index names a missing shard", {"weight_map": dict.fromkeys(names, "nope.safetensors")}),
            ("index is a list", [shard])):
        cases.append((label, lambda d, i=index: (d / "model.safetensors.index.json").write_text(
            json.dumps(i))))
    return cases


def test_mutated_checkpoints_convert_cleanly_or_get_one_clear_line(checkpoint, tmp_path, capsys):
    from flaxbert import cli
    from flaxbert.io import read_json
    counts = {"cases": 0, "converted": 0, "clear error": 0}
    failures, converted = [], []
    for i, (name, mutate) in enumerate(_cases(checkpoint)):
        src, dst = tmp_path / f"src{i}", tmp_path / f"dst{i}"
        shutil.copytree(checkpoint, src)
        mutate(src)
        rc = cli.main(["convert", str(src), str(dst), "--to", "hf"])
        err = capsys.readouterr().err.strip()
        counts["cases"] += 1
        if rc == 0:
            loaded = load_file(dst / "model.safetensors")
            finite = all(np.isfinite(v).all() for v in loaded.values())
            if finite and read_json(dst / "config.json"):
                counts["converted"] += 1
                converted.append(name)
            else:
                failures.append(f"{name}: converted into a non-finite or unreadable model")
        elif (rc == 2 and len(err.splitlines()) == 1 and err.startswith("flaxbert convert: error:")
              and str(src) in err and "Traceback" not in err and not dst.exists()):
            counts["clear error"] += 1
        else:
            failures.append(f"{name}: exit {rc}, stderr {err[-400:]!r}")
        shutil.rmtree(src, ignore_errors=True)
        shutil.rmtree(dst, ignore_errors=True)
    print(f"\nfuzz: {counts}; converted: {converted}")
    assert not failures, f"{len(failures)} of {counts['cases']} cases:\n" + "\n".join(failures)
    # What may convert: an inverted tensor byte that still makes a finite float, another float
    # width (cast to the config's dtype), values legal if odd, and a null pad id (transformers
    # allows one). Anything else that converted was garbage accepted.
    legal = ("data byte", " as float16", " as float64", "layer_norm_eps=", "initializer_range=",
             "pad_token_id=None")
    assert [n for n in converted if not any(p in n for p in legal)] == []
    assert counts["clear error"] >= 90


# ----------------------------------------------------------------------------- kill -9

def _env():
    return dict(os.environ, JAX_PLATFORMS="cpu")


def _kill_at(command, delay):
    proc = subprocess.Popen(command, env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return proc.returncode


def _leftovers(parent: Path, name: str):
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(f".{name}."))


@pytest.mark.parametrize("to", ["hf", pytest.param("flax", marks=pytest.mark.slow)])
def test_convert_killed_anywhere_leaves_nothing_half_written(checkpoint, tmp_path, to):
    """kill -9 at random moments of `flaxbert convert`: the destination is absent or complete
    after each, and the next full run removes what the killed ones left."""
    import flaxbert
    command = [sys.executable, "-m", "flaxbert", "convert", str(checkpoint), str(tmp_path / "out"),
               "--to", to]
    started = time.perf_counter()
    assert subprocess.run(command, env=_env(), capture_output=True).returncode == 0
    duration = time.perf_counter() - started
    shutil.rmtree(tmp_path / "out")
    rs = np.random.RandomState(SEED)
    for delay in sorted(rs.uniform(0.5 * duration, duration, 3)):
        _kill_at(command, delay)
        out = tmp_path / "out"
        if out.exists():  # it finished before the kill: it must be whole
            flaxbert.from_pretrained(out)
            shutil.rmtree(out)
    assert subprocess.run(command, env=_env(), capture_output=True).returncode == 0
    flaxbert.from_pretrained(tmp_path / "out")
    assert _leftovers(tmp_path, "out") == []
