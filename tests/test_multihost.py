"""`flaxbert pretrain --multihost` for real: two processes on 127.0.0.1 with 4 CPU devices each
(jax.distributed over gloo), one global mesh of 8, each process reading its own part of the
shards, Orbax checkpoints written by both. Their losses must equal one process with 8 devices
fed the same global batches; a kill -9 of one process must stop the other (not hang), and a
rerun of both commands resumes from the last checkpoint with the uninterrupted losses.

The mesh is fsdp=8, so that every parameter is split between the processes. The two-process
runs are `slow` (each start imports TensorFlow and JAX and compiles the step:
about a minute per run on a shared 2-core machine); the settings' checks run by default."""
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from flaxbert.training.multihost import distributed_settings

REPO = Path(__file__).resolve().parent.parent
STEPS, SAVE_EVERY, KILL_AT, HEARTBEAT = 8, 3, 4, 30


# ----------------------------------------------------------------------------- settings

def test_settings_come_from_flags_then_the_environment():
    env = {"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234", "JAX_NUM_PROCESSES": "4",
           "JAX_PROCESS_ID": "3"}
    assert distributed_settings(environ=env) == {
        "coordinator_address": "10.0.0.1:1234", "num_processes": 4, "process_id": 3}
    assert distributed_settings("127.0.0.1:9", 2, 0, environ=env) == {
        "coordinator_address": "127.0.0.1:9", "num_processes": 2, "process_id": 0}
    # Nothing given: JAX detects the cluster (TPU metadata, Slurm, Open MPI).
    assert distributed_settings(environ={}) == dict.fromkeys(
        ("coordinator_address", "num_processes", "process_id"))


@pytest.mark.parametrize("args, env, message", [
    ((None, 2, 5), {"JAX_COORDINATOR_ADDRESS": "h:1"}, "--process_id=5: must be in 0 .. "),
    ((None, None, None), {"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "two",
                          "JAX_PROCESS_ID": "0"}, "$JAX_NUM_PROCESSES='two': not an integer"),
    (("localhost", 2, 0), {}, "--coordinator_address='localhost': expected HOST:PORT"),
    ((None, 2, 1), {}, "--coordinator_address (or $JAX_COORDINATOR_ADDRESS) must be given"),
    (("h:1", None, 1), {}, "--num_processes (or $JAX_NUM_PROCESSES) must be given"),
    (("h:1", 0, 0), {}, "--num_processes=0: must be at least 1"),
])
def test_bad_settings_are_one_clear_error(args, env, message):
    with pytest.raises(ValueError) as e:
        distributed_settings(*args, environ=env)
    assert message in str(e.value)


def test_cli_refuses_distributed_flags_without_multihost(tmp_path, capsys):
    from flaxbert.cli import main
    rc = main(["pretrain", "--config", f"{REPO / 'configs' / 'bert_base.py'}:tiny", "--workdir",
               str(tmp_path), "--num_processes", "2"])
    assert rc == 2
    assert "--num_processes / --process_id need --multihost" in capsys.readouterr().err


# ----------------------------------------------------------------------------- real runs

@pytest.fixture(scope="module")
def data():
    from data_cases import prepared, trained_tokenizer
    # 64 tokens, 4 shards: each of the 2 processes reads 2 of them.
    return prepared(trained_tokenizer("wordpiece"), "nsp")


def _flags(workdir, data):
    return ["--config", f"{REPO / 'configs' / 'bert_base.py'}:tiny", "--workdir", str(workdir),
            f"--config.data.train={data}", f"--config.train.num_steps={STEPS}",
            "--config.train.global_batch_size=8", "--config.train.log_every=1",
            "--config.optimizer.warmup_steps=2", f"--config.checkpoint.save_every={SAVE_EVERY}",
            "--config.checkpoint.async_save=False", "--config.train.progress_bar=False",
            "--config.train.eval_batches=0", "--config.data.shuffle_buffer=64",
            # Parameters sharded over all 8 devices: each process holds and saves half of each,
            # and the export at the end gathers them from both.
            "--config.mesh.data=1", "--config.mesh.fsdp=8"]


def _env(devices):
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_")}
    return dict(env, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
                JAX_PLATFORMS="cpu")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_job(workdir, data, processes=2):
    """`flaxbert pretrain --multihost` once per process, as each host of a slice would run it.
    Output goes to files: an unread pipe fills up and stalls its process, and then the others
    wait for it at the next collective."""
    port = _free_port()
    workdir.parent.mkdir(parents=True, exist_ok=True)
    procs, run = [], len(list(workdir.parent.glob(f"{workdir.name}.*.log")))
    for i in range(processes):
        log = open(workdir.parent / f"{workdir.name}.{run + i}.log", "w")
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "flaxbert.cli", "pretrain", "--multihost",
             "--coordinator_address", f"127.0.0.1:{port}", "--num_processes", str(processes),
             "--process_id", str(i), "--heartbeat_timeout", str(HEARTBEAT),
             *_flags(workdir, data)],
            cwd=REPO, env=_env(4), stdout=log, stderr=subprocess.STDOUT, text=True))
        procs[-1].log = log
    return procs


def _finish(procs, timeout=600):
    """(return codes, outputs) of the processes once they exit."""
    for p in procs:
        p.wait(timeout=timeout)
    for p in procs:
        p.log.close()
    return [p.returncode for p in procs], [Path(p.log.name).read_text() for p in procs]


def jax_leaves(tree):
    import jax
    return jax.tree_util.tree_leaves(tree)


def _losses(workdir) -> dict[int, float]:
    rows = [json.loads(ln) for ln in (Path(workdir) / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


# One process, 8 devices, fed the global batches the two processes make together: process 0's
# rows then process 1's (the order of their devices in the mesh), each read exactly as that
# process reads it (its shards, its masks).
SAME_GLOBAL_BATCHES = """
import sys
import numpy as np
from flaxbert.data.pipeline import BatchIterator
from flaxbert.training import sources

class Together:
    def __init__(self, parts):
        self.parts = parts
    def __iter__(self):
        return self
    def __next__(self):
        rows = [next(p) for p in self.parts]
        return {k: np.concatenate([r[k] for r in rows]) for k in rows[0]}
    def state(self):
        return self.parts[0].state()

def train_batches(self, state):
    return Together([BatchIterator(
        self.data_dirs, split="train", global_batch_size=self.config.train.global_batch_size,
        masking=self.masking, seed=self.config.data.seed,
        shuffle_buffer=self.config.data.shuffle_buffer, process_index=i, process_count=2,
        start_batch=int((state or {}).get("next_batch", 0))) for i in range(2)])

sources.PretrainingData.train_batches = train_batches
from flaxbert.cli import main
sys.exit(main(["pretrain", *sys.argv[1:]]))
"""


@pytest.fixture(scope="module")
def two_process_run(data, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("two-processes") / "run"
    rcs, outs = _finish(_start_job(workdir, data))
    assert rcs == [0, 0], "\n".join(o[-3000:] for o in outs)
    return workdir, outs


@pytest.mark.slow
def test_two_processes_give_the_losses_of_one_with_the_same_global_batches(
        data, two_process_run, tmp_path):
    workdir, outs = two_process_run
    # Process 1 trained in process 0's workdir (the lock is process 0's alone) and both finished.
    assert all("pretrain: done" in out for out in outs)
    assert json.loads((workdir / "config.json").read_text())["train"]["num_steps"] == STEPS
    reference = tmp_path / "one-process"
    result = subprocess.run([sys.executable, "-c", SAME_GLOBAL_BATCHES,
                             *_flags(reference, data)], cwd=REPO, env=_env(8),
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    two, one = _losses(workdir), _losses(reference)
    assert sorted(two) == sorted(one) == list(range(1, STEPS + 1))
    difference = max(abs(two[s] - one[s]) for s in one)
    print(f"max |loss difference| over {STEPS} steps: {difference:.3g}")
    assert difference <= 1e-5
    # The export gathered the parameters both processes hold.
    import flaxbert
    _, exported = flaxbert.from_pretrained(workdir / "export" / f"step_{STEPS}", task="pretraining")
    _, expected = flaxbert.from_pretrained(reference / "export" / f"step_{STEPS}",
                                           task="pretraining")
    for a, b in zip(jax_leaves(exported), jax_leaves(expected), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)
    # Both processes wrote the checkpoint (Orbax's shared step directories).
    steps = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    assert steps == [s for s in range(1, STEPS + 1) if s % SAVE_EVERY == 0] + \
        ([STEPS] if STEPS % SAVE_EVERY else [])


@pytest.mark.slow
def test_a_killed_process_stops_the_job_and_a_rerun_resumes(data, two_process_run, tmp_path):
    uninterrupted = _losses(two_process_run[0])
    workdir = tmp_path / "killed"
    procs = _start_job(workdir, data)
    metrics, deadline = workdir / "metrics.jsonl", time.time() + 600
    while time.time() < deadline and all(p.poll() is None for p in procs):
        if metrics.is_file() and max(_losses(workdir) or [0]) >= KILL_AT:
            break
        time.sleep(0.05)
    if not all(p.poll() is None for p in procs):
        rcs, outs = _finish(procs)
        pytest.fail(f"the job ended before the kill (rc {rcs}):\n" +
                    "\n".join(o[-3000:] for o in outs))
    procs[1].kill()
    killed_at = time.time()
    # The survivor does not wait for the dead process: a collective with it fails, or the
    # coordination service misses its heartbeat, and process 0 exits with an error.
    rcs, outs = _finish(procs, timeout=HEARTBEAT + 120)
    stopped_after = time.time() - killed_at
    print(f"process 0 exited {stopped_after:.1f} s after the kill, rc {rcs[0]}")
    assert rcs[1] == -signal.SIGKILL
    assert rcs[0] != 0, outs[0][-2000:]
    assert stopped_after < HEARTBEAT + 60

    rcs, outs = _finish(_start_job(workdir, data))
    assert rcs == [0, 0], "\n".join(o[-3000:] for o in outs)
    resumed = (KILL_AT // SAVE_EVERY) * SAVE_EVERY
    assert all(f"resumed from checkpoint at step {resumed}" in out for out in outs)
    losses = _losses(workdir)
    rows = [json.loads(ln) for ln in metrics.read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))  # each step once
    for step in range(1, STEPS + 1):
        assert losses[step] == pytest.approx(uninterrupted[step], abs=1e-6), step


@pytest.mark.slow
def test_sigterm_stops_every_process_at_the_same_step_with_a_checkpoint(data, tmp_path):
    """A preemption: SIGTERM to every process. JAX's preemption notifier and Orbax's sync point
    make them all save at one step and exit cleanly (a per-process flag would let them leave
    the loop at different steps, and the one still training would wait on the other)."""
    workdir = tmp_path / "preempted"
    procs = _start_job(workdir, data)
    metrics, deadline = workdir / "metrics.jsonl", time.time() + 600
    while time.time() < deadline and all(p.poll() is None for p in procs):
        if metrics.is_file() and max(_losses(workdir) or [0]) >= 2:
            break
        time.sleep(0.05)
    for p in procs:
        p.send_signal(signal.SIGTERM)
    rcs, outs = _finish(procs)
    assert rcs == [0, 0], "\n".join(o[-3000:] for o in outs)
    stops = [[line for line in out.splitlines() if line.startswith("stopped by signal")]
             for out in outs]
    assert stops[0] == stops[1] and len(stops[0]) == 1, stops
    step = int(stops[0][0].split("at step ")[1].split(";")[0])
    assert step < STEPS
    assert str(step) in [p.name for p in (workdir / "checkpoints").iterdir()]
