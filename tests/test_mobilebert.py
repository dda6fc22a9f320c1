"""MobileBERT beyond test_parity.py's default layout (trigram input, NoNorm, shared query/key
bottleneck, every head): the other switches against transformers, what the config refuses,
packing, PEFT, and configs/mobilebert_distill.py:tiny through `flaxbert pretrain`."""
import json
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest
import torch
import transformers

import flaxbert
from conftest import TINY_HF, pretrain_rows, token_batch
from flaxbert.convert.hf import abstract_params
from test_parity import TOL, assert_round_trip, max_err, torch_outputs
from test_tinybert import prepared  # noqa: F401 (fixture: tiny pre-training data)

REPO = Path(__file__).resolve().parents[1]
_BASE = dict(TINY_HF, embedding_size=16, intra_bottleneck_size=16, num_feedforward_networks=2)
VARIANTS = {
    # LayerNorm (two of them at torch's eps 1e-5), no trigram (16 -> 32 projection still
    # applied), q/k/v all from the input bottleneck (the shared one created, unused), the pooler
    # without dense + tanh.
    "layer-norm": dict(_BASE, normalization_type="layer_norm", trigram_input=False,
                       use_bottleneck_attention=True, classifier_activation=False),
    # No bottleneck: attention at hidden_size, embeddings as wide as it (the projection exists
    # but is not applied; the MLM decoder has no extra rows), three FFNs.
    "no-bottleneck": dict(_BASE, use_bottleneck=False, embedding_size=32, trigram_input=False,
                          num_feedforward_networks=3),
}
# Pre-training covers the backbone, the pooler and both heads; test_parity.py runs the rest.
CLASSES = {"pretraining": "MobileBertForPreTraining"}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    cache = {}

    def get(variant, task):
        if (variant, task) not in cache:
            config = transformers.MobileBertConfig(**VARIANTS[variant],
                                                   attn_implementation="eager")
            torch.manual_seed(len(cache))
            hf_model = getattr(transformers, CLASSES[task])(config).eval()
            with torch.no_grad():  # randomise the zero-initialised biases and norms too
                for p in hf_model.parameters():
                    p.add_(torch.randn_like(p) * 0.02)
            path = tmp_path_factory.mktemp(f"{variant}-{task}")
            hf_model.save_pretrained(path)
            cache[variant, task] = (path, hf_model)
        return cache[variant, task]
    return get


def _inputs():
    ids, mask, types = token_batch(vocab=99)
    return np.where(mask == 1, np.maximum(ids, 2), 0), mask, types


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("task", CLASSES)
def test_variant_matches_transformers_and_round_trips(variant, task, saved, tmp_path):
    path, hf_model = saved(variant, task)
    model, params = flaxbert.from_pretrained(path)
    assert model.task == task
    assert flaxbert.count_params(params) == sum(p.numel() for p in hf_model.parameters())
    ids, mask, types = _inputs()
    ours = model.apply({"params": params}, ids, mask, types, output_hidden_states=True,
                       output_attentions=True)
    ref = torch_outputs(hf_model, ids, mask, types)
    assert set(ours.keys()) == {k for k, v in ref.items() if v is not None}
    errors = {name: max_err(value, ref[name]) for name, value in ours.items()}
    print(f"{variant:14} {task:12} " + " ".join(f"{k}={v:.1e}" for k, v in errors.items()))
    assert max(errors.values()) <= TOL, errors
    assert_round_trip(path, hf_model, "AutoModelForPreTraining" if task == "pretraining"
                      else "AutoModel", tmp_path / "out", attn_implementation="eager")


def test_registered_sizes():
    config = flaxbert.get_config("mobilebert-uncased")
    assert (config.num_hidden_layers, config.hidden_size, config.intra_bottleneck_size,
            config.num_feedforward_networks, config.true_hidden_size) == (24, 512, 128, 4, 128)
    defaults = transformers.MobileBertConfig()
    for field in ("vocab_size", "embedding_size", "intermediate_size", "num_attention_heads",
                  "trigram_input", "normalization_type", "hidden_act",
                  "key_query_shared_bottleneck", "use_bottleneck_attention"):
        assert getattr(config, field) == getattr(defaults, field), field


@pytest.mark.parametrize("fields, message", [
    (dict(normalization_type="batch_norm"), "normalization_type='batch_norm'"),
    (dict(intra_bottleneck_size=33), "not a multiple of num_attention_heads=2"),
    (dict(key_query_shared_bottleneck=False), "set one of the two"),
    (dict(embedding_size=256), "embedding_size=256 must be in"),
    (dict(num_feedforward_networks=0), "num_feedforward_networks=0 must be >= 1"),
])
def test_bad_configs_are_refused(fields, message):
    with pytest.raises(ValueError, match=message):
        flaxbert.get_config("mobilebert-tiny", **fields)


PACKED = dict(input_ids=np.array([[2, 5, 6, 3, 2, 7, 3, 0]]),
              segment_ids=np.array([[1, 1, 1, 1, 2, 2, 2, 0]]),
              position_ids=np.array([[0, 1, 2, 3, 0, 1, 2, 0]]))
_ONE_LAYER = dict(vocab_size=99, num_hidden_layers=1)  # what these tests touch, compiled fast


def test_trigram_input_refuses_packed_rows():
    model = flaxbert.create_model("mobilebert-tiny", **_ONE_LAYER)
    with pytest.raises(ValueError, match="trigram_input concatenates"):
        jax.eval_shape(lambda p: model.apply({"params": p}, **PACKED), abstract_params(model))


@pytest.mark.slow  # two compiles: 20-30 s under this machine's load
def test_without_trigram_a_packed_row_computes_each_example_alone():
    plain = flaxbert.create_model("mobilebert-tiny", **_ONE_LAYER, trigram_input=False)
    params = flaxbert.init_params(plain)
    run = jax.jit(lambda p, input_ids, **kw: plain.apply({"params": p}, input_ids,
                                                        **kw).last_hidden_state)
    packed = run(params, **PACKED)
    alone = run(params, PACKED["input_ids"][:, 4:7])
    np.testing.assert_allclose(np.asarray(packed[:, 4:7]), np.asarray(alone), atol=1e-5)


@pytest.mark.slow  # three compiles: 20-35 s under this machine's load
@pytest.mark.parametrize("peft", ["lora", "houlsby"])
def test_peft_starts_as_the_identity(peft):
    base = flaxbert.create_model("mobilebert-tiny", "masked-lm", **_ONE_LAYER)
    tuned = flaxbert.create_model("mobilebert-tiny", "masked-lm", **_ONE_LAYER, peft=peft,
                                  lora_targets=("query", "key", "value", "output", "mlp_in",
                                                "mlp_out"))
    params = flaxbert.init_params(tuned)
    base_only = _without_peft(params)
    # PEFT adds modules beside the targeted projections and leaves the base weights as they are.
    assert flaxbert.count_params(params) > flaxbert.count_params(base_only)
    assert (jax.tree_util.tree_structure(base_only)
            == jax.tree_util.tree_structure(abstract_params(base)))
    ids = np.array([[2, 5, 6, 7, 3]])
    logits = jax.jit(lambda m, p: m.apply({"params": p}, ids).logits, static_argnums=0)
    np.testing.assert_allclose(np.asarray(logits(tuned, params)),
                               np.asarray(logits(base, base_only)), atol=1e-6)


def _without_peft(tree):
    from flaxbert.layers.peft import PEFT_SUFFIXES
    if not isinstance(tree, dict):
        return tree
    return {k: _without_peft(v) for k, v in tree.items() if not k.endswith(PEFT_SUFFIXES)}


# ----------------------------------------------------------------------------- the recipe

def test_every_recipe_argument_builds():
    from flaxbert.recipes import mobilebert_distill  # the installed copy of configs/
    for arg, objective in (("", "tinybert"), ("distill", "distillation"), ("tiny", "tinybert")):
        c = mobilebert_distill.get_config(arg)
        assert c.objective == objective and c.model.startswith("mobilebert-")
    with pytest.raises(ValueError, match="mobilebert_distill.py: argument 'x'"):
        mobilebert_distill.get_config("x")


@pytest.mark.slow  # 130 s here under load (compiling the student, the teacher and the step)
def test_cli_knowledge_transfer_of_the_tiny_recipe_trains(prepared, tmp_path):
    workdir = tmp_path / "run"
    rows = pretrain_rows(f"{REPO / 'configs' / 'mobilebert_distill.py'}:tiny", prepared, workdir)
    first = np.mean([rows[s]["loss"] for s in range(1, 4)])
    last = np.mean([rows[s]["loss"] for s in range(28, 31)])
    print(f"mobilebert_distill.py:tiny loss, steps 1-3 {first:.4f}, steps 28-30 {last:.4f}")
    assert last < 0.8 * first, (first, last)
    assert {"hidden_loss", "attention_loss"} <= set(rows[30])
    model, _ = flaxbert.from_pretrained(workdir / "export" / "step_30", "masked-lm")
    assert type(model).__name__ == "MobileBertForMaskedLM"
    shutil.rmtree(workdir / "checkpoints")


def test_every_parameter_has_logical_axes_that_map_to_the_mesh():
    import flax.linen as nn

    from flaxbert.layers.sharding import LOGICAL_AXIS_RULES
    known = {name for name, _ in LOGICAL_AXIS_RULES}
    model = flaxbert.create_model("mobilebert-tiny", "pretraining", vocab_size=99)
    boxed = jax.eval_shape(lambda: model.init(jax.random.key(0), **model.dummy_inputs()))
    leaves = jax.tree_util.tree_leaves_with_path(
        boxed["params"], is_leaf=lambda x: isinstance(x, nn.Partitioned))
    assert leaves
    for path, leaf in leaves:
        where = jax.tree_util.keystr(path)
        assert isinstance(leaf, nn.Partitioned), where
        assert len(leaf.names) == leaf.value.ndim and set(leaf.names) <= known, (where, leaf.names)
        mesh_axes = [dict(LOGICAL_AXIS_RULES)[n] for n in leaf.names]
        used = [a for a in mesh_axes if a is not None]
        assert len(used) == len(set(used)), (where, leaf.names)  # no mesh axis twice
