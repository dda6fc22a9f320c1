"""Paths that may live on cloud storage (``gs://bucket/...``), and how each library reaches them.

A path with a scheme is remote; everything else is a local path, as before. Remote paths are
`etils.epath.Path` objects (the pathlib API; Orbax takes them as they are) and reach the bucket
through fsspec's gcsfs, or TensorFlow's own GCS filesystem where epath picks it. Which client
reads what:

    Orbax checkpoints     epath (metadata, JSON items) + TensorStore's GCS driver (arrays)
    tf.data TFRecords     TensorFlow's GCS filesystem; through gcsfs file objects under an emulator
    everything else       gcsfs (fsspec): manifests, configs, metrics, locks, uploads of exports

Writers stay atomic (flaxbert.io): a remote file or directory is built in a local temporary,
uploaded under a hidden temporary name beside the destination, and copied into place only when
complete; an existing destination is refused without overwrite. A single object appears whole
or not at all; a directory appears object by object during the final server-side copy (GCS has
no directory rename), which is short next to the upload it follows; with overwrite, the old
directory is deleted only once the new one is uploaded, just before that copy.

A GCS emulator (tests): set STORAGE_EMULATOR_HOST=http://127.0.0.1:PORT and nothing else, and this
module points the other clients at it too: epath uses gcsfs rather than TensorFlow
(EPATH_USE_TF=false), TensorStore gets TENSORSTORE_GCS_HTTP_URL, and gcsfs skips its
hierarchical-namespace probe (a gRPC call an emulator does not answer). TensorFlow's GCS
filesystem has no endpoint setting at all (its www.googleapis.com URLs are compiled in), so
under an emulator TFRecords are read through gcsfs file objects (`tfrecord_dataset`) and
TensorBoard event files are written locally and uploaded (`LocalMirror`).
"""
from __future__ import annotations

import contextlib
import functools
import os
import re
import sys
import shutil
import socket
import struct
import tempfile
import threading
import time
from pathlib import Path

_SCHEME = re.compile(r"^([a-z][a-z0-9+.-]*)://")


def _follow_emulator() -> None:
    """Point every GCS client at STORAGE_EMULATOR_HOST when it is set (values set explicitly
    win). Called before any of those clients is imported by this module."""
    global _followed
    host = os.environ.get("STORAGE_EMULATOR_HOST")
    if not host:
        return
    if "://" not in host:
        host = f"http://{host}"
    os.environ.setdefault("EPATH_USE_TF", "false")
    os.environ.setdefault("TENSORSTORE_GCS_HTTP_URL", host)
    os.environ.setdefault("GOOGLE_AUTH_TOKEN_FOR_TESTING", "emulator")  # TensorStore's auth
    os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
    os.environ.setdefault("NO_GCE_CHECK", "true")  # no wait for a metadata server that is not there
    if host != _followed:
        # A gcsfs instance keeps the endpoint it was made with, and fsspec and epath keep
        # their instances: one made before the emulator was set (TFDS looks up gs://tfds-data
        # through epath) would still send this process's requests to storage.googleapis.com.
        if "gcsfs" in sys.modules:
            # Imported before GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT was false, gcsfs registered its
            # extended class, whose bucket-layout probe (gRPC) an emulator never answers.
            import fsspec
            import gcsfs.core
            for protocol in ("gs", "gcs"):
                fsspec.register_implementation(protocol, gcsfs.core.GCSFileSystem, clobber=True)
            sys.modules["gcsfs"].GCSFileSystem.clear_instance_cache()
            gcsfs.core.GCSFileSystem.clear_instance_cache()
        gpath = sys.modules.get("etils.epath.gpath")
        if gpath is not None and hasattr(gpath, "_is_tf_installed"):
            # epath caches its first answer to "use TensorFlow for gs://?", given before
            # EPATH_USE_TF was false; TensorFlow's GCS filesystem cannot reach an emulator.
            gpath._is_tf_installed.cache_clear()
        backend = sys.modules.get("etils.epath.backend")
        if backend is not None and hasattr(type(backend.fsspec_backend), "_get_filesystem"):
            type(backend.fsspec_backend)._get_filesystem.cache_clear()
        _followed = host


_followed: str | None = None  # the emulator endpoint the clients were last pointed at


def is_remote(path) -> bool:
    """Whether `path` (str, PathLike) names cloud storage (has a scheme such as gs://)."""
    return bool(_SCHEME.match(os.fspath(path))) if isinstance(path, (str, os.PathLike)) else False


def as_path(path):
    """`path` as a path object: an absolute `pathlib.Path` when local, an `epath.Path` when
    remote (never a local folder named ``gs:``)."""
    if is_remote(path):
        _follow_emulator()
        from etils import epath
        return epath.Path(os.fspath(path))
    return Path(path).absolute()


def tensorflow_reaches(path) -> bool:
    """Whether TensorFlow's own filesystems can open `path`: always for local paths; for
    remote ones, unless STORAGE_EMULATOR_HOST redirects GCS (TensorFlow cannot follow)."""
    return not is_remote(path) or not os.environ.get("STORAGE_EMULATOR_HOST")


def filesystem(url):
    """(fsspec filesystem, path inside it) of a remote `url`."""
    _follow_emulator()
    import fsspec
    try:
        return fsspec.core.url_to_fs(os.fspath(url))
    except ImportError as e:  # gcsfs missing: say which extra brings it
        raise ImportError(f"{os.fspath(url)}: cloud storage needs gcsfs "
                          f"(pip install 'flaxbert[gcs]'): {e}") from None


def _join(parent: str, name: str) -> str:
    return parent.rstrip("/") + "/" + name


def _split(url: str) -> tuple[str, str]:
    parent, _, name = os.fspath(url).rstrip("/").rpartition("/")
    return parent, name


# ----------------------------------------------------------------------------- atomic writers
def check_remote_destination(destination, overwrite: bool, directory: bool):
    """The remote counterpart of `flaxbert.io.check_destination`."""
    from flaxbert.io import _os_error  # one error shape for local and remote writers
    import errno
    dst = as_path(destination)
    fs, path = filesystem(dst)
    if not directory and fs.isdir(path):
        raise _os_error(IsADirectoryError, errno.EISDIR, f"{dst} is a directory; give a file name")
    exists = fs.isfile(path) or (fs.isdir(path) and bool(fs.ls(path, detail=False)))
    if exists and not overwrite:
        raise _os_error(FileExistsError, errno.EEXIST,
                        f"destination {dst} already exists; pass overwrite=True "
                        f"(--overwrite on the command line) to replace it")
    return dst


def remove_stale_remote_temporaries(destination) -> list[str]:
    """`flaxbert.io.remove_stale_temporaries` for a remote destination: the hidden temporaries a
    killed writer of it left (this host: its pid is gone; another host: untouched since this
    process started)."""
    from flaxbert.io import _HOST, _STARTED, _pid_alive
    fs, path = filesystem(destination)
    parent, name = _split(path)
    pattern = re.compile(rf"\.{re.escape(name)}\.(tmp|old)-([A-Za-z0-9._]+)-(\d+)-[0-9a-f]{{8}}")
    removed = []
    try:
        entries = fs.ls(parent, detail=True, refresh=True)
    except FileNotFoundError:
        return removed
    for entry in entries:
        match = pattern.fullmatch(_split(entry["name"])[1])
        if not match:
            continue
        kind, host, pid = match.group(1), match.group(2), int(match.group(3))
        if host == _HOST:
            gone = not _pid_alive(pid)
        else:
            times = [e.get("updated") or e.get("mtime") for e in
                     fs.find(entry["name"], detail=True).values()] if entry["type"] == "directory" \
                else [entry.get("updated") or entry.get("mtime")]
            gone = all(t is not None and _timestamp(t) < _STARTED for t in times)
        if gone and not (kind == "old" and not fs.exists(path)):
            fs.rm(entry["name"], recursive=True)
            removed.append(entry["name"])
    return removed


def _timestamp(value) -> float:
    import datetime
    if isinstance(value, datetime.datetime):
        return value.timestamp()
    return datetime.datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()


@contextlib.contextmanager
def remote_atomic(destination, overwrite: bool, directory: bool):
    """Yield a local temporary (directory or empty file); on success upload it beside the remote
    `destination` under a hidden temporary name and copy it into place. See the docstring."""
    from flaxbert.io import _HOST
    import secrets
    dst = check_remote_destination(destination, overwrite, directory)
    remove_stale_remote_temporaries(dst)
    fs, path = filesystem(dst)
    parent, name = _split(path)
    stage = Path(tempfile.mkdtemp(prefix="flaxbert-upload-"))
    local = stage / name
    if directory:
        local.mkdir()
    else:
        local.touch()
    try:
        yield local
        if not directory:  # one object: the upload itself is atomic
            fs.put_file(str(local), path)
            return
        tmp = _join(parent, f".{name}.tmp-{_HOST}-{os.getpid()}-{secrets.token_hex(4)}")
        files = [p for p in sorted(local.rglob("*")) if p.is_file()]
        try:
            fs.put([str(p) for p in files],
                   [_join(tmp, p.relative_to(local).as_posix()) for p in files])
            if fs.exists(path):  # overwrite: the old one goes once the new one is uploaded
                fs.rm(path, recursive=True)
            if files:
                fs.copy([_join(tmp, p.relative_to(local).as_posix()) for p in files],
                        [_join(path, p.relative_to(local).as_posix()) for p in files])
        finally:
            if fs.exists(tmp):
                fs.rm(tmp, recursive=True)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
        fs.invalidate_cache()


# ----------------------------------------------------------------------------- reading
@functools.lru_cache(maxsize=16)
def local_copy(url: str) -> Path:
    """A local copy of a remote file or directory (a tokenizer, an exported model), made once
    per process in a temporary directory that is removed at exit."""
    import atexit
    fs, path = filesystem(url)
    if not fs.exists(path):
        raise FileNotFoundError(f"{url} does not exist")
    stage = Path(tempfile.mkdtemp(prefix="flaxbert-download-"))
    atexit.register(shutil.rmtree, stage, True)
    target = stage / _split(path)[1]
    if fs.isdir(path):
        files = [f for f in fs.find(path) if not f.endswith("/")]
        target.mkdir()
        for f in files:
            (target / f[len(path.rstrip("/")) + 1:]).parent.mkdir(parents=True, exist_ok=True)
        fs.get(files, [str(target / f[len(path.rstrip("/")) + 1:]) for f in files])
    else:
        fs.get_file(path, str(target))
    return target


def _masked_crc(data: bytes) -> int:
    import google_crc32c
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def read_tfrecords(url):
    """The records of one TFRecord file read through a gcsfs file object, checksums checked as
    TensorFlow's reader checks them (length and data CRC32C, masked)."""
    url = url.decode() if isinstance(url, bytes) else os.fspath(url)
    fs, path = filesystem(url)
    with fs.open(path, "rb", block_size=4 << 20) as f:
        offset = 0
        while header := f.read(12):
            if len(header) < 12:
                raise ValueError(f"{url}: truncated record header at byte {offset}")
            (length,), (length_crc,) = struct.unpack("<Q", header[:8]), struct.unpack("<I", header[8:])
            if _masked_crc(header[:8]) != length_crc:
                raise ValueError(f"{url}: corrupted record length at byte {offset}")
            data, footer = f.read(length), f.read(4)
            if len(data) < length or len(footer) < 4:
                raise ValueError(f"{url}: truncated record at byte {offset}")
            if _masked_crc(data) != struct.unpack("<I", footer)[0]:
                raise ValueError(f"{url}: corrupted record data at byte {offset}")
            offset += 16 + length
            yield data


def tfrecord_reader(paths):
    """A function path-tensor -> tf.data.Dataset of records for files like `paths`: TensorFlow's
    TFRecordDataset where TensorFlow reaches them, else gcsfs file objects (an emulator)."""
    import tensorflow as tf
    if all(tensorflow_reaches(p) for p in paths):
        return tf.data.TFRecordDataset

    def read(path):
        return tf.data.Dataset.from_generator(
            read_tfrecords, args=(path,), output_signature=tf.TensorSpec([], tf.string))
    return read


# ----------------------------------------------------------------------------- workdir pieces
class RemoteAppendFile:
    """A text object appended to line by line (metrics.jsonl): GCS objects cannot be appended,
    so each flush uploads the whole text, which appears whole (one object)."""

    def __init__(self, url):
        self.fs, self.path = filesystem(url)
        self.text = self.fs.cat_file(self.path).decode("utf-8") if self.fs.exists(self.path) else ""
        self._dirty = False

    def write(self, text: str) -> None:
        self.text += text
        self._dirty = True

    def flush(self) -> None:
        if self._dirty:
            self.fs.pipe_file(self.path, self.text.encode("utf-8"))
            self._dirty = False

    def close(self) -> None:
        self.flush()


class LocalMirror:
    """A local directory whose files are uploaded to a remote one on `sync()` (TensorBoard's
    event files, where TensorFlow cannot write the remote directory itself)."""

    def __init__(self, url):
        self.url = os.fspath(url)
        self.fs, self.path = filesystem(url)
        self.local = Path(tempfile.mkdtemp(prefix="flaxbert-mirror-"))
        self._sizes: dict[Path, int] = {}

    def sync(self) -> None:
        for p in self.local.rglob("*"):
            if p.is_file() and self._sizes.get(p) != p.stat().st_size:
                self.fs.put_file(str(p), _join(self.path, p.relative_to(self.local).as_posix()))
                self._sizes[p] = p.stat().st_size

    def close(self) -> None:
        self.sync()
        shutil.rmtree(self.local, ignore_errors=True)


def move(src, dst) -> None:
    """Move a file or directory, local or remote (set aside a damaged checkpoint step)."""
    if is_remote(src):
        fs, path = filesystem(src)
        fs.mv(path, filesystem(dst)[1], recursive=True)
        fs.invalidate_cache()
    else:
        shutil.move(os.fspath(src), os.fspath(dst))


class RemoteLock:
    """The workdir lock on cloud storage, where there is no flock: an object holding the
    holder's pid, host and a heartbeat time, rewritten every `heartbeat` seconds while held.
    A lock whose holder is gone is taken over: on this host when its pid is not running (kill
    -9), from elsewhere when its heartbeat is older than `stale_after` seconds. The object is
    read back after writing and a process that finds another's there gives up; two processes
    that both read the lock free before either wrote can still both start (advisory, like
    the local flock's message, not a consensus protocol)."""

    def __init__(self, url, *, heartbeat: float = 30.0, stale_after: float = 300.0):
        self.url = os.fspath(url)
        self.fs, self.path = filesystem(url)
        self.heartbeat, self.stale_after = heartbeat, stale_after
        self._stop = threading.Event()
        self._thread = None
        self._mine = None

    def _read(self):
        try:
            info = self.fs.info(self.path, refresh=True)
            return self.fs.cat_file(self.path).decode("utf-8", "replace"), info
        except FileNotFoundError:
            return None, None

    def _holder_alive(self, text: str) -> bool:
        from flaxbert.io import _pid_alive
        fields = dict(re.findall(r"(pid|host|time) (\S+)", text))
        try:
            pid, host, beat = int(fields["pid"]), fields["host"], float(fields["time"])
        except (KeyError, ValueError):
            return False  # empty (released) or unreadable
        if host == socket.gethostname():
            return pid != os.getpid() and _pid_alive(pid)
        return time.time() - beat < self.stale_after

    def _write(self) -> None:
        self.fs.pipe_file(self.path, f"{self._mine} time {time.time():.3f}\n".encode())

    def acquire(self):
        from flaxbert.training.workdir import WorkdirBusy
        text, _ = self._read()
        if text and self._holder_alive(text):
            holder = " ".join(text.split()[:4])
            raise WorkdirBusy(f"{self.url.rsplit('/', 1)[0]} is in use by {holder} (lock file "
                              f"{self.url}); wait for it to finish or use another --workdir")
        self._mine = f"pid {os.getpid()} host {socket.gethostname()}"
        self._write()
        text, _ = self._read()
        if not text or not text.startswith(self._mine + " "):
            raise WorkdirBusy(f"{self.url}: another process took the lock at the same moment")
        self._thread = threading.Thread(target=self._beat, daemon=True, name="workdir-lock")
        self._thread.start()
        return self

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat):
            self._write()

    def release(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
            self.fs.pipe_file(self.path, b"")


_follow_emulator()
