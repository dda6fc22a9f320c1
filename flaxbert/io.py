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

    An existing destination is refused unless overwrite=True, in which case it is replaced only
    after the new one is complete. On any error the temporary directory is removed.
    """
    dst = Path(destination).absolute()
    if dst.exists() and not overwrite:
        raise FileExistsError(f"destination {dst} already exists; pass overwrite=True "
                              f"(--overwrite on the command line) to replace it")
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.tmp-", dir=dst.parent))
    try:
        yield tmp
        if dst.exists():
            old = dst.with_name(f".{dst.name}.old-{uuid.uuid4().hex[:8]}")
            os.replace(dst, old)
            os.replace(tmp, dst)
            shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink()
        else:
            os.replace(tmp, dst)
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
