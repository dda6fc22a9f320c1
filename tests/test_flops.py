"""The model-FLOPs formula against a hand count and against XLA's own count of real forwards."""
import jax
import jax.numpy as jnp
import pytest

import flaxbert
from flaxbert import flops
from flaxbert.convert.hf import abstract_params


def xla_forward_flops(name, task="base", seq_len=128, batch=1, masked_positions=None, **overrides):
    """XLA's FLOP count of one compiled forward (per sequence), and the model's config."""
    model = flaxbert.create_model(name, task, **overrides)
    ids = jax.ShapeDtypeStruct((batch, seq_len), jnp.int32)
    extra = {} if masked_positions is None else {
        "masked_positions": jax.ShapeDtypeStruct((batch, masked_positions), jnp.int32)}
    forward = jax.jit(lambda params, ids, **kw: model.apply({"params": params}, ids, **kw))
    cost = forward.lower(abstract_params(model), ids, **extra).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return cost["flops"] / batch, model.config


def test_bert_base_matches_a_hand_count():
    """bert-base, T = 128, H = A = 768, I = 3072, one layer's forward:
        q, k, v, out: 4 · 2·128·768·768   =   603,979,776
        FFN in, out:  2 · 2·128·768·3072  = 1,207,959,552
        together 2·128·(4·768² + 2·768·3072) = 1,811,939,328
        scores + context: 2 · 2·128²·768  =    50,331,648
        layer total                        = 1,862,270,976
    12 layers: 22,347,251,712 forward; training 3× = 67,041,755,136. The MLM head on 20 masked
    positions adds 20 · (2·768·768 + 2·768·30522) = 961,228,800 forward."""
    config = flaxbert.get_config("bert-base-uncased")
    terms = flops.forward_flops_breakdown(config, 128)
    assert terms["layers"] / 12 == 1_811_939_328
    assert terms["attention"] / 12 == 50_331_648
    assert flops.inference_flops_per_sequence(config, 128) == 22_347_251_712
    assert flops.training_flops_per_sequence(config, 128) == 67_041_755_136
    assert (flops.training_flops_per_sequence(config, 128, masked_positions=20)
            - 67_041_755_136) == 3 * 961_228_800
    text = flops.describe_formula(config, 128, masked_positions=20)
    assert "L*2T(4HA + 2HI)" in text and "forward 2.331e+10" in text  # 22,347,251,712 + 961,228,800


@pytest.mark.parametrize("name, overrides", [
    ("bert-tiny", {}),
    ("albert-tiny", {"inner_group_num": 2}),  # 2 applied layers a group: counted per application
    ("electra-tiny", {}),                     # factorised embeddings: the E -> H projection
    ("deberta-v3-tiny", {}),                  # c2p / p2c relative terms
])
def test_formula_agrees_with_xla_cost_analysis(name, overrides):
    measured, config = xla_forward_flops(name, **overrides)
    formula = flops.inference_flops_per_sequence(config, 128)
    # XLA also counts element-wise FLOPs (softmax, GELU, LayerNorm): a few percent more, never less.
    assert 1.0 <= measured / formula < 1.10, (measured, formula)


def test_mlm_head_term_matches_xla():
    base, config = xla_forward_flops("bert-tiny")
    with_head, _ = xla_forward_flops("bert-tiny", "masked-lm", masked_positions=20)
    term = flops.forward_flops_breakdown(config, 128, masked_positions=20)["mlm_head"]
    assert abs((with_head - base) / term - 1) < 0.02


def test_electra_sums_generator_and_discriminator():
    gen, disc = flaxbert.get_config("electra-tiny-generator"), flaxbert.get_config("electra-tiny")
    total = flops.electra_training_flops_per_sequence(gen, disc, 128, masked_positions=20)
    expected = (flops.training_flops_per_sequence(gen, 128, masked_positions=20)
                + flops.training_flops_per_sequence(disc, 128)
                + 3 * 128 * (2 * 128 * 128 + 2 * 128))
    assert total == expected


def test_peaks_mfu_and_errors():
    assert flops.peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert flops.peak_flops("NVIDIA H200") == 989e12
    assert flops.peak_flops("NVIDIA A100-SXM4-80GB") == 312e12
    assert flops.peak_flops("TPU v5 lite") == 197e12
    assert flops.peak_flops("TPU v4") == 275e12
    assert flops.peak_flops("TPU v6 lite") == 918e12
    assert flops.peak_flops(jax.devices("cpu")[0]) is None
    assert flops.mfu(989e12 * 0.5, 1.0, 989e12) == pytest.approx(0.5)
    assert flops.mfu(1e12, 1.0, None) is None
    with pytest.raises(ValueError, match="step_seconds"):
        flops.mfu(1e12, 0.0, 989e12)
    config = flaxbert.get_config("bert-tiny")
    with pytest.raises(ValueError, match="seq_len must be a positive int"):
        flops.training_flops_per_sequence(config, 0)
    with pytest.raises(ValueError, match="masked_positions"):
        flops.training_flops_per_sequence(config, 8, masked_positions=9)
    with pytest.raises(TypeError, match="EncoderConfig"):
        flops.training_flops_per_sequence({"hidden_size": 8}, 8)
    with pytest.raises(ValueError, match="not XLNet"):
        flops.training_flops_per_sequence(flaxbert.get_config("xlnet-tiny"), 8)
