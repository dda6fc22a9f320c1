"""Hugging Face Hub ids ("org/name") resolved through huggingface_hub from a HF cache directory
the tests fill themselves, in the hub's own layout (blobs + snapshot symlinks + refs), offline."""
import fnmatch
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
import torch
import transformers

import flaxbert
from flaxbert.hub import CHECKPOINT_FILES, is_hub_id, resolve
from flaxbert.tokenizer import TOKENIZER_FILES, Tokenizer

REPO = "tiny-org/tiny-bert-mlm"
COMMIT, OLD_COMMIT = hashlib.sha1(b"main").hexdigest(), hashlib.sha1(b"v1").hexdigest()
TEXTS = ["the cat sat on the mat", "a dog ran in the park", "the park is green"]


def jax_leaves(tree):
    return [np.asarray(x) for x in jax.tree_util.tree_leaves(tree)]


def add_to_cache(cache, repo_id, directory, commit, ref="main"):
    """Put `directory` into the HF cache as huggingface_hub lays out a downloaded snapshot."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    for file in sorted(p for p in directory.rglob("*") if p.is_file()):
        data = file.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        link = repo / "snapshots" / commit / file.relative_to(directory)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / ref).write_text(commit)  # no newline, as the hub writes it
    return repo / "snapshots" / commit


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny random BertForMaskedLM, saved in shards (an index whose entries are cache links),
    with the WordPiece tokenizer it was sized for."""
    from flaxbert.tokenizer_training import train_tokenizer
    root = tmp_path_factory.mktemp("hub_src")
    (root / "corpus.txt").write_text("\n".join(TEXTS * 3) + "\n")
    train_tokenizer([root / "corpus.txt"], root / "model", "wordpiece", 60, min_frequency=1)
    vocab = len((root / "model" / "vocab.txt").read_text().splitlines())
    torch.manual_seed(0)
    hf = transformers.BertForMaskedLM(transformers.BertConfig(
        vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=37, max_position_embeddings=64))
    hf.save_pretrained(root / "model", max_shard_size="40KB")
    assert (root / "model" / "model.safetensors.index.json").exists()
    return root / "model"


@pytest.fixture(scope="module")
def cache(tmp_path_factory, checkpoint):
    cache = tmp_path_factory.mktemp("hf_cache")
    add_to_cache(cache, REPO, checkpoint, COMMIT)
    return cache


@pytest.fixture
def offline_cache(cache, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def _hub_env(cache):
    return dict(os.environ, HF_HUB_CACHE=str(cache), HF_HUB_OFFLINE="1")


def test_hub_ids_are_org_slash_name_strings():
    assert is_hub_id("google-bert/bert-base-uncased") and is_hub_id("org/name.v2")
    for name in ("bert-base-uncased", "a/b/c", "./org/name", "~/org", "/abs/path", "org/",
                 "org//name", "org/na me", "org/--name"):
        assert not is_hub_id(name), name
    assert not is_hub_id(Path("org/name"))  # a Path is always local


def test_the_patterns_fetch_every_tokenizer_file():
    for name in TOKENIZER_FILES + ("config.json", "model.safetensors",
                                   "model-00001-of-00002.safetensors", "flaxbert.json",
                                   "params/_METADATA", "1_Pooling/config.json", "modules.json"):
        assert any(fnmatch.fnmatch(name, p) for p in CHECKPOINT_FILES), name
    for name in ("pytorch_model.bin", "tf_model.h5", "onnx/model.onnx", "flax_model.msgpack"):
        assert not any(fnmatch.fnmatch(name, p) for p in CHECKPOINT_FILES), name


def test_resolve_finds_the_snapshot_of_a_ref_offline(offline_cache, checkpoint):
    snapshot = resolve(REPO)
    assert snapshot.name == COMMIT and snapshot.parent.name == "snapshots"
    assert snapshot.parent.parent.parent == offline_cache
    assert sorted(p.name for p in snapshot.iterdir()) == sorted(p.name for p in checkpoint.iterdir())
    # Another ref points at another snapshot.
    old = add_to_cache(offline_cache, REPO, checkpoint, OLD_COMMIT, ref="v1")
    assert resolve(REPO, revision="v1") == old and resolve(REPO, revision=OLD_COMMIT) == old


def test_a_local_directory_wins_over_the_cache(offline_cache, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny-org" / "tiny-bert-mlm").mkdir(parents=True)
    assert resolve(REPO).resolve() == (tmp_path / REPO).resolve()
    # Not shaped like a hub id: returned as is, for the caller to report as a missing path.
    assert str(resolve("no/such/dir")) == "no/such/dir"


def test_a_missing_id_offline_is_one_line_naming_id_and_cache(offline_cache):
    with pytest.raises(FileNotFoundError) as error:
        flaxbert.from_pretrained("nobody/nothing")
    message = str(error.value)
    assert "\n" not in message and "'nobody/nothing'" in message
    assert "HF_HUB_OFFLINE=1" in message and str(offline_cache) in message
    with pytest.raises(FileNotFoundError, match=r"'tiny-org/tiny-bert-mlm' \(revision 'v9'\)"):
        resolve(REPO, revision="v9")


def test_from_pretrained_tokenizer_and_pipeline_take_a_hub_id(offline_cache, checkpoint):
    model, params = flaxbert.from_pretrained(REPO)
    local_model, local_params = flaxbert.from_pretrained(checkpoint)
    assert model.task == local_model.task == "masked-lm"
    for a, b in zip(jax_leaves(params), jax_leaves(local_params), strict=True):
        np.testing.assert_array_equal(a, b)

    tok = Tokenizer.from_pretrained(REPO)
    want = transformers.AutoTokenizer.from_pretrained(checkpoint)(TEXTS, padding=True,
                                                                  return_tensors="np")
    got = tok(TEXTS, padding=True)
    np.testing.assert_array_equal(got["input_ids"], want["input_ids"])

    fill = flaxbert.pipeline("fill-mask", REPO, top_k=2)
    local = flaxbert.pipeline("fill-mask", checkpoint, top_k=2)
    text = "the cat sat on the [MASK]"
    assert fill(text) == local(text)


def test_embed_takes_a_hub_id(offline_cache, tmp_path, capsys):
    from flaxbert.cli import main
    (tmp_path / "texts.txt").write_text("\n".join(TEXTS) + "\n")
    assert main(["embed", REPO, "--input", str(tmp_path / "texts.txt"), "--output",
                 str(tmp_path / "emb.npy"), "--buckets", "16"]) == 0
    vectors = np.load(tmp_path / "emb.npy")
    assert vectors.shape == (len(TEXTS), 32) and np.isfinite(vectors).all()
    assert "wrote 3 embeddings of size 32" in capsys.readouterr().out


def test_cli_converts_a_hub_id_and_reads_a_flaxbert_snapshot(cache, tmp_path, monkeypatch):
    env = _hub_env(cache)
    result = subprocess.run([sys.executable, "-m", "flaxbert", "convert", REPO, tmp_path / "flax",
                             "--to", "flax"], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "flax" / "flaxbert.json").exists()
    assert (tmp_path / "flax" / "vocab.txt").exists()  # tokenizer files come from the snapshot

    # flaxbert's own format (Orbax params/) from the cache, through the same links.
    add_to_cache(cache, "tiny-org/tiny-bert-flax", tmp_path / "flax", COMMIT)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _, params = flaxbert.from_pretrained("tiny-org/tiny-bert-flax")
    _, local = flaxbert.from_pretrained(tmp_path / "flax")
    for a, b in zip(jax_leaves(params), jax_leaves(local), strict=True):
        np.testing.assert_array_equal(a, b)

    missing = subprocess.run([sys.executable, "-m", "flaxbert", "convert", "nobody/nothing",
                              tmp_path / "out", "--to", "flax"], capture_output=True, text=True,
                             env=env, timeout=300)
    assert missing.returncode == 2
    line, = missing.stderr.strip().splitlines()
    assert line.startswith("flaxbert convert: error: 'nobody/nothing' is not a local directory")
    assert "HF_HUB_OFFLINE=1" in line and str(cache) in line


# ---- online: a local HTTP stand-in for the Hub (HF_ENDPOINT), serving the routes that
# huggingface_hub's snapshot_download calls: revision info, the file tree, and each file.

@pytest.fixture(scope="module")
def hub_endpoint(tmp_path_factory, checkpoint):
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    from urllib.parse import unquote, urlparse

    full = tmp_path_factory.mktemp("served_full")
    for file in checkpoint.iterdir():
        (full / file.name).write_bytes(file.read_bytes())
    (full / "README.md").write_text("# a model card flaxbert does not read\n")
    (full / "onnx").mkdir()
    (full / "onnx" / "model.onnx").write_bytes(b"not needed")
    (full / "pytorch_model.bin").write_bytes(b"not needed either: there are safetensors")
    old = tmp_path_factory.mktemp("served_torch_only")
    (old / "config.json").write_text((checkpoint / "config.json").read_text())
    (old / "pytorch_model.bin").write_bytes(b"stands in for torch weights")
    repos = {"org/full": full, "org/torch-only": old}

    class Hub(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def reply(self, code, body=b"", headers=()):
            self.send_response(code)
            for key, value in headers:
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def do_GET(self):
            parts = unquote(urlparse(self.path).path).strip("/").split("/")
            api = parts[:2] == ["api", "models"]
            repo_id, rest = "/".join(parts[2:4] if api else parts[:2]), parts[4:] if api else parts[2:]
            if repo_id not in repos:
                return self.reply(404, b"{}", [("X-Error-Code", "RepoNotFound")])
            root = repos[repo_id]
            files = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
            if api and rest[:1] == ["revision"]:
                body = {"id": repo_id, "sha": COMMIT, "siblings": [{"rfilename": f} for f in files]}
            elif api and rest[:1] == ["tree"]:
                body = [{"type": "file", "path": f, "size": (root / f).stat().st_size,
                         "oid": hashlib.sha1((root / f).read_bytes()).hexdigest()} for f in files]
            elif not api and rest[:1] == ["resolve"] and (root.joinpath(*rest[2:])).is_file():
                data = root.joinpath(*rest[2:]).read_bytes()
                return self.reply(200, data, [("X-Repo-Commit", COMMIT),
                                              ("ETag", f'"{hashlib.sha256(data).hexdigest()}"')])
            else:
                return self.reply(404, b"{}", [("X-Error-Code", "EntryNotFound")])
            self.reply(200, json.dumps(body).encode(), [("Content-Type", "application/json")])

        do_HEAD = do_GET

    server = ThreadingHTTPServer(("127.0.0.1", 0), Hub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_online_downloads_only_what_flaxbert_reads(hub_endpoint, checkpoint, tmp_path):
    cache = tmp_path / "cache"
    env = dict(os.environ, HF_ENDPOINT=hub_endpoint, HF_HUB_OFFLINE="0", HF_HUB_CACHE=str(cache),
               HF_HUB_DISABLE_PROGRESS_BARS="1")
    script = ("import json, sys\nfrom flaxbert.hub import resolve\nout = {}\n"
              "for name in sys.argv[1:]:\n"
              "    try:\n        out[name] = sorted(p.name for p in resolve(name).iterdir())\n"
              "    except FileNotFoundError as e:\n        out[name] = str(e)\n"
              "print(json.dumps(out))")
    result = subprocess.run([sys.executable, "-c", script, "org/full", "org/torch-only",
                             "org/missing"], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    got = json.loads(result.stdout.splitlines()[-1])
    # The checkpoint's own files only: no model card, ONNX export or duplicate torch weights.
    assert got["org/full"] == sorted(p.name for p in checkpoint.iterdir())
    assert "model.safetensors.index.json" in got["org/full"]
    # No safetensors at all: the torch weights are fetched after all.
    assert got["org/torch-only"] == ["config.json", "pytorch_model.bin"]
    assert "'org/missing' is not a local directory, and on the Hugging Face Hub it does not " \
           "exist" in got["org/missing"] and str(cache) in got["org/missing"]

    # What was downloaded is then found offline, with no server asked.
    offline = subprocess.run([sys.executable, "-c", script, "org/full"], capture_output=True,
                             text=True, timeout=300,
                             env=dict(env, HF_HUB_OFFLINE="1", HF_ENDPOINT="http://127.0.0.1:9"))
    assert offline.returncode == 0, offline.stderr
    assert json.loads(offline.stdout.splitlines()[-1])["org/full"] == got["org/full"]


def test_the_python_finetune_resolves_a_hub_id_and_takes_a_path(offline_cache, checkpoint,
                                                                 monkeypatch):
    """flaxbert.finetune(config) reads model="org/name" from its snapshot, as the CLI does; a
    pathlib.Path model is a directory name."""
    import flaxbert.training.trainer as trainer_module
    seen = []

    class RecordingTrainer:  # stands in for the real Trainer: only what it is handed matters here
        def __init__(self, config, workdir):
            seen.append(config.model)

        def run(self):
            return {}

    monkeypatch.setattr(trainer_module, "Trainer", RecordingTrainer)
    flaxbert.finetune(flaxbert.finetune_config(model=REPO), "unused")
    assert Path(seen[0]) == resolve(REPO) and Path(seen[0]).is_dir()
    assert flaxbert.finetune_config(model=Path("runs") / "ckpt").model == "runs/ckpt"
