"""What every `flaxbert COMMAND --help` shares: each flag's default, and lists of valid names
read from the registries only when help is printed.

The registries (model tasks, objectives) import JAX and the model stack, several seconds that
`flaxbert --help` or a command given other flags should not pay. So a list of valid names is a
`RegistryNames` (used as argparse `choices`: read when a value is checked or help is shown) or
a parser `epilog` given as a function (called when that parser's help is formatted).
"""
from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable


def shows_default(action: argparse.Action) -> bool:
    """Whether a flag has a default worth printing: not None, "", or False (an off switch)."""
    return bool(action.option_strings) and not (
        action.default is None or action.default is argparse.SUPPRESS
        or (isinstance(action.default, (str, bool)) and not action.default))


class DefaultsFormatter(argparse.HelpFormatter):
    """Appends "(default: X)" to a flag's help unless it already says its default or has none
    worth saying (`shows_default`)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text.lower() or not shows_default(action):
            return text
        return f"{text} (default: %(default)s)" if text else "(default: %(default)s)"

    def _fill_text(self, text, width, indent):
        # Lines break between names, never inside one ("multiple-" / "choice").
        import textwrap
        return textwrap.fill(" ".join(text.split()), width, initial_indent=indent,
                             subsequent_indent=indent, break_on_hyphens=False)


class RawDescriptionDefaultsFormatter(argparse.RawDescriptionHelpFormatter, DefaultsFormatter):
    """DefaultsFormatter that keeps the description and epilog as written (a module docstring
    with command examples)."""


class CommandParser(argparse.ArgumentParser):
    """ArgumentParser with DefaultsFormatter unless told otherwise, whose epilog may be a
    function returning the text; its sub-command parsers are CommandParsers too."""

    def __init__(self, *args, formatter_class=DefaultsFormatter, **kwargs):
        super().__init__(*args, formatter_class=formatter_class, **kwargs)

    def add_argument(self, *args, **kwargs):
        action = super().add_argument(*args, **kwargs)
        if action.help is None and shows_default(action):
            action.help = "(default: %(default)s)"  # argparse prints nothing for no help
        return action

    def format_help(self) -> str:
        if callable(self.epilog):
            self.epilog = self.epilog()
        return super().format_help()


class RegistryNames:
    """The names `load()` returns, loaded on first use: as argparse `choices` they are read
    when a value is checked and when help shows them (`%(choices)s`), not when the parser is
    built. Give the argument a `metavar`, or argparse reads them for the usage line."""

    def __init__(self, load: Callable[[], Iterable[str]]):
        self._load, self._names = load, None

    def names(self) -> tuple[str, ...]:
        if self._names is None:
            self._names = tuple(self._load())
        return self._names

    def __contains__(self, name) -> bool:
        return name in self.names()

    def __iter__(self):
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())

    def __str__(self) -> str:
        return ", ".join(self.names())


def model_tasks() -> tuple[str, ...]:
    """The heads a checkpoint can be loaded with (flaxbert.TASKS)."""
    from flaxbert.models.base import TASKS
    return TASKS


def task_objectives() -> tuple[str, ...]:
    """Fine-tuning objectives: the registry's TaskObjective subclasses."""
    from flaxbert.training.objectives import OBJECTIVES, TaskObjective
    return tuple(name for name, cls in OBJECTIVES.items() if issubclass(cls, TaskObjective))


def pretraining_objectives() -> tuple[str, ...]:
    from flaxbert.training.objectives import OBJECTIVES, TaskObjective
    return tuple(name for name, cls in OBJECTIVES.items() if not issubclass(cls, TaskObjective))


def tasks_epilog() -> str:
    return f"--task (a model head) is one of: {', '.join(model_tasks())}."
