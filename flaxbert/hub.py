"""Hugging Face Hub ids ("org/name") as checkpoint directories, through `huggingface_hub`.

    directory = resolve("sentence-transformers/all-MiniLM-L6-v2")   # -> the cached snapshot

Everything that opens a model or tokenizer directory (flaxbert.from_pretrained,
Tokenizer.from_pretrained, pipelines, the CLI) passes its argument through `resolve`: an existing
local path is returned as it is; a string shaped like a hub id ("org/name", exactly one "/") is
fetched with `huggingface_hub.snapshot_download` (only the files flaxbert reads) into the HF cache,
or, with HF_HUB_OFFLINE=1, looked up in that cache without any network access.
"""
from __future__ import annotations

import os
from pathlib import Path

# What flaxbert reads from a checkpoint: transformers' config and safetensors weights (one file
# or shards + index), flaxbert's own flaxbert.json + Orbax params/, the tokenizer files
# (flaxbert.tokenizer.TOKENIZER_FILES; tests/test_hub.py checks that these cover them) and a
# sentence-transformers layout (modules.json, its Pooling config, max_seq_length).
CHECKPOINT_FILES = (
    "config.json", "model.safetensors", "model-*-of-*.safetensors", "model.safetensors.index.json",
    "flaxbert.json", "params/*",
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
    "vocab.txt", "vocab.json", "merges.txt", "*.model",
    "modules.json", "sentence_bert_config.json", "*Pooling/config.json")
# Fetched only when the repository has no safetensors weights (older checkpoints); reading them
# needs torch.
TORCH_FILES = ("pytorch_model.bin", "pytorch_model-*-of-*.bin", "pytorch_model.bin.index.json")
_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "flaxbert.json")


def is_hub_id(name: str | os.PathLike) -> bool:
    """Whether `name` is a string of the form "org/name" that huggingface_hub accepts as a repo id.

    Bare names ("bert-base-uncased") are not taken as hub ids: they are flaxbert's registered
    model names (`flaxbert models`), and a missing local directory of that name stays an error
    about the directory. A pathlib.Path is always a local path.
    """
    if not isinstance(name, str) or name.count("/") != 1 or name.startswith(("~", ".")):
        return False
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def hub_cache_dir() -> str:
    """The HF cache as the environment names it now. huggingface_hub reads HF_HUB_CACHE once, when
    it is imported; reading it here too lets a program (or a test) set it later."""
    from huggingface_hub import constants
    return os.path.expanduser(os.environ.get("HF_HUB_CACHE") or constants.HF_HUB_CACHE)


def hub_offline() -> bool:
    """HF_HUB_OFFLINE as the environment says now (huggingface_hub also reads it only at import)."""
    from huggingface_hub import constants
    value = os.environ.get("HF_HUB_OFFLINE")
    if value is None:
        return constants.HF_HUB_OFFLINE
    return value.strip().upper() in constants.ENV_VARS_TRUE_VALUES


def resolve(name_or_path: str | os.PathLike, *, revision: str | None = None) -> Path:
    """The local directory for `name_or_path`: itself when it exists locally (or is not shaped
    like a hub id, so that the caller reports the missing path), else the snapshot of that hub
    repository at `revision` (default: main), downloaded when online, from the HF cache when
    HF_HUB_OFFLINE=1. A hub id that cannot be found raises one FileNotFoundError naming it, the
    cache directory and whether the Hub was asked. A gs:// directory is copied down once per
    process (flaxbert.storage.local_copy)."""
    from flaxbert import storage
    if storage.is_remote(name_or_path):
        return storage.local_copy(os.fspath(name_or_path).rstrip("/"))
    path = Path(name_or_path)
    if path.exists() or not is_hub_id(name_or_path):
        return path
    from huggingface_hub import errors, snapshot_download
    from huggingface_hub.errors import (GatedRepoError, HfHubHTTPError, LocalEntryNotFoundError,
                                        RepositoryNotFoundError, RevisionNotFoundError)
    # A cached snapshot that its cached file listing shows to be partial (huggingface_hub 2.x).
    incomplete = getattr(errors, "IncompleteSnapshotError", ())
    cache, offline = hub_cache_dir(), hub_offline()
    where = f"{name_or_path!r}" + (f" (revision {revision!r})" if revision else "")

    def download(patterns):
        return Path(snapshot_download(name_or_path, revision=revision, cache_dir=cache,
                                      local_files_only=offline, allow_patterns=list(patterns)))
    try:
        snapshot = download(CHECKPOINT_FILES)
        if not offline and not any((snapshot / name).exists() for name in _WEIGHTS):
            snapshot = download(CHECKPOINT_FILES + TORCH_FILES)
    except incomplete as e:
        raise FileNotFoundError(f"{where}: {_first_line(e)}") from None
    except LocalEntryNotFoundError as e:
        if offline:
            raise FileNotFoundError(
                f"{where} is not a local directory, and HF_HUB_OFFLINE=1 looked only in the "
                f"Hugging Face cache {cache}, which has no snapshot of it; download it once "
                "online (or unset HF_HUB_OFFLINE)") from None
        raise FileNotFoundError(
            f"{where} is not a local directory, the Hugging Face Hub could not be reached "
            f"({_first_line(e).removeprefix('Got: ')}) and the cache {cache} has no snapshot of "
            "it") from None
    except (RepositoryNotFoundError, RevisionNotFoundError) as e:
        what = ("has no such revision" if isinstance(e, RevisionNotFoundError) else
                "is gated: request access on its page and log in with `hf auth login`"
                if isinstance(e, GatedRepoError) else
                "does not exist (or is private: log in with `hf auth login`)")
        raise FileNotFoundError(f"{where} is not a local directory, and on the Hugging Face Hub "
                                f"it {what} (cache {cache})") from None
    except HfHubHTTPError as e:
        raise OSError(f"{where}: the Hugging Face Hub answered {_first_line(e)}") from None
    return snapshot


def _first_line(error: BaseException) -> str:
    return str(error).strip().split("\n", 1)[0]


def hub_blob_store(directory: str | os.PathLike) -> Path | None:
    """The blobs/ folder that the files of a HF cache snapshot (…/models--org--name/snapshots/SHA)
    link to, or None when `directory` is not such a snapshot. A checkpoint's index may point
    there: the links are the cache's own layout, not a file outside the checkpoint."""
    directory = Path(directory).absolute()
    repo = directory.parent.parent
    if directory.parent.name == "snapshots" and repo.name.startswith("models--"):
        return (repo / "blobs").resolve()
    return None
