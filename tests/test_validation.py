"""Garbage is refused with one error naming the file, the field and the value: model configs,
config.json / flaxbert.json, shard indexes, tensor dtypes and NaN/inf on load and save, training
configs. One tiny transformers checkpoint (test_errors' hf_dir) is mutated per case, in a copy."""
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import flaxbert
from flaxbert.training.config import check_config, default_config
from test_errors import _copy, hf_dir  # noqa: F401 (fixture: a tiny BertForMaskedLM directory)

WEIGHT = "bert.encoder.layer.0.output.dense.weight"


@pytest.fixture(scope="module")
def tiny():
    model = flaxbert.create_model("bert-tiny", "masked-lm", vocab_size=99)
    return model, flaxbert.init_params(model)


@pytest.fixture(scope="module")
def native_dir(tiny, tmp_path_factory):
    path = tmp_path_factory.mktemp("native") / "flax"
    flaxbert.save_pretrained(path, *tiny, format="flax")
    return path


def _edit_json(path, edit):
    value = json.loads(path.read_text())
    value = edit(value) or value
    path.write_text(json.dumps(value))


def _edit_tensors(directory, edit):
    tensors = load_file(directory / "model.safetensors")
    edit(tensors)
    save_file(tensors, directory / "model.safetensors", metadata={"format": "pt"})


# ----------------------------------------------------------------------------- model configs

@pytest.mark.parametrize("name, overrides, message", [
    ("bert-tiny", dict(hidden_dropout_prob=7.5),
     r"^BertConfig: hidden_dropout_prob=7.5 must be in \[0, 1\)$"),
    ("bert-tiny", dict(attention_probs_dropout_prob=-0.1),
     r"attention_probs_dropout_prob=-0.1 must be in \[0, 1\)"),
    ("bert-tiny", dict(classifier_dropout=float("nan")), r"classifier_dropout=nan must be finite"),
    ("bert-tiny", dict(num_attention_heads=0), r"num_attention_heads=0 must be >= 1"),
    ("bert-tiny", dict(hidden_size=-128), r"hidden_size=-128 must be >= 1"),
    ("bert-tiny", dict(num_hidden_layers="2"), r"num_hidden_layers='2' must be int, got str"),
    ("bert-tiny", dict(num_hidden_layers=2.5), r"num_hidden_layers=2.5 must be int, got float"),
    ("bert-tiny", dict(vocab_size=True), r"vocab_size=True must be int, got bool"),
    ("bert-tiny", dict(scan_layers=1), r"scan_layers=1 must be bool, got int"),
    ("bert-tiny", dict(layer_norm_eps=0), r"layer_norm_eps=0 must be > 0"),
    ("bert-tiny", dict(initializer_range=-0.02), r"initializer_range=-0.02 must be >= 0"),
    ("bert-tiny", dict(pad_token_id=30522), r"pad_token_id=30522 must be < vocab_size=30522"),
    ("bert-tiny", dict(type_vocab_size=-1), r"type_vocab_size=-1 must be >= 0"),
    ("bert-tiny", dict(hidden_act="swiglu"), r"hidden_act='swiglu' is not an activation"),
    ("bert-tiny", dict(num_labels=2, id2label=["a", "b"]), r"id2label=\['a', 'b'\] must be tuple"),
    ("bert-tiny", dict(hidden_size=129), r"not a multiple of num_attention_heads"),
    ("albert-tiny", dict(embedding_size=0), r"AlbertConfig: embedding_size=0 must be >= 1"),
    ("albert-tiny", dict(num_hidden_groups=0), r"num_hidden_groups=0 must be >= 1"),
    ("deberta-v3-tiny", dict(pooler_dropout=1.0), r"DebertaV2Config: pooler_dropout=1.0 must"),
    ("deberta-v3-tiny", dict(attention_head_size=0), r"attention_head_size=0 must be >= 1"),
    ("xlnet-tiny", dict(mem_len=-1), r"XLNetConfig: mem_len=-1 must be >= 0"),
    ("xlnet-tiny", dict(mem_len=None), r"mem_len=None must be int"),
    ("electra-tiny", dict(summary_last_dropout=1.5), r"ElectraConfig: summary_last_dropout=1.5"),
    ("distilbert-tiny", dict(qa_dropout=2), r"DistilBertConfig: qa_dropout=2 must be in"),
])
def test_bad_model_config_values_name_the_field(name, overrides, message):
    with pytest.raises(ValueError, match=message):
        flaxbert.get_config(name, **overrides)


def test_model_config_types_that_are_fine():
    config = flaxbert.get_config("bert-tiny", hidden_dropout_prob=0, classifier_dropout=None,
                                 num_labels=2, id2label=("a", "b"))
    assert config.hidden_dropout_prob == 0 and config.classifier_dropout_prob == 0
    assert flaxbert.get_config("xlnet-tiny", reuse_len=None, summary_activation="").mem_len >= 0


def test_empty_input_ids_are_refused(tiny):
    model, params = tiny
    with pytest.raises(ValueError, match=r"input_ids has length 0"):
        model.apply({"params": params}, jnp.zeros((1, 0), jnp.int32))


# ----------------------------------------------------------------------------- config.json

def _set(**fields):
    return lambda c: c.update(fields)


@pytest.mark.parametrize("edit, error, message", [
    ("[1, 2]", ValueError, r"config.json must hold a JSON object, got list"),
    (b"{\"a\": \"\xff\"}", ValueError, r"config.json is not UTF-8"),
    ("{\"model_type\": ", ValueError, r"config.json is not valid JSON \(line 1"),
    (_set(num_attention_heads=0), ValueError, r"num_attention_heads=0 must be >= 1"),
    (_set(hidden_size=-32), ValueError, r"hidden_size=-32 must be >= 1"),
    (_set(num_hidden_layers="2"), ValueError, r"num_hidden_layers='2' must be int, got str"),
    (_set(intermediate_size=37.0), ValueError, r"intermediate_size=37.0 must be int, got float"),
    (_set(type_vocab_size=True), ValueError, r"type_vocab_size=True must be int, got bool"),
    (_set(hidden_dropout_prob=7.5), ValueError, r"hidden_dropout_prob=7.5 must be in \[0, 1\)"),
    (_set(hidden_dropout_prob="0.1"), ValueError, r"hidden_dropout_prob='0.1' must be float"),
    (_set(layer_norm_eps=0), ValueError, r"layer_norm_eps=0 must be > 0"),
    (_set(max_position_embeddings=0), ValueError, r"max_position_embeddings=0 must be >= 1"),
    (_set(pad_token_id=500), ValueError, r"pad_token_id=500 must be < vocab_size=99"),
    (_set(hidden_act="swiglu"), ValueError, r"hidden_act='swiglu' is not an activation"),
    (_set(id2label={"0": "a", "2": "b"}), ValueError, r"id2label keys must be 0..1; missing '1'"),
    (_set(id2label={"a": "x"}), ValueError, r"id2label keys must be 0..0; missing '0'"),
    (_set(id2label=["a", "b"]), ValueError, r"id2label must map ids to label names"),
    (_set(id2label={"0": 3}), ValueError, r"id2label must map ids to label names"),
    (_set(architectures="BertForMaskedLM"), ValueError, r"architectures must be a list"),
    (_set(torch_dtype=["float32"], hidden_size=[32]), ValueError, r"hidden_size=\[32\] must be"),
])
def test_bad_config_json_names_file_field_and_value(hf_dir, tmp_path, edit, error, message):
    bad = _copy(hf_dir, tmp_path / "bad")
    config = bad / "config.json"
    if isinstance(edit, bytes):
        config.write_bytes(edit)
    elif isinstance(edit, str):
        config.write_text(edit)
    else:
        _edit_json(config, edit)
    with pytest.raises(error, match=message) as info:
        flaxbert.from_pretrained(bad)
    assert str(config) in str(info.value) and "\n" not in str(info.value)


def test_bad_override_is_not_blamed_on_the_file(hf_dir):
    with pytest.raises(ValueError, match=r"^BertConfig: hidden_dropout_prob=2.0 must be in"):
        flaxbert.from_pretrained(hf_dir, hidden_dropout_prob=2.0)


# ----------------------------------------------------------------------------- flaxbert.json

@pytest.mark.parametrize("edit, message", [
    (lambda m: [m], r"flaxbert.json must hold a JSON object, got list"),
    (lambda m: m.update(config=[1]), r"'config' must be a JSON object, got \[1\]"),
    (lambda m: m.update(family="gpt2"), r"unknown family 'gpt2'"),
    (lambda m: m.update(task="summarise"), r"has no task 'summarise'"),
    (lambda m: m["config"].update(hidden_dropout_prob=7.5), r"hidden_dropout_prob=7.5 must be in"),
    (lambda m: m["config"].update(hidden_sise=3), r"no field\(s\) \['hidden_sise'\]"),
    (lambda m: m["config"].update(num_attention_heads="2"), r"num_attention_heads='2' must be int"),
    (lambda m: m["config"].update(id2label=["a"]), r"id2label has 1 labels but num_labels=2"),
])
def test_bad_flaxbert_json_names_the_file(native_dir, tmp_path, edit, message):
    bad = _copy(native_dir, tmp_path / "bad")
    _edit_json(bad / "flaxbert.json", edit)
    with pytest.raises(ValueError, match=message) as info:
        flaxbert.from_pretrained(bad)
    assert str(bad / "flaxbert.json") in str(info.value)


# ----------------------------------------------------------------------------- shard indexes

def _indexed(hf_dir, tmp_path, weight_map=None, name="model.safetensors.index.json"):
    """A copy whose index maps every tensor to `weight_map` (a file name, or a whole value)."""
    directory = _copy(hf_dir, tmp_path / "indexed")
    keys = list(load_file(directory / "model.safetensors"))
    value = weight_map if not isinstance(weight_map, str) else dict.fromkeys(keys, weight_map)
    (directory / name).write_text(json.dumps({"metadata": {}, "weight_map": value}))
    return directory


def test_index_that_stays_inside_the_directory_loads(hf_dir, tmp_path):
    directory = _indexed(hf_dir, tmp_path, "model.safetensors")
    os.symlink("model.safetensors", directory / "link.safetensors")  # a link that stays inside
    _edit_json(directory / "model.safetensors.index.json",
               lambda i: i["weight_map"].update({WEIGHT: "link.safetensors"}))
    model, params = flaxbert.from_pretrained(directory)
    assert params["backbone"]["encoder"]["layers_0"]["mlp"]["wo"]["kernel"].shape == (37, 32)


@pytest.mark.parametrize("weight_map, message", [
    (None, r"index.json needs a 'weight_map' object mapping tensor names to file names, got "
           r"NoneType"),
    (["model.safetensors"], r"needs a 'weight_map' object .* got list"),
    ({WEIGHT: 5}, r"needs a 'weight_map' object"),
    ("../outside.safetensors", r"'\.\./outside\.safetensors' points outside the checkpoint"),
    ("/etc/passwd", r"'/etc/passwd' points outside the checkpoint"),
    ("escape.safetensors", r"'escape\.safetensors' points outside the checkpoint"),
])
def test_bad_safetensors_index_is_refused(hf_dir, tmp_path, weight_map, message):
    outside = tmp_path / "outside.safetensors"
    shutil.copy(hf_dir / "model.safetensors", outside)
    directory = _indexed(hf_dir, tmp_path, weight_map)
    os.symlink(outside, directory / "escape.safetensors")  # resolves outside the checkpoint
    with pytest.raises(ValueError, match=message) as info:
        flaxbert.from_pretrained(directory)
    assert "model.safetensors.index.json" in str(info.value)


def test_bad_pytorch_index_is_refused(hf_dir, tmp_path):
    directory = _indexed(hf_dir, tmp_path, "../pytorch_model.bin", "pytorch_model.bin.index.json")
    (directory / "model.safetensors").unlink()
    with pytest.raises(ValueError, match=r"pytorch_model.bin.index.json: weight_map entry .* "
                                         r"'\.\./pytorch_model\.bin' points outside"):
        flaxbert.from_pretrained(directory)


@pytest.mark.parametrize("weights", ["model.safetensors", "pytorch_model.bin"])
def test_weights_file_that_is_a_directory(hf_dir, tmp_path, weights):
    directory = _copy(hf_dir, tmp_path / "dir")
    (directory / "model.safetensors").unlink()
    (directory / weights).mkdir()
    with pytest.raises(IsADirectoryError, match=rf"{weights} is a directory, expected a"):
        flaxbert.from_pretrained(directory)


# ----------------------------------------------------------------------------- tensors on load

@pytest.mark.parametrize("dtype", [np.int8, np.int64, np.bool_, np.uint8])
def test_integer_and_bool_tensors_are_refused(hf_dir, tmp_path, dtype):
    bad = _copy(hf_dir, tmp_path / "bad")
    _edit_tensors(bad, lambda t: t.update({WEIGHT: t[WEIGHT].astype(dtype)}))
    with pytest.raises(ValueError, match=rf"tensor '{WEIGHT}' in {bad} has dtype "
                                         rf"{np.dtype(dtype).name}; parameters must be one of"):
        flaxbert.from_pretrained(bad)


def test_float16_tensors_load_into_the_config_dtype(hf_dir, tmp_path):
    half = _copy(hf_dir, tmp_path / "half")
    _edit_tensors(half, lambda t: t.update({WEIGHT: t[WEIGHT].astype(np.float16)}))
    _, params = flaxbert.from_pretrained(half)
    kernel = params["backbone"]["encoder"]["layers_0"]["mlp"]["wo"]["kernel"]
    assert kernel.dtype == jnp.float32 and np.isfinite(np.asarray(kernel)).all()


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_nonfinite_tensors_are_refused_unless_allowed(hf_dir, tmp_path, value):
    bad = _copy(hf_dir, tmp_path / "bad")

    def poison(tensors):
        tensors[WEIGHT] = tensors[WEIGHT].copy()
        tensors[WEIGHT].flat[[0, 5, 7]] = value

    _edit_tensors(bad, poison)
    with pytest.raises(ValueError, match=rf"tensor '{WEIGHT}' in {bad} holds 3 non-finite values"):
        flaxbert.from_pretrained(bad)
    _, params = flaxbert.from_pretrained(bad, allow_nonfinite=True)
    kernel = np.asarray(params["backbone"]["encoder"]["layers_0"]["mlp"]["wo"]["kernel"])
    assert (~np.isfinite(kernel)).sum() == 3


def test_nonfinite_native_checkpoint_is_refused(native_dir, tiny, tmp_path):
    import orbax.checkpoint as ocp
    bad = _copy(native_dir, tmp_path / "bad")
    params = jax.tree_util.tree_map(np.asarray, tiny[1])
    params["mlm_head"]["bias"] = params["mlm_head"]["bias"].copy()
    params["mlm_head"]["bias"][:2] = np.nan
    shutil.rmtree(bad / "params")
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(bad / "params", params)
    checkpointer.wait_until_finished()
    with pytest.raises(ValueError, match=rf"parameter mlm_head/bias in {bad} holds 2 non-finite"):
        flaxbert.from_pretrained(bad)
    with pytest.raises(ValueError, match=r"mlm_head/bias in .* holds 2 non-finite"):
        flaxbert.from_pretrained(bad, task="base")  # the other-head path checks as well
    _, loaded = flaxbert.from_pretrained(bad, allow_nonfinite=True)
    assert np.isnan(np.asarray(loaded["mlm_head"]["bias"][:2])).all()


# ----------------------------------------------------------------------------- tensors on save

def _with(params, **leaf):
    """A copy of `params` with mlm_head/bias replaced."""
    params = jax.tree_util.tree_map(lambda x: x, params)
    params["mlm_head"]["bias"] = leaf["bias"]
    return params


@pytest.mark.parametrize("format", ["hf", "flax"])
@pytest.mark.parametrize("bias, message", [
    (np.zeros(99, np.int8), r"parameter mlm_head/bias has dtype int8, but the config's "
                            r"param_dtype is float32"),
    (np.zeros(99, np.float16), r"mlm_head/bias has dtype float16, but .* float32"),
    (jnp.full(99, jnp.nan), r"parameter mlm_head/bias holds 99 non-finite values"),
    (np.zeros(99), r"mlm_head/bias has dtype float64"),
    (np.r_[np.inf, np.zeros(98)].astype(np.float32), r"mlm_head/bias holds 1 non-finite"),
])
def test_save_refuses_wrong_dtype_and_nonfinite_params(tiny, tmp_path, format, bias, message):
    model, params = tiny
    with pytest.raises(ValueError, match=message):
        flaxbert.save_pretrained(tmp_path / "out", model, _with(params, bias=bias), format=format)
    assert list(tmp_path.iterdir()) == []  # refused before anything was written


# ----------------------------------------------------------------------------- training configs

@pytest.mark.parametrize("field, value, message", [
    ("optimizer.b1", 5, r"optimizer.b1=5.0 must be in \[0, 1\)"),
    ("optimizer.b2", 1.0, r"optimizer.b2=1.0 must be in \[0, 1\)"),
    ("optimizer.eps", -1, r"optimizer.eps=-1.0 must be > 0"),
    ("optimizer.clip_norm", -1, r"optimizer.clip_norm=-1.0 must be >= 0"),
    ("optimizer.end_learning_rate", 1.0, r"end_learning_rate=1.0 must be in \[0, learning_rate="),
    ("optimizer.power", 0, r"optimizer.power=0.0 must be > 0"),
    ("optimizer.weight_decay", -0.1, r"optimizer.weight_decay=-0.1 must be >= 0"),
    ("optimizer.learning_rate", float("inf"), r"learning_rate=inf must be a finite float"),
    ("data.shuffle_buffer", -1, r"data.shuffle_buffer=-1 must be >= 0"),
    ("data.seed", -3, r"data.seed=-3 must be >= 0"),
    ("train.seed", -1, r"train.seed=-1 must be >= 0"),
    ("train.num_steps", True, r"train.num_steps=True must be int, got bool"),
    ("train.progress_bar", None, r"train.progress_bar=None must be bool"),
    ("checkpoint.keep", 0, r"checkpoint.keep=0 must be >= 1 \(or None"),
    ("objective", "mln", r"objective='mln'; choose one of \["),
    ("model", "bert-tny", r"unknown model name 'bert-tny'. Did you mean 'bert-tiny'"),
    ("model_overrides.hidden_dropout_prob", 7.5,
     r"model_overrides: BertConfig: hidden_dropout_prob=7.5 must be in \[0, 1\)"),
])
def test_bad_training_config_names_source_and_field(field, value, message):
    c = default_config()
    c.data.train = "somewhere"
    *section, key = field.split(".")
    (c[section[0]] if section else c)[key] = value
    with pytest.raises(ValueError, match=rf"^configs/bert_base.py: .*{message}"):
        check_config(c, "configs/bert_base.py")


def test_training_config_none_only_where_it_means_something():
    c = default_config()
    c.data.train = "somewhere"
    c.checkpoint.keep = None  # keep every checkpoint
    check_config(c)
    c.optimizer.clip_norm = 0.0  # no clipping
    c.model_overrides.vocab_size = 64
    check_config(c)
