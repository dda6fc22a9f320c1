"""Every family and head against transformers' PyTorch classes built from the same config.

Random weights (biases randomised too), padding masks, token types where the family has them;
every output (logits, hidden_states of each layer, attentions) must agree to 1e-4 in fp32, and the
HF -> flaxbert -> HF round trip must be bit-exact and load with no missing or unexpected keys.
"""
import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file

import flaxbert
from flaxbert.models import registry
from conftest import TINY_HF, token_batch

TOL = 1e-4
_DISTIL = dict(vocab_size=99, dim=32, n_layers=2, n_heads=4, hidden_dim=37,
               max_position_embeddings=64)
# family case -> (transformers config class, its kwargs, flaxbert family, token types?)
CASES = {
    "bert": (transformers.BertConfig, TINY_HF, "bert", True),
    "roberta": (transformers.RobertaConfig, dict(TINY_HF, type_vocab_size=1, pad_token_id=1),
                "roberta", False),
    "distilbert": (transformers.DistilBertConfig, _DISTIL, "distilbert", False),
    "albert": (transformers.AlbertConfig, dict(TINY_HF, embedding_size=16, hidden_act="gelu_new"),
               "albert", True),
    # Four layers in two groups of two: every sharing path of ALBERT's encoder.
    "albert-groups": (transformers.AlbertConfig, dict(TINY_HF, embedding_size=16,
                                                      num_hidden_layers=4, num_hidden_groups=2,
                                                      inner_group_num=2), "albert", True),
    "electra": (transformers.ElectraConfig, dict(TINY_HF, embedding_size=16), "electra", True),
    # v3 layout: shared position keys, log buckets (8 buckets: lengths past 4 take the log path),
    # LayerNorm'd relative table, no absolute positions, no token types.
    "deberta-v3": (transformers.DebertaV2Config,
                   dict(TINY_HF, type_vocab_size=0, relative_attention=True, position_buckets=8,
                        norm_rel_ebd="layer_norm", share_att_key=True, pos_att_type="p2c|c2p",
                        position_biased_input=False), "deberta-v2", False),
    # v2-xlarge layout: own position projections, absolute positions, types, conv after layer 0.
    "deberta-v2-conv": (transformers.DebertaV2Config,
                        dict(TINY_HF, relative_attention=True, position_buckets=8,
                             norm_rel_ebd="layer_norm", pos_att_type=["c2p", "p2c"],
                             conv_kernel_size=3, conv_act="gelu"), "deberta-v2", True),
    # transformers' default layout (trigram input, NoNorm, shared query/key bottleneck), two
    # FFNs a layer; test_mobilebert.py covers the other switches.
    "mobilebert": (transformers.MobileBertConfig,
                   dict(TINY_HF, embedding_size=16, intra_bottleneck_size=16,
                        num_feedforward_networks=2), "mobilebert", True),
}


def _has_transformers_class(family, task):
    return task != "embedding" and hasattr(transformers, family.hf.architecture(task))


# DeBERTa-v3's replaced-token-detection head has no transformers class (tests in test_families).
PARAMS = [(case, task) for case, (_, _, fam, _) in CASES.items()
          for task in registry.FAMILIES[fam].task_models
          if _has_transformers_class(registry.FAMILIES[fam], task)]
AUTO = {"base": "AutoModel", "pretraining": "AutoModelForPreTraining",
        "masked-lm": "AutoModelForMaskedLM", "next-sentence": "AutoModelForNextSentencePrediction",
        "sequence-classification": "AutoModelForSequenceClassification",
        "token-classification": "AutoModelForTokenClassification",
        "question-answering": "AutoModelForQuestionAnswering",
        "multiple-choice": "AutoModelForMultipleChoice"}


def hf_class(case, task):
    family = registry.FAMILIES[CASES[case][2]]
    return getattr(transformers, family.hf.architecture(task))


def inputs(case, task):
    config_cls, kwargs, _, with_types = CASES[case]
    pad = kwargs.get("pad_token_id", 0)
    ids, mask, types = token_batch(vocab=99)
    ids = np.where(mask == 1, np.maximum(ids, 2), pad)
    if task == "multiple-choice":  # (batch=2, choices=3, length)
        ids, mask, types = (np.stack([x, x[::-1]]) for x in (ids, mask, types))
    return ids, mask, (types if with_types else None)


def torch_outputs(hf_model, ids, mask, types):
    kwargs = dict(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                  output_hidden_states=True, output_attentions=True)
    if types is not None:
        kwargs["token_type_ids"] = torch.tensor(types)
    with torch.no_grad():
        return hf_model(**kwargs)


def max_err(ours, ref) -> float:
    if isinstance(ours, tuple):
        assert len(ours) == len(ref)
        return max(max_err(a, b) for a, b in zip(ours, ref))
    ours = np.asarray(ours)
    assert ours.shape == tuple(ref.shape)
    return float(np.abs(ours - ref.detach().numpy()).max())


def compare(model, params, hf_model, case, task):
    ids, mask, types = inputs(case, task)
    ours = model.apply({"params": params}, ids, mask, types, output_hidden_states=True,
                       output_attentions=True)
    ref = torch_outputs(hf_model, ids, mask, types)
    expected = {k for k, v in ref.items() if v is not None and k != "cross_attentions"}
    assert set(ours.keys()) == expected
    return {name: max_err(value, ref[name]) for name, value in ours.items()}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A saved random-init transformers checkpoint per (case, task), built on first use."""
    cache = {}

    def get(case, task):
        if (case, task) not in cache:
            config_cls, kwargs, _, _ = CASES[case]
            # transformers' QA heads have num_labels outputs but work only with 2.
            config = config_cls(**kwargs, num_labels=2 if "question" in task else 3,
                                attn_implementation="eager")
            torch.manual_seed(len(cache))
            hf_model = hf_class(case, task)(config).eval()
            with torch.no_grad():  # transformers zero-inits biases; randomise so tests see them
                for p in hf_model.parameters():
                    p.add_(torch.randn_like(p) * 0.02)
            path = tmp_path_factory.mktemp(f"{case}-{task}")
            hf_model.save_pretrained(path)
            cache[case, task] = (path, hf_model)
        return cache[case, task]
    return get


@pytest.mark.parametrize("case,task", PARAMS)
def test_every_head_matches_transformers(case, task, saved):
    path, hf_model = saved(case, task)
    model, params = flaxbert.from_pretrained(path)
    assert model.task == task  # followed config.json's architectures
    assert flaxbert.count_params(params) == sum(p.numel() for p in hf_model.parameters())
    errors = compare(model, params, hf_model, case, task)
    print(f"{case:14} {task:24} " + " ".join(f"{k}={v:.1e}" for k, v in errors.items()))
    assert max(errors.values()) <= TOL, errors


def assert_round_trip(path, hf_model, auto_class: str, out, **load_kwargs):
    """Load `path` into flaxbert, save it to `out`: every tensor bit-identical, and transformers'
    `auto_class` loads `out` as hf_model's class with no missing or unexpected keys."""
    model, params = flaxbert.from_pretrained(path)
    flaxbert.save_pretrained(out, model, params)
    original = load_file(path / "model.safetensors")
    written = load_file(out / "model.safetensors")
    assert written.keys() == original.keys()
    for key in original:
        assert written[key].dtype == original[key].dtype, key
        np.testing.assert_array_equal(written[key], original[key], err_msg=key)
    reloaded, info = getattr(transformers, auto_class).from_pretrained(
        out, output_loading_info=True, **load_kwargs)
    assert type(reloaded) is type(hf_model)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    return reloaded


@pytest.mark.parametrize("case,task", PARAMS)
def test_round_trip_is_bit_exact_and_loads_in_transformers(case, task, saved, tmp_path):
    path, hf_model = saved(case, task)
    reloaded = assert_round_trip(path, hf_model, AUTO[task], tmp_path / "out",
                                 attn_implementation="eager")
    # Weights are bit-identical (above). Outputs are compared to 1e-6, not bitwise: transformers'
    # own save/load of the same model differs by ~1e-9 (torch kernels vary with memory alignment).
    a = torch_outputs(reloaded.eval(), *inputs(case, task))
    b = torch_outputs(hf_model, *inputs(case, task))
    for key, value in a.items():
        if isinstance(value, torch.Tensor):
            torch.testing.assert_close(value, b[key], atol=1e-6, rtol=0, msg=key)


@pytest.mark.parametrize("case", [c for c in CASES if CASES[c][2] != "albert"
                                  and "conv" not in c])
def test_scanned_layers_match(case, saved):
    path, hf_model = saved(case, "masked-lm")
    model, params = flaxbert.from_pretrained(path, scan_layers=True, remat_policy="full")
    assert "layers" in params["backbone"]["encoder"]
    assert max(compare(model, params, hf_model, case, "masked-lm").values()) <= TOL
