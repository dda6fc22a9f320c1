"""Pre-training objectives: each trains (its loss falls on a fixed batch), BERT's loss equals
transformers' BertForPreTraining on the same weights, ELECTRA's sampling and gradients, the frozen
DistilBERT teacher, XLNet's in-jit permutation inputs against the NumPy reference, clear errors."""
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
import transformers

import flaxbert
from conftest import TINY_HF
from flaxbert.models import permutation
from flaxbert.training import objectives
from flaxbert.training.objectives import get_objective

VOCAB = 256
# Tiny models compile several times faster on CPU without XLA's expensive LLVM passes and
# with the classic fusion emitters (a 1-layer BERT train step: ~30 s -> ~3 s of CPU); what is
# computed is the same.
FAST = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True,
        "xla_cpu_use_fusion_emitters": False}


def jit(fn, **kwargs):
    return jax.jit(fn, compiler_options=FAST, **kwargs)

CLS, SEP, MASK = 2, 3, 4  # below every random id (which start at 10)


def mlm_batch(config, batch=4, length=16, slots=3, seed=0):
    """A masked batch as the pipeline makes it: [CLS] ... [SEP], row 1 right-padded, ~15% of
    the ordinary tokens chosen (80% [MASK], 10% random, 10% kept), row 1 with a padding slot."""
    rs = np.random.RandomState(seed)
    ids = rs.randint(10, config.vocab_size, (batch, length))
    lengths = [length] * batch
    lengths[1] = length - 5
    mask = (np.arange(length)[None] < np.array(lengths)[:, None]).astype(np.int32)
    ids[:, 0] = CLS
    ids[np.arange(batch), np.array(lengths) - 1] = SEP
    ids = np.where(mask == 1, ids, config.pad_token_id)
    positions = np.zeros((batch, slots), np.int32)
    weights = np.zeros((batch, slots), np.float32)
    for b, n in enumerate(lengths):
        count = slots - 1 if b == 1 else slots
        positions[b, :count] = np.sort(rs.choice(np.arange(1, n - 1), count, replace=False))
        weights[b, :count] = 1
    originals = np.take_along_axis(ids, positions, 1) * (weights > 0)
    inputs = ids.copy()
    for b in range(batch):
        for p, w in zip(positions[b], weights[b]):
            r = rs.rand()
            if w and r < 0.8:
                inputs[b, p] = MASK
            elif w and r < 0.9:
                inputs[b, p] = rs.randint(10, config.vocab_size)
    types = (np.arange(length)[None] >= length // 2) * mask if config.type_vocab_size > 1 \
        else np.zeros_like(mask)
    return {"input_ids": inputs.astype(np.int32), "attention_mask": mask,
            "token_type_ids": types.astype(np.int32), "masked_positions": positions,
            "masked_ids": originals.astype(np.int32), "masked_weights": weights,
            "pair_label": (np.arange(batch) % 2).astype(np.int32)}


def plain_batch(config, **kwargs):
    batch = mlm_batch(config, **kwargs)
    ids = np.where(batch["attention_mask"] == 1, batch["input_ids"], config.pad_token_id)
    return {"input_ids": ids, "attention_mask": batch["attention_mask"],
            "token_type_ids": batch["token_type_ids"]}


def init(objective, batch, seed=0):
    return nn.meta.unbox(jit(objective.init)(jax.random.key(seed), batch))["params"]


def train(objective, batch, steps, lr=3e-3, frozen=None, probe=None):
    """Init, then Adam on one fixed batch with dropout on, all in one jitted scan (one compile);
    returns the params, each step's metrics (with the gradient the frozen teacher received) and
    probe(initial params), if given."""
    tx = optax.adam(lr)

    def run(key, frozen):
        params = nn.meta.unbox(objective.init(key, batch))["params"]

        def step(carry, key):
            params, opt_state = carry
            (_, metrics), (grads, frozen_grads) = jax.value_and_grad(
                lambda p, f: objective.loss(p, batch, key, deterministic=False, frozen=f),
                argnums=(0, 1), has_aux=True)(params, frozen)
            updates, opt_state = tx.update(grads, opt_state, params)
            metrics["frozen_grad"] = sum(jnp.abs(g).sum() for g in
                                         jax.tree_util.tree_leaves(frozen_grads))
            return (optax.apply_updates(params, updates), opt_state), metrics

        probed = None if probe is None else probe(params)
        (params, _), history = jax.lax.scan(step, (params, tx.init(params)),
                                            jax.random.split(key, steps))
        return params, history, probed

    params, history, probed = jit(run)(jax.random.key(0), frozen)
    return params, {k: np.asarray(v) for k, v in history.items()}, probed


CASES = {  # objective, model, settings, model overrides
    "mlm-roberta-bf16": ("mlm", "roberta-tiny", {}, {"dtype": "bfloat16"}),
    "mlm_nsp-bert": ("mlm_nsp", "bert-tiny", {}, {}),
    "mlm_sop-albert": ("mlm_sop", "albert-tiny", {}, {}),
    "rtd-electra": ("rtd", "electra-tiny", {"generator_size": 0.25}, {}),
    "distillation-distilbert": ("distillation", "distilbert-tiny",
                                {"teacher": "bert-tiny", "teacher_seed": 1,
                                 "teacher_overrides": {"vocab_size": VOCAB,
                                                       "num_hidden_layers": 1}}, {}),
    "plm-xlnet": ("plm", "xlnet-tiny", {"plm_K": 4}, {}),
}


def rtd_probe(objective, batch):
    """On the initial pair: the corrupted batch, and the gradient of the discriminator's loss
    alone."""
    def probe(params):
        _, ids, is_replaced = objective.corrupt(params, batch, jax.random.key(3),
                                                deterministic=True)
        grads = jax.grad(lambda p: objective.loss(p, batch, jax.random.key(4),
                                                  deterministic=True)[1]["rtd_loss"])(params)
        return {"ids": ids, "is_replaced": is_replaced, "grads": grads}
    return probe


@pytest.fixture(scope="module")
def trained():
    """case -> (objective, batch, frozen before training, params, history, probe), trained once."""
    cache = {}

    def get(case):
        if case not in cache:
            name, model, settings, overrides = CASES[case]
            config = flaxbert.get_config(model, vocab_size=VOCAB, num_hidden_layers=1,
                                         **overrides)
            objective = get_objective(name, config, settings)
            batch = (plain_batch if objective.data == "plm" else mlm_batch)(config)
            frozen = objective.load_frozen()
            before = jax.tree_util.tree_map(np.array, frozen)
            probe = rtd_probe(objective, batch) if name == "rtd" else None
            cache[case] = (objective, batch, frozen, before,
                           *train(objective, batch, steps=30, frozen=frozen, probe=probe))
        return cache[case]
    return get


@pytest.mark.parametrize("case", CASES)
def test_loss_falls_on_a_fixed_batch(case, trained):
    objective, batch, frozen, frozen_before, params, history, _ = trained(case)
    first, last = history["loss"][:3].mean(), history["loss"][-3:].mean()
    print(f"{case}: loss {first:.3f} -> {last:.3f}")
    assert np.isfinite(last) and last < 0.6 * first, (first, last)
    assert jax.tree_util.tree_leaves(params)[0].dtype == jnp.float32  # bf16 compute, f32 params
    assert history["loss"].dtype == np.float32
    if frozen is not None:  # the teacher gets no gradient and is not changed by a step
        assert (history["frozen_grad"] == 0).all()
        for a, b in zip(jax.tree_util.tree_leaves(frozen),
                        jax.tree_util.tree_leaves(frozen_before)):
            np.testing.assert_array_equal(np.asarray(a), b)
    for sub, module, part in objective.export(params):
        flaxbert.convert.hf.check_params(module, part)


def test_registry_and_data_contract():
    assert sorted(objectives.OBJECTIVES) == [
        "chunk_classification", "classification", "distillation", "mlm", "mlm_nsp", "mlm_sop",
        "multiple_choice", "multitask_classification", "plm", "question_answering", "rtd",
        "tinybert", "tinybert_task", "token_classification"]
    table = {n: (c.data, c.pair_task) for n, c in objectives.OBJECTIVES.items()}
    assert table == {"mlm": ("mlm", None), "mlm_nsp": ("mlm", "nsp"), "mlm_sop": ("mlm", "sop"),
                     "rtd": ("mlm", None), "distillation": ("mlm", None), "plm": ("plm", None),
                     "classification": ("task", None), "token_classification": ("task", None),
                     "multiple_choice": ("task", None), "question_answering": ("task", None),
                     "chunk_classification": ("task", None),
                     "multitask_classification": ("task", None),
                     "tinybert": ("mlm", None), "tinybert_task": ("task", None)}


def test_bert_objective_equals_transformers_pretraining_loss(tmp_path):
    torch.manual_seed(0)
    hf = transformers.BertForPreTraining(transformers.BertConfig(**TINY_HF)).eval()
    hf.save_pretrained(tmp_path)
    model, params = flaxbert.from_pretrained(tmp_path, "pretraining")
    objective = get_objective("mlm_nsp", model.config)
    batch = mlm_batch(model.config)
    labels = np.full(batch["input_ids"].shape, -100, np.int64)
    for b in range(len(labels)):
        real = batch["masked_weights"][b] > 0
        labels[b, batch["masked_positions"][b][real]] = batch["masked_ids"][b][real]
    with torch.no_grad():
        ref = hf(input_ids=torch.tensor(batch["input_ids"]),
                 attention_mask=torch.tensor(batch["attention_mask"]),
                 token_type_ids=torch.tensor(batch["token_type_ids"]),
                 labels=torch.tensor(labels),
                 next_sentence_label=torch.tensor(batch["pair_label"]).long()).loss.item()
    loss, metrics = jit(lambda p: objective.loss(p, batch, deterministic=True))(params)
    assert abs(float(loss) - ref) < 1e-5
    assert float(metrics["mlm_loss"] + metrics["nsp_loss"]) == pytest.approx(float(loss))


# ----------------------------------------------------------------------------- ELECTRA

def test_generator_sizes():
    tiny = flaxbert.get_config("electra-tiny")
    small = objectives.generator_config(tiny, size=0.25)
    reference = flaxbert.get_config("electra-tiny-generator")
    for field in ("hidden_size", "num_attention_heads", "intermediate_size", "embedding_size",
                  "num_hidden_layers"):
        assert getattr(small, field) == getattr(reference, field), field
    base = objectives.generator_config(flaxbert.get_config("electra-base-discriminator"),
                                       size=1 / 3)
    released = flaxbert.get_config("electra-base-generator")
    assert (base.hidden_size, base.num_attention_heads, base.intermediate_size) == (
        released.hidden_size, released.num_attention_heads, released.intermediate_size)
    named = objectives.generator_config(tiny.replace(vocab_size=99, dtype="bfloat16"),
                                        "electra-tiny-generator")
    assert (named.vocab_size, named.dtype, named.hidden_size) == (99, "bfloat16", 32)


def test_samples_replace_only_real_masked_positions(trained):
    _, batch, *_, probe = trained("rtd-electra")
    ids, is_replaced = np.asarray(probe["ids"]), np.asarray(probe["is_replaced"])
    slots = np.zeros(ids.shape, bool)
    for b in range(len(ids)):
        slots[b, batch["masked_positions"][b][batch["masked_weights"][b] > 0]] = True
    # Outside the real masked positions nothing changes (row 1's padding slot points at 0).
    np.testing.assert_array_equal(ids[~slots], batch["input_ids"][~slots])
    assert not is_replaced[~slots].any()
    original = batch["input_ids"].copy()
    for b in range(len(ids)):
        real = batch["masked_weights"][b] > 0
        original[b, batch["masked_positions"][b][real]] = batch["masked_ids"][b][real]
    np.testing.assert_array_equal(is_replaced, ids != original)
    assert (ids[slots] != MASK).all()  # every masked position got a generator sample


def test_replace_masked_tokens_counts_a_correct_sample_as_original():
    ids = jnp.array([[2, 4, 4, 9, 3]])
    positions, weights = jnp.array([[1, 2, 0]]), jnp.array([[1.0, 1.0, 0.0]])
    originals, sampled = jnp.array([[7, 8, 0]]), jnp.array([[7, 11, 13]])
    new, replaced = objectives.replace_masked_tokens(ids, positions, originals, weights, sampled)
    np.testing.assert_array_equal(new, [[2, 7, 11, 9, 3]])  # the padding slot wrote nothing
    np.testing.assert_array_equal(replaced, [[False, False, True, False, False]])


@pytest.mark.parametrize("method", ["categorical", "gumbel"])
def test_sampling_follows_the_generator_distribution(method):
    logits = jnp.log(jnp.array([0.1, 0.2, 0.3, 0.4]))
    draws = jit(lambda k: objectives.sample_tokens(k, jnp.broadcast_to(logits, (20000, 4)),
                                                   method=method))(jax.random.key(0))
    np.testing.assert_allclose(np.bincount(draws, minlength=4) / 20000, [0.1, 0.2, 0.3, 0.4],
                               atol=0.015)
    cold = jit(lambda k: objectives.sample_tokens(k, jnp.broadcast_to(logits, (500, 4)),
                                                  temperature=0.01, method=method))(
        jax.random.key(1))
    assert (np.asarray(cold) == 3).all()


def test_rtd_gradients(trained):
    objective, _, _, _, params, _, probe = trained("rtd-electra")
    grads = probe["grads"]

    def total(tree):
        return sum(np.abs(np.asarray(x)).sum() for x in jax.tree_util.tree_leaves(tree))

    # The discriminator's loss reaches the shared embeddings and itself, never the generator:
    # its input is the generator's *samples*, with no gradient path through the sampling.
    assert total(grads["generator"]) == 0.0
    assert total(grads["embeddings"]["word_embeddings"]) > 0
    assert total(grads["discriminator"]) > 0
    exported = objective.export(params)
    assert [(s, type(m).__name__) for s, m, _ in exported] == [
        ("generator", "ElectraForMaskedLM"), ("discriminator", "ElectraForPreTraining")]


# ----------------------------------------------------------------------------- DistilBERT

def test_frozen_teacher_tree_and_a_student_equal_to_its_teacher(tmp_path):
    config = flaxbert.get_config("distilbert-tiny", vocab_size=VOCAB, num_hidden_layers=1)
    objective = get_objective("distillation", config, {"teacher": "distilbert-tiny",
                                                       "teacher_overrides": dict(
                                                           vocab_size=VOCAB, num_hidden_layers=1),
                                                       "teacher_seed": 3})
    teacher = objective.load_frozen()
    abstract = objective.frozen_abstract()
    assert jax.tree_util.tree_structure(nn.meta.unbox(abstract)) == \
        jax.tree_util.tree_structure(teacher)
    assert any(isinstance(x, nn.Partitioned) for x in jax.tree_util.tree_leaves(
        abstract, is_leaf=lambda x: isinstance(x, nn.Partitioned)))  # shardable by logical axes
    # The student *is* the teacher: no distillation loss, only 2 x MLM.
    batch = mlm_batch(config)
    loss, metrics = jit(lambda p: objective.loss(p, batch, deterministic=True, frozen=p))(teacher)
    assert abs(float(metrics["distill_ce_loss"])) < 1e-6
    assert abs(float(metrics["distill_cos_loss"])) < 1e-6
    assert float(loss) == pytest.approx(2.0 * float(metrics["mlm_loss"]), rel=1e-6)
    # A teacher directory is loaded with from_pretrained.
    flaxbert.save_pretrained(tmp_path / "teacher", objective.teacher, teacher)
    from_dir = get_objective("distillation", config, {"teacher": str(tmp_path / "teacher")})
    for a, b in zip(jax.tree_util.tree_leaves(from_dir.load_frozen()),
                    jax.tree_util.tree_leaves(teacher)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert jax.tree_util.tree_structure(nn.meta.unbox(from_dir.frozen_abstract())) == \
        jax.tree_util.tree_structure(teacher)


# ----------------------------------------------------------------------------- XLNet

PAD = 5  # XLNet's <pad>


class Replay:
    """Hands the NumPy reference the permutations we chose."""

    def __init__(self, perms):
        self.perms = iter(perms)

    def permutation(self, n):
        perm = next(self.perms)
        assert len(perm) == n
        return perm


def xlnet_ids(batch=4, length=20, seed=0):
    ids = np.random.RandomState(seed).randint(10, 99, (batch, length))
    ids[:, -2:] = [SEP, CLS]
    ids[1, :6] = PAD  # XLNet pads on the left
    ids[2, 5] = SEP
    return ids, (ids != PAD).astype(np.int32)


@pytest.mark.parametrize("perm_size,K", [(None, 6), (5, 2.5)])
def test_plm_inputs_equal_the_numpy_reference(perm_size, K):
    ids, mask = xlnet_ids()
    size = perm_size or ids.shape[1]
    perms = [np.random.RandomState(b).permutation(size) for b in range(len(ids))]
    reference = permutation.partial_prediction_batch(
        ids, Replay(perms), K=K, special_ids=(SEP, CLS), pad_token_id=PAD, perm_size=perm_size)
    orders = objectives.orders_from_permutations(jnp.array(perms), ids.shape[1])
    replayed = Replay(perms)
    for b in range(len(ids)):
        np.testing.assert_array_equal(
            orders[b], permutation.factorisation_order(ids.shape[1], replayed, perm_size))
    ours = jit(lambda i, m, o: objectives.partial_prediction_inputs(
        i, m, o, K=K, special_ids=(SEP, CLS), pad_token_id=PAD))(ids, mask, orders)
    for key in ("perm_mask", "target_mapping", "labels"):
        np.testing.assert_array_equal(np.asarray(ours[key]), reference[key], err_msg=key)


def test_plm_never_predicts_special_or_padding_tokens():
    config = flaxbert.get_config("xlnet-tiny", vocab_size=99)
    objective = get_objective("plm", config, {"plm_K": 3, "special_ids": (SEP, CLS)})
    ids, mask = xlnet_ids(batch=8, length=24, seed=1)
    batch = {"input_ids": ids, "attention_mask": mask}
    plm = jit(objective.plm_inputs)(jax.random.key(7), batch)
    labels, mapping = np.asarray(plm["labels"]), np.asarray(plm["target_mapping"])
    assert mapping.shape == (8, 8, 24)  # num_predict = ceil(24 / 3): static
    predicted = labels != -100
    assert not np.isin(labels[predicted], (SEP, CLS, PAD)).any()
    for b in range(8):
        ordinary = int((~np.isin(ids[b], (SEP, CLS, PAD))).sum())
        assert predicted[b].sum() == math.ceil(ordinary / 3)
        positions = mapping[b][predicted[b]].argmax(-1)
        assert (mask[b, positions] == 1).all()
        np.testing.assert_array_equal(ids[b, positions], labels[b][predicted[b]])
        assert (mapping[b][~predicted[b]] == 0).all()
    orders = np.asarray(objectives.factorisation_orders(jax.random.key(0), 3, 12, 4))
    assert all(sorted(o) == list(range(12)) for o in orders)


# ----------------------------------------------------------------------------- errors

def test_clear_errors(tmp_path):
    bert = flaxbert.get_config("bert-tiny", vocab_size=VOCAB)
    with pytest.raises(ValueError, match=r"unknown objective 'bogus'; choose one of "
                                         r"\['chunk_classification', 'classif"):
        get_objective("bogus", bert)
    with pytest.raises(ValueError, match="has no setting"):
        get_objective("mlm", bert, {"rtd_weight": 1.0})
    objective = get_objective("mlm_nsp", bert)
    batch = mlm_batch(bert)
    batch.pop("pair_label")
    with pytest.raises(ValueError, match=r"needs batch key\(s\) \['pair_label'\] \(nsp labels\)"):
        objective.init(jax.random.key(0), batch)
    with pytest.raises(ValueError, match="masked_ids has shape"):
        get_objective("mlm", bert).init(jax.random.key(0), dict(
            mlm_batch(bert), masked_ids=np.zeros((4, 2), np.int32)))
    with pytest.raises(ValueError, match="needs an rng"):
        get_objective("mlm", bert).loss({}, mlm_batch(bert), None, deterministic=False)
    with pytest.raises(ValueError, match="roberta does not have"):
        get_objective("mlm_nsp", flaxbert.get_config("roberta-tiny"))
    with pytest.raises(ValueError, match="ElectraForPreTraining"):
        get_objective("mlm_sop", flaxbert.get_config("electra-tiny"))
    with pytest.raises(ValueError, match="needs a 'masked-lm' model"):
        get_objective("mlm", flaxbert.get_config("xlnet-tiny"))
    electra = flaxbert.get_config("electra-tiny")
    with pytest.raises(ValueError, match="trains an ELECTRA pair"):
        get_objective("rtd", bert)
    with pytest.raises(ValueError, match=r"generator \(hidden_size=256\) is wider"):
        get_objective("rtd", electra, {"generator": "electra-small-generator"})
    with pytest.raises(ValueError, match="generator_size=1.5"):
        get_objective("rtd", electra, {"generator_size": 1.5})
    with pytest.raises(ValueError, match="sampling='top-k'"):
        get_objective("rtd", electra, {"sampling": "top-k"})
    with pytest.raises(ValueError, match="cannot start from a single checkpoint"):
        get_objective("rtd", electra).task_name()
    distil = flaxbert.get_config("distilbert-tiny")
    with pytest.raises(ValueError, match="needs settings\\['teacher'\\]"):
        get_objective("distillation", distil)
    with pytest.raises(ValueError, match="teacher's hidden_size=256 differs"):
        get_objective("distillation", distil, {"teacher": "bert-mini"})
    get_objective("distillation", distil, {"teacher": "bert-mini", "alpha_cos": 0.0})
    with pytest.raises(ValueError, match="vocab_size=28996 differs"):
        get_objective("distillation", distil, {"teacher": "bert-base-cased"})
    teacherless = get_objective("distillation", distil, {"teacher": "bert-tiny"})
    with pytest.raises(ValueError, match="needs the teacher's params"):
        teacherless.loss({}, mlm_batch(distil), deterministic=True)
    with pytest.raises(ValueError, match="plm_K=0.5"):
        get_objective("plm", flaxbert.get_config("xlnet-tiny"), {"plm_K": 0.5})
    with pytest.raises(ValueError, match="perm_size=7 must divide"):
        objectives.factorisation_orders(jax.random.key(0), 2, 12, 7)
