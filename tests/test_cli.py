"""The `flaxbert` command line, run as a user runs it."""
import subprocess
import sys

import numpy as np
import torch
import transformers
from safetensors.numpy import load_file

from conftest import TINY_HF


def _flaxbert(*args):
    return subprocess.run([sys.executable, "-m", "flaxbert", *map(str, args)], capture_output=True,
                          text=True, timeout=300)


def test_help_lists_commands():
    result = _flaxbert("--help")
    assert result.returncode == 0
    for command in ("convert", "models"):
        assert command in result.stdout


def test_convert_both_ways_is_bit_exact(tmp_path):
    torch.manual_seed(0)
    hf = transformers.BertForTokenClassification(transformers.BertConfig(**TINY_HF, num_labels=5))
    hf.save_pretrained(tmp_path / "hf")
    (tmp_path / "hf" / "vocab.txt").write_text("\n".join(f"tok{i}" for i in range(99)))
    result = _flaxbert("convert", tmp_path / "hf", tmp_path / "flax", "--to", "flax")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "flax" / "flaxbert.json").exists() and (tmp_path / "flax" / "vocab.txt").exists()
    result = _flaxbert("convert", tmp_path / "flax", tmp_path / "back", "--to", "hf")
    assert result.returncode == 0, result.stderr
    a = load_file(tmp_path / "hf" / "model.safetensors")
    b = load_file(tmp_path / "back" / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    again = transformers.AutoModelForTokenClassification.from_pretrained(tmp_path / "back")
    assert again.config.num_labels == 5


def test_errors_are_one_clear_line(tmp_path):
    result = _flaxbert("convert", tmp_path / "nope", tmp_path / "out", "--to", "flax")
    assert result.returncode == 2
    assert result.stderr.strip().startswith("flaxbert convert: error:")
    assert "not a directory" in result.stderr and "Traceback" not in result.stderr
