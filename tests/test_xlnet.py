"""XLNet against transformers' PyTorch classes built from a tiny config, and the permutation-LM
input helpers against transformers' DataCollatorForPermutationLanguageModeling.

Random weights (biases, LayerNorms and mask_emb randomised too), fp32, left padding (as XLNet's
tokenizer pads), token types 0/1/2 and pad type 3; every output (logits, hidden states of both
streams, attentions, mems) must agree to 1e-4, including a second segment that reads the first's
memory under perm_mask + target_mapping.
"""
import math
import random

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

import flaxbert
from conftest import run_on_8_cpu_devices
from test_parity import assert_round_trip
from flaxbert.layers.encoder import stack_layers
from flaxbert.models import permutation, xlnet

TOL = 1e-4
PAD, MASK, SEP, CLS = 5, 6, 4, 3
HF_KW = dict(vocab_size=99, d_model=32, n_layer=2, n_head=4, d_inner=37)
VARIANTS = {  # config variants; the two-segment tests run all but the default
    "default": {},
    "short-memory": dict(mem_len=7, reuse_len=6),
    "bi-data": dict(bi_data=True, clamp_len=3, mem_len=None),  # null in config.json: keep all
    # transformers' "uni" cannot take a padding or permutation mask with batch > 1 (an in-place
    # add broadcasts the wrong way), so that variant runs unpadded, causal masks only.
    "uni": dict(attn_type="uni", same_length=True, mem_len=0, ff_activation="relu"),
}
AUTO = {"base": "AutoModel", "lm": "AutoModelForCausalLM",
        "sequence-classification": "AutoModelForSequenceClassification",
        "token-classification": "AutoModelForTokenClassification",
        "question-answering": "AutoModelForQuestionAnswering",
        "multiple-choice": "AutoModelForMultipleChoice"}


def token_batch(batch=4, length=10, seed=0):
    """Left-padded ids, attention mask, token types (0 / 1, 2 for the final <cls>, 3 for pads)."""
    rs = np.random.RandomState(seed)
    ids = rs.randint(7, 99, (batch, length))
    mask = np.ones_like(ids)
    for row in range(1, batch):
        mask[row, :2 * row - 1] = 0
    ids = np.where(mask == 1, ids, PAD)
    ids[:, -2:] = (SEP, CLS)
    types = np.where(np.arange(length) < length // 2, 0, 1)
    types[-1] = 2
    return ids, mask, np.where(mask == 1, types, 3)


def hf_inputs(ids, mask, types, mems=None, **extra):
    out = dict(input_ids=ids, attention_mask=mask, token_type_ids=types, **extra)
    out = {k: torch.tensor(v) for k, v in out.items() if v is not None}
    if mems is not None:  # transformers keeps memory time-major
        out["mems"] = [torch.tensor(np.asarray(m)).transpose(0, 1) for m in mems]
    return out


def max_err(ours, ref, time_major=False) -> float:
    if isinstance(ours, tuple):
        assert isinstance(ref, (tuple, list)) and len(ours) == len(ref)
        return max(max_err(a, b, time_major) for a, b in zip(ours, ref))
    ref = ref.detach().numpy()
    ref = ref.swapaxes(0, 1) if time_major else ref
    assert np.shape(ours) == ref.shape, (np.shape(ours), ref.shape)
    return float(np.abs(np.asarray(ours) - ref).max())


def errors(ours, ref) -> dict:
    assert set(ours.keys()) == {k for k, v in ref.items() if v is not None and k != "loss"}
    return {k: max_err(v, ref[k], time_major=k == "mems") for k, v in ours.items()}


def run_both(model, params, hf_model, ids, mask, types, mems=None, **extra):
    ours = model.apply({"params": params}, ids, mask, types, mems=mems, output_hidden_states=True,
                       output_attentions=True, **extra)
    with torch.no_grad():
        ref = hf_model(**hf_inputs(ids, mask, types, mems, **extra), output_hidden_states=True,
                       output_attentions=True)
    return ours, ref


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A saved random transformers checkpoint per (task, variant), built on first use."""
    cache = {}

    def get(task, variant="default"):
        if (task, variant) not in cache:
            config = transformers.XLNetConfig(**HF_KW, **VARIANTS[variant],
                                              num_labels=2 if "question" in task else 3)
            torch.manual_seed(len(cache))
            hf_model = getattr(transformers, xlnet.HF.architecture(task))(config).eval()
            with torch.no_grad():  # transformers zero-inits biases; randomise so tests see them
                for p in hf_model.parameters():
                    p.add_(torch.randn_like(p) * 0.02)
            path = tmp_path_factory.mktemp(f"xlnet-{task}-{variant}")
            hf_model.save_pretrained(path)
            cache[task, variant] = (path, hf_model)
        return cache[task, variant]
    return get


def task_inputs(task):
    ids, mask, types = token_batch()
    if task == "multiple-choice":  # (batch=2, choices=2, length)
        return tuple(x.reshape(2, 2, -1) for x in (ids, mask, types))
    return ids, mask, types


@pytest.mark.parametrize("task", list(xlnet.TASK_MODELS))
def test_every_head_matches_transformers(task, saved):
    path, hf_model = saved(task)
    model, params = flaxbert.from_pretrained(path)
    assert model.task == task and isinstance(model, xlnet.TASK_MODELS[task])
    assert flaxbert.count_params(params) == sum(p.numel() for p in hf_model.parameters())
    errs = errors(*run_both(model, params, hf_model, *task_inputs(task)))
    print(f"xlnet {task:24} " + " ".join(f"{k}={v:.1e}" for k, v in errs.items()))
    assert "mems" in errs and max(errs.values()) <= TOL, errs


@pytest.mark.parametrize("variant", list(VARIANTS)[1:])
def test_two_segments_with_memory_and_query_stream(variant, saved):
    """Segment 1 fills the memory; segment 2 reads it with perm_mask + target_mapping (compact,
    num_predict < length) from the permutation helpers, and padding."""
    path, hf_model = saved("lm", variant)
    model, params = flaxbert.from_pretrained(path)
    assert model.config.mem_len == (hf_model.config.mem_len or 0)  # null: keep all
    masked = variant != "uni"
    ids, mask, types = token_batch(seed=1)
    first, ref_first = run_both(model, params, hf_model, ids, mask if masked else None, types)
    ids2, mask2, types2 = token_batch(seed=2)
    plm = permutation.partial_prediction_batch(ids2, 0, K=3, special_ids=(SEP, CLS),
                                               pad_token_id=PAD)
    assert plm["target_mapping"].shape == (4, 4, 10)
    second, ref_second = run_both(
        model, params, hf_model, ids2, mask2 if masked else None, types2, mems=first.mems,
        perm_mask=plm["perm_mask"] if masked else None, target_mapping=plm["target_mapping"])
    assert second.logits.shape == (4, 4, 99) and len(second.hidden_states) == 2 * 3
    assert isinstance(second.attentions[0], tuple)  # (content, query) per layer
    errs = {f"1:{k}": v for k, v in errors(first, ref_first).items()}
    errs.update({f"2:{k}": v for k, v in errors(second, ref_second).items()})
    print(f"xlnet {variant:14} " + " ".join(f"{k}={v:.1e}" for k, v in errs.items()))
    assert max(errs.values()) <= TOL, errs
    memory = {"short-memory": 7, "bi-data": 20, "uni": 20}[variant]
    assert second.mems[0].shape == (4, memory, 32)


@pytest.mark.parametrize("task", list(xlnet.TASK_MODELS))
def test_round_trip_is_bit_exact_and_loads_in_transformers(task, saved, tmp_path):
    path, hf_model = saved(task)
    reloaded = assert_round_trip(path, hf_model, AUTO[task], tmp_path / "out")
    for field in ("d_model", "n_layer", "n_head", "d_inner", "ff_activation", "dropout", "mem_len",
                  "summary_type", "summary_activation", "num_labels"):
        assert getattr(reloaded.config, field) == getattr(hf_model.config, field), field


def test_other_heads_load_from_an_lm_checkpoint_and_flax_format_round_trips(saved, tmp_path):
    path, _ = saved("lm", "short-memory")
    model, params = flaxbert.from_pretrained(path, task="multiple-choice")
    lm, lm_params = flaxbert.from_pretrained(path)
    assert "choice_classifier" in params and "lm_head" not in params
    for a, b in zip(jax.tree_util.tree_leaves(params["backbone"]),
                    jax.tree_util.tree_leaves(lm_params["backbone"])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    flaxbert.save_pretrained(tmp_path / "flax", lm, lm_params, format="flax")
    again, again_params = flaxbert.from_pretrained(tmp_path / "flax")
    assert again.config == lm.config and again.config.reuse_len == 6
    for a, b in zip(jax.tree_util.tree_leaves(lm_params), jax.tree_util.tree_leaves(again_params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def _hf_count(name, task):
    c = flaxbert.get_config(name)
    config = transformers.XLNetConfig(vocab_size=c.vocab_size, d_model=c.hidden_size,
                                      n_layer=c.num_hidden_layers, n_head=c.num_attention_heads,
                                      d_inner=c.intermediate_size, num_labels=c.num_labels)
    with torch.device("meta"):  # shapes only
        model = getattr(transformers, xlnet.HF.architecture(task))(config)
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", ["xlnet-tiny", "xlnet-base-cased", "xlnet-large-cased"])
def test_parameter_counts_equal_transformers(name):
    counts = {task: flaxbert.count_params(flaxbert.create_model(name, task))
              for task in xlnet.TASK_MODELS}
    print(name, counts)
    assert counts == {task: _hf_count(name, task) for task in xlnet.TASK_MODELS}
    assert {"xlnet-base-cased": 116_718_336, "xlnet-large-cased": 360_268_800}.get(
        name, counts["base"]) == counts["base"]


@pytest.fixture(scope="module")
def lm(saved):
    path, hf_model = saved("lm", "short-memory")
    model, params = flaxbert.from_pretrained(path)
    ids, mask, types = token_batch(seed=3)
    plm = permutation.span_plm_batch(ids, 0, mask_token_id=MASK, special_ids=(SEP, CLS),
                                     pad_token_id=PAD, num_predict=3)
    mems = model.apply({"params": params}, ids, mask, types).mems
    inputs = dict(input_ids=plm["input_ids"], attention_mask=mask, token_type_ids=types,
                  mems=mems, perm_mask=plm["perm_mask"], target_mapping=plm["target_mapping"])
    return model, params, inputs


def test_jit_with_static_shapes_matches_eager(lm):
    model, params, inputs = lm
    eager = model.apply({"params": params}, **inputs)
    step = jax.jit(lambda p, x: model.apply({"params": p}, **x))
    jitted = step(params, inputs)
    for a, b in zip(jax.tree_util.tree_leaves(eager), jax.tree_util.tree_leaves(jitted)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)
    # The memory feeds back; once it holds mem_len states its shape, and the program, stay put.
    assert inputs["mems"][0].shape[1] == 6 and jitted.mems[0].shape[1] == 7  # reuse 6, keep 7
    again = step(params, {**inputs, "mems": jitted.mems})
    compiled = step._cache_size()
    step(params, {**inputs, "mems": again.mems})
    assert again.mems[0].shape == jitted.mems[0].shape and step._cache_size() == compiled


def test_scanned_rematerialised_layers_match_and_memory_is_stop_gradient(lm):
    model, params, inputs = lm
    scanned = model.clone(config=model.config.replace(scan_layers=True, remat_policy="full"))
    flags = dict(output_hidden_states=True, output_attentions=True)
    ours, stacked = jax.jit(lambda p, s: (model.apply({"params": p}, **inputs, **flags),
                                          scanned.apply({"params": s}, **inputs, **flags)))(
        params, stack_layers(params))
    assert jax.tree_util.tree_structure(ours) == jax.tree_util.tree_structure(stacked)
    for a, b in zip(jax.tree_util.tree_leaves(ours), jax.tree_util.tree_leaves(stacked)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)
    # Without the stop-gradient the memory (embeddings, layer outputs) would depend on the params.
    grads = jax.jit(jax.grad(lambda p: sum(jnp.sum(m) for m in scanned.apply(
        {"params": p}, **inputs).mems)))(stack_layers(params))
    assert all(float(jnp.abs(g).max()) == 0 for g in jax.tree_util.tree_leaves(grads))


def test_dropout_only_when_not_deterministic_and_no_memory_in_training(lm):
    model, params, inputs = lm
    a = model.apply({"params": params}, **inputs)
    train = [model.apply({"params": params}, **inputs, deterministic=False, use_mems=use_mems,
                         rngs={"dropout": jax.random.key(k)}) for k, use_mems in ((1, None),
                                                                                  (2, True))]
    assert not np.allclose(np.asarray(a.logits), np.asarray(train[0].logits))
    assert not np.allclose(np.asarray(train[0].logits), np.asarray(train[1].logits))
    assert a.mems is not None and train[0].mems is None  # use_mems_train=False, as transformers
    assert train[1].mems is not None


MESH_SCRIPT = """
import jax, jax.numpy as jnp, numpy as np, flax.linen as nn
import flaxbert
from flaxbert.layers import sharding
from flaxbert.models import permutation, xlnet  # xlnet: registers the family
rs = np.random.RandomState(0)
ids = rs.randint(7, 99, (8, 16))
mask = np.ones_like(ids); mask[3, :5] = 0
plm = permutation.partial_prediction_batch(ids, 0, K=4)
mems = tuple(rs.randn(8, 12, 128).astype(np.float32) for _ in range(2))
model = flaxbert.create_model("xlnet-tiny", "lm", vocab_size=128, scan_layers=True)
step = jax.jit(lambda p: model.apply({"params": p}, ids, mask, mems=mems,
                                     perm_mask=plm["perm_mask"],
                                     target_mapping=plm["target_mapping"]))
mesh = sharding.make_mesh(2, 2, 2)
params = sharding.sharded_init(lambda k: model.init(k, **model.dummy_inputs()), mesh,
                               sharding.LOGICAL_AXIS_RULES, jax.random.key(0))["params"]
assert not params["backbone"]["encoder"]["layers"]["attention"]["q"].sharding.is_fully_replicated
ref = step(jax.device_get(params))
with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.LOGICAL_AXIS_RULES):
    out = step(params)
err = max(float(jnp.abs(a - b).max()) for a, b in zip(jax.tree_util.tree_leaves(out),
                                                      jax.tree_util.tree_leaves(ref)))
assert err < 1e-5, err
print("mesh ok")
"""


def test_sharded_init_and_forward_with_memory_on_a_2x2x2_mesh():
    assert "mesh ok" in run_on_8_cpu_devices(MESH_SCRIPT)


def test_bfloat16_compute_stays_close_to_float32(lm):
    model, params, inputs = lm
    ref = model.apply({"params": params}, **inputs).logits
    bf16 = model.clone(config=model.config.replace(dtype="bfloat16"))
    out = jax.jit(lambda p: bf16.apply({"params": p}, **inputs))(params)
    assert out.logits.dtype == jnp.bfloat16 and out.mems[0].dtype == jnp.bfloat16
    scale = float(jnp.abs(ref).max())
    assert float(jnp.abs(out.logits.astype(jnp.float32) - ref).max()) < 0.02 * scale


def test_every_parameter_has_logical_axes():
    for task in xlnet.TASK_MODELS:
        for scan in (False, True):
            model = flaxbert.create_model("xlnet-tiny", task, scan_layers=scan)
            boxed = jax.eval_shape(lambda: model.init(jax.random.key(0), **model.dummy_inputs()))
            for path, leaf in jax.tree_util.tree_leaves_with_path(
                    boxed["params"], is_leaf=lambda x: isinstance(x, nn.Partitioned)):
                assert isinstance(leaf, nn.Partitioned), (task, path)
                names = leaf.names[1:] if scan and leaf.names[0] == "layers" else leaf.names
                assert len(leaf.names) == leaf.value.ndim
                # mask_emb is (1, 1, hidden): its unit axes have nothing to shard
                expected_none = 2 if "mask_emb" in jax.tree_util.keystr(path) else 0
                assert list(names).count(None) == expected_none, (task, path, leaf.names)


def test_bad_inputs_and_configs_say_what_is_wrong(lm):
    model, params, inputs = lm
    apply = lambda **kw: model.apply({"params": params}, **{**inputs, **kw})  # noqa: E731
    with pytest.raises(ValueError, match="no position_ids"):
        apply(position_ids=np.zeros((4, 10), int))
    with pytest.raises(ValueError, match="not both"):
        apply(input_mask=1 - inputs["attention_mask"])
    with pytest.raises(ValueError, match=r"perm_mask \(batch, length, length\) has shape \(4, 10, 9\)"):
        apply(perm_mask=np.zeros((4, 10, 9)))
    with pytest.raises(ValueError, match=r"target_mapping \(batch, num_predict, length\) has shape"):
        apply(target_mapping=np.zeros((4, 3, 9)))
    with pytest.raises(ValueError, match="batch-major"):
        apply(mems=tuple(m.swapaxes(0, 1) for m in inputs["mems"]))
    with pytest.raises(ValueError, match="attn_type='tri'"):
        flaxbert.get_config("xlnet-tiny", attn_type="tri")
    bi = model.clone(config=model.config.replace(bi_data=True))
    with pytest.raises(ValueError, match="batch must be even, got 3"):
        bi.apply({"params": params}, np.full((3, 8), 9))
    # input_mask (1 = padding) is attention_mask's complement
    a = apply().logits
    b = apply(attention_mask=None, input_mask=1 - inputs["attention_mask"]).logits
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


# ----------------------------------------------------------------------------- permutation LM

class FakeTokenizer:
    """What DataCollatorForPermutationLanguageModeling reads of a tokenizer."""

    mask_token, mask_token_id, pad_token, pad_token_id = "<mask>", MASK, "<pad>", PAD
    all_special_ids = [0, 1, 2, CLS, SEP, PAD, MASK]

    def get_special_tokens_mask(self, ids, already_has_special_tokens=False):
        return [int(i in self.all_special_ids) for i in ids]


class TransformersDraws:
    """The random draws transformers' numpy collator makes: Python's random.randint (both ends
    inclusive, so spans reach max_span_length + 1) and NumPy's global shuffle."""

    def integers(self, low, high):
        return random.randint(low, high)

    def permutation(self, n):
        return np.random.permutation(n)


def plm_ids(batch=6, length=24, seed=0):
    rs = np.random.RandomState(seed)
    ids = rs.randint(7, 99, (batch, length))
    for row in range(batch):
        ids[row, :row] = PAD
    ids[:, -2:] = (SEP, CLS)
    return ids


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_span_batches_equal_transformers_collator_on_the_same_draws(seed):
    ids = plm_ids(seed=seed)
    collator = transformers.DataCollatorForPermutationLanguageModeling(
        FakeTokenizer(), plm_probability=1 / 4, max_span_length=3, return_tensors="np")
    random.seed(seed)
    np.random.seed(seed)
    theirs = collator([list(row) for row in ids])
    random.seed(seed)
    np.random.seed(seed)
    ours = permutation.span_plm_batch(ids, TransformersDraws(), mask_token_id=MASK,
                                      special_ids=FakeTokenizer.all_special_ids,
                                      pad_token_id=PAD, plm_probability=1 / 4, max_span_length=3)
    assert ours.keys() == theirs.keys()
    for key in ours:
        assert ours[key].dtype == theirs[key].dtype, key
        np.testing.assert_array_equal(ours[key], theirs[key], err_msg=key)


def _check_invariants(batch, ids, order_of, functional_sees_targets):
    perm, tm, labels = batch["perm_mask"], batch["target_mapping"], batch["labels"]
    assert set(np.unique(tm)) <= {0.0, 1.0} and (tm.sum(-1) <= 1).all()
    for b in range(len(ids)):
        rows = tm[b].sum(-1) == 1
        positions = tm[b].argmax(-1)[rows]
        assert (labels[b][~rows] == -100).all()
        np.testing.assert_array_equal(labels[b][rows][labels[b][rows] != -100],
                                      ids[b, positions][labels[b][rows] != -100])
        targets = np.zeros(ids.shape[1], bool)
        targets[positions[labels[b][rows] != -100]] = True
        order = order_of(b)
        for i in range(ids.shape[1]):
            for j in range(ids.shape[1]):
                if not targets[j]:
                    expect = 0  # context: visible to all
                elif targets[i] or functional_sees_targets(b, i):
                    expect = int(order[j] >= order[i])  # only earlier targets, never itself
                else:
                    expect = 1
                assert perm[b, i, j] == expect, (b, i, j)


def test_partial_prediction_predicts_the_last_1_over_K_of_the_order():
    ids = plm_ids(batch=4, length=20)
    batch = permutation.partial_prediction_batch(ids, 7, K=4, special_ids=(SEP, CLS),
                                                 pad_token_id=PAD)
    functional = np.isin(ids, (SEP, CLS, PAD))
    rng = np.random.default_rng(7)
    orders = [permutation.factorisation_order(20, rng) for _ in range(4)]
    assert batch["target_mapping"].shape == (4, 5, 20) and batch["labels"].shape == (4, 5)
    np.testing.assert_array_equal(batch["input_ids"], ids)  # the paper keeps the real tokens
    for b in range(4):
        n = int((~functional[b]).sum())
        assert (batch["labels"][b] != -100).sum() == math.ceil(n / 4)
        targets = batch["target_mapping"][b].sum(0) > 0
        # every target comes after every other ordinary token in the order
        assert orders[b][targets].min() > orders[b][~targets & ~functional[b]].max()
    _check_invariants(batch, ids, lambda b: orders[b], lambda b, i: False)


@pytest.mark.parametrize("num_predict", [None, 4])
def test_span_batches_keep_targets_hidden_in_order(num_predict):
    ids = plm_ids(batch=4, length=20)
    batch = permutation.span_plm_batch(ids, 3, mask_token_id=MASK, special_ids=(SEP, CLS),
                                       pad_token_id=PAD, num_predict=num_predict)
    rng = np.random.default_rng(3)
    for _ in range(4):
        permutation.span_mask(20, rng)
    orders = [permutation.factorisation_order(20, rng, 10) for _ in range(4)]
    functional = np.isin(ids, (SEP, CLS, PAD))
    targets = batch["labels"] != -100
    if num_predict is None:
        np.testing.assert_array_equal(batch["target_mapping"], np.broadcast_to(np.eye(20), (4, 20, 20)))
        assert (batch["input_ids"][targets] == MASK).all()
    else:
        assert batch["target_mapping"].shape == (4, 4, 20) and targets.sum(1).max() <= 4
    _check_invariants(batch, ids, lambda b: orders[b], lambda b, i: functional[b, i])
    # both halves are permuted alike: a token and its twin length/2 later keep their order
    for order in orders:
        np.testing.assert_array_equal(order[10:] - order[:10], np.full(10, 10))


def test_same_seed_same_batch_and_masking_statistics():
    ids = np.random.RandomState(0).randint(7, 99, (64, 512))
    a = permutation.span_plm_batch(ids, 11, mask_token_id=MASK)
    b = permutation.span_plm_batch(ids, 11, mask_token_id=MASK)
    c = permutation.span_plm_batch(ids, 12, mask_token_id=MASK)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    assert not np.array_equal(a["perm_mask"], c["perm_mask"])
    masked = a["labels"] != -100
    assert abs(masked.mean() - 1 / 6) < 0.01  # each context of 6s tokens masks s of them
    runs = np.diff(np.concatenate([np.zeros((64, 1)), masked, np.zeros((64, 1))], 1), axis=1)
    lengths = np.flatnonzero(runs == -1) - np.flatnonzero(runs == 1)
    assert lengths.max() <= 2 * 5 and (lengths <= 5).mean() > 0.8  # adjacent spans may touch


def test_permutation_helpers_reject_bad_input():
    with pytest.raises(ValueError, match="even length"):
        permutation.span_plm_batch(np.zeros((2, 7), int), 0, mask_token_id=MASK)
    with pytest.raises(ValueError, match=r"input_ids must be \(batch, length\)"):
        permutation.span_plm_batch(np.zeros(8, int), 0, mask_token_id=MASK)
    with pytest.raises(TypeError, match="must be integers"):
        permutation.partial_prediction_batch(np.zeros((2, 8)), 0)
    with pytest.raises(ValueError, match="plm_probability=1.5"):
        permutation.span_plm_batch(np.zeros((2, 8), int), 0, mask_token_id=MASK,
                                   plm_probability=1.5)
    with pytest.raises(ValueError, match="perm_size=3 must divide the length 8"):
        permutation.partial_prediction_batch(np.zeros((2, 8), int), 0, perm_size=3)
    with pytest.raises(ValueError, match="K=0.5"):
        permutation.partial_prediction_batch(np.zeros((2, 8), int), 0, K=0.5)
    with pytest.raises(ValueError, match="num_predict=0"):
        permutation.span_plm_batch(np.zeros((2, 8), int), 0, mask_token_id=MASK, num_predict=0)


def test_no_target_sees_itself_or_later_targets_through_the_model(lm):
    """With the real tokens in the content stream (the paper's setting), changing a target's
    token leaves the predictions of itself and of every earlier target unchanged, and changes
    those of later targets."""
    model, params, _ = lm
    ids = plm_ids(batch=2, length=16)
    batch = permutation.partial_prediction_batch(ids, 5, K=2, special_ids=(SEP, CLS),
                                                 pad_token_id=PAD)
    rng = np.random.default_rng(5)
    orders = [permutation.factorisation_order(16, rng) for _ in range(2)]
    predict = jax.jit(lambda x: model.apply(
        {"params": params}, x, perm_mask=batch["perm_mask"],
        target_mapping=batch["target_mapping"], attention_mask=(ids != PAD).astype(np.int32)).logits)
    base_logits = np.asarray(predict(batch["input_ids"]))
    for b in range(2):
        rows = np.flatnonzero(batch["labels"][b] != -100)
        positions = batch["target_mapping"][b].argmax(-1)[rows]
        for row, pos in zip(rows, positions):
            changed = batch["input_ids"].copy()
            changed[b, pos] = (changed[b, pos] + 1) % 99
            diff = np.abs(np.asarray(predict(changed))[b, rows] - base_logits[b, rows]).max(-1)
            later = orders[b][positions] > orders[b][pos]
            assert (diff[~later] == 0).all() and (diff[later] > 0).all(), (b, pos)
