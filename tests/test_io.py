"""flaxbert.io: writers refuse, rename into place, leave nothing behind, and clean up after a
killed writer (only its own leftovers)."""
import contextlib
import errno
import os
import stat
import subprocess
import time

import numpy as np
import pytest
from safetensors.numpy import save_file

from flaxbert import io


def _leftovers(directory, name):
    return sorted(p.name for p in directory.iterdir() if p.name.startswith(f".{name}."))


@contextlib.contextmanager
def _umask(mask):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def test_directory_is_renamed_into_place_and_an_existing_one_refused(tmp_path):
    dst = tmp_path / "out"
    with io.atomic_directory(dst) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".out.tmp-")
        (tmp / "a.txt").write_text("first")
        assert not dst.exists()  # nothing at the destination until the block is done
    assert (dst / "a.txt").read_text() == "first"
    with pytest.raises(FileExistsError, match=f"{dst} already exists; pass overwrite=True"):
        with io.atomic_directory(dst):
            pytest.fail("entered despite an existing destination")
    with io.atomic_directory(dst, overwrite=True) as tmp:
        (tmp / "b.txt").write_text("second")
    assert sorted(p.name for p in dst.iterdir()) == ["b.txt"]
    (tmp_path / "empty").mkdir()
    with io.atomic_directory(tmp_path / "empty") as tmp:  # an empty directory is no loss
        (tmp / "c.txt").write_text("third")
    assert (tmp_path / "empty" / "c.txt").is_file()
    assert _leftovers(tmp_path, "out") == [] and _leftovers(tmp_path, "empty") == []


def test_file_is_renamed_into_place_and_an_existing_one_refused(tmp_path):
    dst = tmp_path / "emb.npy"
    with io.atomic_file(dst) as tmp:
        assert tmp.is_file() and tmp.name.startswith(".emb.npy.tmp-")
        with open(tmp, "wb") as f:
            np.save(f, np.arange(3))
    np.testing.assert_array_equal(np.load(dst), np.arange(3))
    with pytest.raises(FileExistsError, match="emb.npy already exists"):
        with io.atomic_file(dst):
            pass
    with io.atomic_file(dst, overwrite=True) as tmp:
        tmp.write_bytes(b"new")
    assert dst.read_bytes() == b"new"
    with pytest.raises(IsADirectoryError, match=f"{tmp_path} is a directory"):
        with io.atomic_file(tmp_path, overwrite=True):
            pass
    assert _leftovers(tmp_path, "emb.npy") == []


@pytest.mark.parametrize("writer", [io.atomic_directory, io.atomic_file])
def test_a_failure_leaves_nothing_and_keeps_the_old_destination(tmp_path, writer):
    dst = tmp_path / "out"
    with pytest.raises(RuntimeError, match="half way"):
        with writer(dst):
            raise RuntimeError("half way")
    assert list(tmp_path.iterdir()) == []
    with writer(dst):
        pass
    before = sorted(os.listdir(dst)) if dst.is_dir() else dst.read_bytes()
    with pytest.raises(KeyboardInterrupt):
        with writer(dst, overwrite=True):
            raise KeyboardInterrupt
    assert (sorted(os.listdir(dst)) if dst.is_dir() else dst.read_bytes()) == before
    assert _leftovers(tmp_path, "out") == []


def test_disk_full_names_the_destination_not_the_temporary(tmp_path):
    dst = tmp_path / "out"
    with pytest.raises(OSError) as raised:
        with io.atomic_directory(dst) as tmp:
            (tmp / "model.safetensors").write_bytes(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
    assert raised.value.errno == errno.ENOSPC and raised.value.filename == str(dst)
    with pytest.raises(FileNotFoundError) as raised:
        with io.atomic_directory(dst) as tmp:
            open(tmp / "sub" / "x.bin", "rb")
    assert raised.value.filename == str(dst / "sub" / "x.bin")
    assert ".tmp-" not in str(raised.value)
    assert list(tmp_path.iterdir()) == []


def test_destination_below_a_file_or_in_a_read_only_place(tmp_path, monkeypatch):
    (tmp_path / "afile").write_text("x")
    for writer in (io.atomic_directory, io.atomic_file):
        with pytest.raises(NotADirectoryError,
                           match=f"cannot write {tmp_path}/afile/out: {tmp_path}/afile is a file"):
            with writer(tmp_path / "afile" / "out"):
                pass
    # A read-only place (the tests may run as root, where chmod does not stop a write).
    real_mkdir = os.mkdir

    def read_only(path, *args, **kwargs):
        if os.path.dirname(path) == str(tmp_path / "ro"):
            raise OSError(errno.EROFS, "Read-only file system", path)
        return real_mkdir(path, *args, **kwargs)

    (tmp_path / "ro").mkdir()
    monkeypatch.setattr(os, "mkdir", read_only)
    with pytest.raises(OSError, match=f"^cannot write {tmp_path}/ro/out: Read-only file system$"
                       ) as raised:
        with io.atomic_directory(tmp_path / "ro" / "out"):
            pass
    assert raised.value.errno == errno.EROFS
    assert sorted(os.listdir(tmp_path)) == ["afile", "ro"] and os.listdir(tmp_path / "ro") == []


def test_stale_temporaries_of_a_dead_writer_are_removed_and_nothing_else(tmp_path, caplog):
    dead = subprocess.Popen(["true"])
    dead.wait()
    host = io._HOST
    stale = [tmp_path / f".out.tmp-{host}-{dead.pid}-0123abcd",      # killed on this host
             tmp_path / f".out.old-{host}-{dead.pid}-89abcdef",      # killed while replacing
             tmp_path / ".out.tmp-otherhost-7-00000000"]             # another host, long ago
    kept = [tmp_path / f".out.tmp-{host}-{os.getpid()}-11111111",  # a live writer
            tmp_path / ".out.tmp-otherhost-8-22222222",             # another host, just now
            tmp_path / f".other.tmp-{host}-{dead.pid}-33333333",     # another destination
            tmp_path / ".out.tmp-abc123",                           # not the exact pattern
            tmp_path / f"out.tmp-{host}-{dead.pid}-44444444"]
    for path in stale + kept:
        path.mkdir()
        (path / "weights.bin").write_bytes(b"x" * 10)
    stale[-1].joinpath("weights.bin").unlink()
    long_ago = time.time() - 3600
    os.utime(stale[-1], (long_ago, long_ago))
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "old.txt").write_text("old")
    with io.atomic_directory(tmp_path / "out", overwrite=True) as tmp:
        assert not any(p.exists() for p in stale)
        (tmp / "new.txt").write_text("new")
    assert all(p.exists() for p in kept)
    assert sorted(os.listdir(tmp_path / "out")) == ["new.txt"]
    assert f"removed {stale[0]}, left by a killed writer" in caplog.text
    # A replaced destination is the only copy while the destination is missing: kept.
    lone_old = tmp_path / f".gone.old-{host}-{dead.pid}-55555555"
    lone_old.mkdir()
    assert io.remove_stale_temporaries(tmp_path / "gone") == [] and lone_old.exists()


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_permissions_follow_the_umask(tmp_path, umask):
    with _umask(umask):
        with io.atomic_directory(tmp_path / "ckpt") as tmp:
            (tmp / "sub").mkdir()
            save_file({"w": np.zeros(2, np.float32)}, tmp / "sub" / "model.safetensors")
            (tmp / "run.sh").write_text("#!/bin/sh\n")
            os.chmod(tmp / "run.sh", 0o700)
        with io.atomic_file(tmp_path / "emb.npy") as tmp:
            tmp.write_bytes(b"x")

    def mode(*parts):
        return stat.S_IMODE(tmp_path.joinpath(*parts).stat().st_mode)

    assert mode("ckpt") == mode("ckpt", "sub") == 0o777 & ~umask
    assert mode("ckpt", "sub", "model.safetensors") == 0o666 & ~umask  # safetensors makes 0600
    assert mode("ckpt", "run.sh") == 0o766 & ~umask  # the owner's execute bit is kept
    assert mode("emb.npy") == 0o666 & ~umask
