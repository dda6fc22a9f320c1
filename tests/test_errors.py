"""Bad input gets a clear error that names the problem."""
import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

import flaxbert
from conftest import TINY_HF
from flaxbert import cli


@pytest.fixture(scope="module")
def tiny():
    model = flaxbert.create_model("bert-tiny", "masked-lm")
    return model, flaxbert.init_params(model)


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("hf")
    transformers.BertForMaskedLM(transformers.BertConfig(**TINY_HF)).save_pretrained(path)
    return path


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_unknown_model_name():
    with pytest.raises(ValueError, match=r"unknown model name 'bert-bse-uncased'.*Did you mean "
                                         r"'bert-base-uncased'"):
        flaxbert.get_config("bert-bse-uncased")


def test_unknown_task_and_config_field():
    with pytest.raises(ValueError, match="has no task 'summarisation'"):
        flaxbert.create_model("bert-tiny", "summarisation")
    with pytest.raises(ValueError, match=r"no field\(s\) \['hidden_sise'\]"):
        flaxbert.get_config("bert-tiny", hidden_sise=3)
    with pytest.raises(ValueError, match="not a multiple of num_attention_heads"):
        flaxbert.get_config("bert-tiny", hidden_size=129)
    with pytest.raises(ValueError, match="attention_impl='flash'"):
        flaxbert.get_config("bert-tiny", attention_impl="flash")


def test_wrong_rank_and_dtype(tiny):
    model, params = tiny
    with pytest.raises(ValueError, match=r"input_ids must have rank 2 \(batch, length\), got shape \(5,\)"):
        model.apply({"params": params}, jnp.ones((5,), jnp.int32))
    with pytest.raises(TypeError, match="input_ids must be integers, got dtype float32"):
        model.apply({"params": params}, jnp.ones((1, 5), jnp.float32))
    with pytest.raises(ValueError, match=r"attention_mask has shape \(1, 4\), input_ids has \(1, 5\)"):
        model.apply({"params": params}, jnp.ones((1, 5), jnp.int32), jnp.ones((1, 4), jnp.int32))
    mc = flaxbert.create_model("bert-tiny", "multiple-choice")
    with pytest.raises(ValueError, match="rank 3"):
        mc.apply({"params": flaxbert.init_params(mc)}, jnp.ones((1, 5), jnp.int32))


def test_sequence_longer_than_max_positions(tiny):
    model, params = tiny
    with pytest.raises(ValueError, match=r"sequence length 513 exceeds the 512 positions this model has"):
        model.apply({"params": params}, jnp.ones((1, 513), jnp.int32))


def test_token_id_out_of_vocab(tiny):
    model, params = tiny
    ids = np.array([[1, 2, 30522]])
    with pytest.raises(ValueError, match=r"input_ids contains 30522, outside \[0, 30522\)"):
        model.apply({"params": params}, ids)
    with pytest.raises(ValueError, match=r"input_ids contains -1"):
        model.apply({"params": params}, np.array([[1, -1]]))
    with pytest.raises(ValueError, match=r"token_type_ids contains 2"):
        model.apply({"params": params}, np.array([[1, 2]]), token_type_ids=np.array([[0, 2]]))
    # Under jit the values cannot be checked; the bad row must come out NaN, never plausible,
    # while the other rows of the batch are unaffected.
    run = jax.jit(lambda p, x: model.apply({"params": p}, x).logits)
    for bad in (30522, 40000, -1):
        logits = np.asarray(run(params, np.array([[1, 2, bad], [1, 2, 3]])))
        assert np.isnan(logits[0]).all() and np.isfinite(logits[1]).all()


def test_config_of_another_architecture(hf_dir, tmp_path):
    bad = _copy(hf_dir, tmp_path / "gpt2")
    config = json.loads((bad / "config.json").read_text())
    config.update(model_type="gpt2", architectures=["GPT2LMHeadModel"])
    (bad / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"gpt2/config.json: model_type 'gpt2'.*"
                                         r"flaxbert supports: \[.*'bert'"):
        flaxbert.from_pretrained(bad)
    config.update(model_type="bert", architectures=["BertLMHeadModel"])
    (bad / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="architecture 'BertLMHeadModel'"):
        flaxbert.from_pretrained(bad)
    config.update(architectures=["BertForMaskedLM"], position_embedding_type="relative_key")
    (bad / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="position_embedding_type='relative_key'"):
        flaxbert.from_pretrained(bad)


def _rewrite_tensors(directory, edit):
    from safetensors.numpy import load_file, save_file
    tensors = load_file(directory / "model.safetensors")
    edit(tensors)
    save_file(tensors, directory / "model.safetensors", metadata={"format": "pt"})


def test_missing_extra_and_misshapen_tensors(hf_dir, tmp_path):
    missing = _copy(hf_dir, tmp_path / "missing")
    _rewrite_tensors(missing, lambda t: t.pop("bert.encoder.layer.1.output.dense.weight"))
    with pytest.raises(ValueError, match=r"missing tensors.*bert.encoder.layer.1.output.dense.weight"):
        flaxbert.from_pretrained(missing)

    extra = _copy(hf_dir, tmp_path / "extra")
    _rewrite_tensors(extra, lambda t: t.update(surprise=np.zeros(3, np.float32)))
    with pytest.raises(ValueError, match=r"does not use: \['surprise'\]"):
        flaxbert.from_pretrained(extra)

    shaped = _copy(hf_dir, tmp_path / "shape")
    _rewrite_tensors(shaped, lambda t: t.update(
        {"bert.embeddings.LayerNorm.weight": np.ones(31, np.float32)}))
    with pytest.raises(ValueError, match=r"'bert.embeddings.LayerNorm.weight'.*shape \(31,\).*"
                                         r"expects \(32,\)"):
        flaxbert.from_pretrained(shaped)


def test_truncated_safetensors(hf_dir, tmp_path):
    broken = _copy(hf_dir, tmp_path / "truncated")
    data = (broken / "model.safetensors").read_bytes()
    (broken / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"model.safetensors is not a readable safetensors file"):
        flaxbert.from_pretrained(broken)


def test_no_weights_and_no_directory(hf_dir, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text((hf_dir / "config.json").read_text())
    with pytest.raises(FileNotFoundError, match="has no weights: looked for model.safetensors"):
        flaxbert.from_pretrained(empty)
    with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
        flaxbert.from_pretrained(tmp_path / "bert-base-uncased")


def test_params_that_do_not_fit_the_model(tiny, tmp_path):
    model, params = tiny
    bad = jax.tree_util.tree_map(lambda x: x, params)
    bad["mlm_head"]["bias"] = jnp.zeros(7)
    with pytest.raises(ValueError, match=r"mlm_head/bias has shape \(7,\), expected \(30522,\)"):
        flaxbert.save_pretrained(tmp_path / "x", model, bad)
    del bad["mlm_head"]
    with pytest.raises(ValueError, match=r"missing \['mlm_head/bias'"):
        flaxbert.save_pretrained(tmp_path / "x", model, bad)
    assert not (tmp_path / "x").exists()


def test_existing_destination_refused_unless_overwrite(hf_dir, tmp_path, capsys):
    dst = tmp_path / "dst"
    assert cli.main(["convert", str(hf_dir), str(dst), "--to", "flax"]) == 0
    before = (dst / "flaxbert.json").read_text()
    assert cli.main(["convert", str(hf_dir), str(dst), "--to", "flax"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert (dst / "flaxbert.json").read_text() == before
    assert cli.main(["convert", str(hf_dir), str(dst), "--to", "hf", "--overwrite"]) == 0
    assert (dst / "model.safetensors").exists() and not (dst / "flaxbert.json").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".dst")]  # no leftovers


def test_failed_write_leaves_nothing(tiny, tmp_path, monkeypatch):
    model, params = tiny
    import flaxbert.convert.hf as hf

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(hf, "write_safetensors", boom)
    with pytest.raises(OSError, match="disk full"):
        flaxbert.save_pretrained(tmp_path / "out", model, params)
    assert list(tmp_path.iterdir()) == []
