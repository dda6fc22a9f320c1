"""What the `flaxbert` command keeps off the terminal unless run with `-v`: the start-up lines
of the libraries under it, which say nothing about the command's own work.

Measured on this package's commands (prepare, pretrain, finetune, export, evaluate, predict,
embed, convert, bench, models) with TensorFlow 2.21 and jax on CPU, stderr held only these:

- TensorFlow's C++ logging while `import tensorflow` runs: "WARNING: All log messages before
  absl::InitializeLog() is called are written to STDERR", "I0000 ... port.cc:153] oneDNN custom
  operations are on ...", "I0000 ... cpu_feature_guard.cc:227] This TensorFlow binary is
  optimized to use available CPU instructions ..." (with a second line). TensorFlow 2.21 writes
  these before its logging reads TF_CPP_MIN_LOG_LEVEL, so the variable alone does not hide them:
  the first `import tensorflow` runs with file descriptor 2 sent to a temporary file, and what
  it wrote comes back on stderr without the INFO and WARNING records (TF_CPP_MIN_LOG_LEVEL's
  default here, 2; a value the user set is obeyed). TF_CPP_MIN_LOG_LEVEL=2 is also set for
  TensorFlow's later C++ logging, in this process and the ones it starts.
- with Python logging at INFO (-v): jax's backend probing ("Unable to initialize backend 'tpu'
  ...") and Orbax's dozens of checkpointing lines (through absl's Python logger). jax's platform
  warnings ("An NVIDIA GPU may be present on this machine, but a CUDA-enabled jaxlib is not
  installed. Falling back to cpu.") come from the same jax logger.

No Python `warnings` showed up in those runs, so none is filtered: a warning that appears is
news. flaxbert's own log records (a truncated input, a newly initialised head) always show.
"""
from __future__ import annotations

import contextlib
import importlib.abc
import importlib.util
import logging
import os
import re
import sys
import tempfile

# Loggers whose INFO lines (and jax's platform WARNINGs) are start-up chatter, not results.
CHATTY_LOGGERS = {"absl": logging.WARNING,  # Orbax logs only through absl's Python logger
                  "jax._src.xla_bridge": logging.ERROR}  # backend probing, "falling back to cpu"
TF_LEVEL_ENV = "TF_CPP_MIN_LOG_LEVEL"
QUIET_TF_LEVEL = "2"  # TensorFlow C++: errors only
# One record of absl's C++ log format: "I0000 00:00:1796305620.195250    8426 port.cc:153] ...";
# the level letter's index is TF_CPP_MIN_LOG_LEVEL's scale (I 0, W 1, E 2, F 3).
_CPP_RECORD = re.compile(r"^([IWEF])\d{4} [\d:.]+\s+\d+ \S+:\d+\] ")
_CPP_LEVELS = "IWEF"
# Lines Python writes (a warning, a traceback), never part of a C++ record.
_PYTHON_OUTPUT = re.compile(r"^(Traceback |\S+:\d+: \w*Warning: |\w+(Error|Exception): )")
_BEFORE_INIT = "WARNING: All log messages before absl::InitializeLog() is called are written to " \
               "STDERR"


def quiet_startup(verbose: bool) -> None:
    """Silence the libraries' start-up lines unless `verbose`. Call before anything imports
    TensorFlow (the `flaxbert` command does it right after parsing its arguments)."""
    if verbose:
        for name in CHATTY_LOGGERS:  # an earlier quiet call in this process may have set one
            logging.getLogger(name).setLevel(logging.NOTSET)
        return
    os.environ.setdefault(TF_LEVEL_ENV, QUIET_TF_LEVEL)
    skip_absent_tpu()
    for name, level in CHATTY_LOGGERS.items():
        logging.getLogger(name).setLevel(level)
    if "tensorflow" not in sys.modules and not any(
            isinstance(f, _QuietTensorFlowImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _QuietTensorFlowImport())


def skip_absent_tpu() -> bool:
    """Where libtpu is installed (the `tpu` extra, e.g. for `flaxbert compile`) on a machine
    with no TPU and no CUDA plugin, JAX would probe libtpu at start-up and print its failure
    (several lines on stderr); run on the CPU instead, as JAX would end up doing. Leaves an
    explicit JAX_PLATFORMS alone; compiling for a TPU topology still works under "cpu".
    True if it set JAX_PLATFORMS."""
    import glob
    import importlib.util
    if "JAX_PLATFORMS" in os.environ or "jax" in sys.modules:
        return False
    if importlib.util.find_spec("libtpu") is None:
        return False
    if glob.glob("/dev/accel[0-9]*") or glob.glob("/dev/vfio/[0-9]*"):  # TPU VM chips
        return False
    if any(importlib.util.find_spec(f"jax_cuda{v}_plugin") for v in (12, 13)):
        return False
    os.environ["JAX_PLATFORMS"] = "cpu"
    return True


def drop_cpp_records(text: str, min_level: int) -> str:
    """`text` (what a C++ library wrote to stderr) without absl-format records below
    `min_level` (0 INFO, 1 WARNING, 2 ERROR, 3 FATAL) and their continuation lines; other
    lines are kept as they are. Below 1, nothing is dropped."""
    kept, dropping = [], False
    for line in text.splitlines(keepends=True):
        record = _CPP_RECORD.match(line)
        if record:
            dropping = _CPP_LEVELS.index(record.group(1)) < min_level
        elif line.rstrip("\n") == _BEFORE_INIT:
            dropping = min_level >= 1  # absl's own WARNING that such records follow
        elif dropping and (not line.strip() or _PYTHON_OUTPUT.match(line)):
            dropping = False  # a continuation line is neither blank nor Python's own
        if not dropping:
            kept.append(line)
    return "".join(kept)


def _tf_min_level() -> int:
    try:
        return int(os.environ.get(TF_LEVEL_ENV, QUIET_TF_LEVEL))
    except ValueError:
        return 0  # a value TensorFlow would not read either: hide nothing


@contextlib.contextmanager
def captured_stderr(handle):
    """Send file descriptor 2 (C++ code writes there directly) to a temporary file for the
    block; then give what was written there to `handle(text)`."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            handle(captured.read().decode("utf-8", "replace"))


def _filtered_stderr(min_level: int):
    """`captured_stderr` writing the text back to stderr without records below `min_level`."""
    def write_back(text):
        rest = drop_cpp_records(text, min_level)
        if rest:
            sys.stderr.write(rest)
            sys.stderr.flush()
    return captured_stderr(write_back)


class _QuietTensorFlowImport(importlib.abc.MetaPathFinder):
    """Runs the first `import tensorflow` of the process under `_filtered_stderr`. A lookup
    alone (`importlib.util.find_spec`, as libraries probe for TensorFlow) imports nothing, so
    the finder stays in sys.meta_path until the import runs."""

    def __init__(self):
        self._looking = False

    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow" or self._looking:
            return None
        self._looking = True  # the lookup below must find TensorFlow's own spec, not recurse
        try:
            spec = importlib.util.find_spec(name)
        finally:
            self._looking = False
        if spec is not None and spec.loader is not None:
            spec.loader = _QuietLoader(spec.loader, self)
        return spec


class _QuietLoader(importlib.abc.Loader):
    def __init__(self, loader, finder: _QuietTensorFlowImport):
        self.loader, self.finder = loader, finder

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        if self.finder in sys.meta_path:
            sys.meta_path.remove(self.finder)  # the first import only
        # What introspection of the package finds is TensorFlow's own loader.
        module.__loader__ = module.__spec__.loader = self.loader
        min_level = _tf_min_level()
        if min_level < 1:
            return self.loader.exec_module(module)
        with _filtered_stderr(min_level):
            self.loader.exec_module(module)
