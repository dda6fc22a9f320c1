"""The `flaxbert` command line."""
from __future__ import annotations

import argparse
import logging
import sys
import traceback
from pathlib import Path

from flaxbert.tokenizer import TOKENIZER_FILES



def _convert(args) -> None:
    import flaxbert
    from flaxbert.io import check_destination
    from flaxbert.models import registry
    from flaxbert.convert import with_num_labels
    from flaxbert.hub import resolve
    check_destination(args.dst, args.overwrite)  # before loading: refuse early, not after
    if args.num_labels is not None and args.num_labels < 1:  # refused before loading, too
        raise ValueError(f"--num-labels {args.num_labels}: a head needs at least 1 label")
    src = resolve(args.src)  # a local directory, or a hub id's snapshot
    if args.num_labels is None:
        model, params = flaxbert.from_pretrained(src, task=args.task)
    else:  # loaded with its own head first, so that a head of another size can be told apart
        model, params = with_num_labels(*flaxbert.from_pretrained(src), args.num_labels, args.task,
                                        replace_head=args.ignore_mismatched_sizes, source=str(src))
    extra = [src / name for name in TOKENIZER_FILES if (src / name).is_file()]
    flaxbert.save_pretrained(args.dst, model, params, format=args.to, overwrite=args.overwrite,
                             max_shard_size=args.max_shard_size, extra_files=extra)
    family = registry.family_of(model.config).name
    print(f"wrote {args.to} checkpoint of {family} {model.task} model ("
          f"{flaxbert.count_params(params):,} parameters) to {args.dst}")


def _extend_positions(args) -> None:
    from flaxbert.convert import extend_position_embeddings
    extend_position_embeddings(args.src, args.dst, max_positions=args.max_positions,
                               attention_window=args.attention_window, overwrite=args.overwrite,
                               format=args.to)
    print(f"wrote {args.dst}: {args.max_positions} positions, sparse attention with a window of "
          f"{args.attention_window} tokens on either side")


def _models(args) -> None:
    import flaxbert
    from flaxbert.models import registry
    if args.task not in flaxbert.TASKS:
        raise ValueError(f"--task {args.task!r} is not a task; choose one of "
                         f"{', '.join(flaxbert.TASKS)}")
    print(f"{'name':<28} {'family':<10} {'layers':>6} {'hidden':>6} {'heads':>5} {'params':>14}")
    for name in flaxbert.list_models():
        c = flaxbert.get_config(name)
        family = registry.family_of(c)
        n = (f"{flaxbert.count_params(family.model(args.task, c)):,}"
             if args.task in family.task_models else "-")
        print(f"{name:<28} {family.name:<10} {c.num_hidden_layers:>6} "
              f"{c.hidden_size:>6} {c.num_attention_heads:>5} {n:>14}")


def build_parser() -> argparse.ArgumentParser:
    from flaxbert.cli_help import CommandParser, tasks_epilog
    parser = CommandParser(  # every command's --help shows its flags' defaults
        prog="flaxbert", description="The BERT family in JAX/Flax: models, conversion, training.")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="log at INFO level, show the libraries' start-up messages "
                             "(TensorFlow, jax, Orbax), and the traceback of an error")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    convert = commands.add_parser(
        "convert", help="convert a checkpoint between transformers (hf) and flaxbert (flax) formats",
        description="Convert SRC (a transformers or flaxbert directory) to DST in the --to format. "
                    "Tokenizer files in SRC are copied along. DST is written atomically.",
        epilog=tasks_epilog)
    convert.add_argument("src", help="source checkpoint directory, or a Hugging Face Hub id "
                                     "(org/name: downloaded, or from the HF cache with "
                                     "HF_HUB_OFFLINE=1)")
    convert.add_argument("dst", help="destination directory (must not exist unless --overwrite)")
    convert.add_argument("--to", required=True, choices=("flax", "hf"),
                         help="flax: flaxbert.json + Orbax params; hf: transformers safetensors")
    convert.add_argument("--task", default=None,
                         help="head to convert (default: what SRC's config names)")
    convert.add_argument("--num-labels", type=int, default=None,
                         help="give the --task head (default: SRC's own if it has labels, else "
                              "sequence-classification) this many labels; a head SRC lacks is "
                              "initialised fresh, with a warning naming its weights")
    convert.add_argument("--ignore-mismatched-sizes", action="store_true",
                         help="with --num-labels: replace a SRC head that has another number of "
                              "labels by a fresh one (refused otherwise)")
    convert.add_argument("--overwrite", action="store_true", help="replace an existing DST")
    convert.add_argument("--max-shard-size", default="50GB",
                         help="hf only: shard above this size (default 50GB, as transformers)")
    convert.set_defaults(run=_convert)

    extend = commands.add_parser(
        "extend-positions", help="copy a checkpoint's position table out to longer inputs, with "
                                 "sparse attention (as Longformer was made from RoBERTa)",
        description="Write SRC (BERT, RoBERTa, DistilBERT, ALBERT or ELECTRA) to DST with its "
                    "learned positions repeated up to --max-positions tokens and "
                    "attention_impl='sparse'. Tokenizer files are copied with the new "
                    "model_max_length. DST is written atomically.")
    extend.add_argument("src", help="source checkpoint directory")
    extend.add_argument("dst", help="destination directory (must not exist unless --overwrite)")
    extend.add_argument("--max-positions", type=int, default=4096,
                        help="tokens the extended model takes (default 4096)")
    extend.add_argument("--attention-window", type=int, default=256,
                        help="keys attended on either side of each query (default 256)")
    extend.add_argument("--to", choices=("flax", "hf"), default="flax",
                        help="flax (default) keeps the sparse settings; hf's config.json cannot")
    extend.add_argument("--overwrite", action="store_true", help="replace an existing DST")
    extend.set_defaults(run=_extend_positions)

    models = commands.add_parser("models", help="list registered model names with sizes",
                                 epilog=tasks_epilog)
    models.add_argument("--task", default="base",
                        help="count parameters with this head (one of flaxbert.TASKS; '-' for "
                             "a family without it)")
    models.set_defaults(run=_models)

    from flaxbert.tokenizer_training import add_train_tokenizer_parser
    add_train_tokenizer_parser(commands)
    from flaxbert.data.prepare import add_prepare_parser
    add_prepare_parser(commands)
    from flaxbert.training.cli import add_training_parsers
    add_training_parsers(commands)
    from flaxbert.bench import add_bench_parser
    add_bench_parser(commands)
    from flaxbert.training.compile import add_compile_parser
    add_compile_parser(commands)
    from flaxbert.inference import add_embed_parser
    add_embed_parser(commands)
    from flaxbert.plot import add_plot_parser
    add_plot_parser(commands)
    from flaxbert.vocab_extension import add_extend_vocab_parser
    add_extend_vocab_parser(commands)
    return parser


def _expected_errors() -> tuple[type, ...]:
    """What bad input, a bad file or a full disk raise: reported in one line, not as a bug."""
    from safetensors import SafetensorError
    return (OSError, ValueError, TypeError, KeyError, ImportError, SafetensorError)


def error_line(error: BaseException) -> str:
    """`error` as one line naming its file: "PATH: reason" for an OSError from the system."""
    if isinstance(error, OSError) and error.strerror and error.filename is not None:
        text = f"{error.filename}: {error.strerror}"
        if error.filename2 is not None:
            text += f" (and {error.filename2})"
    elif isinstance(error, KeyError) and len(error.args) == 1:
        key = error.args[0]  # str(KeyError) is the repr of its key, which says little alone
        text = key if isinstance(key, str) and " " in key else f"missing key {key!r}"
    else:
        text = str(error) or type(error).__name__
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from flaxbert.quiet import quiet_startup
    quiet_startup(args.verbose)  # before any command imports TensorFlow
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    from flaxbert.compile_cache import enable_compilation_cache
    enable_compilation_cache()  # a second run on this machine reads its compiles from disk
    try:
        args.run(args)
    except KeyboardInterrupt:
        print(f"flaxbert {args.command}: interrupted", file=sys.stderr)
        return 130
    except _expected_errors() as e:
        if args.verbose:
            traceback.print_exc()
        print(f"flaxbert {args.command}: error: {error_line(e)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
