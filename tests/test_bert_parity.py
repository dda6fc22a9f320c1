"""BERT against transformers' PyTorch classes built from the same config (random weights)."""
import json

import jax
import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file

import flaxbert
from flaxbert.convert.hf import hf_state_dict
from conftest import TINY_HF, token_batch

HEADS = {
    "base": transformers.BertModel,
    "pretraining": transformers.BertForPreTraining,
    "masked-lm": transformers.BertForMaskedLM,
    "next-sentence": transformers.BertForNextSentencePrediction,
    "sequence-classification": transformers.BertForSequenceClassification,
    "token-classification": transformers.BertForTokenClassification,
    "question-answering": transformers.BertForQuestionAnswering,
    "multiple-choice": transformers.BertForMultipleChoice,
}
AUTO = {
    "base": transformers.AutoModel,
    "pretraining": transformers.AutoModelForPreTraining,
    "masked-lm": transformers.AutoModelForMaskedLM,
    "next-sentence": transformers.AutoModelForNextSentencePrediction,
    "sequence-classification": transformers.AutoModelForSequenceClassification,
    "token-classification": transformers.AutoModelForTokenClassification,
    "question-answering": transformers.AutoModelForQuestionAnswering,
    "multiple-choice": transformers.AutoModelForMultipleChoice,
}
TOL = 1e-4


def _inputs(task):
    ids, mask, types = token_batch()
    if task == "multiple-choice":  # (batch=2, choices=3, length)
        ids, mask, types = (np.stack([x, x[::-1]]) for x in (ids, mask, types))
    return ids, mask, types


def _max_err(ours, ref) -> float:
    if isinstance(ours, tuple):
        assert len(ours) == len(ref)
        return max(_max_err(a, b) for a, b in zip(ours, ref))
    ours = np.asarray(ours)
    assert ours.shape == tuple(ref.shape)
    return float(np.abs(ours - ref.detach().numpy()).max())


def _torch_outputs(hf_model, ids, mask, types):
    with torch.no_grad():
        return hf_model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                        token_type_ids=torch.tensor(types), output_hidden_states=True,
                        output_attentions=True)


def _compare(model, params, hf_model, task):
    ids, mask, types = _inputs(task)
    ours = model.apply({"params": params}, ids, mask, types, output_hidden_states=True,
                       output_attentions=True)
    ref = _torch_outputs(hf_model, ids, mask, types)
    expected = {k for k, v in ref.items() if v is not None and k not in ("cross_attentions",)}
    assert set(ours.keys()) == expected
    return {name: _max_err(value, ref[name]) for name, value in ours.items()}


@pytest.fixture(scope="module")
def saved_hf(tmp_path_factory):
    """One saved random-init transformers checkpoint per head."""
    out = {}
    for i, (task, cls) in enumerate(HEADS.items()):
        # transformers' QA head has num_labels outputs but only works with 2 (start, end).
        config = transformers.BertConfig(**TINY_HF, num_labels=2 if "question" in task else 3,
                                         attn_implementation="eager")
        torch.manual_seed(i)
        hf_model = cls(config).eval()
        with torch.no_grad():  # transformers zero-inits biases; randomise so the test sees them
            for p in hf_model.parameters():
                p.add_(torch.randn_like(p) * 0.02)
        path = tmp_path_factory.mktemp(task)
        hf_model.save_pretrained(path)
        out[task] = (path, hf_model)
    return out


@pytest.mark.parametrize("task", list(HEADS))
def test_every_head_matches_transformers(task, saved_hf):
    path, hf_model = saved_hf[task]
    model, params = flaxbert.from_pretrained(path)
    assert model.task == task  # followed config.json's architectures
    errors = _compare(model, params, hf_model, task)
    print(task, errors)
    assert max(errors.values()) <= TOL, errors


@pytest.mark.parametrize("task", list(HEADS))
def test_round_trip_is_bit_exact_and_loads_in_transformers(task, saved_hf, tmp_path):
    path, hf_model = saved_hf[task]
    model, params = flaxbert.from_pretrained(path)
    flaxbert.save_pretrained(tmp_path / "out", model, params)
    original = load_file(path / "model.safetensors")
    written = load_file(tmp_path / "out" / "model.safetensors")
    assert written.keys() == original.keys()
    for key in original:
        assert written[key].dtype == original[key].dtype, key
        np.testing.assert_array_equal(written[key], original[key], err_msg=key)

    reloaded, info = AUTO[task].from_pretrained(tmp_path / "out", output_loading_info=True,
                                                attn_implementation="eager")
    assert type(reloaded) is type(hf_model)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    ids, mask, types = _inputs(task)
    a, b = _torch_outputs(reloaded.eval(), ids, mask, types), _torch_outputs(hf_model, ids, mask, types)
    # Weights are bit-identical (above). Outputs are compared to 1e-6, not bitwise: transformers'
    # own save/load of the same model differs by ~1e-9 (torch kernels vary with memory alignment).
    for key, value in a.items():
        if isinstance(value, torch.Tensor):
            torch.testing.assert_close(value, b[key], atol=1e-6, rtol=0, msg=key)


def test_scanned_and_remat_models_convert_and_match(saved_hf):
    path, hf_model = saved_hf["masked-lm"]
    model, params = flaxbert.from_pretrained(path, scan_layers=True, remat_policy="full")
    assert "layers" in params["backbone"]["encoder"]
    assert params["backbone"]["encoder"]["layers"]["mlp"]["wi"]["kernel"].shape[0] == 2
    assert max(_compare(model, params, hf_model, "masked-lm").values()) <= TOL
    reference = load_file(path / "model.safetensors")
    exported = hf_state_dict(model, params)
    for key, value in exported.items():
        np.testing.assert_array_equal(value, reference[key], err_msg=key)


def test_sentence_embedding_head_is_pooled_backbone(saved_hf):
    path, hf_model = saved_hf["base"]
    model, params = flaxbert.from_pretrained(path, task="embedding", pooling="mean",
                                             normalize_embeddings=True)
    ids, mask, types = _inputs("embedding")
    out = model.apply({"params": params}, ids, mask, types)
    hidden = _torch_outputs(hf_model, ids, mask, types).last_hidden_state.numpy()
    m = mask[..., None]
    expected = (hidden * m).sum(1) / m.sum(1)
    expected /= np.linalg.norm(expected, axis=-1, keepdims=True)
    np.testing.assert_allclose(np.asarray(out.embeddings), expected, atol=1e-5)
    cls = model.clone(config=model.config.replace(pooling="cls", normalize_embeddings=False))
    np.testing.assert_allclose(np.asarray(cls.apply({"params": params}, ids, mask, types).embeddings),
                               hidden[:, 0], atol=1e-5)


def test_fine_tuning_head_is_initialised_from_a_pretraining_checkpoint(saved_hf, caplog):
    path, hf_model = saved_hf["pretraining"]
    model, params = flaxbert.from_pretrained(path, task="sequence-classification", num_labels=5)
    assert params["classifier"]["dense"]["kernel"].shape == (32, 5)
    assert "newly initialised" in caplog.text and "classifier.weight" in caplog.text
    reference = load_file(path / "model.safetensors")
    np.testing.assert_array_equal(
        np.asarray(params["backbone"]["embeddings"]["word_embeddings"]["embedding"]),
        reference["bert.embeddings.word_embeddings.weight"])


def test_sharded_save_matches_transformers_layout(saved_hf, tmp_path):
    path, hf_model = saved_hf["masked-lm"]
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
    path, hf_model = saved_hf["question-answering"]
    (tmp_path / "bin").mkdir()
    torch.save(hf_model.state_dict(), tmp_path / "bin" / "pytorch_model.bin")
    hf_model.config.save_pretrained(tmp_path / "bin")
    model, params = flaxbert.from_pretrained(tmp_path / "bin")
    assert max(_compare(model, params, hf_model, "question-answering").values()) <= TOL


def test_dropout_only_when_not_deterministic(saved_hf):
    path, _ = saved_hf["base"]
    model, params = flaxbert.from_pretrained(path)
    ids, mask, types = _inputs("base")
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
    path, hf_model = saved_hf["pretraining"]
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
