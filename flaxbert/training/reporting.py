"""Where training metrics go: <workdir>/metrics.jsonl, TensorBoard (<workdir>/tensorboard), and
the terminal (a `flaxbert.progress` bar, or a plain line per log interval where stderr is not a
terminal). Throughput and MFU are computed here."""
from __future__ import annotations

import json
from pathlib import Path

import jax

from flaxbert import storage
from flaxbert.progress import Progress

# What the terminal shows of a log interval's metrics (all of them go to metrics.jsonl).
SHOWN_METRICS = ("loss", "mlm_accuracy", "eval_loss", "eval_mlm_accuracy", "eval_accuracy",
                 "eval_f1", "seq_per_s", "mfu")


def throughput(trainer, steps: int, seconds: float) -> dict:
    """seq/s, tokens/s, step time and (on accelerators with a known peak) MFU for `steps` steps
    that took `seconds`. FLOPs come from flaxbert.flops' explicit formula."""
    batch = trainer.config.train.global_batch_size
    out = {"step_time_s": seconds / steps, "seq_per_s": steps * batch / seconds,
           "tokens_per_s": steps * batch * trainer.seq_len / seconds}
    flops_per_seq = flops_per_sequence(trainer)
    if flops_per_seq:
        from flaxbert import flops
        out["model_tflops_per_s"] = flops_per_seq * out["seq_per_s"] / 1e12
        peak = flops.peak_flops(jax.devices()[0])
        if peak:
            out["mfu"] = flops_per_seq * out["seq_per_s"] / (peak * jax.device_count())
    return out


def flops_per_sequence(trainer) -> float | None:
    """Model FLOPs (forward + backward) of one training sequence of `trainer`'s objective, from
    flaxbert.flops' formula; None for a family the formula does not cover."""
    if hasattr(trainer.objective, "flops_per_sequence"):
        return trainer.objective.flops_per_sequence(trainer.seq_len)
    return _flops(trainer)


def _flops(trainer) -> float | None:
    try:
        from flaxbert import flops
    except ImportError:
        return None
    masked = trainer.config.data.max_predictions_per_seq if trainer.config.data.masking else None
    if hasattr(trainer.data, "masking"):  # pre-training: its P (max_predictions_per_seq=0 is sized)
        masking = trainer.data.masking
        masked = masking.predictions(trainer.seq_len) if masking is not None else None
    try:
        return flops.training_flops_per_sequence(trainer.model_config, trainer.seq_len,
                                                 masked_positions=masked)
    except ValueError:  # a family the formula does not cover (XLNet): no MFU, say nothing false
        return None


def _tensorboard_writer(directory: Path):
    """A tf.summary writer for `directory`, or None where the data extra (TensorFlow) is not
    installed: then metrics go to JSONL only."""
    try:
        import tensorflow as tf
    except ImportError:
        return None
    return tf.summary.create_file_writer(str(directory))


class MetricWriter:
    """One log interval's metrics to metrics.jsonl and TensorBoard, and to the terminal through
    `flaxbert.progress`: a bar with the latest training metrics on a terminal (unless
    `progress_bar=False`), else one plain line per log interval; evaluation results and notes
    are lines of their own on stdout."""

    def __init__(self, workdir: Path, *, enabled: bool = True, progress_total: int = 0,
                 progress_start: int = 0, progress_bar: bool = True, desc: str = "train"):
        self.enabled = enabled
        remote = storage.is_remote(workdir)  # gs://: no appends there (flaxbert.storage)
        self.jsonl = None if not enabled else (
            storage.RemoteAppendFile(storage.as_path(workdir) / "metrics.jsonl") if remote
            else open(Path(workdir) / "metrics.jsonl", "a"))
        # TensorBoard's writer is TensorFlow's: opened at the first write, so that building a
        # writer (or a run that logs nothing) does not import TensorFlow. Where TensorFlow cannot
        # reach the remote workdir (an emulator) it writes a local mirror, uploaded per flush.
        tb_dir = storage.as_path(workdir) / "tensorboard"
        self._mirror = (storage.LocalMirror(tb_dir) if enabled and remote
                        and not storage.tensorflow_reaches(tb_dir) else None)
        self.tb, self._tb_dir = None, (self._mirror.local if self._mirror else tb_dir) \
            if enabled else None
        # interval=0: the plain form prints a line whenever metrics are logged (log_every).
        self.progress = Progress(total=progress_total, initial=progress_start, desc=desc,
                                 unit="step", enabled=enabled, interval=0,
                                 terminal=None if progress_bar else False)
        self._last_step = progress_start

    def write(self, step: int, metrics: dict) -> None:
        if not self.enabled or not metrics:
            return
        row = {"step": step, **{k: float(v) for k, v in metrics.items()}}
        self.jsonl.write(json.dumps(row) + "\n")
        self.jsonl.flush()
        if self._tb_dir is not None:
            self.tb, self._tb_dir = _tensorboard_writer(self._tb_dir), None
        if self.tb is not None:
            import tensorflow as tf
            with self.tb.as_default(step=step):
                for k, v in metrics.items():
                    tf.summary.scalar(k, float(v))
            self.tb.flush()
            if self._mirror is not None:
                self._mirror.sync()
        shown = {k: metrics[k] for k in SHOWN_METRICS if k in metrics}
        text = " ".join(f"{k}={v:.4g}" for k, v in shown.items())
        if "loss" in metrics:  # a training interval: the meter moves on
            self.progress.set_postfix_str(text)
            self.progress.update(step - self._last_step)
            self._last_step = step
        else:  # an evaluation: a result of its own, kept above the bar
            self.progress.write(f"step {step}: {text}")

    def note(self, text: str) -> None:
        if self.enabled:
            self.progress.write(text)

    def close(self) -> None:
        if self.jsonl:
            self.jsonl.close()
        if self.tb is not None:
            self.tb.close()
        if self._mirror is not None:
            self._mirror.close()
        self.progress.close()
