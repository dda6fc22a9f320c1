"""`flaxbert pretrain`, `finetune`, `export`, `evaluate` and `predict`.

    flaxbert pretrain --config configs/bert_base.py:phase1 --workdir gs://.../run \
        --config.train.num_steps=1000 --config.data.train=data/wiki
    flaxbert finetune --config configs/finetune_glue.py:sst2 --workdir runs/sst2 \
        --config.model=CHECKPOINT --config.data.train=train.tsv --config.data.validation=dev.tsv
    flaxbert export --workdir RUN [--step N] --output DIR [--overwrite]
    flaxbert evaluate MODEL_DIR --data dev.tsv --objective classification [--glue sst2] \
        --output metrics.json
    flaxbert predict MODEL_DIR --data test.tsv --task text-classification --output preds.jsonl
    flaxbert evaluate QA_DIR --data dev-v2.0.json --objective question_answering --version-2
    flaxbert predict QA_DIR --data dev-v1.1.json --task question-answering --output answers.jsonl

`--config` takes an ml_collections config file (optionally `file.py:argument`) or an installed
recipe, `flaxbert:<name>[:argument]` (configs/<name>.py, shipped in the package: e.g.
`--config flaxbert:bert_base:phase1` from any directory), and any field can be
overridden with `--config.<field>=<value>`; ml_collections parses these and checks their types.
Rerunning `pretrain` with the same workdir resumes from its latest good checkpoint.
"""
from __future__ import annotations

import argparse
import re
import textwrap
import traceback
from pathlib import Path


RECIPE_PREFIX = "flaxbert:"  # `--config flaxbert:bert_base[:phase1]`: an installed recipe


def installed_recipes() -> dict[str, Path]:
    """Recipe name -> file of the recipes shipped as `flaxbert.recipes` (configs/ in the repo)."""
    import importlib.resources
    root = importlib.resources.files("flaxbert.recipes")
    return {Path(f.name).stem: Path(str(f)) for f in root.iterdir()
            if f.name.endswith(".py") and not f.name.startswith("_")}


def _recipe_path(spec: str) -> tuple[str, list[str]]:
    """(file, [argument]) of `file.py[:argument]` or `flaxbert:recipe[:argument]`."""
    if not spec.startswith(RECIPE_PREFIX):
        path, *arg = spec.split(":", 1)  # as ml_collections' config_flags splits it
        return path, arg
    name, *arg = spec[len(RECIPE_PREFIX):].split(":", 1)
    recipes = installed_recipes()
    if name not in recipes:
        raise ValueError(f"--config {RECIPE_PREFIX}{name}: no installed recipe {name!r}; "
                         f"installed: {', '.join(sorted(recipes))}")
    return str(recipes[name]), arg


def _load_config(spec: str):
    """get_config() of a config file, `file.py[:argument]`, or of an installed recipe,
    `flaxbert:name[:argument]`; whatever goes wrong in the file (missing, a syntax error,
    get_config raising) is one ValueError naming it and the line."""
    import importlib.util

    import ml_collections
    path, arg = _recipe_path(spec)
    if not Path(path).is_file():
        raise FileNotFoundError(f"--config {path}: no such file")
    try:
        module_spec = importlib.util.spec_from_file_location("flaxbert_run_config", path)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
    except SyntaxError as e:
        raise ValueError(f"config file {path} line {e.lineno}: {e.msg}") from e
    except Exception as e:  # the file is the user's code: any error in it is bad input
        raise ValueError(f"config file {path}{_line_in(e, path)}: {type(e).__name__}: {e}") from e
    if not callable(getattr(module, "get_config", None)):
        raise ValueError(f"config file {path} defines no get_config()")
    try:
        config = module.get_config(*arg)
    except Exception as e:
        raise ValueError(f"config file {path}{_line_in(e, path)}: get_config raised "
                         f"{type(e).__name__}: {e}") from e
    if not isinstance(config, ml_collections.ConfigDict):
        raise ValueError(f"config file {path}: get_config({', '.join(map(repr, arg))}) returned "
                         f"{type(config).__name__}, not an ml_collections.ConfigDict")
    return path, config


def _line_in(error: BaseException, path: str) -> str:
    """" line N": the last line of `path` that `error`'s traceback went through."""
    lines = [f.lineno for f in traceback.extract_tb(error.__traceback__)
             if Path(f.filename).resolve() == Path(path).resolve()]
    return f" line {lines[-1]}" if lines else ""


def _field_names(config, prefix="") -> list[str]:
    import ml_collections
    names = []
    for key, value in config.items():
        if isinstance(value, ml_collections.ConfigDict):
            names += _field_names(value, f"{prefix}{key}.")
        else:
            names.append(f"{prefix}{key}")
    return names


def _check_overrides(argv, config, path) -> None:
    """Refuse a `--config.<field>` naming no field, with the closest one (ml_collections'
    own error is a chain of three tracebacks)."""
    import difflib
    fields = _field_names(config)
    for arg in argv:
        match = re.match(r"-{1,2}(?:no)?config\.([^=\[]+)", arg)
        if match and match.group(1) not in fields:
            name = match.group(1)
            close = difflib.get_close_matches(name, fields, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"--config.{name}: {path} has no field {name!r}{hint}")


def _split_config_flag(argv: list[str]) -> tuple[str | None, list[str]]:
    """(the --config value or None, the other arguments)."""
    spec, kept = None, []
    args = iter(argv)
    for arg in args:
        if re.fullmatch(r"-{1,2}config", arg):
            spec = next(args, "")
        elif re.fullmatch(r"-{1,2}config=.*", arg):
            spec = arg.split("=", 1)[1]
        else:
            kept.append(arg)
    return spec, kept


def _parse_pretrain_flags(argv: list[str]):
    from absl import flags
    from ml_collections import config_flags

    spec, kept = _split_config_flag(argv)
    if not spec:
        raise ValueError("--config is required, e.g. --config configs/bert_base.py:tiny")
    path, config = _load_config(spec)
    _check_overrides(kept, config, path)
    # absl sees only the overrides, which ml_collections parses and type-checks against the
    # config loaded above.
    rest_argv = ["flaxbert pretrain", *kept]
    fv = flags.FlagValues()
    holder = config_flags.DEFINE_config_dict("config", config, "the experiment config",
                                             flag_values=fv, sys_argv=rest_argv)
    workdir = flags.DEFINE_string("workdir", None, "checkpoints, metrics and exports go here",
                                  flag_values=fv)
    multihost = flags.DEFINE_bool("multihost", False, "call jax.distributed.initialize() first "
                                  "(every host of a TPU pod slice runs the same command)",
                                  flag_values=fv)
    # Off a TPU slice (flaxbert.training.multihost): where process 0 serves, how many
    # processes, which one this is; each falls back to its JAX_* environment variable.
    distributed = dict(
        coordinator_address=flags.DEFINE_string(
            "coordinator_address", None, "--multihost: HOST:PORT of process 0 (default "
            "$JAX_COORDINATOR_ADDRESS; a TPU slice finds it)", flag_values=fv),
        num_processes=flags.DEFINE_integer(
            "num_processes", None, "--multihost: processes in the run (default "
            "$JAX_NUM_PROCESSES)", flag_values=fv),
        process_id=flags.DEFINE_integer(
            "process_id", None, "--multihost: this process, 0 .. num_processes-1 (default "
            "$JAX_PROCESS_ID)", flag_values=fv),
        heartbeat_timeout=flags.DEFINE_integer(
            "heartbeat_timeout", 100, "--multihost: seconds without a heartbeat after which "
            "a silent process counts as dead and the others stop", flag_values=fv))
    try:
        rest = fv(rest_argv)
    except flags.Error as e:
        raise ValueError(str(e)) from None
    if len(rest) > 1:
        raise ValueError(f"unexpected arguments: {' '.join(rest[1:])}")
    if not workdir.value:
        raise ValueError("--workdir is required")
    settings = {k: v.value for k, v in distributed.items()}
    if not multihost.value and any(v is not None for k, v in settings.items()
                                   if k != "heartbeat_timeout"):
        raise ValueError("--coordinator_address / --num_processes / --process_id need "
                         "--multihost")
    return path, holder.value, workdir.value, settings if multihost.value else None


def config_help(command: str, argv: list[str]) -> str:
    """What `flaxbert pretrain|finetune [--config FILE[:arg]] --help` prints: the usage, the
    registry's objectives for the command, and the config's top-level fields and groups, or,
    with --config, every field of that config with its value."""
    from flaxbert.cli_help import pretraining_objectives, task_objectives
    spec, _ = _split_config_flag(argv)
    objectives = task_objectives() if command == "finetune" else pretraining_objectives()
    lines = [__doc__.rstrip(), "", f"objectives of `flaxbert {command}` (config field "
             f"`objective`): {', '.join(objectives)}."]
    if not spec:
        if command == "finetune":
            from flaxbert.training.finetune import finetune_config as base
        else:
            from flaxbert.training.config import default_config as base
        config = base()
        groups = [k for k, v in config.items() if hasattr(v, "items")]
        lines += [f"config groups: {', '.join(groups)}; top-level fields: "
                  f"{', '.join(k for k in config if k not in groups)}.",
                  f"`flaxbert {command} --config FILE[:arg] --help` lists every field of that "
                  "config with its value."]
        return "\n".join(textwrap.fill(line, 100, break_on_hyphens=False) if i else line
                         for i, line in enumerate(lines))
    path, config = _load_config(spec)
    lines[-1] = textwrap.fill(lines[-1], 100, break_on_hyphens=False)
    lines.append(f"fields of {spec} (change one with --config.FIELD=VALUE):")
    for name in _field_names(config):
        value = config
        for key in name.split("."):
            value = value[key]
        lines.append(f"  {name} = {value!r}")
    return "\n".join(lines)


def _pretrain(args) -> None:
    if not args.flags or {"-h", "--help"} & set(args.flags):
        print(config_help(args.command, args.flags))
        return
    from flaxbert.training.trainer import Trainer, TrainingHalted
    from flaxbert.training.config import check_config
    source, config, workdir, multihost = _parse_pretrain_flags(args.flags)
    from flaxbert.hub import is_hub_id, resolve
    if "task" in config and is_hub_id(config.model):  # --config.model=org/name: its snapshot
        config.model = str(resolve(config.model))
    check_config(config, source=source)
    if (args.command == "finetune") != ("task" in config):
        other = "pretrain" if args.command == "finetune" else "finetune"
        raise ValueError(f"{source} is a {other} config (it {'lacks' if other == 'pretrain' else 'has'}"
                         f" a task block); run it with `flaxbert {other}`")
    if multihost is not None:  # before anything touches a device
        from flaxbert.training.multihost import initialize
        initialize(**multihost)
    trainer = Trainer(config, workdir)
    try:
        last = trainer.run()
    except TrainingHalted as e:
        raise SystemExit(f"flaxbert pretrain: halted: {e}") from None
    if last and not trainer.stopped_early:
        shown = {k: round(v, 4) for k, v in last.items()
                 if k in ("loss", "mlm_accuracy", "seq_per_s") or k.startswith("eval_")}
        best = getattr(trainer, "progress", {}).get("best_step")
        where = f"; best model (step {best}) in {workdir}/export/best" if best else ""
        print(f"{args.command}: done; last metrics {shown}; workdir {workdir}{where}")


def _export(args) -> None:
    from flaxbert.io import check_destination
    from flaxbert.training.trainer import restore_params
    check_destination(args.output, args.overwrite)  # before restoring: refuse early
    trainer, step, params = restore_params(args.workdir, args.step)
    for path in trainer.export(params, args.output, overwrite=args.overwrite):
        print(f"wrote transformers directory {path} (step {step})")


def _task_config(args):
    from flaxbert.hub import resolve
    from flaxbert.training.finetune import finetune_config
    c = finetune_config(model=str(resolve(args.model_dir)), objective=args.objective)
    c.data.validation = args.data
    c.task.glue = args.glue or ""
    c.task.max_seq_length = args.max_seq_length
    c.train.global_batch_size = args.batch_size
    c.task.doc_stride, c.task.version_2 = args.doc_stride, args.version_2
    c.task.max_query_length = args.max_query_length
    return c


def _evaluate(args) -> None:
    """The task's metrics of a fine-tuned directory on a labelled file (its own labels)."""
    import json
    import tempfile

    from flaxbert.io import atomic_file, check_destination
    from flaxbert.training.trainer import Trainer
    if args.output:
        check_destination(args.output, args.overwrite)
    with tempfile.TemporaryDirectory() as scratch:
        trainer = Trainer(_task_config(args), scratch)
        metrics = trainer.evaluate(trainer.init_state().params) or {}
    text = json.dumps({k: float(v) for k, v in metrics.items()}, indent=2, sort_keys=True) + "\n"
    if args.output:
        with atomic_file(args.output, args.overwrite) as tmp:
            tmp.write_text(text)
        print(f"wrote {len(metrics)} metrics to {args.output}")
    else:
        print(text, end="")


def _word_tags(args) -> list[dict]:
    """{"words", "tags"} per sentence of a CoNLL / word-list file: each word tagged with the
    prediction of its first sub-word, the token that token-classification training labels
    (flaxbert.tasks.features). Words past --max-seq-length tokens are cut with a warning and
    tagged null (or, with --overflow error, the sentence is refused, naming file and line)."""
    import logging

    import jax
    import numpy as np

    from flaxbert.convert import from_pretrained
    from flaxbert.hub import resolve
    from flaxbert.pipelines.text_classification import label_names
    from flaxbert.tasks import readers
    from flaxbert.tasks.batching import TaskBatches
    from flaxbert.tasks.features import encode_words
    from flaxbert.tokenizer import Tokenizer
    model_dir = resolve(args.model_dir)
    model, params = from_pretrained(model_dir)
    if model.task != "token-classification":
        raise ValueError(f"{args.model_dir}: the checkpoint's head is {model.task!r}; "
                         "--task token-classification needs a token-classification head")
    tokenizer = Tokenizer.from_pretrained(model_dir)
    limit = model.config.max_sequence_length
    max_length = min(x for x in (args.max_seq_length or limit, limit,
                                 tokenizer.model_max_length) if x)
    examples = readers.read_token_examples(args.data, require_labels=False)
    features = encode_words(examples, tokenizer, max_length=max_length, overflow=args.overflow)
    forward = jax.jit(lambda p, ids, mask, types: model.apply(
        {"params": p}, ids, mask, types).logits.argmax(-1))
    left, predicted = tokenizer.padding_side == "left", [None] * len(features)
    for batch in TaskBatches(features, args.batch_size, max_length=max_length,
                             pad_id=tokenizer.pad_token_id or 0,
                             padding_side=tokenizer.padding_side, shuffle=False, repeat=False):
        rows = np.asarray(forward(params, batch["input_ids"], batch["attention_mask"],
                                  batch["token_type_ids"]))
        for row, i in zip(rows, batch["example_index"]):
            if i >= 0:  # the feature's own tokens out of its padded row
                n = len(features[i]["input_ids"])
                predicted[i] = row[len(row) - n:] if left else row[:n]
    names, outputs, untagged = label_names(model.config), [], 0
    for example, feature, tokens in zip(examples, features, predicted):
        tags, previous = [None] * len(example["words"]), -1
        for word, tag in zip(feature["word_ids"], tokens):
            if word >= 0 and word != previous:  # a word's first sub-word
                tags[word] = names[int(tag)]
            previous = word
        untagged += tags.count(None)
        outputs.append({"words": list(example["words"]), "tags": tags})
    if untagged:
        logging.getLogger(__name__).warning(
            "%d word(s) lie past max_length=%d tokens and are tagged null (raise "
            "--max-seq-length, or --overflow error to refuse such sentences)", untagged,
            max_length)
    return outputs


def _predict(args) -> None:
    """One JSON line of pipeline output per input example, in the file's order."""
    import json

    from flaxbert.io import atomic_file, check_destination
    from flaxbert.pipelines import pipeline
    from flaxbert.tasks import readers
    check_destination(args.output, args.overwrite)
    if args.task in ("token-classification", "ner") and not args.entities:
        outputs = _word_tags(args)
        with atomic_file(args.output, args.overwrite) as tmp:
            tmp.write_text("".join(json.dumps(o) + "\n" for o in outputs))
        print(f"wrote tags for {len(outputs)} sentences to {args.output}")
        return
    run = pipeline(args.task, args.model_dir, batch_size=args.batch_size)
    run.engine.progress_label = "predict"  # a bar over the model's input rows
    if args.task in ("token-classification", "ner"):
        inputs = [" ".join(e["words"]) for e in readers.read_token_examples(
            args.data, require_labels=False)]
    elif args.task == "question-answering":
        from flaxbert.tasks.qa import read_squad
        examples = read_squad(args.data, split="test", on_mismatch="keep",
                              require_answers=False)
        inputs = [{"question": e["question"], "context": e["context"]} for e in examples]
        answers = run(inputs, handle_impossible_answer=args.version_2)
        outputs = [{"id": e["id"], **a} for e, a in zip(examples, answers)]
        with atomic_file(args.output, args.overwrite) as tmp:
            tmp.write_text("".join(json.dumps(o, default=float) + "\n" for o in outputs))
        print(f"wrote {len(outputs)} answers to {args.output}")
        return
    elif args.task == "multiple-choice":
        inputs = [{"text": e["text"], "choices": e["choices"]} for e in
                  readers.read_choice_examples(args.data, require_labels=False)]
    else:
        examples = readers.read_sequence_examples(args.data, require_labels=False)
        inputs = [{"text": e["text"], "text_pair": e["text_pair"]} if "text_pair" in e
                  else e["text"] for e in examples]
    outputs = run(inputs)
    with atomic_file(args.output, args.overwrite) as tmp:
        tmp.write_text("".join(json.dumps(o, default=float) + "\n" for o in outputs))
    print(f"wrote {len(outputs)} predictions to {args.output}")


# The pipelines whose inputs `_predict` reads from a file (each is in flaxbert.pipelines'
# registry, PIPELINES; tests/test_cli_help.py checks it).
PREDICT_TASKS = ("text-classification", "token-classification", "multiple-choice",
                 "question-answering")


def _glue_epilog() -> str:
    from flaxbert.tasks.glue import GLUE_TASKS
    return f"--glue is one of: {', '.join(GLUE_TASKS)}."


def add_training_parsers(commands) -> None:
    for name, help_text in (
            ("pretrain", "pre-train a model (config file + workdir; resumes automatically)"),
            ("finetune", "fine-tune a checkpoint on a labelled task (configs/finetune_*.py)")):
        command = commands.add_parser(
            name, help=help_text, description=__doc__,
            formatter_class=argparse.RawDescriptionHelpFormatter, add_help=False,
            prefix_chars="\0")  # its -h / --help is _pretrain's: see config_help
        command.add_argument("flags", nargs=argparse.REMAINDER,
                             help="--config FILE[:arg] --workdir DIR [--config.field=value ...]")
        command.set_defaults(run=_pretrain)  # one runner: the config says which kind of run

    from flaxbert.cli_help import RegistryNames, task_objectives
    evaluate = commands.add_parser(
        "evaluate", help="a fine-tuned directory's task metrics on a labelled file (JSON)",
        epilog=_glue_epilog)
    predict = commands.add_parser(
        "predict", help="a fine-tuned directory's predictions for a file (JSONL)")
    for p in (evaluate, predict):
        p.add_argument("model_dir", help="a transformers / flaxbert directory with a task head, "
                                         "or a Hugging Face Hub id (org/name)")
        p.add_argument("--data", required=True,
                       help="CSV / TSV / JSON(L) / CoNLL file, tfds:NAME:SPLIT or hf:NAME")
        p.add_argument("--batch-size", type=int, default=32)
        p.add_argument("--overwrite", action="store_true", help="replace an existing OUTPUT")
        p.add_argument("--version-2", action="store_true",
                       help="question answering: questions may have no answer (SQuAD v2.0)")
    evaluate.add_argument("--objective", default="classification", metavar="OBJECTIVE",
                          choices=RegistryNames(task_objectives),
                          help="the fine-tuning objective the directory was trained with, one "
                               "of: %(choices)s")
    evaluate.add_argument("--doc-stride", type=int, default=128,
                          help="question answering: tokens shared by consecutive windows")
    evaluate.add_argument("--max-query-length", type=int, default=64,
                          help="question answering: longer questions are cut to this")
    evaluate.add_argument("--glue", default="", help="a GLUE task name: its columns and metrics")
    evaluate.add_argument("--max-seq-length", type=int, default=128)
    evaluate.add_argument("--output", default="", help="metrics JSON (default: print them)")
    evaluate.set_defaults(run=_evaluate)
    predict.add_argument("--task", default="text-classification",
                         choices=PREDICT_TASKS,
                         help="the pipeline (flaxbert.pipelines) that reads --data")
    predict.add_argument("--output", required=True, help="predictions, one JSON line each")
    predict.add_argument("--entities", action="store_true",
                         help="token-classification: write the pipeline's entities per "
                              "sentence (words joined by spaces) instead of the default "
                              '{"words": [...], "tags": [...]}, one tag per input word (its '
                              "first sub-word's prediction)")
    predict.add_argument("--max-seq-length", type=int, default=None,
                         help="token-classification tags: tokens per sentence (default: the "
                              "model's limit); words past it are tagged null, with a warning")
    predict.add_argument("--overflow", default="truncate", choices=("truncate", "error"),
                         help="token-classification tags: 'error' refuses a sentence longer "
                              "than --max-seq-length, naming file and line")
    predict.set_defaults(run=_predict)

    export = commands.add_parser(
        "export", help="write a pretrain workdir's checkpoint as transformers directories")
    export.add_argument("--workdir", required=True, help="a `flaxbert pretrain` workdir")
    export.add_argument("--step", type=int, default=None, help="checkpoint step (default latest)")
    export.add_argument("--output", required=True,
                        help="destination directory (must not exist unless --overwrite)")
    export.add_argument("--overwrite", action="store_true", help="replace an existing OUTPUT")
    export.set_defaults(run=_export)
