"""What the non-BERT families add beyond per-head parity: RoBERTa positions, DistilBERT's
student initialisation, ELECTRA's generator/discriminator pair with shared embeddings."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

import flaxbert
from flaxbert.models.distilbert import student_from_teacher
from flaxbert.models.electra import ElectraPair
from test_parity import compare, saved  # noqa: F401 (fixture)


def test_roberta_positions_skip_padding_and_limit_length():
    model = flaxbert.create_model("roberta-tiny", vocab_size=99)
    params = flaxbert.init_params(model)
    ids = np.array([[5, 6, 7, 1, 1], [1, 1, 5, 6, 7]])  # right and left padded (pad id 1)
    left, right = model.apply({"params": params}, ids).last_hidden_state[:, :, :]
    # Real tokens get positions 2, 3, 4 wherever they sit, so their states agree.
    np.testing.assert_allclose(np.asarray(left[:3]), np.asarray(right[2:]), atol=1e-5)
    assert model.config.max_sequence_length == 512
    with pytest.raises(ValueError, match="exceeds the 512 positions"):
        model.apply({"params": params}, np.full((1, 513), 5))


def test_distilbert_ignores_token_types():
    model = flaxbert.create_model("distilbert-tiny", vocab_size=99)
    params = flaxbert.init_params(model)
    ids = np.array([[5, 6, 7]])
    a = model.apply({"params": params}, ids, token_type_ids=np.array([[0, 1, 1]]))
    b = model.apply({"params": params}, ids)
    np.testing.assert_array_equal(np.asarray(a.last_hidden_state), np.asarray(b.last_hidden_state))


def test_distilbert_student_takes_every_second_teacher_layer(saved):
    path, _ = saved("bert", "masked-lm")
    teacher, tparams = flaxbert.from_pretrained(path)
    teacher = teacher.clone(config=teacher.config.replace(num_hidden_layers=2))
    student, sparams = student_from_teacher(teacher, tparams)
    assert student.config.num_hidden_layers == 1 and student.config.type_vocab_size == 0
    assert type(student).__name__ == "DistilBertForMaskedLM"
    np.testing.assert_array_equal(
        np.asarray(sparams["backbone"]["encoder"]["layers_0"]["mlp"]["wi"]["kernel"]),
        np.asarray(tparams["backbone"]["encoder"]["layers_0"]["mlp"]["wi"]["kernel"]))
    assert "token_type_embeddings" not in sparams["backbone"]["embeddings"]
    np.testing.assert_array_equal(np.asarray(sparams["mlm_head"]["bias"]),
                                  np.asarray(tparams["mlm_head"]["bias"]))
    out = student.apply({"params": sparams}, np.array([[5, 6, 7, 8]]))
    assert out.logits.shape == (1, 4, 99)
    with pytest.raises(ValueError, match="not teacher layers"):
        student_from_teacher(teacher, tparams, layers=[0, 5])


@pytest.fixture(scope="module")
def pair():
    gen = flaxbert.get_config("electra-tiny-generator", vocab_size=99)
    disc = flaxbert.get_config("electra-tiny", vocab_size=99)
    model = ElectraPair(gen, disc)
    params = flax_unbox(model.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32)))["params"]
    return model, params


def flax_unbox(tree):
    import flax.linen as nn
    return nn.meta.unbox(tree)


def test_electra_pair_shares_one_embedding(pair):
    model, params = pair
    assert set(params) == {"embeddings", "generator", "discriminator"}
    assert "embeddings" not in params["generator"]["backbone"]
    assert "embeddings" not in params["discriminator"]["backbone"]
    gen_params, disc_params = ElectraPair.split(params)
    gen = flaxbert.create_model("electra-tiny-generator", "masked-lm", vocab_size=99)
    disc = flaxbert.create_model("electra-tiny", "pretraining", vocab_size=99)
    assert (flaxbert.count_params(params) == flaxbert.count_params(gen_params)
            + flaxbert.count_params(disc_params)
            - flaxbert.count_params(params["embeddings"]))
    # The split halves are exactly the standalone task models' parameters.
    assert flaxbert.count_params(gen) == flaxbert.count_params(gen_params)
    assert flaxbert.count_params(disc) == flaxbert.count_params(disc_params)
    ids = np.array([[2, 5, 6, 7, 3]])
    g, d = model.apply({"params": params}, ids)
    np.testing.assert_allclose(np.asarray(g.logits),
                               np.asarray(gen.apply({"params": gen_params}, ids).logits), atol=1e-6)
    np.testing.assert_allclose(np.asarray(d.logits),
                               np.asarray(disc.apply({"params": disc_params}, ids).logits), atol=1e-6)
    joined = ElectraPair.join(gen_params, disc_params)
    for a, b in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(joined)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_electra_pair_gradients_reach_the_shared_embedding_from_both(pair):
    model, params = pair
    ids = np.array([[2, 5, 6, 7, 3]])

    def grads(which):
        def loss(p):
            g, d = model.apply({"params": p}, ids)
            return jnp.sum(g.logits ** 2) if which == "gen" else jnp.sum(d.logits ** 2)
        return jax.grad(loss)(params)["embeddings"]["word_embeddings"]["embedding"]

    assert float(jnp.abs(grads("gen")).sum()) > 0
    assert float(jnp.abs(grads("disc")).sum()) > 0


def test_electra_pair_exports_two_transformers_checkpoints(pair, tmp_path):
    model, params = pair
    gen_params, disc_params = ElectraPair.split(params)
    gen = flaxbert.create_model("electra-tiny-generator", "masked-lm", vocab_size=99)
    disc = flaxbert.create_model("electra-tiny", "pretraining", vocab_size=99)
    flaxbert.save_pretrained(tmp_path / "gen", gen, gen_params)
    flaxbert.save_pretrained(tmp_path / "disc", disc, disc_params)
    hf_gen = transformers.AutoModelForMaskedLM.from_pretrained(tmp_path / "gen")
    hf_disc = transformers.AutoModelForPreTraining.from_pretrained(tmp_path / "disc")
    assert type(hf_gen).__name__ == "ElectraForMaskedLM"
    assert type(hf_disc).__name__ == "ElectraForPreTraining"
    np.testing.assert_array_equal(hf_gen.electra.embeddings.word_embeddings.weight.detach().numpy(),
                                  hf_disc.electra.embeddings.word_embeddings.weight.detach().numpy())
    _, g2 = flaxbert.from_pretrained(tmp_path / "gen")
    _, d2 = flaxbert.from_pretrained(tmp_path / "disc")
    for a, b in zip(jax.tree_util.tree_leaves(params),
                    jax.tree_util.tree_leaves(ElectraPair.join(g2, d2))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_electra_pair_rejects_unshareable_configs():
    gen = flaxbert.get_config("electra-tiny-generator", embedding_size=32)
    disc = flaxbert.get_config("electra-tiny")
    with pytest.raises(ValueError, match="embedding_size=32 differs"):
        ElectraPair(gen, disc).init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))


def test_albert_refuses_scan():
    with pytest.raises(ValueError, match="scan_layers does not apply to ALBERT"):
        flaxbert.get_config("albert-tiny", scan_layers=True)


def test_deberta_relative_positions_match_transformers():
    from transformers.models.deberta_v2.modeling_deberta_v2 import build_relative_position
    from flaxbert.models.deberta import relative_positions
    for length, buckets, max_position in ((11, -1, -1), (11, 8, 64), (600, 256, 512),
                                          (130, 256, 512), (64, 32, 128)):
        x = torch.zeros(1, length, 4)
        ref = build_relative_position(x, x, bucket_size=buckets, max_position=max_position)[0]
        np.testing.assert_array_equal(relative_positions(length, buckets, max_position), ref.numpy())


def test_deberta_runs_past_512_tokens_without_absolute_positions():
    model = flaxbert.create_model("deberta-v3-tiny", vocab_size=99)
    params = flaxbert.init_params(model)
    out = model.apply({"params": params}, np.full((1, 600), 5))
    assert out.last_hidden_state.shape == (1, 600, 128)
    assert np.isfinite(np.asarray(out.last_hidden_state)).all()


def test_deberta_new_style_mlm_head_matches_transformers(tmp_path):
    from test_parity import CASES
    _, kwargs, _, _ = CASES["deberta-v3"]
    torch.manual_seed(0)
    hf = transformers.DebertaV2ForMaskedLM(transformers.DebertaV2Config(
        **kwargs, legacy=False, attn_implementation="eager")).eval()
    hf.save_pretrained(tmp_path / "hf")
    assert any(k.startswith("lm_predictions.") for k in hf.state_dict())
    model, params = flaxbert.from_pretrained(tmp_path / "hf")
    errors = compare(model, params, hf, "deberta-v3", "masked-lm")
    assert max(errors.values()) <= 1e-4, errors
    flaxbert.save_pretrained(tmp_path / "back", model, params)
    _, info = transformers.AutoModelForMaskedLM.from_pretrained(tmp_path / "back",
                                                                output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]


def test_deberta_replaced_token_detection_head(tmp_path):
    model = flaxbert.create_model("deberta-v3-tiny", "pretraining", vocab_size=99)
    params = flaxbert.init_params(model)
    base_count = flaxbert.count_params(flaxbert.create_model("deberta-v3-tiny", vocab_size=99))
    assert flaxbert.count_params(params) == base_count + 128 * 128 + 128 + 128 + 1
    ids = np.array([[1, 5, 6, 7, 2, 0]])
    mask = np.array([[1, 1, 1, 1, 1, 0]])
    logits = model.apply({"params": params}, ids, mask).logits
    assert logits.shape == (1, 6)
    flaxbert.save_pretrained(tmp_path / "rtd", model, params)
    again, params2 = flaxbert.from_pretrained(tmp_path / "rtd")
    assert again.task == "pretraining"
    for a, b in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(params2)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # transformers has no class for the head: its bare model loads the backbone, skipping only it.
    hf, info = transformers.AutoModel.from_pretrained(tmp_path / "rtd", output_loading_info=True)
    assert not info["missing_keys"]
    assert info["unexpected_keys"] and all("mask_predictions" in k for k in info["unexpected_keys"])
    with torch.no_grad():
        hidden = hf(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).last_hidden_state
    ours = flaxbert.create_model("deberta-v3-tiny", vocab_size=99).apply(
        {"params": {"backbone": params["backbone"]}}, ids, mask).last_hidden_state
    np.testing.assert_allclose(np.asarray(ours), hidden.numpy(), atol=1e-4)
