"""The persistent compilation cache (flaxbert.compile_cache): a first `flaxbert embed` writes its
compiles to FLAXBERT_CACHE_DIR, a second reads them back (JAX logs each hit when
JAX_LOG_COMPILES=1) and embeds the same numbers; FLAXBERT_COMPILATION_CACHE=0 writes nothing;
a cache folder the user chose is never overridden."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import tiny_bert_checkpoint

HIT = "Persistent compilation cache hit for 'jit__embed_batch'"
LINES = ["the cat sat on the mat", "a dog ran in the park", "birds fly over the sea"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    root = tmp_path_factory.mktemp("compile_cache")
    model = tiny_bert_checkpoint(root, LINES * 5)
    texts = root / "texts.txt"
    texts.write_text("\n".join([*LINES, " ".join(LINES * 3)]) + "\n")  # two buckets: 16 and 64
    return model, texts


def embed(checkpoint, output, **env):
    model, texts = checkpoint
    result = subprocess.run(
        [sys.executable, "-m", "flaxbert", "-v", "embed", model, "--input", texts, "--output",
         output, "--buckets", "16,64"], capture_output=True, text=True, timeout=300,
        env={**os.environ, "JAX_LOG_COMPILES": "1", **env})
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stderr, np.load(output)


def test_a_second_run_reads_its_compiles_from_the_cache(checkpoint, tmp_path):
    cache = tmp_path / "cache"
    stderr, first = embed(checkpoint, tmp_path / "first.npy", FLAXBERT_CACHE_DIR=str(cache))
    assert HIT not in stderr
    entries = sorted(p.name for p in cache.iterdir())
    assert entries  # the first run wrote its compiles
    stderr, second = embed(checkpoint, tmp_path / "second.npy", FLAXBERT_CACHE_DIR=str(cache))
    assert stderr.count(HIT) == 2  # one executable a bucket, both read back
    assert sorted(p.name for p in cache.iterdir()) == entries  # nothing compiled anew
    np.testing.assert_array_equal(first, second)


def test_turned_off_it_writes_nothing(checkpoint, tmp_path):
    cache = tmp_path / "cache"
    embed(checkpoint, tmp_path / "out.npy", FLAXBERT_CACHE_DIR=str(cache),
          FLAXBERT_COMPILATION_CACHE="0")
    assert not cache.exists() or not any(cache.iterdir())


def test_where_the_cache_goes(tmp_path):
    """Default folder, FLAXBERT_CACHE_DIR, the off switch, and a JAX_COMPILATION_CACHE_DIR or an
    earlier jax.config setting winning, both before and after JAX is imported."""
    script = """
import json, os, sys
from pathlib import Path
from flaxbert.compile_cache import enable_compilation_cache as enable
out = {}
os.environ["FLAXBERT_COMPILATION_CACHE"] = "off"
out["off"] = enable()
del os.environ["FLAXBERT_COMPILATION_CACHE"]
out["before_jax"] = str(enable())
out["env_for_jax"] = os.environ["JAX_COMPILATION_CACHE_DIR"]
import jax
out["jax_sees"] = jax.config.jax_compilation_cache_dir
out["min_compile_s"] = jax.config.jax_persistent_cache_min_compile_time_secs
out["again"] = str(enable(Path(sys.argv[1]) / "other"))
jax.config.update("jax_compilation_cache_dir", None)
out["after_jax"] = str(enable(Path(sys.argv[1]) / "explicit"))
out["jax_sees_after"] = jax.config.jax_compilation_cache_dir
print(json.dumps(out))
"""
    env = {k: v for k, v in os.environ.items()
           if k not in ("FLAXBERT_CACHE_DIR", "JAX_COMPILATION_CACHE_DIR",
                        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "FLAXBERT_COMPILATION_CACHE")}
    env["XDG_CACHE_HOME"] = str(tmp_path / "xdg")
    result = subprocess.run([sys.executable, "-c", script, str(tmp_path)], env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout)
    default = str(tmp_path / "xdg" / "flaxbert" / "jax")
    assert out["off"] is None
    assert out["before_jax"] == out["env_for_jax"] == out["jax_sees"] == default
    assert out["min_compile_s"] == 0.1  # CPU compiles of small models are cached too
    assert out["again"] == default  # a folder already chosen wins
    assert out["after_jax"] == out["jax_sees_after"] == str(tmp_path / "explicit")

    env["JAX_COMPILATION_CACHE_DIR"] = str(tmp_path / "users")
    env["FLAXBERT_CACHE_DIR"] = str(tmp_path / "ours")
    result = subprocess.run(
        [sys.executable, "-c", "from flaxbert.compile_cache import enable_compilation_cache as e;"
                               "import jax; print(e(), jax.config.jax_compilation_cache_dir)"],
        env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == [str(tmp_path / "users")] * 2
