"""flaxbert: the BERT family in pure-functional JAX/Flax.

    model, params = flaxbert.from_pretrained("path/to/hf-checkpoint")
    out = model.apply({"params": params}, **tokenizer(["hello world"], padding=True))
    classify = flaxbert.pipeline("text-classification", "path/to/fine-tuned")
    metrics = flaxbert.finetune(flaxbert.finetune_config(model=...), "runs/task")
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # what the lazy names below resolve to, for type checkers and editors
    import flax.linen as nn
    import jax

    from flaxbert.convert import from_pretrained, save_pretrained  # noqa: F401
    from flaxbert.models import create_model, get_config, list_models  # noqa: F401
    from flaxbert.models.base import TASKS  # noqa: F401
    from flaxbert.pipelines import pipeline  # noqa: F401
    from flaxbert.tokenizer import Tokenizer  # noqa: F401
    from flaxbert.training.finetune import finetune, finetune_config  # noqa: F401

__version__ = "0.1.0"

# name -> module that defines it. Nothing is imported until a name is first used, so
# `import flaxbert` and `flaxbert --help` do not pay for JAX, Flax, Orbax or TensorFlow.
_LAZY = {
    "from_pretrained": "flaxbert.convert", "save_pretrained": "flaxbert.convert",
    "create_model": "flaxbert.models", "get_config": "flaxbert.models",
    "list_models": "flaxbert.models", "TASKS": "flaxbert.models.base",
    "Tokenizer": "flaxbert.tokenizer", "pipeline": "flaxbert.pipelines",
    "finetune": "flaxbert.training.finetune", "finetune_config": "flaxbert.training.finetune"}


def __getattr__(name):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module 'flaxbert' has no attribute {name!r}")


def __dir__():
    return sorted({*globals(), *_LAZY})


def init_params(model: nn.Module, rng: int | jax.Array = 0) -> dict:
    """Freshly initialised (unboxed) parameters for `model` on the default device."""
    import flax.linen as nn
    import jax
    key = jax.random.key(rng) if isinstance(rng, int) else rng
    variables = jax.jit(lambda k: model.init(k, **model.dummy_inputs()))(key)
    return nn.meta.unbox(variables)["params"]


def count_params(model_or_params) -> int:
    """Number of parameters of a model (nothing allocated) or of a parameter tree.

    Equal to transformers' `sum(p.numel() for p in model.parameters())` for the same config.
    """
    import flax.linen as nn
    import jax
    import numpy as np
    if isinstance(model_or_params, nn.Module):
        from flaxbert.convert.hf import abstract_params
        model = model_or_params
        try:  # scanned layers hold the same parameters and trace one layer instead of all
            model = model.clone(config=model.config.replace(scan_layers=True))
        except ValueError:  # a family that cannot scan (ALBERT shares its layers anyway)
            pass
        model_or_params = abstract_params(model)
    return int(sum(np.prod(np.shape(x)) for x in jax.tree_util.tree_leaves(
        nn.meta.unbox(model_or_params))))

