"""Filesystem helpers: nothing flaxbert writes is ever half-written.

Writers build their output in a hidden temporary sibling named ``.NAME.tmp-HOST-PID-RANDOM`` and
rename it into place when it is complete. The name says which process wrote it, so a later
writer of the same destination can remove what a killed one left (and nothing else).
"""
from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import secrets
import shutil
import socket
import stat
import time
from pathlib import Path
from typing import Any

from flaxbert import storage

log = logging.getLogger(__name__)
# A temporary (or a replaced destination awaiting deletion) whose mtime is before this is not
# this process's: every one it makes comes later.
_STARTED = time.time()
_HOST = re.sub(r"[^A-Za-z0-9.]", "_", socket.gethostname()) or "localhost"


def _sibling(dst: Path, kind: str) -> Path:
    return dst.with_name(f".{dst.name}.{kind}-{_HOST}-{os.getpid()}-{secrets.token_hex(4)}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another account's
        return True
    return True


def _newest_mtime(path: Path) -> float:
    times = [path.lstat().st_mtime]
    if path.is_dir() and not path.is_symlink():
        times += [entry.stat(follow_symlinks=False).st_mtime for entry in os.scandir(path)]
    return max(times)


def remove_stale_temporaries(destination: str | os.PathLike) -> list[Path]:
    """Remove the temporaries of `destination` that a killed writer left; return them.

    Only names of the exact pattern for this destination count, and only when their writer is
    gone: on this host, its pid is not running; from another host (a shared filesystem), the
    temporary was last touched before this process started. A replaced destination still
    awaiting deletion (``.old-``) is kept while the destination itself is missing, as it may
    then be the only copy.
    """
    if storage.is_remote(destination):
        return storage.remove_stale_remote_temporaries(destination)
    dst = Path(destination).absolute()
    pattern = re.compile(rf"\.{re.escape(dst.name)}\.(tmp|old)-([A-Za-z0-9._]+)-(\d+)"
                         r"-[0-9a-f]{8}")
    removed = []
    try:
        entries = list(os.scandir(dst.parent))
    except OSError:
        return removed
    for entry in entries:
        match = pattern.fullmatch(entry.name)
        if not match:
            continue
        kind, host, pid = match.group(1), match.group(2), int(match.group(3))
        path = Path(entry.path)
        try:
            gone = (not _pid_alive(pid) if host == _HOST
                    else _newest_mtime(path) < _STARTED)
            if not gone or (kind == "old" and not os.path.lexists(dst)):
                continue
            shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
        except FileNotFoundError:  # another cleaner got there first
            continue
        except OSError as e:  # cleaning is a courtesy: it never stops the writer
            log.warning("could not remove %s, left by a killed writer of %s: %s", path, dst, e)
            continue
        log.warning("removed %s, left by a killed writer of %s (pid %d on %s)", path, dst, pid,
                    host)
        removed.append(path)
    return removed


def _umask() -> int:
    try:  # Linux: read it, rather than set-and-restore, which races with other threads
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _normal_permissions(path: Path) -> None:
    """rwx for dirs and rw for files (execute bits kept) under the umask: libraries that write
    through mkstemp (safetensors does) leave 0600, which other accounts cannot read."""
    umask = _umask()

    def fix(p: Path, st) -> None:
        mode = 0o777 if stat.S_ISDIR(st.st_mode) else 0o666 | (st.st_mode & 0o111)
        if stat.S_IMODE(st.st_mode) != mode & ~umask:
            os.chmod(p, mode & ~umask)

    fix(path, path.lstat())
    if path.is_dir():
        for root, dirs, files in os.walk(path):
            for name in dirs + files:
                p = Path(root, name)
                st = p.lstat()
                if not stat.S_ISLNK(st.st_mode):
                    fix(p, st)


def _os_error(cls: type, code: int | None, message: str) -> OSError:
    """An OSError whose str() is just `message` (one line naming the path) that keeps errno."""
    error = cls(message)
    error.errno = code
    return error


def check_destination(destination: str | os.PathLike, overwrite: bool = False,
                      directory: bool = True) -> Path:
    """The absolute destination, once it is known that a writer may put it there: an existing
    one (other than an empty directory, for a directory) is refused unless overwrite, a file
    is never put over a directory, and one below a regular file is refused naming both.
    Writers call this before long work, so that it is not wasted. A remote destination
    (gs://) is checked on the bucket and returned as an epath.Path (flaxbert.storage)."""
    if storage.is_remote(destination):
        return storage.check_remote_destination(destination, overwrite, directory)
    dst = Path(destination).absolute()
    if not directory and dst.is_dir():
        raise _os_error(IsADirectoryError, errno.EISDIR, f"{dst} is a directory; give a file name")
    if os.path.lexists(dst):
        if not overwrite and not (dst.is_dir() and not any(dst.iterdir())):
            raise _os_error(FileExistsError, errno.EEXIST,
                            f"destination {dst} already exists; pass overwrite=True "
                            f"(--overwrite on the command line) to replace it")
        return dst
    parent = next(p for p in dst.parents if os.path.lexists(p))
    if not parent.is_dir():
        raise _os_error(NotADirectoryError, errno.ENOTDIR,
                        f"cannot write {dst}: {parent} is a file, not a directory")
    return dst


def _name_destination(error: BaseException, tmp: Path, dst: Path) -> None:
    """Make an error raised while writing `tmp` name the user's destination instead: the
    temporary is gone by the time anyone reads the message."""
    if isinstance(error, OSError):
        for attr in ("filename", "filename2"):
            name = getattr(error, attr)
            if isinstance(name, str) and (name == str(tmp) or name.startswith(f"{tmp}{os.sep}")):
                setattr(error, attr, str(dst) + name[len(str(tmp)):])
        if error.filename is None and error.errno is not None:  # e.g. ENOSPC from a library
            error.filename = str(dst)
    elif str(tmp) in str(error):
        error.args = tuple(a.replace(str(tmp), str(dst)) if isinstance(a, str) else a
                           for a in error.args)


@contextlib.contextmanager
def _atomic(destination, overwrite: bool, directory: bool):
    if storage.is_remote(destination):  # built locally, uploaded, copied into place
        with storage.remote_atomic(destination, overwrite, directory) as tmp:
            yield tmp
        return
    dst = check_destination(destination, overwrite, directory)
    remove_stale_temporaries(dst)
    tmp = _sibling(dst, "tmp")
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
        if directory:
            tmp.mkdir()
        else:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    except OSError as e:  # a read-only place, no permission, ...: name the destination, not tmp
        raise _os_error(type(e), e.errno, f"cannot write {dst}: {e.strerror or e}") from None
    try:
        yield tmp
        _normal_permissions(tmp)
        if not directory or not os.path.lexists(dst):  # a rename replaces a file atomically
            os.replace(tmp, dst)
            return
        old = _sibling(dst, "old")
        os.replace(dst, old)
        try:
            os.replace(tmp, dst)
        except BaseException:
            os.replace(old, dst)
            raise
        shutil.rmtree(old) if old.is_dir() else old.unlink()
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink(missing_ok=True)
        _name_destination(e, tmp, dst)
        raise


def atomic_directory(destination: str | os.PathLike, overwrite: bool = False):
    """Yield a temporary directory beside `destination`; rename it into place on success.

    An existing destination (other than an empty directory) is refused unless overwrite=True, in
    which case it is replaced only after the new one is complete, and put back if the swap fails.
    On any error the temporary directory is removed, and an OSError names the destination, not
    the temporary. What a killed earlier writer of the same destination left is removed first
    (see `remove_stale_temporaries`). The result has normal permissions under the umask.
    """
    return _atomic(destination, overwrite, directory=True)


def atomic_file(destination: str | os.PathLike, overwrite: bool = False):
    """Yield the path of an empty temporary file beside `destination`; the caller writes it,
    and it is renamed into place on success. The rules of `atomic_directory` apply."""
    return _atomic(destination, overwrite, directory=False)


def copy_files(files, directory: Path) -> None:
    """Copy files (tokenizer files, say) into `directory`, keeping their names."""
    for file in files:
        file = Path(file)
        if not file.is_file():
            raise FileNotFoundError(f"cannot copy {file}: not a file")
        shutil.copy2(file, Path(directory) / file.name)


def read_text(path: str | os.PathLike) -> str:
    """A UTF-8 text file's contents; a file that is missing, a directory or not UTF-8 raises one
    clear error naming it (local, or remote through flaxbert.storage)."""
    path = storage.as_path(path) if storage.is_remote(path) else Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a directory, expected a file")
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} does not exist") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not UTF-8 text (byte {e.start}: {e.reason})") from None


def read_json(path: str | os.PathLike, expect: type | None = dict) -> Any:
    """A JSON file's value; bad JSON (or, with `expect`, a value of another type) raises a
    ValueError naming the file and where it went wrong."""
    try:
        value = json.loads(read_text(path))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON (line {e.lineno} column {e.colno}: "
                         f"{e.msg})") from None
    if expect is not None and not isinstance(value, expect):
        raise ValueError(f"{path} must hold a JSON {'object' if expect is dict else expect.__name__}"
                         f", got {type(value).__name__}")
    return value
