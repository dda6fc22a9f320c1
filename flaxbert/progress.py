"""Progress of long work (prepare, embed, predict, evaluate, sharded conversion, the training
loop): tqdm's bar on a terminal, plain lines everywhere else.

    with progress(total=len(shards), desc="writing shards", unit="shard") as bar:
        for shard in shards:
            ...
            bar.update()

When stderr is a terminal this is a tqdm bar. When it is not (a log file, a CI job, a pipe) a
bar's carriage returns would pile up into one unreadable line, so the same meter is printed as
one plain line at most every FLAXBERT_PROGRESS_SECONDS seconds (default 30; 0: on every
update), and a last line at the end if any was printed. Work shorter than that prints nothing.
FLAXBERT_PROGRESS=0 turns both forms off.
"""
from __future__ import annotations

import os
import sys
import time
from typing import IO

INTERVAL_ENV = "FLAXBERT_PROGRESS_SECONDS"
SWITCH_ENV = "FLAXBERT_PROGRESS"
DEFAULT_INTERVAL_S = 30.0
# tqdm's own meter, without the bar: "embed: 2,048/10,000 text (20%) [00:10<00:40, 204text/s]".
LINE_FORMAT = "{desc}: {n_fmt}/{total_fmt} {unit} ({percentage:.0f}%) [{elapsed}<{remaining}, " \
              "{rate_fmt}]{postfix}"
LINE_FORMAT_NO_TOTAL = "{desc}: {n_fmt} {unit} [{elapsed}, {rate_fmt}]{postfix}"


def progress_enabled() -> bool:
    """False when FLAXBERT_PROGRESS is 0 / false / no / off."""
    return os.environ.get(SWITCH_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def line_interval() -> float:
    """Seconds between plain progress lines (FLAXBERT_PROGRESS_SECONDS, default 30)."""
    text = os.environ.get(INTERVAL_ENV, "")
    try:
        value = float(text) if text.strip() else DEFAULT_INTERVAL_S
    except ValueError:
        raise ValueError(f"{INTERVAL_ENV}={text!r} must be a number of seconds") from None
    if value < 0:
        raise ValueError(f"{INTERVAL_ENV}={text!r} must be >= 0")
    return value


class Progress:
    """A tqdm bar (`terminal`) or plain periodic lines; see the module docstring.

    total: units of work, None if unknown. initial: units already done (a resumed run).
    enabled=False shows nothing (other ranks of a multi-host run, short work the caller knows
    needs no bar). file: default stderr. terminal: default whether `file` is a terminal.
    interval: seconds between plain lines (default FLAXBERT_PROGRESS_SECONDS).
    """

    def __init__(self, *, total: int | None = None, desc: str, unit: str = "it", initial: int = 0,
                 enabled: bool = True, file: IO[str] | None = None, terminal: bool | None = None,
                 interval: float | None = None, leave: bool = True):
        self.file = sys.stderr if file is None else file
        self.enabled = enabled and progress_enabled()
        self.terminal = _isatty(self.file) if terminal is None else terminal
        self.total, self.desc, self.unit = total, desc, unit
        self.n = self._printed_n = initial
        self._initial, self._postfix, self._lines = initial, "", 0
        self.interval = line_interval() if interval is None else interval
        self._start = self._last_line = time.monotonic()
        self.bar = None
        if self.enabled and self.terminal:
            from tqdm import tqdm
            self.bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, file=self.file,
                            dynamic_ncols=True, leave=leave)

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.bar is not None:
            self.bar.update(n)
        elif self.enabled and time.monotonic() - self._last_line >= self.interval:
            self._line()

    def set_postfix_str(self, text: str) -> None:
        """Text after the meter (the trainer's latest metrics); shown with the next update."""
        self._postfix = text
        if self.bar is not None:
            self.bar.set_postfix_str(text, refresh=False)

    def write(self, text: str, file: IO[str] | None = None) -> None:
        """Print a line (default on stdout) without breaking the bar."""
        if self.bar is not None:
            self.bar.write(text, file=file)
        else:
            print(text, file=file, flush=True)

    def line(self) -> str:
        """The meter as one plain line (what non-terminals get)."""
        from tqdm import tqdm
        elapsed = time.monotonic() - self._start
        return tqdm.format_meter(
            self.n, self.total, elapsed, prefix=self.desc, unit=self.unit,
            postfix=self._postfix or None, initial=self._initial,
            bar_format=LINE_FORMAT if self.total else LINE_FORMAT_NO_TOTAL,
            rate=(self.n - self._initial) / elapsed if elapsed > 0 else None)

    def _line(self) -> None:
        print(self.line(), file=self.file, flush=True)
        self._lines += 1
        self._printed_n, self._last_line = self.n, time.monotonic()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        elif self.enabled and self._lines and self.n != self._printed_n:
            self._line()  # where the work ended, after lines that showed it going
        self.enabled = False

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def progress(iterable=None, **kwargs):
    """`Progress(**kwargs)`, or with an iterable a generator over it that counts each item
    (total defaults to len(iterable) when it has one)."""
    if iterable is None:
        return Progress(**kwargs)
    if kwargs.get("total") is None and hasattr(iterable, "__len__"):
        kwargs["total"] = len(iterable)
    return _counted(iterable, Progress(**kwargs))


def _counted(iterable, bar: Progress):
    with bar:
        for item in iterable:
            yield item
            bar.update()


def _isatty(file) -> bool:
    try:
        return file.isatty()
    except (AttributeError, ValueError):  # no isatty, or closed
        return False
