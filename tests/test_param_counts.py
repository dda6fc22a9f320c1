"""Parameter counts equal transformers' for every registered size and every head, exactly."""
import pytest
import torch
import transformers

import flaxbert
from flaxbert.convert.hf import config_to_hf
from flaxbert.models import registry


def _hf_count(name: str, task: str) -> int:
    config = flaxbert.get_config(name)
    family = registry.family_of(config)
    fields = config_to_hf(family, config, "base")
    arch = fields.pop("architectures")[0]
    hf_config = transformers.AutoConfig.for_model(fields.pop("model_type"), **fields)
    hf_task = "base" if task == "embedding" else task
    with torch.device("meta"):  # shapes only: the large sizes cost nothing
        model = getattr(transformers, family.hf.architecture(hf_task))(hf_config)
    assert arch.startswith(family.hf.class_prefix)
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", flaxbert.list_models())
def test_counts_equal_transformers(name):
    family = registry.family_of(flaxbert.get_config(name))
    for task in family.task_models:
        if not hasattr(transformers, family.hf.architecture("base" if task == "embedding" else task)):
            continue  # DeBERTa-v3's RTD head has no transformers class (test_families counts it)
        ours = flaxbert.count_params(flaxbert.create_model(name, task))
        assert ours == _hf_count(name, task), (name, task)


def test_known_published_sizes():
    # Sizes people quote for these checkpoints (bare model).
    count = lambda name: flaxbert.count_params(flaxbert.create_model(name))  # noqa: E731
    assert count("bert-base-uncased") == 109_482_240
    assert count("bert-large-uncased") == 335_141_888
    assert count("roberta-base") == 124_645_632
    assert count("distilbert-base-uncased") == 66_362_880
    assert count("albert-base-v2") == 11_683_584
