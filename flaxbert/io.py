"""Filesystem helpers: nothing flaxbert writes is ever half-written."""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from pathlib import Path


@contextlib.contextmanager
def atomic_directory(destination: str | os.PathLike, overwrite: bool = False):
    """Yield a temporary directory beside `destination`; rename it into place on success.

    An existing destination (other than an empty directory) is refused unless overwrite=True, in
    which case it is replaced only after the new one is complete, and put back if the swap fails.
    On any error the temporary directory is removed.
    """
    dst = Path(destination).absolute()
    if dst.exists() and not (dst.is_dir() and not any(dst.iterdir())) and not overwrite:
        raise FileExistsError(f"destination {dst} already exists; pass overwrite=True "
                              f"(--overwrite on the command line) to replace it")
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.tmp-", dir=dst.parent))
    try:
        yield tmp
        if not os.path.lexists(dst):
            os.replace(tmp, dst)
            return
        old = dst.with_name(f".{dst.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(dst, old)
        try:
            os.replace(tmp, dst)
        except BaseException:
            os.replace(old, dst)
            raise
        shutil.rmtree(old) if old.is_dir() else old.unlink()
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def copy_files(files, directory: Path) -> None:
    """Copy files (tokenizer files, say) into `directory`, keeping their names."""
    for file in files:
        file = Path(file)
        if not file.is_file():
            raise FileNotFoundError(f"cannot copy {file}: not a file")
        shutil.copy2(file, Path(directory) / file.name)
