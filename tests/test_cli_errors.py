"""Every expected failure of a `flaxbert` command is one line on stderr, exit code 2.

The table runs the CLI in-process (fast); two subprocess tests check what only a real process
shows: the traceback under -v, and the pretrain flag parsing as a user's shell reaches it.
"""
import errno
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers
from safetensors import SafetensorError

from conftest import TINY_HF
from flaxbert import cli

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli-errors")
    (root / "texts.txt").write_text("one text\nanother\n", encoding="utf-8")
    (root / "latin1.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    (root / "afile").write_text("a file of the user's")
    (root / "kept").mkdir()
    (root / "kept" / "mine.txt").write_text("a file of the user's")
    (root / "syntax.py").write_text("def get_config(:\n")
    (root / "raises.py").write_text("def get_config():\n    return 1 / 0\n")
    (root / "noconfig.py").write_text("x = 1\n")
    return root


def _one_error_line(capsys, command):
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"flaxbert {command}: error: ") and "Traceback" not in err
    assert ".tmp-" not in err  # never an internal temporary's name
    return lines[0]


# (argv with {d} for the files directory, the words the one line must hold)
CASES = [
    (["convert", "{d}/nowhere", "{d}/out", "--to", "flax"], ["nowhere", "not a directory"]),
    (["convert", "{d}/kept", "{d}/afile/out", "--to", "hf"],
     ["cannot write {d}/afile/out", "{d}/afile is a file"]),
    (["convert", "{d}/nowhere", "{d}/kept", "--to", "hf"], ["{d}/kept already exists",
                                                           "--overwrite"]),
    (["embed", "{d}/nowhere", "--input", "{d}/missing.txt", "--output", "{d}/e.npy"],
     ["--input {d}/missing.txt"]),
    (["embed", "{d}/nowhere", "--input", "{d}/latin1.txt", "--output", "{d}/e.npy"],
     ["{d}/latin1.txt is not UTF-8"]),
    (["embed", "{d}/nowhere", "--input", "{d}/texts.txt", "--output", "{d}/afile"],
     ["{d}/afile already exists", "--overwrite"]),
    (["embed", "{d}/nowhere", "--input", "{d}/texts.txt", "--output", "{d}/kept"],
     ["{d}/kept is a directory"]),
    (["prepare", "{d}/texts.txt", "--out", "{d}/p", "--tokenizer", "{d}/nowhere", "--mode", "nsp"],
     ["tokenizer directory", "nowhere"]),
    (["train-tokenizer", "{d}/texts.txt", "--out", "{d}/kept", "--kind", "wordpiece",
      "--vocab-size", "50"], ["{d}/kept already exists"]),
    (["train-tokenizer", "{d}/latin1.txt", "--out", "{d}/t", "--kind", "wordpiece",
      "--vocab-size", "50"], ["latin1.txt", "not UTF-8"]),
    (["export", "--workdir", "{d}/nowhere", "--output", "{d}/kept"], ["{d}/kept already exists",
                                                                     "--overwrite"]),
    (["export", "--workdir", "{d}/nowhere", "--output", "{d}/o"], ["nowhere", "config.json"]),
    (["pretrain", "--workdir", "{d}/w"], ["--config is required"]),
    (["pretrain", "--config", "{d}/missing.py:tiny", "--workdir", "{d}/w"],
     ["--config {d}/missing.py: no such file"]),
    (["pretrain", "--config", "{d}/syntax.py", "--workdir", "{d}/w"],
     ["config file {d}/syntax.py line 1: invalid syntax"]),
    (["pretrain", "--config", "{d}/raises.py", "--workdir", "{d}/w"],
     ["config file {d}/raises.py line 2", "ZeroDivisionError"]),
    (["pretrain", "--config", "{d}/noconfig.py", "--workdir", "{d}/w"], ["defines no get_config"]),
    (["pretrain", "--config", f"{CONFIGS}/bert_base.py:phase9", "--workdir", "{d}/w"],
     ["bert_base.py", "phase9"]),
    (["pretrain", "--config", f"{CONFIGS}/demo.py", "--workdir", "{d}/w",
      "--config.optimizer.lerning_rate=1"],
     ["has no field 'optimizer.lerning_rate'; did you mean 'optimizer.learning_rate'?"]),
    (["pretrain", "--config", f"{CONFIGS}/demo.py", "--workdir", "{d}/w",
      "--config.optimizer.learning_rate=fast"], ["--config.optimizer.learning_rate=fast",
                                                 "could not convert"]),
    (["pretrain", "--config", f"{CONFIGS}/demo.py", "--workdir", "{d}/w",
      "--config.train.num_steps", "ten"], ["--config.train.num_steps=ten"]),
]


@pytest.mark.parametrize("argv,words", CASES, ids=lambda x: " ".join(x)[:60])
def test_bad_invocation_is_one_clear_line(files, capsys, argv, words):
    before = sorted(p.name for p in files.iterdir())
    assert cli.main([a.format(d=files) for a in argv]) == 2
    line = _one_error_line(capsys, argv[0])
    for word in words:
        assert word.format(d=files) in line, line
    assert sorted(p.name for p in files.iterdir()) == before  # nothing written, nothing lost
    assert (files / "kept" / "mine.txt").read_text() == "a file of the user's"


@pytest.mark.parametrize("error,words", [
    (OSError(errno.ENOSPC, "No space left on device", "/data/out"),
     ["/data/out: No space left on device"]),
    (PermissionError(errno.EACCES, "Permission denied", "/data/ro"),
     ["/data/ro: Permission denied"]),
    (json.JSONDecodeError("Expecting value", "{", 1), ["Expecting value"]),
    (UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte"), ["invalid start byte"]),
    (SafetensorError("Error while deserializing header: HeaderTooLarge"), ["HeaderTooLarge"]),
    (KeyError("lerning_rate"), ["missing key 'lerning_rate'"]),
    (ValueError("first line\n  second line"), ["first line second line"]),
    (ImportError("No module named 'tensorflow'"), ["tensorflow"]),
])
def test_every_expected_failure_is_one_line(monkeypatch, capsys, error, words):
    def fail(args):
        raise error

    monkeypatch.setattr(cli, "_models", fail)
    assert cli.main(["models"]) == 2
    line = _one_error_line(capsys, "models")
    assert all(w in line for w in words), line


def test_interrupt_is_130_and_a_bug_keeps_its_traceback(monkeypatch, capsys):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_models", interrupted)
    assert cli.main(["models"]) == 130
    assert capsys.readouterr().err == "flaxbert models: interrupted\n"

    def bug(args):
        raise AttributeError("'NoneType' object has no attribute 'shape'")

    monkeypatch.setattr(cli, "_models", bug)
    with pytest.raises(AttributeError):
        cli.main(["models"])


def test_disk_full_during_convert_leaves_nothing(tmp_path, monkeypatch, capsys):
    import flaxbert.convert.hf as hf
    torch.manual_seed(0)
    hf_model = transformers.BertForMaskedLM(transformers.BertConfig(**TINY_HF))
    hf_model.save_pretrained(tmp_path / "hf")

    def full_disk(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"\0" * 1000)  # part of the file made it to disk
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(hf, "save_file", full_disk)
    capsys.readouterr()
    assert cli.main(["convert", str(tmp_path / "hf"), str(tmp_path / "out"), "--to", "hf"]) == 2
    assert _one_error_line(capsys, "convert").endswith(
        f"{tmp_path / 'out'}: No space left on device")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf"]


def _flaxbert(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "flaxbert", *map(str, args)], capture_output=True,
                          text=True, timeout=300, cwd=cwd)


def test_verbose_shows_the_traceback_too(files):
    result = _flaxbert("-v", "embed", files / "nowhere", "--input", files / "texts.txt",
                       "--output", files / "e.npy")
    assert result.returncode == 2
    assert "Traceback (most recent call last)" in result.stderr
    last = result.stderr.splitlines()[-1]  # the one line still ends it
    assert last.startswith("flaxbert embed: error: ") and str(files / "nowhere") in last


def test_pretrain_override_typo_in_a_real_process(tmp_path):
    result = _flaxbert("pretrain", "--config", "configs/demo.py", "--workdir", tmp_path / "w",
                       "--config.optimizer.lerning_rate=1", cwd=ROOT)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "flaxbert pretrain: error: --config.optimizer.lerning_rate: configs/demo.py has no field "
        "'optimizer.lerning_rate'; did you mean 'optimizer.learning_rate'?"]
    assert not (tmp_path / "w").exists()


def test_lone_surrogate_is_a_clear_value_error():
    import tokenizers

    from flaxbert.tokenizer import Tokenizer
    tok = Tokenizer(tokenizers.Tokenizer(tokenizers.models.WordLevel({"a": 0, "[UNK]": 1},
                                                                     unk_token="[UNK]")))
    with pytest.raises(ValueError, match=r"text\[1\] holds a lone surrogate '\\ud800' at "
                                         r"position 2"):
        tok(["fine", "ab\ud800c"])
    with pytest.raises(ValueError, match=r"text_pair holds a lone surrogate '\\udc80' at "
                                         r"position 0"):
        tok("a", "\udc80")
    with pytest.raises(ValueError, match="lone surrogate"):
        tok.tokenize("x\ud800")
    assert tok.tokenize("a") == ["a"]
