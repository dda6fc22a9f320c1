"""flaxbert installs like a library: a wheel built from this tree, installed into a fresh
virtualenv outside the repository, gives a working `flaxbert` command and API from any
directory, with the recipes as package data (`--config flaxbert:<recipe>`).

The default test installs the wheel alone (--no-deps) and lets the new environment see this
one's dependencies through a .pth file, so it needs no registry and takes seconds; flaxbert
itself comes only from the wheel. The slow test installs the wheel with all its dependencies.
"""
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from conftest import TINY_HF

REPO = Path(__file__).resolve().parents[1]
SOURCES = ("flaxbert", "configs", "pyproject.toml", "setup.py", "README.md")


def run(*command, cwd, timeout=600):
    result = subprocess.run([str(c) for c in command], cwd=cwd, capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0, f"{command}:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    """The wheel of this tree, built from a copy (a build writes build/ and egg-info beside the
    sources), without build isolation: setuptools comes from this environment."""
    source = tmp_path_factory.mktemp("source")
    for name in SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, source / name,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy(REPO / name, source / name)
    dist = tmp_path_factory.mktemp("dist")
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
        "-w", dist, source, cwd=source)
    (found,) = dist.glob("flaxbert-*.whl")
    return found


def fresh_venv(root: Path) -> Path:
    run(sys.executable, "-m", "venv", "--without-pip", root / "venv", cwd=root)
    return root / "venv" / "bin"


def site_packages(bin_dir: Path) -> Path:
    (found,) = (bin_dir.parent / "lib").glob("python3*/site-packages")
    return found


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory):
    """bin/ of a fresh venv holding only the wheel, plus a .pth onto this environment's
    dependencies (written after the install, so pip never sees this environment's flaxbert)."""
    bin_dir = fresh_venv(tmp_path_factory.mktemp("venv"))
    run(sys.executable, "-m", "pip", "--python", bin_dir / "python", "install", "-q",
        "--no-deps", "--no-index", wheel, cwd=bin_dir)
    (site_packages(bin_dir) / "dependencies.pth").write_text(
        sysconfig.get_paths()["purelib"] + "\n")
    return bin_dir


@pytest.fixture
def elsewhere(tmp_path):
    """A working directory outside the repository, with a tiny transformers checkpoint."""
    import torch
    import transformers
    torch.manual_seed(0)
    transformers.BertForMaskedLM(transformers.BertConfig(**TINY_HF)).save_pretrained(
        tmp_path / "hf")
    (tmp_path / "hf" / "vocab.txt").write_text(
        "\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *(f"w{i}" for i in range(94))]))
    return tmp_path


def test_the_wheel_ships_the_recipes_and_an_spdx_license(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        (metadata,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        assert "License-Expression: Apache-2.0" in archive.read(metadata).decode()
    recipes = {Path(n).name for n in names if n.startswith("flaxbert/recipes/")}
    assert recipes >= {p.name for p in (REPO / "configs").glob("*.py")}
    assert not any(n.startswith(("tests/", "configs/")) for n in names)


def check_installed_from_the_wheel(bin_dir: Path, cwd: Path) -> None:
    """--help, an installed recipe and a conversion, run from `cwd` with `bin_dir`'s flaxbert."""
    where = run(bin_dir / "python", "-c", "import flaxbert; print(flaxbert.__file__)", cwd=cwd)
    assert Path(where.stdout.strip()).is_relative_to(site_packages(bin_dir))

    help_text = run(bin_dir / "flaxbert", "--help", cwd=cwd).stdout
    for command in ("convert", "pretrain", "finetune", "embed", "predict"):
        assert command in help_text

    # an installed recipe resolves from the venv: its own error names the installed file
    result = subprocess.run([bin_dir / "flaxbert", "pretrain", "--config", "flaxbert:bert_base:nope",
                             "--workdir", cwd / "run"], cwd=cwd, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 2
    installed_recipe = site_packages(bin_dir) / "flaxbert" / "recipes" / "bert_base.py"
    assert f"config file {installed_recipe} line" in result.stderr, result.stderr
    result = subprocess.run([bin_dir / "flaxbert", "pretrain", "--config", "flaxbert:bert_bse",
                             "--workdir", cwd / "run"], cwd=cwd, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert re.search(r"no installed recipe 'bert_bse'; installed: .*bert_base, .*demo",
                     result.stderr), result.stderr

    out = run(bin_dir / "flaxbert", "convert", "hf", "flax", "--to", "flax", cwd=cwd).stdout
    assert "wrote flax checkpoint of bert masked-lm model" in out
    assert (cwd / "flax" / "flaxbert.json").is_file() and (cwd / "flax" / "vocab.txt").is_file()


def test_the_installed_command_works_outside_the_repo(installed, elsewhere):
    check_installed_from_the_wheel(installed, elsewhere)


def test_the_readme_quick_start_runs_on_the_installed_package(installed, tmp_path):
    block = re.search(r"## Quick start\n\n```python\n(.*?)```", (REPO / "README.md").read_text(),
                      re.S).group(1)
    target = tmp_path / "bert-tiny-mlm"
    script = block.replace("/tmp/bert-tiny-mlm", str(target))
    result = run(installed / "python", "-c", script, cwd=tmp_path)
    assert "(2, 384)" in result.stdout
    assert (target / "model.safetensors").is_file()


@pytest.mark.slow  # downloads and installs every dependency: minutes
def test_pip_install_of_the_wheel_alone_gives_a_working_command(wheel, elsewhere):
    bin_dir = fresh_venv(elsewhere)
    run(sys.executable, "-m", "pip", "--python", bin_dir / "python", "install", "-q", wheel,
        cwd=elsewhere, timeout=3000)
    check_installed_from_the_wheel(bin_dir, elsewhere)
