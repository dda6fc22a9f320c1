"""tpu_scripts/create.sh and run.sh, run against a fake `gcloud` on PATH that records its argv (and,
for run.sh, plays the TPU worker: it runs the remote command in a fake home whose
~/flaxbert/.venv/bin/flaxbert records the arguments it receives). `--dry-run` must print the
same commands and call nothing; the README's `flaxbert prepare` flags must exist."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPTS = REPO / "tpu_scripts"

FAKE_GCLOUD = """#!{python}
import json, os, subprocess, sys
with open(os.environ["FAKE_GCLOUD_LOG"], "a") as log:
    log.write(json.dumps(sys.argv[1:]) + "\\n")
args = sys.argv[1:]
if os.environ.get("FAKE_WORKER_HOME") and "ssh" in args:  # be the worker: run --command there
    command = args[args.index("--command") + 1]
    sys.exit(subprocess.run(["bash", "-c", command], cwd=os.environ["FAKE_WORKER_HOME"]).returncode)
"""

FAKE_FLAXBERT = """#!{python}
import json, os, sys
with open(os.environ["FAKE_FLAXBERT_LOG"], "a") as log:
    log.write(json.dumps(sys.argv[1:]) + "\\n")
"""


@pytest.fixture
def fake(tmp_path):
    """(env, worker env, read_gcloud_calls, read_flaxbert_calls), the fakes under tmp_path."""
    bin_dir, home = tmp_path / "bin", tmp_path / "worker"
    bin_dir.mkdir()
    venv_bin = home / "flaxbert" / ".venv" / "bin"
    venv_bin.mkdir(parents=True)
    for path, text in ((bin_dir / "gcloud", FAKE_GCLOUD), (venv_bin / "flaxbert", FAKE_FLAXBERT)):
        path.write_text(text.format(python=sys.executable))
        path.chmod(0o755)
    logs = {"gcloud": tmp_path / "gcloud.jsonl", "flaxbert": tmp_path / "flaxbert.jsonl"}
    env = {k: v for k, v in os.environ.items()
           if k not in ("VERSION", "REF", "SPOT", "ZONE", "TPU", "ACCEL", "REPO")}
    env.update(PATH=f"{bin_dir}{os.pathsep}{env['PATH']}", FAKE_GCLOUD_LOG=str(logs["gcloud"]),
               FAKE_FLAXBERT_LOG=str(logs["flaxbert"]))
    worker = {"FAKE_WORKER_HOME": str(home)}  # run.sh's tests let the fake run the remote command

    def calls(name):
        file = logs[name]
        return [json.loads(line) for line in file.read_text().splitlines()] if file.exists() else []
    return env, worker, lambda: calls("gcloud"), lambda: calls("flaxbert")


def _bash_words(line):
    """The words bash makes of a printed command line (it may use $'...' quoting)."""
    out = subprocess.run(["bash", "-c", f"set -- {line}\nprintf '%s\\0' \"$@\""],
                         capture_output=True, text=True, check=True).stdout
    return out.split("\0")[:-1]


def _script(name, args, env, **variables):
    return subprocess.run(["bash", str(SCRIPTS / name), *args], env={**env, **variables},
                          capture_output=True, text=True, timeout=60, cwd=REPO)


# Flags a shell would mangle: spaces, quotes, $(), backticks, ;, a glob and a newline.
AWKWARD_FLAGS = ["--config", "flaxbert:bert_base:phase1", "--workdir", "gs://bucket/runs/bert 1",
                 "--config.data.train=gs://bucket/data/it's;$(touch pwned)`touch pwned`",
                 "--config.model_overrides.dtype=bfloat16", "--config.train.num_steps=10",
                 "--config.optimizer.learning_rate=*", "--config.note=two\nlines"]


def test_run_gives_every_worker_the_pretrain_flags_word_for_word(fake, tmp_path):
    env, worker, gcloud, flaxbert = fake
    result = _script("run.sh", AWKWARD_FLAGS, env, ZONE="us-east5-b", TPU="bert-v6e-32", **worker)
    assert result.returncode == 0, result.stderr
    [call] = gcloud()
    assert call[:8] == ["compute", "tpus", "tpu-vm", "ssh", "bert-v6e-32", "--zone", "us-east5-b",
                        "--worker=all"]
    assert call[8] == "--command" and len(call) == 10
    assert call[9].startswith("cd flaxbert && .venv/bin/flaxbert pretrain --multihost ")
    # The worker's shell unquoted them back to exactly what run.sh was given.
    assert flaxbert() == [["pretrain", "--multihost", *AWKWARD_FLAGS]]
    assert not list(tmp_path.rglob("pwned"))


def test_run_dry_run_prints_the_command_and_calls_nothing(fake):
    env, worker, gcloud, flaxbert = fake
    variables = dict(ZONE="europe-west4-a", TPU="pod", **worker)
    dry = _script("run.sh", ["--dry-run", *AWKWARD_FLAGS], env, **variables)
    assert dry.returncode == 0, dry.stderr
    assert gcloud() == [] and flaxbert() == []
    [printed] = dry.stdout.splitlines()
    real = _script("run.sh", AWKWARD_FLAGS, env, **variables)
    assert real.returncode == 0, real.stderr
    assert _bash_words(printed) == ["gcloud", *gcloud()[0]]


def test_run_refuses_no_flags_and_missing_settings(fake):
    env, _, gcloud, _ = fake
    result = _script("run.sh", [], env, ZONE="z", TPU="t")
    assert result.returncode == 2 and "give the pretrain flags" in result.stderr
    result = _script("run.sh", ["--config", "x"], env, TPU="t")
    assert result.returncode != 0 and "ZONE" in result.stderr
    assert gcloud() == []


@pytest.mark.parametrize("accel, version", [("v6e-32", "v2-alpha-tpuv6e"),
                                            ("v5p-64", "v2-alpha-tpuv5"),
                                            ("v5litepod-16", "v2-alpha-tpuv5-lite"),
                                            ("v4-32", "tpu-ubuntu2204-base")])
def test_create_picks_the_generations_image_and_installs_on_every_host(fake, accel, version):
    env, _, gcloud, _ = fake  # the install is recorded, never run
    result = _script("create.sh", [], env, ZONE="us-east5-b", TPU="slice", ACCEL=accel,
                     REPO="https://example.com/me/flax bert.git", REF="v0.1")
    assert result.returncode == 0, result.stderr
    create, ssh = gcloud()
    assert create == ["compute", "tpus", "tpu-vm", "create", "slice", "--zone", "us-east5-b",
                      "--accelerator-type", accel, "--version", version, "--spot"]
    assert ssh[:8] == ["compute", "tpus", "tpu-vm", "ssh", "slice", "--zone", "us-east5-b",
                       "--worker=all"]
    install = ssh[ssh.index("--command") + 1]
    check = subprocess.run(["bash", "-n", "-c", install], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr  # the remote script parses
    lines = install.splitlines()
    # A Python the package supports: the image's if new enough, else uv's 3.11.
    assert "sys.version_info < (3, 11)" in install and "uv python install 3.11" in lines[4]
    assert "git clone -q https://example.com/me/flax\\ bert.git flaxbert" in install
    assert "git fetch -q origin v0.1" in lines and "git checkout -q --detach FETCH_HEAD" in lines
    assert ".venv/bin/python -m pip install -q 'jax[tpu]' -e '.[data]'" in lines


def test_create_settings_dry_run_and_errors(fake):
    env, _, gcloud, _ = fake
    base = dict(ZONE="z", TPU="t", ACCEL="v4-8", REPO="r")
    result = _script("create.sh", [], env, **base, SPOT="0", VERSION="my-image")
    assert result.returncode == 0, result.stderr
    assert gcloud()[0][-2:] == ["--version", "my-image"]  # on demand: no --spot
    recorded = gcloud()
    dry = _script("create.sh", ["--dry-run"], env, **base, SPOT="0", VERSION="my-image")
    assert dry.returncode == 0, dry.stderr
    assert gcloud() == recorded  # nothing called
    assert [_bash_words(line) for line in dry.stdout.splitlines()] == \
        [["gcloud", *call] for call in recorded]
    unknown = _script("create.sh", [], env, **dict(base, ACCEL="v9z-8"))
    assert unknown.returncode == 2 and "no default VERSION for ACCEL=v9z-8" in unknown.stderr
    missing = _script("create.sh", [], env, **{k: v for k, v in base.items() if k != "REPO"})
    assert missing.returncode != 0 and "REPO" in missing.stderr
    assert gcloud() == recorded


def test_readme_prepare_command_uses_flags_prepare_has():
    readme = (SCRIPTS / "README.md").read_text()
    [command] = re.findall(r"^flaxbert prepare (?:.*\\\n)*.*$", readme, re.M)
    used = set(re.findall(r"(--[a-z-]+)", command))
    assert {"--out", "--tokenizer", "--mode"} <= used
    help_text = subprocess.run([sys.executable, "-m", "flaxbert.cli", "prepare", "--help"],
                               capture_output=True, text=True, cwd=REPO).stdout
    known = set(re.findall(r"(--[a-z-]+)", help_text))
    assert used <= known, used - known
