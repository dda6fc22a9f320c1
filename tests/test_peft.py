"""Parameter-efficient fine-tuning: LoRA and Houlsby / Pfeiffer adapters as config choices, the
frozen-weight optimizer, their own files and LoRA folded into a model transformers loads.

Models are applied eagerly (no jax.jit): each tiny config would otherwise compile on its own,
while eager ops are compiled once and shared by every test here."""
import flax.linen as nn
import jax
import numpy as np
import optax
import pytest
import torch
import transformers
from flax import traverse_util
from safetensors.numpy import load_file

import flaxbert
from flaxbert import peft
from flaxbert.convert.hf import abstract_params
from flaxbert.layers.peft import is_peft_path
from flaxbert.training.optim import decay_mask
from conftest import token_batch

SMALL = dict(vocab_size=99, hidden_size=32, num_attention_heads=4, intermediate_size=37,
             max_position_embeddings=64)
ALL_TARGETS = ("query", "key", "value", "output", "mlp_in", "mlp_out")
TASK = "sequence-classification"


def create(name="bert-tiny", task=TASK, **fields):
    return flaxbert.create_model(name, task, **{**SMALL, "num_labels": 3, **fields})


def init(model, seed=0):
    variables = model.init(jax.random.key(seed), **model.dummy_inputs())
    return nn.meta.unbox(variables)["params"]


def flat(params):
    return traverse_util.flatten_dict(params, sep="/")


def base_part(params):
    """The parameters a peft-free model of the same config has."""
    return traverse_util.unflatten_dict(
        {k: v for k, v in flat(params).items() if not is_peft_path(k.split("/"))}, sep="/")


def perturbed(params, config, scale=0.05, seed=1, peft_only=False):
    """The trainable leaves (or only the LoRA / adapter ones) moved, as training would, so that
    identity inits cannot hide a bug."""
    rs = np.random.RandomState(seed)
    mask = flat(peft.trainable_mask(params, config))
    return traverse_util.unflatten_dict(
        {k: v + scale * rs.standard_normal(v.shape).astype(v.dtype)
         if mask[k] and (is_peft_path(k.split("/")) or not peft_only) else v
         for k, v in flat(params).items()}, sep="/")


def logits(model, params, batch):
    return np.asarray(model.apply({"params": params}, **batch).logits)


@pytest.fixture(scope="module")
def batch():
    ids, mask, types = token_batch(3, 11)
    return dict(input_ids=ids, attention_mask=mask, token_type_ids=types)


@pytest.mark.parametrize("fields, message", [
    (dict(peft="prefix"), "peft='prefix'; choose one of"),
    (dict(lora_targets=("attention",)), "lora_targets=('attention',); choose one or more"),
    (dict(lora_targets=()), "lora_targets=(); choose one or more"),
    (dict(lora_rank=0), "lora_rank=0 must be >= 1"),
    (dict(adapter_size=0), "adapter_size=0 must be >= 1"),
    (dict(lora_alpha=0.0), "lora_alpha=0.0 must be > 0"),
    (dict(lora_dropout=1.0), "lora_dropout=1.0 must be in [0, 1)"),
    (dict(adapter_act="gelu2"), "adapter_act='gelu2' is not an activation"),
])
def test_bad_peft_fields_are_refused_by_name(fields, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")
                       .replace("[", r"\[")):
        flaxbert.get_config("bert-tiny").replace(**fields)


def test_parameter_counts_axes_and_trainable_mask():
    """Exact counts of the new parameters (abstract shapes: nothing compiled), logical axis
    names on each, and the mask: new weights and the head train, the backbone does not."""
    h, i, layers, r, m = 32, 37, 2, 4, 8
    base = flaxbert.count_params(create())
    head = h * 3 + 3  # classifier/dense; the pooler belongs to the (frozen) backbone
    cases = [
        (dict(peft="lora", lora_rank=r), layers * 2 * (h * r + r * h)),  # query, value
        (dict(peft="lora", lora_rank=r, lora_targets=ALL_TARGETS),
         layers * (4 * 2 * h * r + (h * r + r * i) + (i * r + r * h))),
        (dict(peft="houlsby", adapter_size=m), layers * 2 * (2 * h * m + m + h)),
        (dict(peft="pfeiffer", adapter_size=m), layers * (2 * h * m + m + h)),
    ]
    for fields, added in cases:
        model = create(**fields)
        assert flaxbert.count_params(model) == base + added, fields
        params = abstract_params(model)
        assert peft.trainable_count(params, model.config) == added + head, fields
        boxed = jax.eval_shape(lambda: model.init(jax.random.key(0), **model.dummy_inputs()))
        new = {k: v for k, v in traverse_util.flatten_dict(boxed["params"], sep="/").items()
               if is_peft_path(k.split("/"))}
        assert new and all(isinstance(v, nn.Partitioned) and len(v.names) == v.value.ndim
                           and all(v.names) for v in new.values()), fields
        # The mask works on boxed trees too (what the trainer's optimizer init sees).
        mask = traverse_util.flatten_dict(peft.trainable_mask(boxed["params"], model.config),
                                          sep="/")
        assert {k for k, v in mask.items() if v} == set(new) | {
            "classifier/dense/kernel", "classifier/dense/bias"}
    pfeiffer = flat(abstract_params(create(peft="pfeiffer")))
    assert not any("attention_adapter" in k for k in pfeiffer)
    assert all(jax.tree_util.tree_leaves(peft.trainable_mask(abstract_params(create()),
                                                             create().config)))  # "none"


@pytest.fixture(scope="module")
def fresh(batch):
    """method -> (peft model, its fresh params); and the base model's logits on `batch`."""
    models = {}
    for method, fields in (("lora", dict(lora_targets=ALL_TARGETS, lora_dropout=0.1)),
                           ("houlsby", {}), ("pfeiffer", {})):
        model = create(peft=method, **fields)
        models[method] = model, init(model)
    return models


@pytest.mark.parametrize("method", ["lora", "houlsby", "pfeiffer"])
def test_fresh_peft_model_computes_the_base_model(fresh, batch, method):
    model, params = fresh[method]
    base = create()
    np.testing.assert_allclose(logits(model, params, batch),
                               logits(base, base_part(params), batch), atol=1e-6, rtol=0)
    # ... and the new weights are wired in: moving them moves the outputs.
    def last_hidden(p):
        out = model.apply({"params": p}, **batch, output_hidden_states=True)
        return np.asarray(out.hidden_states[-1])
    moved = last_hidden(perturbed(params, model.config, peft_only=True))
    assert np.abs(moved - last_hidden(params)).max() > 1e-2


def test_frozen_leaves_stay_bit_identical_under_the_masked_optimizer(fresh):
    model, params = fresh["lora"]
    config = model.config
    # The trainer's chain (clip, AdamW with weight decay), frozen outside, NaN guard around.
    tx = optax.apply_if_finite(peft.freeze(optax.chain(
        optax.clip_by_global_norm(1.0),
        optax.adamw(1e-2, weight_decay=0.1, mask=decay_mask)), config), 10)
    # Random gradients on every leaf, frozen ones included: only the mask keeps those still.
    rs = np.random.RandomState(0)
    state, new = tx.init(params), params
    @jax.jit  # one compile; eager, each leaf's update ops would compile on their own
    def step(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    for _ in range(3):
        grads = jax.tree_util.tree_map(lambda x: rs.standard_normal(x.shape).astype(x.dtype), new)
        new, state = step(new, state, grads)
    mask = flat(peft.trainable_mask(params, config))
    before, after = flat(params), flat(new)
    frozen = [k for k, t in mask.items() if not t]
    trained = [k for k, t in mask.items() if t]
    assert frozen and all(np.array_equal(before[k], after[k]) for k in frozen)
    assert trained and all(not np.array_equal(before[k], after[k]) for k in trained)
    # AdamW's two moments exist for the trainable leaves only.
    n = peft.trainable_count(params, config)
    state_bytes = peft.optimizer_state_bytes(tx, params)
    assert 8 * n <= state_bytes <= 8 * n + 64
    assert peft.optimizer_state_bytes(optax.adamw(1e-2), params) >= 8 * flaxbert.count_params(
        params)


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory, fresh):
    """A plain checkpoint holding the backbone the fresh models were built on."""
    _, params = fresh["lora"]
    path = tmp_path_factory.mktemp("peft") / "base"
    flaxbert.save_pretrained(path, create(), base_part(params))
    return path


def test_save_and_load_peft_round_trip(fresh, base_dir, tmp_path):
    model, params = fresh["houlsby"]
    # Start from the saved base, as fine-tuning would, then train the adapters and head.
    _, base_params = flaxbert.from_pretrained(base_dir, task=TASK)
    params = flat(params)
    params.update(flat(base_params))
    trained = perturbed(traverse_util.unflatten_dict(params, sep="/"), model.config)
    path = peft.save_peft(tmp_path / "adapter", model, trained)
    tensors = load_file(path / "peft_model.safetensors")
    mask = flat(peft.trainable_mask(trained, model.config))
    assert set(tensors) == {k for k, t in mask.items() if t}
    assert sum(v.size for v in tensors.values()) == peft.trainable_count(trained, model.config)
    with pytest.raises(OSError, match="exists"):
        peft.save_peft(tmp_path / "adapter", model, trained)

    loaded_model, loaded = peft.load_peft(path, base_dir)
    assert loaded_model.config == model.config and type(loaded_model) is type(model)
    want = flat(trained)
    got = flat(loaded)
    assert set(got) == set(want) and all(np.array_equal(got[k], want[k]) for k in want)

    # Another base architecture is refused, naming the field.
    other = tmp_path / "other-base"
    other_model = create(intermediate_size=40)
    flaxbert.save_pretrained(other, other_model, jax.tree_util.tree_map(
        lambda s: np.full(s.shape, 0.01, s.dtype), abstract_params(other_model)))
    with pytest.raises(ValueError, match="intermediate_size=40.*trained on intermediate_size=37"):
        peft.load_peft(path, other)


def test_merged_lora_equals_unmerged_and_transformers_loads_it(fresh, batch, tmp_path):
    model, params = fresh["lora"]
    trained = perturbed(params, model.config)
    plain, merged = peft.merge_lora(model, trained)
    assert plain.config.peft == "none" and not any(is_peft_path(k.split("/"))
                                                   for k in flat(merged))
    expected = logits(model, trained, batch)
    np.testing.assert_allclose(logits(plain, merged, batch), expected, atol=1e-5, rtol=0)
    out = flaxbert.save_pretrained(tmp_path / "merged", plain, merged)
    torch_model = transformers.AutoModelForSequenceClassification.from_pretrained(
        out, attn_implementation="eager").eval()
    with torch.no_grad():
        got = torch_model(**{k: torch.as_tensor(v) for k, v in batch.items()}).logits.numpy()
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="adapters are not linear"):
        peft.merge_lora(*fresh["houlsby"])


def test_plain_checkpoint_loads_into_a_peft_config(base_dir, batch):
    base_model, base_params = flaxbert.from_pretrained(base_dir)
    model, params = flaxbert.from_pretrained(base_dir, peft="lora")
    assert any(is_peft_path(k.split("/")) for k in flat(params))
    np.testing.assert_allclose(logits(model, params, batch),
                               logits(base_model, base_params, batch), atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="merge_lora"):
        flaxbert.save_pretrained(base_dir.parent / "peft-export", model, params)


FAMILIES = ["bert-tiny", "roberta-tiny", "distilbert-tiny", "albert-tiny", "electra-tiny",
            "deberta-v3-tiny", "xlnet-tiny"]


@pytest.mark.slow
@pytest.mark.parametrize("name", FAMILIES)
def test_every_family_adapters_start_as_identity_and_merged_lora_matches_transformers(
        name, tmp_path):
    ids = np.random.RandomState(0).randint(5, 99, (2, 9))
    inputs = dict(input_ids=ids, attention_mask=np.ones_like(ids))
    fields = dict(scan_layers=True) if name == "bert-tiny" else {}  # scanned stacks fold too
    if name.startswith("deberta"):
        fields["pooler_hidden_size"] = SMALL["hidden_size"]
    houlsby = create(name, peft="houlsby", **fields)
    params = init(houlsby)
    base = create(name, **fields)
    np.testing.assert_allclose(logits(houlsby, params, inputs),
                               logits(base, base_part(params), inputs), atol=1e-6, rtol=0)

    model = create(name, peft="lora", lora_targets=ALL_TARGETS, **fields)
    trained = perturbed(init(model), model.config)
    plain, merged = peft.merge_lora(model, trained)
    expected = logits(model, trained, inputs)
    np.testing.assert_allclose(logits(plain, merged, inputs), expected, atol=1e-5, rtol=0)
    out = flaxbert.save_pretrained(tmp_path / "merged", plain, merged)
    torch_model = transformers.AutoModelForSequenceClassification.from_pretrained(
        out, attn_implementation="eager").eval()
    with torch.no_grad():
        got = torch_model(**{k: torch.as_tensor(v) for k, v in inputs.items()}).logits.numpy()
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)
