"""notebooks/*.ipynb run top to bottom: each is executed with nbclient in a fresh kernel (this
interpreter's, so the .venv's flaxbert), in a temporary directory, offline, with the
parameters-tagged cell's `SMALL = ...` line set to `SMALL = True`, and fails on the first cell
that raises. The committed files are checked too: no stored outputs, the Colab badge pointing at
the notebook itself, the Colab-only install cell and the parameters cell.

The executed copies are kept under pytest's tmp_path (`<basetemp>/test_notebook_runs_*`) for a
look at what a failing run printed. FLAXBERT_NOTEBOOK_TIMEOUT (seconds, default 600) bounds each
notebook's whole run, not one cell's."""
import os
import re
import sys
import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))
BADGE = ("[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]"
         "(https://colab.research.google.com/github/flaxbert/flaxbert/blob/main/notebooks/{})")
SMALL_LINE = re.compile(r"^SMALL\s*=.*$", re.M)
NOTEBOOK_TIMEOUT = float(os.environ.get("FLAXBERT_NOTEBOOK_TIMEOUT", "600"))


def _parameters_cell(nb):
    tagged = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, f"{len(tagged)} cells are tagged 'parameters' (want exactly one)"
    return tagged[0]


def test_there_are_notebooks():
    assert NOTEBOOKS, "no notebooks/*.ipynb found"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_committed_clean_with_badge_install_and_parameters(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    stored = [i for i, c in enumerate(nb.cells) if c.cell_type == "code"
              and (c.outputs or c.execution_count is not None)]
    assert not stored, f"{path.name}: cells {stored} have stored outputs (clear them)"
    first, second = nb.cells[0], nb.cells[1]
    assert first.cell_type == "markdown" and first.source.lstrip().startswith("# "), \
        f"{path.name}: cell 1 must be a markdown title"
    assert BADGE.format(path.name) in first.source, f"{path.name}: no Colab badge for itself"
    assert second.cell_type == "code" and '"google.colab" in sys.modules' in second.source \
        and "pip" in second.source and "flaxbert" in second.source, \
        f"{path.name}: cell 2 must install flaxbert only on Colab"
    parameters = _parameters_cell(nb)
    assert parameters is nb.cells[2] and parameters.cell_type == "code", \
        f"{path.name}: cell 3 must be the parameters cell"
    assert len(SMALL_LINE.findall(parameters.source)) == 1, \
        f"{path.name}: the parameters cell must assign SMALL exactly once"
    assert "SMALL = True" in parameters.source, f"{path.name}: SMALL must default to True"


def _remaining_budget(deadline):
    """nbclient's timeout is per cell; giving each cell what is left of the notebook's budget
    makes it a timeout for the whole notebook."""
    return lambda cell: max(1, int(deadline - time.monotonic()))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_top_to_bottom(path, tmp_path):
    nb = nbformat.read(path, as_version=4)
    parameters = _parameters_cell(nb)
    parameters.source = SMALL_LINE.sub("SMALL = True", parameters.source)
    # TOKENIZERS_PARALLELISM: the kernel forks (pip, subprocess); `tokenizers` would warn.
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", JAX_PLATFORMS="cpu",
               TOKENIZERS_PARALLELISM="false")
    client = nbclient.NotebookClient(
        nb, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}},
        timeout_func=_remaining_budget(time.monotonic() + NOTEBOOK_TIMEOUT),
        startup_timeout=120)
    start = time.monotonic()
    try:
        client.execute(env=env)
    finally:
        nbformat.write(nb, tmp_path / path.name)  # what ran, for a look after a failure
    seconds = time.monotonic() - start
    print(f"{path.name}: executed in {seconds:.1f} s", file=sys.stderr)
    images = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
              if "image/png" in o.get("data", {})]
    assert images, f"{path.name}: no figure (image/png output) after running it"
