"""Every `flaxbert COMMAND --help` shows its flags' defaults and the valid names from the
registries (model tasks, objectives, pipelines, GLUE tasks), read only when help is printed."""
import argparse
import contextlib
import io
import re
import subprocess
import sys
from pathlib import Path

import pytest

from flaxbert.cli import build_parser, main

REPO = Path(__file__).resolve().parent.parent


def _commands(parser):
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))


def _argparse_help(command: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exit_:
        build_parser().parse_args([command, "--help"])
    assert exit_.value.code == 0
    return out.getvalue()


def _listed(text: str, lead: str) -> list[str]:
    """The comma-separated names after `lead` up to the next "." or "(" in `text`."""
    flat = " ".join(text.split())
    return [n.strip() for n in re.search(re.escape(lead) + r"\s*([^.(]*)", flat).group(1).split(",")]


def _registry():
    from flaxbert.models.base import TASKS
    from flaxbert.pipelines import PIPELINES
    from flaxbert.tasks.glue import GLUE_TASKS
    from flaxbert.training.objectives import OBJECTIVES, TaskObjective
    fine = [n for n, c in OBJECTIVES.items() if issubclass(c, TaskObjective)]
    return dict(tasks=list(TASKS), fine=fine, pre=[n for n in OBJECTIVES if n not in fine],
                pipelines=PIPELINES, glue=list(GLUE_TASKS))


def test_every_flag_with_a_default_shows_it():
    from flaxbert.training.compile import compile_parser
    parser = build_parser()
    commands = {name: (sub, " ".join(_argparse_help(name).split()))
                for name, sub in _commands(parser).choices.items()
                # their flags are the config's fields: test_training_commands_list_...
                if name not in ("pretrain", "finetune", "compile")}
    # `compile` parses its own flags beside --config.FIELD=...: the help is its parser's.
    commands["compile"] = (compile_parser(), " ".join(compile_parser().format_help().split()))
    assert len(commands) > 10
    for name, (sub, text) in commands.items():
        for action in sub._actions:
            default = action.default
            if (not action.option_strings or default in (None, False, "")
                    or default is argparse.SUPPRESS):
                continue
            flag = action.option_strings[-1]
            part = text[text.index(f" {flag} "):]
            assert "default" in part[:400], (name, flag)


def test_lists_are_the_registries():
    names = _registry()
    assert _listed(_argparse_help("convert"), "--task (a model head) is one of:") == names["tasks"]
    assert _listed(_argparse_help("models"), "--task (a model head) is one of:") == names["tasks"]
    evaluate = _argparse_help("evaluate")
    assert _listed(evaluate, "trained with, one of:") == names["fine"]
    assert _listed(evaluate, "--glue is one of:") == names["glue"]
    predict = next(a for a in _commands(build_parser()).choices["predict"]._actions
                   if a.dest == "task")
    assert set(predict.choices) <= set(names["pipelines"])
    for task in predict.choices:
        assert task in _argparse_help("predict")


def test_training_commands_list_objectives_and_config_fields(capsys):
    names = _registry()
    assert main(["pretrain", "--help"]) == 0
    text = capsys.readouterr().out
    assert _listed(text, "objectives of `flaxbert pretrain` (config field `objective`):") \
        == names["pre"]
    assert "config groups: checkpoint, data, export, mesh" in text
    assert "--config FILE[:arg] --help` lists every field" in text
    assert main(["finetune", "--config", "configs/finetune_glue.py:sst2,tiny", "--help"]) == 0
    text = capsys.readouterr().out
    assert _listed(text, "objectives of `flaxbert finetune` (config field `objective`):") \
        == names["fine"]
    from flaxbert.training.cli import _field_names, _load_config
    _, config = _load_config("configs/finetune_glue.py:sst2,tiny")
    for field in _field_names(config):
        assert f"\n  {field} = " in text, field
    assert "\n  train.num_steps = 100\n" in text and "\n  task.glue = 'sst2'\n" in text


def test_building_the_parser_reads_no_registry():
    """The lists cost the import of JAX and the model stack; only help for them pays."""
    code = ("import sys; from flaxbert.cli import build_parser; build_parser().format_help(); "
            "print(sorted(m for m in ('jax', 'flaxbert.training.objectives', "
            "'flaxbert.models.base') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
