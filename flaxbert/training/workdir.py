"""What a training workdir holds besides checkpoints, and who may write it.

    <workdir>/lock            held (fcntl.flock) by the one process training here; pid and host
    <workdir>/config.json     the run's config, as given
    <workdir>/data.json       what the data looked like (shapes, tokenizer ids, task labels)
    <workdir>/tokenizer/      a copy of the data's tokenizer, so an export needs nothing else
    <workdir>/metrics.jsonl   one row per logged step (and per evaluation), each step once

The lock is an advisory `flock` on an open file: the kernel drops it when the process dies, even
by kill -9, so a stale lock is simply taken over; the pid and host written into it are only for
the message a second process prints. A gs:// workdir has no flock: its lock is an object with a
heartbeat (`flaxbert.storage.RemoteLock`), taken over when its holder's pid is gone (same host)
or its heartbeat is old (another host).
"""
from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
from pathlib import Path

from flaxbert import storage
from flaxbert.io import atomic_directory, atomic_file, read_json
from flaxbert.tokenizer import TOKENIZER_FILES

LOCK, MANIFEST, TOKENIZER = "lock", "data.json", "tokenizer"


class WorkdirBusy(BlockingIOError):
    """Another process is training in this workdir (an OSError, as the CLI reports it)."""


class WorkdirLock:
    """An exclusive lock on a workdir for the lifetime of a run (a context manager)."""

    def __init__(self, workdir: str | os.PathLike):
        self.path = storage.as_path(workdir) / LOCK
        self._fd: int | None = None
        # No flock on cloud storage: an object with a heartbeat instead (storage.RemoteLock).
        self._remote = storage.RemoteLock(self.path) if storage.is_remote(self.path) else None

    def acquire(self) -> WorkdirLock:
        if self._remote is not None:
            self._remote.acquire()
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "another process"
            os.close(fd)
            raise WorkdirBusy(f"{self.path.parent} is in use by {holder} (lock file {self.path}); "
                              "wait for it to finish or use another --workdir") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._remote is not None:
            self._remote.release()
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            os.close(self._fd)  # closing drops the flock
            self._fd = None

    def __enter__(self) -> WorkdirLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def trim_metrics(workdir: str | os.PathLike, last_step: int) -> int:
    """Drop metrics.jsonl rows past `last_step` (steps a resumed run replays after the checkpoint
    it resumes from), rewriting the file atomically. Returns how many rows were dropped."""
    file = storage.as_path(workdir) / "metrics.jsonl"
    if not file.exists():
        return 0
    lines = file.read_text(encoding="utf-8").splitlines()
    kept = []
    for line in lines:
        try:
            step = json.loads(line)["step"]
        except (ValueError, KeyError, TypeError):
            continue  # a line cut short by a kill mid-write
        if step <= last_step:
            kept.append(line)
    if len(kept) == len(lines):
        return 0
    with atomic_file(file, overwrite=True) as tmp:
        tmp.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
    return len(lines) - len(kept)


def save_data_description(workdir: str | os.PathLike, description: dict,
                          tokenizer_dir: str | os.PathLike | None) -> None:
    """Keep the data's description (shapes, tokenizer ids, labels) and a copy of its tokenizer
    in the workdir (the copy once; a resumed run reuses it), so export and restore need only
    the workdir."""
    workdir = storage.as_path(workdir)
    tokenizer = workdir / TOKENIZER
    source = Path(tokenizer_dir or "")
    if not tokenizer.exists() and tokenizer_dir and source.is_dir():
        with atomic_directory(tokenizer) as tmp:
            for name in TOKENIZER_FILES:  # not a checkpoint's config.json or weights
                if (source / name).is_file():
                    shutil.copy2(source / name, tmp / name)
    file = workdir / MANIFEST
    with atomic_file(file, overwrite=True) as tmp:
        tmp.write_text(json.dumps({k: v for k, v in description.items() if k != "tokenizer_dir"},
                                  indent=2, sort_keys=True) + "\n", encoding="utf-8")


def load_data_description(workdir: str | os.PathLike) -> dict:
    """The manifest `save_data_description` kept, its tokenizer_dir pointing into the workdir."""
    workdir = storage.as_path(workdir)
    file = workdir / MANIFEST
    if not file.is_file():
        raise FileNotFoundError(f"{workdir} has no {MANIFEST}; it was not written by "
                                "`flaxbert pretrain` (or by a version before workdirs kept it)")
    manifest = read_json(file)
    if (workdir / TOKENIZER).is_dir():  # tokenizers load from local files: a copy if remote
        manifest["tokenizer_dir"] = str(storage.local_copy(str(workdir / TOKENIZER))
                                        if storage.is_remote(workdir) else workdir / TOKENIZER)
    return manifest
