"""Train-state checkpoints: an Orbax CheckpointManager holding the full state and the data position.

Each step directory holds two items: `state` (params, optimizer state, step, RNG; sharded arrays
written by every host) and `data` (the input iterator's JSON state, so a resumed run reads the
same stream). Orbax writes a step to a temporary directory and renames it when complete, so a run
killed mid-save leaves no step behind; a step that was finalised but later damaged (files
deleted, truncated) fails to restore, and `restore_latest` falls back to the newest good one.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from flaxbert import storage

log = logging.getLogger(__name__)


class Checkpoints:
    def __init__(self, directory: str | Path, *, save_every: int, keep: int | None,
                 async_save: bool = True):
        if save_every < 1:
            raise ValueError(f"checkpoint.save_every={save_every} must be >= 1")
        if keep is not None and keep < 1:
            raise ValueError(f"checkpoint.keep={keep} must be >= 1 (or None to keep all)")
        # An epath.Path for gs://: Orbax writes it through its own GCS support (flaxbert.storage).
        self.directory = storage.as_path(directory)
        self.save_every = save_every
        self.last_saved = None  # an async save may still be in flight, not yet in all_steps()
        # The interval is decided here (Orbax's own policy would also save the first step).
        options = ocp.CheckpointManagerOptions(
            save_interval_steps=1, max_to_keep=keep,
            enable_async_checkpointing=async_save, cleanup_tmp_directories=True)
        self.manager = ocp.CheckpointManager(self.directory, options=options,
                                             item_names=("state", "data"))

    def save(self, step: int, state: Any, data_state: dict, *, force: bool = False) -> bool:
        """Save if `step` is on the interval (or `force`); async unless configured otherwise."""
        if step == self.last_saved or (not force and step % self.save_every):
            return False
        self.last_saved = step
        return self.manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state)), force=True)

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict]:
        """(state, data state) of `step`; `abstract_state` gives shapes, dtypes and shardings."""
        restored = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
        return restored.state, restored.data

    def restore_latest(self, abstract_state: Any) -> tuple[int, Any, dict] | None:
        """The newest step that restores cleanly, skipping damaged ones with a warning; None if
        there is no checkpoint at all. Raises if checkpoints exist but none restores."""
        steps = self.steps()
        errors, damaged = [], []
        for step in reversed(steps):
            try:
                state, data = self.restore(step, abstract_state)
                self._set_aside(damaged)
                self.last_saved = step
                return step, state, data
            except Exception as e:  # noqa: BLE001 - any failure means this step is unusable
                log.warning("checkpoint step %d in %s is damaged (%s: %s); trying an older one",
                            step, self.directory, type(e).__name__, str(e).splitlines()[0][:200])
                errors.append(f"step {step}: {type(e).__name__}: {str(e).splitlines()[0][:200]}")
                damaged.append(step)
        if steps:
            raise ValueError(f"no checkpoint in {self.directory} could be restored: "
                             + "; ".join(errors))
        return None

    def _set_aside(self, steps: list[int]) -> None:
        """Move damaged steps to <directory>.damaged/ (kept for inspection, out of the way of the
        steps the resumed run will save again)."""
        if not steps or jax.process_index() != 0:
            return
        aside = self.directory.with_name(self.directory.name + ".damaged")
        aside.mkdir(exist_ok=True)
        for step in steps:
            target = aside / f"{step}-{int(time.time())}"
            storage.move(self.directory / str(step), target)
            log.warning("moved damaged checkpoint step %d to %s", step, target)
        self.manager.reload()

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
