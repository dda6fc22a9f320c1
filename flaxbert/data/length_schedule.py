"""Sequence-length warm-up: which row length each training batch is cut to.

`data.seq_length_schedule = "128:0.9,512:0.1"` trains the first 90% of `train.num_steps` on rows
cut to 128 tokens and the rest at 512, as BERT was pre-trained (Devlin et al., 2019, section
A.2), without preparing the data twice. Li et al. (2022, "The Stability-Efficiency Dilemma")
warm up over more stages for stability at large batch sizes; any number of stages works.

Stage k starts at batch round(num_steps * (f_0 + ... + f_{k-1})); batch index = step, so a
resumed run is at the same length at the same step. The pipeline cuts a longer row to the
stage's length keeping its last token (the closing [SEP] / </s>) at the end; rows already
short enough are untouched. Each distinct length compiles the train step once (jax.jit
specializes on shapes), so a schedule of k lengths costs k compiles, not one per step.

Cutting an NSP / SOP pair can cut away its second segment while the pair keeps its label; such
recipes can instead prepare one directory per length and start the long phase with `init_from`,
as configs/bert_base.py's phases do.
"""
from __future__ import annotations


def parse_length_schedule(spec: str, num_steps: int, max_seq_length: int | None = None,
                          field: str = "data.seq_length_schedule") -> tuple:
    """((first_batch, length), ...) for "LEN:FRACTION,...", ascending lengths whose fractions
    sum to 1; () for "". A length over `max_seq_length` (the prepared data's) is refused, since
    rows can only be cut, not grown. Errors name `field`."""
    spec = (spec or "").strip()
    if not spec:
        return ()
    stages = []
    for part in spec.split(","):
        length, sep, fraction = part.strip().partition(":")
        try:
            stages.append((int(length), float(fraction)))
        except ValueError:
            raise ValueError(f"{field}={spec!r}: {part.strip()!r} is not LEN:FRACTION "
                             "(e.g. '128:0.9,512:0.1')") from None
        if not sep:
            raise ValueError(f"{field}={spec!r}: {part.strip()!r} is not LEN:FRACTION")
    lengths = [n for n, _ in stages]
    if any(n < 2 for n in lengths):
        raise ValueError(f"{field}={spec!r}: every length must be >= 2")
    if lengths != sorted(set(lengths)):
        raise ValueError(f"{field}={spec!r}: lengths must increase from stage to stage")
    if any(not 0 < f <= 1 for _, f in stages) or abs(sum(f for _, f in stages) - 1) > 1e-6:
        raise ValueError(f"{field}={spec!r}: fractions must be in (0, 1] and sum to 1")
    if max_seq_length is not None and lengths[-1] > max_seq_length:
        raise ValueError(f"{field}={spec!r}: length {lengths[-1]} exceeds the data's "
                         f"max_seq_length={max_seq_length} (rows can be cut, not grown)")
    out, done = [], 0.0
    for length, fraction in stages:
        first = round(num_steps * done)
        if out and first == out[-1][0]:
            out[-1] = (first, length)  # a stage too short to get a step: the next one wins
        else:
            out.append((first, length))
        done += fraction
    return tuple(out)


def length_at(schedule: tuple, batch_index: int, default: int) -> int:
    """The row length of batch `batch_index` under `schedule` (default: no schedule)."""
    length = default
    for first, stage_length in schedule:
        if batch_index >= first:
            length = stage_length
    return length
