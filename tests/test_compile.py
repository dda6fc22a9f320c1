"""`flaxbert compile` / `Trainer.lower_train_step`: the real train step compiled ahead of time
for a TPU topology on this CPU machine (libtpu's topology devices), and TensorFlow kept out of
a Trainer that reads no data."""
import importlib.util
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
needs_libtpu = pytest.mark.skipif(
    importlib.util.find_spec("libtpu") is None,
    reason="libtpu is not installed (pip install 'flaxbert[tpu]'): no TPU topology to compile for")

TOPOLOGY = "v5e:2x2"
OVERRIDES = ["--config.train.global_batch_size=8", "--config.mesh.data=1",
             "--config.mesh.fsdp=4"]


@pytest.fixture(scope="module")
def compiled():
    """One compile of bert-tiny's MLM + NSP step, FSDP over the 4 chips of a v5e 2x2."""
    from flaxbert.training.compile import compile_train_step, parse_config
    _, config = parse_config(str(ROOT / "configs/bert_base.py:tiny"), OVERRIDES)
    return config, compile_train_step(config, TOPOLOGY, seq_len=64)


@needs_libtpu
def test_memory_numbers_come_from_the_compiled_step(compiled):
    import jax

    from flaxbert.training.compile import (build_trainer, memory_of, per_chip_bytes,
                                           topology_devices)
    config, result = compiled
    assert result.chips == 4 and result.chip == "v5e" and result.hbm_bytes == 16 * 2**30
    assert result.mesh == {"data": 1, "fsdp": 4, "tensor": 1}
    assert result.memory == memory_of(result.compiled)
    m = result.memory
    assert m["argument_bytes"] > 0 and m["output_bytes"] > 0 and m["generated_code_bytes"] > 0
    assert m["temp_bytes"] >= 0
    assert result.per_chip_bytes == per_chip_bytes(m) == (
        m["argument_bytes"] + m["output_bytes"] - m["alias_bytes"] + m["temp_bytes"]
        + m["generated_code_bytes"])
    # The arguments are this chip's shards of the state and the batch, nothing materialised
    # whole: what the Trainer's shardings say a chip holds.
    config = config.copy_and_resolve_references()
    config.data.train = "<none>"
    trainer = build_trainer(config, topology_devices(TOPOLOGY), 64)
    shard_bytes = sum(
        int(np.prod(x.sharding.shard_shape(x.shape))) * x.dtype.itemsize
        for x in jax.tree_util.tree_leaves((trainer.abstract_state(), trainer.abstract_batch())))
    whole_bytes = sum(x.size * x.dtype.itemsize
                      for x in jax.tree_util.tree_leaves(trainer.abstract_state()))
    assert shard_bytes <= m["argument_bytes"] <= shard_bytes * 1.05 + 4096
    assert m["argument_bytes"] < whole_bytes  # FSDP over 4 chips: less than one whole copy
    # The donated state comes back in place: outputs alias at least the params' shards.
    assert m["alias_bytes"] > 0


@needs_libtpu
def test_fits_verdict_flops_and_report(compiled):
    from flaxbert import flops
    from flaxbert.training.compile import fit_verdict, format_report
    config, result = compiled
    assert result.fits is True and result.missing_bytes == 0
    assert result.per_chip_bytes < result.hbm_bytes
    assert fit_verdict(result.per_chip_bytes, result.per_chip_bytes - 1000) == (False, 1000)
    assert result.compile_s > 0 and result.lower_s > 0
    from flaxbert.models import registry
    per_seq = flops.training_flops_per_sequence(
        registry.get_config("bert-tiny"), 64, masked_positions=config.data.max_predictions_per_seq)
    assert result.model_flops_per_step == pytest.approx(per_seq * 8)
    assert result.xla_flops_per_chip > 0
    text = format_report(result)
    assert result.per_chip_bytes < 2**30 / 10  # bert-tiny: shown in MiB
    assert f"total {result.per_chip_bytes / 2**20:.1f} MiB" in text
    assert "fits: yes" in text and "mesh data=1 fsdp=4 tensor=1" in text
    as_json = json.loads(json.dumps(result.to_json()))
    assert as_json["memory"] == result.memory and as_json["fits"] is True


def test_compiler_memory_refusal_is_read():
    """Both wordings of XLA's refusal; the first is what libtpu 0.0.42 said compiling
    bert-large in fp32 without remat, 16 rows a chip at 512 tokens, for v5e."""
    from flaxbert.training.compile import compiler_memory_shortfall
    got = compiler_memory_shortfall(
        "RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO "
        "temporaries (34.20G) exceeds available HBM (15.75G).")
    assert got == {"used_bytes": int(34.2 * 2**30), "hbm_bytes": int(15.75 * 2**30),
                   "missing_bytes": int(34.2 * 2**30) - int(15.75 * 2**30)}
    message = ("RESOURCE_EXHAUSTED: XLA:TPU compile permanent error. Ran out of memory in memory "
               "space hbm. Used 26.37G of 15.75G hbm. Exceeded hbm capacity by 10.62G.")
    got = compiler_memory_shortfall(message)
    assert got["hbm_bytes"] == int(15.75 * 2**30)
    assert got["missing_bytes"] == int(10.62 * 2**30)
    assert got["used_bytes"] == int(26.37 * 2**30)
    assert compiler_memory_shortfall("INVALID_ARGUMENT: something else") is None


def test_auto_mesh_candidates_divide_the_batch():
    from flaxbert.training.compile import mesh_candidates
    meshes = mesh_candidates(16, 32)
    assert meshes[0] == (16, 1, 1) and (1, 16, 1) in meshes  # data parallelism first
    assert all(d * f * t == 16 and 32 % (d * f) == 0 for d, f, t in meshes)
    # 8 rows cannot spread over 16 data x fsdp shards: only meshes with tensor parallelism.
    few = mesh_candidates(16, 8)
    assert (1, 8, 2) in few and (2, 4, 2) in few
    assert all(t >= 2 and 8 % (d * f) == 0 for d, f, t in few)


@needs_libtpu
def test_unknown_topology_is_one_line():
    run = subprocess.run(
        [sys.executable, "-m", "flaxbert.cli", "compile", "--config",
         str(ROOT / "configs/bert_base.py:tiny"), "--topology", "v9z:2x2"],
        capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert run.returncode == 2, run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, run.stderr
    assert lines[0].startswith("flaxbert compile: error: --topology 'v9z:2x2'")


def test_trainer_for_compile_does_not_import_tensorflow(tmp_path):
    script = textwrap.dedent(f"""
        import sys
        import jax
        sys.path.insert(0, {str(ROOT)!r})
        from flaxbert.training.compile import build_trainer
        from flaxbert.training.config import default_config
        c = default_config()
        c.data.train = "<none>"
        trainer = build_trainer(c, jax.devices()[:1], 32)
        trainer.lower_train_step()
        from flaxbert.training.reporting import MetricWriter
        MetricWriter({str(tmp_path)!r}, progress_bar=False).close()  # TensorBoard at first write
        print(sorted(m for m in sys.modules if m.split(".")[0] == "tensorflow"))
        """)
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=120, env={"JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin"})
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[]"


@needs_libtpu
@pytest.mark.slow  # several compiles of bert-tiny (about 20 s of CPU each)
def test_cli_mesh_auto_writes_json(tmp_path):
    """`--mesh auto` through the real command: data parallelism over the 4 chips fits bert-tiny
    at once; the JSON holds what was printed, and an existing file is refused."""
    out = tmp_path / "result.json"
    command = [sys.executable, "-m", "flaxbert.cli", "compile", "--config",
               str(ROOT / "configs/bert_base.py:tiny"), "--topology", TOPOLOGY, "--mesh", "auto",
               "--seq-len", "64", "--json", str(out), "--config.train.global_batch_size=8"]
    run = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=1200)
    assert run.returncode == 0, run.stderr
    result = json.loads(out.read_text())
    assert result["mesh"] == {"data": 4, "fsdp": 1, "tensor": 1} and result["fits"] is True
    assert f"{result['compile_s']:.1f} s" in run.stdout
    assert "mesh 4,1,1 remat none:" in run.stdout
    again = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert again.returncode == 2 and "already exists" in again.stderr
