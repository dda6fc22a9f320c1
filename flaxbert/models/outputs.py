"""What networks return: one pytree with transformers' output names.

Fields a network does not produce stay None and are left out of `keys()`/`items()`, so a test or a
user can compare with a transformers output name by name.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import flax.struct


@flax.struct.dataclass
class Output:
    logits: Any = None
    prediction_logits: Any = None
    seq_relationship_logits: Any = None
    sop_logits: Any = None
    start_logits: Any = None
    end_logits: Any = None
    last_hidden_state: Any = None
    pooler_output: Any = None
    embeddings: Any = None
    hidden_states: Any = None
    attentions: Any = None
    mems: Any = None  # XLNet's memory: one (batch, mem_len, hidden) array a layer

    def keys(self) -> list[str]:
        return [f.name for f in dataclasses.fields(self) if getattr(self, f.name) is not None]

    def items(self):
        return [(k, getattr(self, k)) for k in self.keys()]

    def __getitem__(self, name: str):
        value = getattr(self, name)
        if value is None:
            raise KeyError(f"this output has no {name!r}; it has {self.keys()}")
        return value
