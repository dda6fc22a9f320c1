"""The README's quick start runs as written."""
import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_quick_start_runs(tmp_path, monkeypatch, capsys):
    text = README.read_text()
    block = re.search(r"## Quick start\n\n```python\n(.*?)```", text, re.S).group(1)
    assert len([l for l in block.splitlines() if l and not l.startswith("#")]) <= 10
    exec(compile(block, "README quick start", "exec"), {})
    assert "(2, 384)" in capsys.readouterr().out
    import transformers
    model, info = transformers.AutoModelForMaskedLM.from_pretrained(
        "/tmp/bert-tiny-mlm", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]


def test_readme_names_every_command_and_no_other():
    """`flaxbert <command>` as the README shows it (at a line's start in a code block, or in
    backticks) against the CLI's sub-commands."""
    import argparse

    from flaxbert.cli import build_parser
    text = README.read_text()
    shown = set(re.findall(r"(?:^|`)flaxbert (?:-v )?([a-z][a-z-]*)", text, re.M))
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert shown == set(commands.choices)


def test_readme_shows_both_commands_first():
    text = README.read_text()
    first_block = re.search(r"```bash\n(.*?)```", text, re.S).group(1)
    assert "make demo" in first_block and "make test" in first_block
