"""`flaxbert pretrain` and `flaxbert export`.

    flaxbert pretrain --config configs/bert_base.py:phase1 --workdir gs://.../run \
        --config.train.num_steps=1000 --config.data.train=data/wiki
    flaxbert export --workdir RUN [--step N] --output DIR

`--config` takes an ml_collections config file (optionally `file.py:argument`) and any field can be
overridden with `--config.<field>=<value>`; ml_collections parses these and checks their types.
Rerunning `pretrain` with the same workdir resumes from its latest good checkpoint.
"""
from __future__ import annotations

import argparse


def _parse_pretrain_flags(argv: list[str]):
    from absl import flags
    from ml_collections import config_flags

    fv = flags.FlagValues()
    config = config_flags.DEFINE_config_file(
        "config", None, "experiment config file (configs/*.py), optionally file.py:argument",
        flag_values=fv, sys_argv=["flaxbert pretrain", *argv])
    workdir = flags.DEFINE_string("workdir", None, "checkpoints, metrics and exports go here",
                                  flag_values=fv)
    multihost = flags.DEFINE_bool("multihost", False, "call jax.distributed.initialize() first "
                                  "(every host of a TPU pod slice runs the same command)",
                                  flag_values=fv)
    try:
        rest = fv(["flaxbert pretrain", *argv])
    except flags.Error as e:
        raise ValueError(str(e)) from None
    if len(rest) > 1:
        raise ValueError(f"unexpected arguments: {' '.join(rest[1:])}")
    if fv["config"].value is None:
        raise ValueError("--config is required, e.g. --config configs/bert_tiny.py")
    if not workdir.value:
        raise ValueError("--workdir is required")
    return config.value, workdir.value, multihost.value


def _pretrain(args) -> None:
    import logging

    from flaxbert.training.trainer import Trainer, TrainingHalted
    if not args.flags or args.flags[0] in ("-h", "--help"):
        print(__doc__)
        return
    config, workdir, multihost = _parse_pretrain_flags(args.flags)
    logging.getLogger("absl").setLevel(logging.WARNING)
    if multihost:
        import jax
        jax.distributed.initialize()
    trainer = Trainer(config, workdir)
    try:
        last = trainer.run()
    except TrainingHalted as e:
        raise SystemExit(f"flaxbert pretrain: halted: {e}") from None
    if last and not trainer.stopped_early:
        shown = {k: round(v, 4) for k, v in last.items()
                 if k in ("loss", "mlm_accuracy", "eval_loss", "eval_mlm_accuracy", "seq_per_s")}
        print(f"pretrain: done; last metrics {shown}; workdir {workdir}")


def _export(args) -> None:
    from flaxbert.training.trainer import restore_params
    trainer, step, params = restore_params(args.workdir, args.step)
    for path in trainer.export(params, args.output):
        print(f"wrote transformers directory {path} (step {step})")


def add_training_parsers(commands) -> None:
    pretrain = commands.add_parser(
        "pretrain", help="pre-train a model (config file + workdir; resumes automatically)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        add_help=False, prefix_chars="\0")
    pretrain.add_argument("flags", nargs=argparse.REMAINDER,
                          help="--config FILE[:arg] --workdir DIR [--config.field=value ...]")
    pretrain.set_defaults(run=_pretrain)

    export = commands.add_parser(
        "export", help="write a pretrain workdir's checkpoint as transformers directories")
    export.add_argument("--workdir", required=True, help="a `flaxbert pretrain` workdir")
    export.add_argument("--step", type=int, default=None, help="checkpoint step (default latest)")
    export.add_argument("--output", required=True, help="destination directory")
    export.set_defaults(run=_export)
