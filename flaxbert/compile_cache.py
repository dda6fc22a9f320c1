"""JAX's persistent compilation cache, on by default wherever flaxbert compiles for you.

The `flaxbert` command, the pipelines and the inference engine call `enable_compilation_cache()`
before they compile, so a second `flaxbert embed`, `predict` or resumed `pretrain` on the same
machine reads its executables from disk instead of compiling them again.

    FLAXBERT_CACHE_DIR=/fast/disk/jax     moves the cache (default ~/.cache/flaxbert/jax, under
                                          $XDG_CACHE_HOME when that is set)
    FLAXBERT_COMPILATION_CACHE=0          turns it off
    JAX_COMPILATION_CACHE_DIR             (JAX's own setting) wins when set, as does a
                                          jax_compilation_cache_dir set in code before

Entries are keyed by JAX on the computation, the jax/jaxlib version, the devices and the
compiler flags, so a stale or foreign entry is never used; deleting the folder is always safe.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

CACHE_DIR_ENV = "FLAXBERT_CACHE_DIR"
SWITCH_ENV = "FLAXBERT_COMPILATION_CACHE"
# JAX's default threshold (1 s) leaves out most CPU compiles of small models, which take
# 0.1-1 s each and are what a short `embed` or `predict` spends its time on; the many tiny
# eager-op compiles (a few ms each) stay out of the cache.
MIN_COMPILE_SECONDS = 0.1


def cache_enabled() -> bool:
    """False when FLAXBERT_COMPILATION_CACHE is 0 / false / no / off."""
    return os.environ.get(SWITCH_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def default_cache_dir() -> Path:
    """FLAXBERT_CACHE_DIR, else $XDG_CACHE_HOME/flaxbert/jax, else ~/.cache/flaxbert/jax."""
    if os.environ.get(CACHE_DIR_ENV):
        return Path(os.environ[CACHE_DIR_ENV]).expanduser()
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "flaxbert" / "jax"


def enable_compilation_cache(path: str | os.PathLike | None = None) -> Path | None:
    """Point JAX's persistent compilation cache at `path` (default: `default_cache_dir()`) and
    cache compiles of 0.1 s and more. Returns the folder in use, or None when the cache is off.

    Does nothing when FLAXBERT_COMPILATION_CACHE=0, or when a cache folder is already set (by
    JAX_COMPILATION_CACHE_DIR, an earlier call or the user's own jax.config.update): a choice
    made by the user is never overridden. JAX creates the folder on its first compile.
    """
    if not cache_enabled():
        return None
    folder = str(Path(path).expanduser() if path is not None else default_cache_dir())
    jax = sys.modules.get("jax")
    if jax is None:
        # Not imported yet (a command that may never need it): JAX reads these when it is
        # imported, in this process and in the ones it starts, and nothing waits for JAX now.
        os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS",
                              str(MIN_COMPILE_SECONDS))
        return Path(os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", folder))
    if jax.config.jax_compilation_cache_dir:
        return Path(jax.config.jax_compilation_cache_dir)
    jax.config.update("jax_compilation_cache_dir", folder)
    if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:
        jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECONDS)
    return Path(folder)
