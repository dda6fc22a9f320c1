"""Conversion paths beyond per-head parity (test_parity.py): heads changed at load time, sharded
saves, .bin checkpoints, flaxbert's own format, embeddings, dropout. BERT stands for every family."""
import json

import jax
import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file

import flaxbert
from test_parity import TOL, compare, inputs, saved, torch_outputs  # noqa: F401 (fixture)


@pytest.fixture
def saved_hf(saved):
    return lambda task: saved("bert", task)


def test_sentence_embedding_head_is_pooled_backbone(saved_hf):
    path, hf_model = saved_hf("base")
    model, params = flaxbert.from_pretrained(path, task="embedding", pooling="mean",
                                             normalize_embeddings=True)
    ids, mask, types = inputs("bert", "embedding")
    out = model.apply({"params": params}, ids, mask, types)
    hidden = torch_outputs(hf_model, ids, mask, types).last_hidden_state.numpy()
    m = mask[..., None]
    expected = (hidden * m).sum(1) / m.sum(1)
    expected /= np.linalg.norm(expected, axis=-1, keepdims=True)
    np.testing.assert_allclose(np.asarray(out.embeddings), expected, atol=1e-5)
    cls = model.clone(config=model.config.replace(pooling="cls", normalize_embeddings=False))
    np.testing.assert_allclose(np.asarray(cls.apply({"params": params}, ids, mask, types).embeddings),
                               hidden[:, 0], atol=1e-5)


def test_fine_tuning_head_is_initialised_from_a_pretraining_checkpoint(saved_hf, caplog):
    path, hf_model = saved_hf("pretraining")
    model, params = flaxbert.from_pretrained(path, task="sequence-classification", num_labels=5)
    assert params["classifier"]["dense"]["kernel"].shape == (32, 5)
    assert "newly initialised" in caplog.text and "classifier.weight" in caplog.text
    reference = load_file(path / "model.safetensors")
    np.testing.assert_array_equal(
        np.asarray(params["backbone"]["embeddings"]["word_embeddings"]["embedding"]),
        reference["bert.embeddings.word_embeddings.weight"])
    # The fresh head comes from `rng` (the fine-tune Trainer passes train.seed); the body does not.
    _, same = flaxbert.from_pretrained(path, task="sequence-classification", num_labels=5)
    _, other = flaxbert.from_pretrained(path, task="sequence-classification", num_labels=5, rng=1)
    kernel = lambda p: np.asarray(p["classifier"]["dense"]["kernel"])  # noqa: E731
    np.testing.assert_array_equal(kernel(same), kernel(params))
    assert not np.allclose(kernel(other), kernel(params))
    np.testing.assert_array_equal(
        np.asarray(other["backbone"]["embeddings"]["word_embeddings"]["embedding"]),
        reference["bert.embeddings.word_embeddings.weight"])


def test_sharded_save_matches_transformers_layout(saved_hf, tmp_path):
    path, hf_model = saved_hf("masked-lm")
    model, params = flaxbert.from_pretrained(path)
    flaxbert.save_pretrained(tmp_path / "sharded", model, params, max_shard_size="20KB")
    index = json.loads((tmp_path / "sharded" / "model.safetensors.index.json").read_text())
    shards = set(index["weight_map"].values())
    assert len(shards) > 1 and not (tmp_path / "sharded" / "model.safetensors").exists()
    reloaded, info = transformers.AutoModelForMaskedLM.from_pretrained(
        tmp_path / "sharded", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    model2, params2 = flaxbert.from_pretrained(tmp_path / "sharded")
    for a, b in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(params2)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_pytorch_bin_checkpoint_loads(saved_hf, tmp_path):
    path, hf_model = saved_hf("question-answering")
    (tmp_path / "bin").mkdir()
    torch.save(hf_model.state_dict(), tmp_path / "bin" / "pytorch_model.bin")
    hf_model.config.save_pretrained(tmp_path / "bin")
    model, params = flaxbert.from_pretrained(tmp_path / "bin")
    assert max(compare(model, params, hf_model, "bert", "question-answering").values()) <= TOL


def test_dropout_only_when_not_deterministic(saved_hf):
    path, _ = saved_hf("base")
    model, params = flaxbert.from_pretrained(path)
    ids, mask, types = inputs("bert", "base")
    a = model.apply({"params": params}, ids, mask, types).last_hidden_state
    b = model.apply({"params": params}, ids, mask, types).last_hidden_state
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    rngs = {"dropout": jax.random.key(1)}
    c = model.apply({"params": params}, ids, mask, types, deterministic=False, rngs=rngs)
    d = model.apply({"params": params}, ids, mask, types, deterministic=False,
                    rngs={"dropout": jax.random.key(2)})
    assert not np.allclose(np.asarray(a), np.asarray(c.last_hidden_state))
    assert not np.allclose(np.asarray(c.last_hidden_state), np.asarray(d.last_hidden_state))


def test_flax_checkpoint_round_trip_and_reload_with_other_settings(saved_hf, tmp_path):
    path, hf_model = saved_hf("pretraining")
    model, params = flaxbert.from_pretrained(path, scan_layers=True)
    flaxbert.save_pretrained(tmp_path / "flax", model, params, format="flax")
    same, same_params = flaxbert.from_pretrained(tmp_path / "flax")
    assert same.config == model.config and same.task == "pretraining"
    for a, b in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(same_params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # Another head and an unrolled stack: backbone carried over exactly, new head initialised.
    cls, cls_params = flaxbert.from_pretrained(tmp_path / "flax", task="sequence-classification",
                                               scan_layers=False, num_labels=4)
    assert cls_params["classifier"]["dense"]["kernel"].shape == (32, 4)
    np.testing.assert_array_equal(
        np.asarray(cls_params["backbone"]["encoder"]["layers_1"]["mlp"]["wo"]["kernel"]),
        np.asarray(params["backbone"]["encoder"]["layers"]["mlp"]["wo"]["kernel"][1]))
