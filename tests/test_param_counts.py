"""Parameter counts equal transformers' for every registered size and every head, exactly."""
import pytest
import torch
import transformers

import flaxbert
from flaxbert.convert.hf import config_to_hf
from flaxbert.models import registry
from test_bert_parity import HEADS

BERT_SIZES = [n for n, c in registry.CONFIGS.items() if registry.family_of(c).name == "bert"]


def _hf_count(name: str, task: str) -> int:
    config = flaxbert.get_config(name)
    hf_config = transformers.BertConfig(**{
        k: v for k, v in config_to_hf(registry.family_of(config), config, "base").items()
        if k not in ("architectures", "id2label", "label2id")}, num_labels=config.num_labels)
    with torch.device("meta"):  # shapes only: bert-large costs nothing
        model = HEADS["base" if task == "embedding" else task](hf_config)
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", BERT_SIZES)
def test_counts_equal_transformers(name):
    for task in flaxbert.TASKS:
        ours = flaxbert.count_params(flaxbert.create_model(name, task))
        assert ours == _hf_count(name, task), (name, task)


def test_known_published_sizes():
    # Sizes people quote for these checkpoints (bare model, with pooler).
    assert flaxbert.count_params(flaxbert.create_model("bert-base-uncased")) == 109_482_240
    assert flaxbert.count_params(flaxbert.create_model("bert-large-uncased")) == 335_141_888
    assert flaxbert.count_params(flaxbert.create_model("bert-tiny")) == 4_385_920
