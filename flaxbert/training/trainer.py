"""The pre-training loop: one jitted, sharded train step over a (data, fsdp, tensor) mesh.

    data (tf.data masked batches) -> train_step (objective loss -> grads -> optax) -> Orbax

A single device is a 1x1x1 mesh; there is no other code path. The train state (params, optimizer
state, step, RNG) is created directly sharded by the one sharded-init recipe, and the step is
jitted with those shardings as in and out shardings, donating the old state. Gradient
accumulation runs `num_microbatches` slices of the batch through a `lax.scan` inside the step.
When a fixed set of leaves cannot train (PEFT's base, freeze_encoder's encoder: see
`optim.trainable_leaves`), the step differentiates the others only; gradual unfreezing, whose set
grows during the run, takes every gradient and lets the optimizer zero what is still frozen.
Steps whose gradients are not finite are skipped by `optax.apply_if_finite` and counted; the
run halts after `train.max_consecutive_nonfinite` in a row. A SIGTERM (TPU preemption) saves a
checkpoint at the next step boundary and exits cleanly; rerunning resumes from it.
"""
from __future__ import annotations

import logging
import signal
import sys
import time
from pathlib import Path
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec

from flaxbert import storage
from flaxbert.io import atomic_directory, atomic_file, copy_files, read_json
from flaxbert.layers.sharding import (LOGICAL_AXIS_RULES, check_layout, logical_shardings,
                                     make_mesh, vocab_pad_multiple)
from flaxbert.training.checkpoint import Checkpoints
from flaxbert.training.config import check_config
from flaxbert.tokenizer import TOKENIZER_FILES
from flaxbert.training.optim import make_optimizer, nonfinite_counts, trainable_leaves
from flaxbert.training.sources import data_source
from flaxbert.training.workdir import (WorkdirLock, load_data_description, save_data_description,
                                       trim_metrics)

log = logging.getLogger(__name__)


class TrainingHalted(RuntimeError):
    """Raised when training cannot go on (e.g. too many non-finite steps in a row)."""


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    opt_state: Any
    rng: jax.Array  # a raw uint32 key: plain data, checkpointed like any array


class Trainer:
    """Builds everything a run needs from a config; `run()` trains, checkpoints and exports."""

    def __init__(self, config: ml_collections.ConfigDict, workdir: str | Path, *, devices=None,
                 manifest: dict | None = None, description: dict | None = None,
                 load_frozen: bool = True):
        """`devices`: the devices the mesh spans (default all; tests pass a subset).
        `manifest`: what the data looks like (max_seq_length, mode, tokenizer: vocab_size and
        special ids), as `flaxbert.data.prepare.read_manifest` returns it; read from
        data.train's manifests unless given (benchmarks feed synthetic batches).
        `description`: what an earlier run kept in its workdir (restoring for an export reads
        nothing else). `load_frozen=False` leaves a frozen network (distillation's
        teacher) unloaded, for restoring and exporting, which never run a train step."""
        from flaxbert.training.objectives import OBJECTIVES, get_objective

        check_config(config)
        self.mesh = make_mesh(config.mesh.data, config.mesh.fsdp, config.mesh.tensor, devices)
        config = with_vocab_padding(config, self.mesh)
        self.config = config
        self.workdir = storage.as_path(workdir)  # local, or gs:// (never a local "gs:" folder)
        self.data = data_source(config, manifest, description)
        self.seq_len = self.data.seq_len
        self.model_config = self.data.model_config()
        settings = self.data.objective_settings(OBJECTIVES.get(config.objective))
        self.objective = get_objective(config.objective, self.model_config, settings)
        self.data.check(self.objective)

        self.rules = tuple(tuple(r) for r in config.mesh.rules) or LOGICAL_AXIS_RULES
        batch_shards = self.mesh.shape["data"] * self.mesh.shape["fsdp"]
        micro = config.train.global_batch_size // config.train.num_microbatches
        if micro % batch_shards:
            raise ValueError(f"the microbatch ({config.train.global_batch_size} / "
                             f"{config.train.num_microbatches} = {micro}) must divide over the "
                             f"{batch_shards} data x fsdp shards of the mesh")
        self.tx, self.schedule = make_optimizer(config.optimizer, config.train.num_steps,
                                                model_config=self.model_config)

        example = self.example_batch()
        self._abstract_boxed = jax.eval_shape(self._init_boxed, jax.random.PRNGKey(0), example)
        # Per leaf of params, whether the optimizer can ever update it (None: every leaf does).
        trains = trainable_leaves(config.optimizer, nn.meta.unbox(self._abstract_boxed).params,
                                  self.model_config)
        self.trainable = None if trains is None else tuple(jax.tree_util.tree_leaves(trains))
        # Before anything compiles: a parameter the rules cannot place is named here (the
        # optimizer's moments follow their parameters, so the params alone are reported).
        _, fallbacks = check_layout({"params": self._abstract_boxed.params}, self.mesh,
                                    self.rules, config.mesh.get("indivisible", "replicate"))
        for note in fallbacks:
            log.info("sharding: %s", note)
        self.state_shardings = logical_shardings(self._abstract_boxed, self.mesh, self.rules)
        self.batch_sharding = NamedSharding(self.mesh, PartitionSpec(("data", "fsdp")))
        self.replicated = NamedSharding(self.mesh, PartitionSpec())
        self.frozen, self.frozen_shardings = self._load_frozen() if load_frozen else (None, None)
        self._train_step = jax.jit(
            self._step, in_shardings=(self.state_shardings, self.batch_sharding,
                                      self.frozen_shardings),
            out_shardings=(self.state_shardings, self.replicated), donate_argnums=(0,))
        self._eval_step = jax.jit(
            self._eval, in_shardings=(self.state_shardings.params, self.batch_sharding,
                                      self.frozen_shardings),
            out_shardings=self.replicated)

    # ----------------------------------------------------------------------------- set-up
    def example_batch(self, batch_size: int = 1) -> dict:
        """Zeros shaped like the data's batches (for init and shape checks)."""
        return self.data.example_batch(batch_size)

    def _init_boxed(self, rng, example) -> TrainState:
        params = self.objective.init(rng, example)["params"]
        return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                          opt_state=self.tx.init(params),
                          rng=jax.random.PRNGKey(self.config.train.seed))

    def init_state(self) -> TrainState:
        rng = jax.random.PRNGKey(self.config.train.seed)
        initial = getattr(self.data, "initial_params", None)  # a fine-tuned checkpoint's
        if initial is None and not self.config.get("init_from"):  # DistilBERT's from its teacher
            initial = self.objective.initial_params(self.abstract_state().params, self.frozen)
        if initial is None and not self.config.get("init_from"):
            with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
                boxed = jax.jit(self._init_boxed, out_shardings=self.state_shardings)(
                    rng, self.example_batch())
            return nn.meta.unbox(boxed)
        # Weights from a checkpoint: compiling a random init only to discard it would cost more
        # than the rest of a small CPU fine-tuning run.
        like, shardings = self.abstract_state().params, self.state_shardings
        params = (self._params_from(self.config.init_from, like) if self.config.get("init_from")
                  else self._checked_params(initial, like, self.config.model))
        with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
            opt_state = jax.jit(self.tx.init, out_shardings=shardings.opt_state)(params)
        return TrainState(step=jax.device_put(jnp.zeros((), jnp.int32), shardings.step),
                          params=params, opt_state=opt_state,
                          rng=jax.device_put(rng, shardings.rng))

    def _params_from(self, path: str, like) -> Any:
        # The objective loads: ELECTRA's pair reads two directories.
        return self._checked_params(self.objective.params_from(path, like), like,
                                    f"init_from={path}")

    def _checked_params(self, params, like, source: str) -> Any:
        # A saved model lacks what an objective trains beside it (TinyBERT's projections).
        complete = getattr(self.objective, "complete_params", None)
        params = params if complete is None else complete(params)
        if (jax.tree_util.tree_structure(params) != jax.tree_util.tree_structure(like)
                or any(a.shape != b.shape for a, b in zip(jax.tree_util.tree_leaves(params),
                                                          jax.tree_util.tree_leaves(like)))):
            from flaxbert.training.embedding_sharing import parameter_mismatch
            raise ValueError(f"{source}: its parameters do not match {self.config.model} "
                             f"with objective {self.config.objective!r} "
                             f"({parameter_mismatch(params, like)})")
        return jax.device_put(params, self.state_shardings.params)

    def abstract_state(self) -> TrainState:
        """Shapes, dtypes and shardings of the state (what a restore needs)."""
        unboxed = nn.meta.unbox(self._abstract_boxed)
        return jax.tree_util.tree_map(
            lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
            unboxed, self.state_shardings)

    def abstract_batch(self) -> dict:
        """Shapes, dtypes and the sharding of one global training batch."""
        rows = self.config.train.global_batch_size
        return {k: jax.ShapeDtypeStruct((rows, *v.shape[1:]), v.dtype, sharding=self.batch_sharding)
                for k, v in self.example_batch().items()}

    def lower_train_step(self) -> jax.stages.Lowered:
        """The real jitted train step lowered on `abstract_state()` and `abstract_batch()`:
        no weight or batch is materialised, so a Trainer built on topology devices
        (`jax.experimental.topologies`) with a `manifest` compiles a pod's step ahead of time
        on a CPU machine (`flaxbert compile`). `.compile()` the result for its
        memory_analysis() and cost_analysis()."""
        if self.frozen is None and self.objective.frozen_abstract() is not None:
            raise ValueError(f"objective {self.config.objective!r} needs its frozen network: "
                             "build the Trainer with load_frozen=True to lower its step")
        frozen = None if self.frozen is None else jax.tree_util.tree_map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), self.frozen)
        state, batch = self.abstract_state(), self.abstract_batch()  # unboxed outside the mesh
        with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
            return self._train_step.lower(state, batch, frozen)

    def _load_frozen(self):
        abstract = self.objective.frozen_abstract()
        if abstract is None:
            return None, None
        shardings = logical_shardings(abstract, self.mesh, self.rules,
                                      self.config.mesh.get("indivisible", "replicate"))
        return jax.device_put(self.objective.load_frozen(), shardings), shardings

    # ----------------------------------------------------------------------------- steps
    def _loss(self, params, batch, rng, frozen, deterministic):
        with nn.logical_axis_rules(self.rules):
            return self.objective.loss(params, batch, rng, deterministic=deterministic,
                                       frozen=frozen)

    def _differentiated(self, params):
        """What the step takes gradients of: `params`, or when a fixed set of leaves is frozen
        for the run (PEFT, freeze_encoder) the list of the trainable leaves alone. XLA cannot
        drop the frozen weights' gradients by itself, since the NaN guard and grad_norm read
        every gradient; not asking for them takes MiniLM's LoRA step from 69 to 46 XLA GFLOP
        (benchmarks/PEFT.md)."""
        if self.trainable is None:
            return params
        return [x for x, t in zip(jax.tree_util.tree_leaves(params), self.trainable) if t]

    def _with_differentiated(self, params, part, fill=lambda frozen_leaf: frozen_leaf):
        """`params` with the differentiated `part` in place and `fill` of each frozen leaf."""
        if self.trainable is None:
            return part
        leaves, treedef = jax.tree_util.tree_flatten(params)
        part = iter(part)
        return jax.tree_util.tree_unflatten(
            treedef, [next(part) if t else fill(x) for x, t in zip(leaves, self.trainable)])

    def _step(self, state: TrainState, batch: dict, frozen):
        rng = jax.random.fold_in(state.rng, state.step)  # one key per step, nothing to carry
        grad_fn = jax.value_and_grad(
            lambda part, b, r: self._loss(self._with_differentiated(state.params, part), b, r,
                                          frozen, False), has_aux=True)
        wrt = self._differentiated(state.params)
        n = self.config.train.num_microbatches
        if n == 1:
            (loss, metrics), grads = grad_fn(wrt, batch, rng)
        else:
            # Strided slices (row i*n + k -> microbatch k) so each stays spread over the mesh.
            micro = jax.tree_util.tree_map(
                lambda x: jnp.swapaxes(x.reshape(x.shape[0] // n, n, *x.shape[1:]), 0, 1), batch)

            def accumulate(carry, inputs):
                k, mb = inputs
                (loss, metrics), grads = grad_fn(wrt, mb, jax.random.fold_in(rng, k))
                return jax.tree_util.tree_map(jnp.add, carry, (loss, metrics, grads)), None

            zeros = jax.tree_util.tree_map(
                jnp.zeros_like, jax.eval_shape(grad_fn, wrt,
                                               jax.tree_util.tree_map(lambda x: x[0], micro), rng))
            zeros = (zeros[0][0], zeros[0][1], zeros[1])
            total, _ = jax.lax.scan(accumulate, zeros, (jnp.arange(n), micro))
            loss, metrics, grads = jax.tree_util.tree_map(lambda x: x / n, total)
        # Under PEFT / freeze_encoder the trainable leaves' norm, the one clipping measures.
        grad_norm = optax.global_norm(grads)
        # Frozen leaves get zeros, which the optimizer's set_to_zero drops unread.
        grads = self._with_differentiated(state.params, grads, jnp.zeros_like)
        updates, opt_state = self.tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        consecutive, total_skipped = nonfinite_counts(opt_state)
        metrics = dict(metrics, loss=loss, grad_norm=grad_norm,
                       learning_rate=self.schedule(state.step),
                       nonfinite_in_a_row=consecutive, nonfinite_total=total_skipped)
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

    def _eval(self, params, batch, frozen):
        with nn.logical_axis_rules(self.rules):
            loss, metrics, outputs = self.objective.evaluate(params, batch, frozen=frozen)
        rows = (jnp.sum(batch["example_weights"]) if "example_weights" in batch
                else jnp.asarray(batch["input_ids"].shape[0], jnp.float32))
        return dict(metrics, loss=loss, rows=rows), outputs

    def train_step(self, state, batch):
        with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
            return self._train_step(state, self._global(batch), self.frozen)

    def eval_step(self, params, batch):
        with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
            return self._eval_step(params, self._global(batch), self.frozen)

    def _global(self, local_batch: dict) -> dict:
        """This host's rows -> one global array per key, sharded over (data, fsdp)."""
        return {k: jax.make_array_from_process_local_data(self.batch_sharding, np.asarray(v))
                for k, v in local_batch.items()}

    # ----------------------------------------------------------------------------- data
    def batches(self, state: dict | None = None):
        """The training stream, continued from a checkpoint's data `state` (None: the start)."""
        return self.data.train_batches(state)

    def evaluate(self, params) -> dict | None:
        """Metrics over every evaluation pass of the data (the validation split(s), read once
        in order, the last batch padded with rows of weight 0): the step's metrics averaged
        over the real rows (a `<p>_loss` / `<p>_accuracy` that comes with a `<p>_tokens` count,
        such as mlm_loss, over those tokens instead, so that it is the split's per-token mean
        whatever the batch size; the counts are summed), plus the data's own metrics of the outputs (a task's accuracy, F1,
        ...). The first `train.eval_batches` batches only when that is > 0; None when it is 0
        or there is nothing to evaluate."""
        from flaxbert.progress import progress
        limit = self.config.train.eval_batches
        if limit == 0:
            return None
        result = {}
        for prefix, batches in self.data.eval_passes():
            totals, counts, rows, outputs = {}, {}, 0.0, []
            batches = progress(batches, desc=f"evaluating {prefix[len('eval_'):]}".rstrip("_ "),
                               unit="batch", total=limit if limit > 0 else None, leave=False,
                               enabled=jax.process_index() == 0)
            for n, batch in enumerate(batches):
                if n == limit:
                    break
                batch = dict(batch)
                index = batch.pop("example_index", None)  # for the data side, not the step
                metrics, out = jax.device_get(self.eval_step(params, batch))
                weight = float(metrics.pop("rows"))
                for k, v in metrics.items():
                    totals[k] = totals.get(k, 0.0) + _eval_weight(k, metrics, weight) * float(v)
                    if k.endswith("_tokens"):
                        counts[k] = counts.get(k, 0.0) + float(v)
                rows += weight
                if out:
                    real = np.asarray(batch["example_weights"]) > 0
                    row = {k: np.asarray(v)[real] for k, v in out.items()}
                    if index is not None:  # which feature each output row holds
                        row["example_index"] = np.asarray(index)[real]
                    outputs.append(row)
            if rows:
                result.update({f"{prefix}{k}": v / _eval_denominator(k, counts, rows)
                               for k, v in totals.items() if not k.endswith("_tokens")})
                result.update({f"{prefix}{k}": v for k, v in counts.items()})
                result.update({f"{prefix}{k}": float(v)
                               for k, v in self.data.outputs_metrics(outputs).items()} if outputs
                              else {})
                result[f"{prefix}sequences"] = rows
        return result or None

    # ----------------------------------------------------------------------------- the run
    def run(self) -> dict:
        """Train to `train.num_steps` (resuming from the workdir's latest good checkpoint),
        export at the end. Returns the last logged metrics. The workdir is locked for the run:
        a second process training in it is refused (WorkdirBusy)."""
        cfg = self.config
        self.stopped_early = False
        self.workdir.mkdir(parents=True, exist_ok=True)
        lock = WorkdirLock(self.workdir).acquire() if jax.process_index() == 0 else None
        try:
            return self._run(cfg)
        finally:
            if lock is not None:
                lock.release()

    def _run(self, cfg) -> dict:
        from flaxbert.training.reporting import MetricWriter, throughput
        if jax.process_index() == 0:
            self._write_run_config()
            # What an export needs later, whether or not the data and checkpoint stay.
            save_data_description(self.workdir, self.data.description(), self.data.tokenizer_dir)
        ckpt = Checkpoints(self.workdir / "checkpoints", save_every=cfg.checkpoint.save_every,
                           keep=cfg.checkpoint.keep, async_save=cfg.checkpoint.async_save)
        restored = ckpt.restore_latest(self.abstract_state())
        if restored is None:
            state, start = self.init_state(), 0
            data_state = {"next_batch": 0}
        else:
            start, state, data_state = restored
            log.info("resumed from step %d in %s", start, ckpt.directory)
            if jax.process_index() == 0:
                trim_metrics(self.workdir, start)  # the steps after it are run again
            print(f"resumed from checkpoint at step {start}", flush=True)
        batches = self.batches(data_state if restored is not None else None)
        self.progress = dict(data_state.get("progress") or {})

        stop = {"signal": None}
        # Several processes must stop at the same step: there the preemption notifier that
        # jax.distributed.initialize sets up catches SIGTERM and Orbax's reached_preemption
        # below answers on every process at once; a handler of ours would replace it.
        previous = signal.signal(signal.SIGTERM, lambda signum, frame: stop.update(signal=signum)) \
            if _main_thread() and jax.process_count() == 1 else None
        writer = MetricWriter(self.workdir, enabled=jax.process_index() == 0,
                              progress_total=cfg.train.num_steps, progress_start=start,
                              progress_bar=cfg.train.progress_bar)
        last, window, t0, untimed = {}, [], time.perf_counter(), 0
        step, evaluated = start, False
        # A run that stopped early is finished: rerunning it trains no further.
        end = start if self.progress.get("stopped_early_at") else cfg.train.num_steps
        try:
            if jax.process_count() > 1 and start < end:
                # gloo (CPU collectives) gives a peer 30 s to join the first collective, and
                # compile times differ by more: compile first (the step reuses it), then start
                # together.
                from jax.experimental import multihost_utils
                writer.note("compiling the train step ...")
                self.lower_train_step().compile()
                multihost_utils.sync_global_devices("flaxbert: train step compiled")
            for step in range(start, end):
                if step == start:  # said before the wait, which is minutes for a large model
                    writer.note("compiling the train step (the first step) ...")
                state, metrics = self.train_step(state, next(batches))
                done = step + 1
                window.append(metrics)
                if step == start:  # the first step compiles: time it apart, not in throughput
                    jax.block_until_ready(metrics["loss"])
                    writer.note(f"first step (compile + run) took {time.perf_counter() - t0:.1f} s")
                    t0, untimed = time.perf_counter(), 1
                if done % cfg.train.log_every == 0 or done == cfg.train.num_steps:
                    host = jax.device_get(window)
                    elapsed = time.perf_counter() - t0
                    last = {k: float(np.mean([m[k] for m in host])) for k in host[-1]}
                    if len(host) > untimed:
                        last.update(throughput(self, len(host) - untimed, elapsed))
                    writer.write(done, last)
                    if host[-1]["nonfinite_in_a_row"] >= cfg.train.max_consecutive_nonfinite:
                        raise TrainingHalted(
                            f"{int(host[-1]['nonfinite_in_a_row'])} steps in a row had NaN/inf "
                            f"gradients (limit train.max_consecutive_nonfinite="
                            f"{cfg.train.max_consecutive_nonfinite}); stopping at step {done}")
                    window, t0, untimed = [], time.perf_counter(), 0
                evaluated = bool(cfg.train.eval_every and done % cfg.train.eval_every == 0)
                if evaluated:  # before the save, so the checkpoint knows the best so far
                    evaluation = self.evaluate(state.params) or {}
                    writer.write(done, evaluation)
                    last.update(evaluation)
                    self._track_best(done, evaluation, state.params)
                ckpt.save(done, state, self._data_state(batches))
                if self.progress.get("stopped_early_at"):
                    writer.note(f"early stopping at step {done}: {cfg.train.best_metric} has not "
                                f"improved for {cfg.train.early_stopping_patience} evaluations "
                                f"(best {self.progress['best_value']:.4g} at step "
                                f"{self.progress['best_step']})")
                    break
                if stop["signal"] is not None or ckpt.manager.reached_preemption(done):
                    ckpt.save(done, state, self._data_state(batches), force=True)
                    ckpt.wait()
                    print(f"stopped by signal at step {done}; checkpoint saved, rerun to resume",
                          flush=True)
                    self.stopped_early = True
                    return last
            else:
                done, evaluated = end, start == end or evaluated  # a rerun of a finished run
            if not evaluated:
                evaluation = self.evaluate(state.params)
                if evaluation:
                    writer.write(done, evaluation)
                    last.update(evaluation)
                    self._track_best(done, evaluation, state.params)
            ckpt.save(done, state, self._data_state(batches), force=True)  # no-op if just saved
            ckpt.wait()
            if cfg.export.at_end:
                params = host_copy(state.params)  # every process takes part in the gather
                if jax.process_index() == 0:  # a rerun of a finished run writes the same
                    self.export(params, self.workdir / "export" / f"step_{done}", overwrite=True)
        finally:
            ckpt.close()
            writer.close()
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
        return last

    def _data_state(self, batches) -> dict:
        """The checkpoint's JSON item: the data position and the best evaluation so far."""
        return {**batches.state(), "progress": self.progress}

    def _track_best(self, step: int, evaluation: dict, params) -> None:
        """Keep the best evaluation by `train.best_metric` (exported to <workdir>/export/best)
        and stop after `train.early_stopping_patience` evaluations without improvement."""
        name = self.config.train.get("best_metric")
        if not name or not evaluation:
            return
        if name not in evaluation:
            raise ValueError(f"train.best_metric={name!r} is not among the evaluation's metrics "
                             f"{sorted(evaluation)}")
        value, best = float(evaluation[name]), self.progress.get("best_value")
        lower = self.config.train.get("best_mode", "max") == "min"
        if best is None or (value < best if lower else value > best):
            self.progress.update(best_value=value, best_step=step, evals_since_best=0)
            params = host_copy(params)  # every process takes part in the gather
            if jax.process_index() == 0:
                self.export(params, self.workdir / "export" / "best", overwrite=True)
            log.info("new best %s=%.4g at step %d", name, value, step)
            return
        self.progress["evals_since_best"] = self.progress.get("evals_since_best", 0) + 1
        patience = self.config.train.get("early_stopping_patience", 0)
        if patience and self.progress["evals_since_best"] >= patience:
            self.progress["stopped_early_at"] = step

    def _write_run_config(self):
        if jax.process_index() != 0:
            return
        with atomic_file(self.workdir / "config.json", overwrite=True) as tmp:
            tmp.write_text(self.config.to_json_best_effort(indent=2))

    def export(self, params, directory: str | Path, *, overwrite: bool = False) -> list[Path]:
        """Write the objective's trained model(s) as transformers directories, with the data's
        tokenizer. `directory` appears complete or not at all (ELECTRA's generator and
        discriminator together); an existing one is refused unless `overwrite`. A model class
        with a `save_pretrained` of its own (the hierarchical chunk model) writes its files."""
        import flaxbert
        import flaxbert.peft
        tokenizer_dir = Path(self.data.tokenizer_dir or "")
        extra = [tokenizer_dir / name for name in TOKENIZER_FILES
                 if (tokenizer_dir / name).is_file()]
        params = jax.device_get(params)
        parts = self.objective.export(params)
        with atomic_directory(directory, overwrite) as tmp:
            for sub, module, part in parts:
                out = tmp / sub if sub else tmp
                if module.config.peft == "lora":  # folded in: a plain transformers model
                    module, part = flaxbert.peft.merge_lora(module, part)
                elif module.config.peft != "none":  # adapters have no transformers form
                    flaxbert.peft.save_peft(out, module, part)
                    copy_files(extra, out)
                    continue
                if hasattr(type(module), "save_pretrained"):  # files of its own (chunk model)
                    module.save_pretrained(out, part, overwrite=True, extra_files=extra)
                    continue
                flaxbert.save_pretrained(out, module, part, format="hf", overwrite=True,
                                         extra_files=extra)
        directory = storage.as_path(directory)
        return [directory / sub if sub else directory for sub, _, _ in parts]


def with_vocab_padding(config: ml_collections.ConfigDict, mesh) -> ml_collections.ConfigDict:
    """`config` with model_overrides.vocab_pad_multiple set for a tensor-parallel `mesh` (a copy;
    unchanged when the mesh has no tensor axis or the run sets the field itself). The workdir's
    config.json keeps the value, so an export or a resume restores the same shapes."""
    multiple = vocab_pad_multiple(mesh)
    overrides = config.get("model_overrides")
    if not multiple or overrides is None or "vocab_pad_multiple" in overrides:
        return config
    config = config.copy_and_resolve_references()
    with config.unlocked(), config.model_overrides.unlocked():
        config.model_overrides.vocab_pad_multiple = multiple
    return config


def host_copy(tree):
    """`tree`'s arrays as numpy arrays on this host. An array sharded over other processes'
    devices (FSDP across hosts) is gathered from them first: a collective, so every process
    must call this, not only the one that writes."""
    from jax.experimental import multihost_utils

    def fetch(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable and not x.is_fully_replicated:
            return multihost_utils.process_allgather(x, tiled=True)
        return jax.device_get(x)
    return jax.tree_util.tree_map(fetch, tree)


def _main_thread() -> bool:
    import threading
    return threading.current_thread() is threading.main_thread()


def restore_params(workdir: str | Path, step: int | None = None):
    """(trainer, step, params) of a finished or running workdir, for export. Needs only the
    workdir: the data's shapes and tokenizer come from the copies the run keeps there."""
    workdir = storage.as_path(workdir)
    config_file = workdir / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{workdir} has no config.json; is it a `flaxbert pretrain` "
                                "workdir?")
    config = ml_collections.ConfigDict(read_json(config_file))
    trainer = Trainer(config, workdir, description=load_data_description(workdir),
                      load_frozen=False)
    ckpt = Checkpoints(workdir / "checkpoints", save_every=1, keep=None, async_save=False)
    try:
        if step is None:
            restored = ckpt.restore_latest(trainer.abstract_state())
            if restored is None:
                raise FileNotFoundError(f"{workdir} holds no checkpoint yet")
            step, state, _ = restored
        else:
            if step not in ckpt.steps():
                raise ValueError(f"{workdir} has no checkpoint at step {step}; it has "
                                 f"{ckpt.steps()}")
            state, _ = ckpt.restore(step, trainer.abstract_state())
    finally:
        ckpt.close()
    return trainer, step, state.params


if __name__ == "__main__":  # pragma: no cover
    sys.exit("use `flaxbert pretrain`")


def _token_count(key: str) -> str:
    """The `<p>_tokens` count a `<p>_loss` / `<p>_accuracy` metric is averaged over."""
    return key.rsplit("_", 1)[0] + "_tokens"


def _eval_weight(key, metrics, rows):
    count = _token_count(key)
    return float(metrics[count]) if count in metrics and count != key else rows


def _eval_denominator(key, counts, rows):
    count = _token_count(key)
    return (counts[count] or rows) if count in counts and count != key else rows
